"""What can be exported, benchmarked or served: a run directory or a plain model, and its task.

Task kinds: ``causal-lm`` (SFT runs, any HF causal LM, a .gguf file), ``sequence-classification``
and ``token-classification`` (plain Hugging Face ``*ForSequenceClassification`` /
``*ForTokenClassification`` folders, and classification / token-classification runs), and
``multitask`` (runs with one head per task; served only).

Run directories are mapped by their ``task.type`` in :data:`RUN_TASKS`; a new trainable task
registers how its runs load with :func:`register_run_task`. Labelled-task runs load through
:func:`dstune.models.predict.load_predictor`, as ``dstune eval`` loads them: the model is either a
transformers classification class (with its LoRA adapter; exportable, merged or ONNX) or dstune's
own heads (:class:`~dstune.models.headed.HeadedModel`: served and evaluated, not exported, see
:func:`require_transformers_model`). The run's predictor travels with the model, so that
``/v1/classify`` decodes as ``dstune eval`` does (thresholds, hierarchy, word-level tags).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dstune.config.deploy import DeploySection
from dstune.errors import ModelError
from dstune.models.inference import LoadedModel, load_for_inference

TaskKind = Literal["causal-lm", "sequence-classification", "token-classification", "multitask"]
RunLoader = Callable[[Path, Any, "str | None"], LoadedModel]  # (run_dir, RunConfig, dtype) -> LoadedModel


@dataclass(frozen=True)
class RunTask:
    """How runs of one ``task.type`` deploy: their task kind, and a loader (None: the default for the kind)."""

    kind: TaskKind
    loader: RunLoader | None = None


RUN_TASKS: dict[str, RunTask] = {"sft": RunTask("causal-lm")}


def register_run_task(task_type: str, kind: TaskKind, loader: RunLoader | None = None) -> None:
    """Declare that runs with ``task.type == task_type`` deploy as ``kind``, loaded by ``loader``."""
    RUN_TASKS[task_type] = RunTask(kind, loader)


@dataclass
class Deployable:
    """A loaded model ready to export / bench / serve, with what it is and how to deploy it."""

    loaded: LoadedModel
    task: TaskKind
    name: str
    settings: DeploySection

    @property
    def model(self):
        return self.loaded.model

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def is_run(self) -> bool:
        return self.loaded.config is not None

    @property
    def predictor(self):
        """The run's :class:`~dstune.models.predict.Predictor` (labelled-task runs; None otherwise)."""
        return self.loaded.predictor

    @property
    def heads_dir(self) -> Path | None:
        """The run's ``heads/`` folder (label spaces, tuned thresholds), if it has one."""
        from dstune.models.heads import HEADS_DIR

        if self.predictor is None:
            return None
        weights = Path(self.loaded.source) / ("adapter" if self.loaded.kind == "adapter" else "model")
        return weights / HEADS_DIR if (weights / HEADS_DIR).is_dir() else None


def is_run_dir(path: Path) -> bool:
    """A dstune run directory (it has the resolved config.yaml; loading an unfinished one fails clearly)."""
    return (path / "config.yaml").is_file()


def task_of_folder(path: Path) -> TaskKind:
    """The task kind of a Hugging Face model folder, from the architecture named in its config.json."""
    config_file = path / "config.json"
    if not config_file.is_file():
        return "causal-lm"  # a hub id or .gguf file: load_for_inference decides
    architectures = json.loads(config_file.read_text(encoding="utf-8")).get("architectures") or []
    for arch in architectures:
        if arch.endswith("ForSequenceClassification"):
            return "sequence-classification"
        if arch.endswith("ForTokenClassification"):
            return "token-classification"
    return "causal-lm"


def load_deployable(path: str | Path, *, dtype: str | None = None) -> Deployable:
    """Load a run directory or a plain model for deployment (eval mode, the run's own tokenizer and template)."""
    path = Path(path)
    if is_run_dir(path):
        return _load_run(path, dtype)
    task = task_of_folder(path) if path.is_dir() else "causal-lm"
    loaded = _load_classifier(path, task) if task != "causal-lm" else load_for_inference(path, dtype=dtype)
    return Deployable(loaded, task, _name_of(path), DeploySection())


def deploy_settings(path: str | Path) -> DeploySection:
    """The ``deploy`` section of a run's config (defaults for plain models), without loading any weights."""
    path = Path(path)
    if not is_run_dir(path):
        return DeploySection()
    from dstune.models.inference import load_run_config

    return load_run_config(path).deploy or DeploySection()


