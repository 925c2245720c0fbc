"""Continual learning on the one training path: EWC and distillation as loss hooks, replay as extra
training rows, forgetting as a callback. :func:`continual_parts` adds them to a task's parts.

Modules: ``data`` (sets encoded like the task's data, replay mixing, supervised positions), ``ewc``,
``distill``, ``forgetting``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dstune.config.schema import RunConfig
    from dstune.train.rundir import RunDir
    from dstune.train.tasks import TaskParts

FOLDER = "continual"  # inside the run directory: Fisher, anchor, retain baseline, rejected rows


def continual_parts(config: RunConfig, parts: TaskParts, run: RunDir, log: Callable = print) -> TaskParts:
    """``parts`` with what ``config.continual`` asks for: replay rows, EWC / distillation loss hooks and the
    retain-set evaluation. Unchanged when the section is absent."""
    settings = config.continual
    if settings is None:
        return parts
    from dstune.train.continual.data import SHIFTED_TASKS, load_set, mix_replay

    folder = run.root / FOLDER
    shift = config.task.type in SHIFTED_TASKS
    train, stats = parts.train, dict(parts.data_stats)
    if settings.replay:
        replay = load_set(config, settings.replay.files, parts.tokenizer, folder / "replay", key="continual.replay.data")
        train = mix_replay(parts.train, replay, settings.replay.ratio, config.training.seed)
        stats["rows_replay"] = len(train) - len(parts.train)
        log(f"replay: {stats['rows_replay']} rows of {len(replay)} mixed into {len(parts.train)} training rows")
    hooks = []
    if settings.distill:
        hooks.append(_distill_hook(config, parts, shift, log))
    if settings.ewc:
        hooks.append(_ewc_hook(config, parts, run, shift, log))
    callbacks = list(parts.callbacks)
    if settings.retain_eval:
        callbacks.append(_retain_callback(config, parts, run))
    if hooks:
        hooks.insert(0, _log_task_loss)
    return dataclasses.replace(
        parts, train=train, data_stats=stats, loss_hooks=[*parts.loss_hooks, *hooks], callbacks=callbacks
    )


def _log_task_loss(model, inputs, outputs, loss):
    """First hook: log the task's own loss, before distillation and EWC change it."""
    return loss, {"task_loss": float(loss.detach())}


_log_task_loss.needs_logits = False


def _distill_hook(config: RunConfig, parts: TaskParts, shift: bool, log: Callable):
    from dstune.train.continual.distill import DistillationHook, build_teacher

    settings = config.continual.distill
    teacher = build_teacher(config, parts.model, parts.tokenizer, log)
    vocab_size = len(parts.tokenizer) if config.task.type == "sft" else None  # logits may be padded beyond it
    independent = config.task.type == "classification" and config.task.multi_label  # sigmoid per label
    return DistillationHook(teacher, settings, shift=shift, cache=settings.cache_teacher, vocab_size=vocab_size,
                            independent=independent)


def _ewc_hook(config: RunConfig, parts: TaskParts, run: RunDir, shift: bool, log: Callable):
    from dstune.train.continual.data import load_set, model_device, single_examples
    from dstune.train.continual.ewc import prepare_ewc

    settings = config.continual.ewc
    batches = None
    if settings.fisher_files:
        data = load_set(config, settings.fisher_files, parts.tokenizer, run.root / FOLDER / "fisher",
                        key="continual.ewc.fisher_data", max_samples=settings.fisher_samples)
        batches = functools.partial(single_examples, data, parts.collator, model_device(parts.model))
    resume = run.last_checkpoint() is not None  # a fresh run refuses a directory with checkpoints
    return prepare_ewc(settings, parts.model, batches, run.root / FOLDER, resume=resume, shift=shift,
                       seed=config.training.seed, log=log)


def _retain_callback(config: RunConfig, parts: TaskParts, run: RunDir):
    from dstune.train.continual.data import load_set
    from dstune.train.continual.forgetting import RetainEvalCallback

    settings = config.continual
    sets = {
        name: load_set(config, [path], parts.tokenizer, run.root / FOLDER / f"retain_{name}",
                       key=f"continual.retain_eval.{name}", max_samples=settings.retain_max_samples)
        for name, path in settings.retain_eval.items()
    }
    return RetainEvalCallback(sets, run.root / FOLDER / "retain_baseline.json", run.history,
                              run.plots / "forgetting.png")
