"""What `dstune eval` / `compare` evaluate: the model (run directory or plain model), its settings, its data.

A run directory brings its resolved config: the ``evaluation`` section, the task's label fields,
the data files and the split it was trained with. A plain Hugging Face model (folder or hub id)
gets the defaults and needs ``--data``. ``--set`` overrides evaluation keys either way
(``--set generation.max_new_tokens=64`` or ``--set evaluation.generation.max_new_tokens=64``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dstune.config.base import Section
from dstune.config.evaluation import EvaluationSection
from dstune.config.schema import RunConfig, TaskSection
from dstune.config.task import LabelledTaskFields
from dstune.data.readers import Record, read_records
from dstune.errors import ConfigError, DataError


class _EvaluationOnly(Section):
    """Validates ``{"evaluation": {...}}`` so that errors name the full key (evaluation.generation.xxx)."""

    evaluation: EvaluationSection = EvaluationSection()


@dataclass
class Target:
    """A model to evaluate, and everything known about it before loading weights."""

    path: str
    name: str
    config: RunConfig | None
    settings: EvaluationSection

    @property
    def is_run(self) -> bool:
        return self.config is not None

    @property
    def task(self) -> TaskSection:
        return self.config.task if self.config else TaskSection()

    @property
    def task_name(self) -> str | None:
        """Multi-task runs: the evaluated task (``evaluation.task_name``, else the first one)."""
        if self.config is None or self.config.multitask is None:
            return None
        names = list(self.config.multitask.tasks)
        name = self.settings.task_name or names[0]
        if name not in names:
            raise ConfigError(f"unknown task {name!r}; this run has {', '.join(names)}", where="evaluation.task_name")
        return name

    def task_fields(self) -> LabelledTaskFields:
        """Where text and labels are in a row (the task's own settings in multi-task runs)."""
        name = self.task_name
        return self.config.multitask.tasks[name] if name else self.task

    @property
    def encoding(self) -> str:
        return self.config.data.encoding if self.config else "utf-8"

    @property
    def max_length(self) -> int:
        return self.config.data.max_length if self.config else 2048

    def default_out_dir(self) -> Path:
        return Path(self.path) / "eval" if self.is_run else Path("eval") / self.name


def resolve_target(path: str | Path, overrides: list[str] | None = None) -> Target:
    """Read a run directory's config (if ``path`` is one) and apply ``--set`` overrides to ``evaluation``."""
    from dstune.config.load import apply_override, validate_config

    path = str(path)
    config = _run_config(Path(path))
    raw = {"evaluation": (config.evaluation.model_dump() if config and config.evaluation else {})}
    for item in overrides or []:
        key = item.strip()
        apply_override(raw, key if key.startswith("evaluation.") else f"evaluation.{key}")
    try:
        settings = validate_config(raw, source="--set evaluation", model=_EvaluationOnly).evaluation
    except ConfigError as exc:
        raise ConfigError(exc.message, where=exc.where, hint="fix the --set keys or the evaluation section of the "
                          "run's config.yaml (every key is listed in dstune/config/evaluation.py)") from None
    name = Path(path.rstrip("/")).name.removesuffix(".gguf") or path
    return Target(path, name, config, settings)


def _run_config(path: Path) -> RunConfig | None:
    if not (path / "config.yaml").is_file():
        return None
    from dstune.models.inference import load_run_config

    return load_run_config(path)


def load_model(target: Target):
    """``(model, tokenizer, kind, weights_dir)``: labelled runs through the heads' predictor, the rest as
    export/serve load them (run directories, plain Hugging Face models, classifier folders)."""
    from dstune.export.source import load_deployable
    from dstune.models.heads import read_head_cards

    weights = None
    if target.is_run:
        weights = next((Path(target.path) / d for d in ("adapter", "model") if (Path(target.path) / d).is_dir()), None)
    elif Path(target.path).is_dir():
        weights = Path(target.path)
    if target.is_run and weights is not None and read_head_cards(weights)[1]:
        from dstune.models.predict import load_predictor

        predictor = load_predictor(target.path)
        spec = next(s for s in predictor.specs if target.task_name in (None, s.name))
        kind = "token-classification" if spec.space.kind == "token" else "sequence-classification"
        return predictor.model, predictor.tokenizer, kind, weights
    deployable = load_deployable(target.path)
    return deployable.model, deployable.tokenizer, deployable.task, weights


def read_eval_records(target: Target, data: str | None, split: str | None) -> tuple[list[Record], str]:
    """The rows to evaluate and a description of where they came from (``--data`` wins over the split)."""
    if data:
        records, origin = read_records(data, encoding=target.encoding), data
    elif target.config is None:
        raise DataError(f"{target.path} is not a dstune run directory, so there is no split to evaluate",
                        hint="pass the examples with --data FILE")
    else:
        records, origin = _split_records(target, split or target.settings.split)
    limit = target.settings.max_examples
    return records[:limit] if limit else records, origin


def _split_records(target: Target, split: str) -> tuple[list[Record], str]:
    from dstune.data.sft import split_eval

    config = target.config
    data = config.data
    if config.multitask is not None:  # the evaluated task's own files
        task = config.multitask.tasks[target.task_name]
        data = data.model_copy(update={"train": task.train, "validation": task.validation, "test": None,
                                       "max_samples": task.max_samples})
    if split == "train":
        return read_records(data.train, encoding=data.encoding), data.train
    if split == "validation":
        if data.validation:
            return read_records(data.validation, encoding=data.encoding), data.validation
        if data.eval_split > 0:
            train = read_records(data.train, encoding=data.encoding)[: data.max_samples]
            held = split_eval(train, data.eval_split, config.training.seed)[1]
            return held, f"{data.train} (the {data.eval_split:g} held out for validation)"
        raise DataError("the run had no validation data", where="data.validation", hint="pass --data FILE")
    if data.test:
        return read_records(data.test, encoding=data.encoding), data.test
    prepared = _prepared_split(config, "test")
    if prepared is not None:
        return read_records(str(prepared), encoding=data.encoding), str(prepared)
    raise DataError(
        "the run has no test data (data.test is unset and `dstune data prepare` wrote no test split)",
        where="data.test",
        hint="pass --data FILE, or --split validation to evaluate on the validation rows",
    )


def _prepared_split(config: RunConfig, role: str) -> Path | None:
    if config.cleaning is None or config.multitask is not None:
        return None
    found = sorted(Path(config.cleaning.output_dir).glob(f"{role}.*"))
    return next((p for p in found if p.suffix in (".jsonl", ".json", ".csv", ".tsv", ".parquet")), None)


def check_task(kind: str, target: Target) -> None:
    """A run's task type and the loaded model must agree (a classifier cannot be scored as a chat model)."""
    expected = {"sft": "causal-lm", "classification": "sequence-classification",
                "token_classification": "token-classification"}.get(target.task.type)
    if target.is_run and expected and expected != kind:
        raise ConfigError(f"the run's task.type is {target.task.type!r} but its weights load as {kind}",
                          where=f"{target.path}/config.yaml")