def require_transformers_model(deployable: Deployable, action: str) -> None:
    """Raise a :class:`ModelError` unless ``deployable`` is a transformers model (a peft adapter allowed).

    Runs with dstune's own heads are an ``AutoModel`` backbone plus ``heads/*.safetensors``: no
    transformers class holds them, so they can be neither saved as a plain Hugging Face model nor
    traced by transformers' ONNX exporter; they are served and evaluated with their predictor.
    """
    predictor = deployable.predictor
    if predictor is None or predictor.implementation == "transformers":
        return
    raise ModelError(
        f"{action} needs a plain transformers model, but this {deployable.task} run uses dstune's own heads "
        f"({_why_dstune_heads(deployable)}): no transformers class holds them, so it can be neither merged into "
        "a Hugging Face model folder, nor exported to ONNX, nor measured by `dstune bench`. It is still served "
        f"by `dstune serve {deployable.loaded.source}` (POST /v1/classify decodes with its heads, as `dstune eval` "
        "does), and its adapter and heads load without dstune (AutoModel + peft adapter + a torch.nn.Linear per "
        "head from heads/<task>.safetensors on the pooled output; see dstune.models.heads)",
        where=str(deployable.loaded.source),
        hint="for an exportable model, train a single classification or token_classification task with "
        "task.pooling: auto (last token on decoders, [CLS] on encoders) on an architecture that has an "
        "AutoModelForSequenceClassification / AutoModelForTokenClassification class (Llama, Qwen2, DeepSeek-V3, "
        "BERT-like encoders); multi-task runs are served, not exported",
    )


def _why_dstune_heads(deployable: Deployable) -> str:
    """Why a run got dstune heads: several tasks, or a head transformers has no class for (see models.task_model)."""
    specs = deployable.predictor.specs
    if len(specs) > 1:
        return f"{len(specs)} task heads on one backbone: {', '.join(s.name for s in specs)}"
    model_type = getattr(deployable.model.config, "model_type", "this architecture")
    if specs[0].space.kind == "token":
        return f"transformers has no token classification class for {model_type}"
    return (f"{specs[0].pooling} pooling on {model_type}: transformers' sequence classification classes pool "
            "the last token on decoders and [CLS] on encoders, where the architecture has one")


def copy_heads(heads: Path | None, target: Path) -> None:
    """Copy a run's ``heads/`` (label spaces, tuned multi-label thresholds, hierarchy; see
    :attr:`Deployable.heads_dir`) beside an artifact: the weights' config names the labels, but only these
    files hold the thresholds the run decides with."""
    import shutil

    if heads is not None:
        shutil.copytree(heads, Path(target) / heads.name, dirs_exist_ok=True)


def _load_labelled_run(path: Path, config, dtype: str | None) -> LoadedModel:
    """A classification / token-classification / multi-task run, loaded as `dstune eval` loads it."""
    from dstune.models.predict import load_predictor

    predictor = load_predictor(path, dtype=dtype)
    kind = "adapter" if (path / "adapter").is_dir() else "model"
    return LoadedModel(predictor.model, predictor.tokenizer, kind, path, config, predictor=predictor)


register_run_task("classification", "sequence-classification", _load_labelled_run)
register_run_task("token_classification", "token-classification", _load_labelled_run)
register_run_task("multitask", "multitask", _load_labelled_run)


def _load_run(path: Path, dtype: str | None) -> Deployable:
    from dstune.models.inference import load_run_config

    config = load_run_config(path)
    settings = config.deploy or DeploySection()
    run_task = RUN_TASKS.get(config.task.type)
    if run_task is None:
        raise ModelError(
            f"runs of task.type {config.task.type!r} cannot be exported or served yet",
            where=f"{path}/config.yaml",
            hint=f"deployable run types: {', '.join(sorted(RUN_TASKS))}",
        )
    if run_task.loader is not None:
        loaded = run_task.loader(path, config, dtype)
    elif run_task.kind == "causal-lm":
        loaded = load_for_inference(path, dtype=dtype)
    else:
        loaded = _load_classifier(path / "model", run_task.kind)
        loaded = LoadedModel(loaded.model, loaded.tokenizer, "model", path, config)
    return Deployable(loaded, run_task.kind, _name_of(path), settings)


def _load_classifier(path: Path, task: TaskKind) -> LoadedModel:
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

    cls = AutoModelForSequenceClassification if task == "sequence-classification" else AutoModelForTokenClassification
    try:
        model = cls.from_pretrained(path).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the {task} model in {path}: {exc}") from None
    return LoadedModel(model, tokenizer, "hf", path)


def _name_of(path: Path) -> str:
    """A short model id for the API and file names: the folder (or file) name."""
    path = Path(path)
    return (path.name or str(path)).removesuffix(".gguf")
