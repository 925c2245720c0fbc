"""Task builders for ``classification`` and ``token_classification`` on the one training path.

setup: tokenizer (+ domain tokens) → labelled data → head spec → model (transformers' class or dstune
heads, see :mod:`dstune.models.task_model`) → collator, metrics, final evaluation.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from dstune.config.schema import RunConfig
from dstune.config.task import LabelledTaskFields
from dstune.data.label_space import LabelSpace
from dstune.data.labelled import LabelledCollator, LabelledData, LabelledSource, prepare_labelled_data
from dstune.errors import ConfigError
from dstune.models.heads import HeadSpec, SpecLoss
from dstune.train.distributed import prepared_once
from dstune.train.label_metrics import LabelledEvaluation, check_metric_name
from dstune.train.rundir import RunDir
from dstune.train.tasks import TaskParts, cleaning_note, register_task

DEFAULT_HEAD_DROPOUT = 0.1


@register_task("classification")
@register_task("token_classification")
def build_labelled(config: RunConfig, run: RunDir, log: Callable = print) -> TaskParts:
    """One labelled task: text → label(s), or words → BIO tags."""
    from dstune.models.load import load_tokenizer, resolve_source
    from dstune.models.task_model import build_task_model
    from dstune.models.tokens import add_terms

    source = resolve_source(config.model)
    tokenizer = load_tokenizer(config.model, source)
    new_tokens = add_terms(tokenizer, config.model.add_tokens)
    task = LabelledSource(config.task.type, config.task.type, config.task, config.data.train, config.data.validation,
                          config.data.max_samples)
    data = prepared_once(run.prep, lambda: prepare_labelled_data(task, config.data, tokenizer, run.root,
                                                                 seed=config.training.seed, cleaning=config.cleaning),
                         LabelledData)
    log_data(log, task.name, data, config.data.max_length)
    spec = head_spec(task.name, config.task, data, config.training.dropout)
    built = build_task_model(config, [spec], tokenizer, new_tokens, source)
    check_metrics(config, [spec], data.eval is not None)
    return labelled_parts(config, run, tokenizer, built, [spec], data.train, data.eval, data.stats)


def labelled_parts(config: RunConfig, run: RunDir, tokenizer, built, specs: list[HeadSpec], train, evaluation,
                   stats: dict) -> TaskParts:
    """The collator, metrics and final evaluation of built head model(s), as TaskParts."""
    tokenizer.padding_side = "right"
    packed = built.implementation == "dstune"
    collator = LabelledCollator(tokenizer, [spec.space.kind for spec in specs], packed=packed)
    tune = {spec.name: settings.tune_thresholds for spec, settings in zip(specs, _settings(config, specs))}
    evaluation_cb = LabelledEvaluation(specs, packed, run, evaluation, tune, built.implementation)
    hooks = []
    if not packed and (specs[0].class_weights is not None or specs[0].focal_gamma):
        hooks.append(SpecLoss(specs[0]))
    return TaskParts(
        tokenizer, built.model, train, evaluation, collator, stats, built.report,
        compute_metrics=evaluation_cb.compute_metrics, preprocess_logits_for_metrics=evaluation_cb.preprocess,
        loss_hooks=hooks, callbacks=[evaluation_cb],
    )


def head_spec(name: str, settings: LabelledTaskFields, data: LabelledData, dropout: float | None,
              weight: float = 1.0) -> HeadSpec:
    """A task's head: label space from the data, pooling from the settings ("auto" is resolved by the model)."""
    return HeadSpec(
        name=name,
        space=data.space,
        pooling=settings.pooling,
        dropout=DEFAULT_HEAD_DROPOUT if dropout is None else dropout,
        class_weights=class_weights(settings, data.space, data.train["labels"], name),
        focal_gamma=settings.focal_gamma,
        weight=weight,
    )


def class_weights(settings: LabelledTaskFields, space: LabelSpace, labels: list[list[int]], task: str) -> list[float] | None:
    """Per-class loss weights: from the config, or balanced from the training label counts."""
    choice = settings.class_weights
    if choice == "none":
        return None
    if isinstance(choice, dict):
        unknown = sorted(set(choice) - set(space.names))
        if unknown:
            raise ConfigError(f"class_weights names labels that task {task!r} does not have: {unknown}",
                              where="task.class_weights", hint=f"labels: {', '.join(space.names)}")
        return [float(choice.get(name, 1.0)) for name in space.names]
    if space.kind == "multi":
        positives = [sum(row[i] for row in labels) for i in range(len(space))]
        return [(len(labels) - p) / p if p else 1.0 for p in positives]
    counts = Counter(label for row in labels for label in (row if space.kind == "token" else row[:1]) if label >= 0)
    total = sum(counts.values())
    return [total / (len(space) * counts[i]) if counts[i] else 1.0 for i in range(len(space))]


def check_metrics(config: RunConfig, specs: list[HeadSpec], has_eval: bool) -> None:
    if has_eval and config.training.eval_strategy != "no":
        check_metric_name(config.training.metric_for_best, specs)


def log_data(log: Callable, name: str, data: LabelledData, max_length: int) -> None:
    s = data.stats
    log(f"data ({name}): {s['rows_train']} train / {s['rows_eval']} eval rows, {len(data.space)} labels "
        f"({s['rows_rejected']} rejected, {s['truncated']} truncated to {max_length} tokens)" + cleaning_note(s))


def _settings(config: RunConfig, specs: list[HeadSpec]) -> list[LabelledTaskFields]:
    if config.multitask is None:
        return [config.task]
    return [config.multitask.tasks[spec.name] for spec in specs]
