"""Task builder for ``multitask``: one shared backbone (with or without LoRA), one head per task.

Each task reads its own files; every data file is checked before anything heavy starts, and a
problem names its task. Training batches hold one task each (:class:`TaskBatchStream`), drawn with
the configured sampling; evaluation runs over all tasks' validation rows together and reports each
task's metrics plus the combined score. Saving writes the shared adapter (or model) and one file
per head (:mod:`dstune.models.heads`); :func:`dstune.models.predict.load_predictor` loads them all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from dstune.config.schema import RunConfig
from dstune.data.labelled import LabelledData, LabelledSource, prepare_labelled_data
from dstune.data.readers import SUPPORTED_SUFFIXES
from dstune.errors import DataError
from dstune.train.distributed import prepared_once
from dstune.train.labelled import check_metrics, head_spec, labelled_parts, log_data
from dstune.train.rundir import RunDir
from dstune.train.tasks import TaskParts, register_task


@register_task("multitask")
def build_multitask(config: RunConfig, run: RunDir, log: Callable = print) -> TaskParts:
    from datasets import concatenate_datasets

    from dstune.models.load import load_tokenizer, resolve_source
    from dstune.models.task_model import build_task_model
    from dstune.models.tokens import add_terms

    settings = config.multitask
    sources = [LabelledSource(name, task.type, task, task.train, task.validation, task.max_samples)
               for name, task in settings.tasks.items()]
    check_task_files(sources)
    source = resolve_source(config.model)
    tokenizer = load_tokenizer(config.model, source)
    new_tokens = add_terms(tokenizer, config.model.add_tokens)
    datas = [_prepare(task, index, config, tokenizer, run) for index, task in enumerate(sources)]
    for task, data in zip(sources, datas):
        log_data(log, task.name, data, config.data.max_length)
    specs = [head_spec(task.name, task.settings, data, config.training.dropout, settings.tasks[task.name].weight)
             for task, data in zip(sources, datas)]
    built = build_task_model(config, specs, tokenizer, new_tokens, source, settings.loss_weighting, heads="dstune")
    evaluations = [data.eval for data in datas if data.eval is not None]
    check_metrics(config, specs, bool(evaluations))
    sizes = [len(data.train) for data in datas]
    probabilities = task_probabilities(sizes, settings.sampling, settings.temperature)
    log("batches per task: " + ", ".join(f"{t.name} {p:.0%}" for t, p in zip(sources, probabilities)))
    train = TaskBatchStream([data.train for data in datas], config.training.batch_size, probabilities,
                            config.training.seed)
    stats = _stats(sources, datas)
    evaluation = concatenate_datasets(evaluations) if evaluations else None
    return labelled_parts(config, run, tokenizer, built, specs, train, evaluation, stats)


def check_task_files(sources: list[LabelledSource]) -> None:
    """Fail before any loading when a task's data file is missing, naming the task and its key."""
    for task in sources:
        for key, spec in (("train", task.train), ("validation", task.validation)):
            if spec and Path(spec).suffix.lower() in SUPPORTED_SUFFIXES and not Path(spec).expanduser().is_file():
                raise DataError(
                    f"task {task.name!r}: data file not found: {spec}", where=f"multitask.tasks.{task.name}.{key}",
                    hint="check the path (relative paths are relative to the folder you run dstune from)",
                )


def task_probabilities(sizes: list[int], sampling: str, temperature: float) -> np.ndarray:
    """p(task) for each batch: ∝ rows (proportional), equal, or ∝ rows^(1/temperature)."""
    counts = np.asarray(sizes, dtype=np.float64)
    weights = {"equal": np.ones_like(counts), "temperature": counts ** (1.0 / temperature)}.get(sampling, counts)
    return weights / weights.sum()


class TaskBatchStream(torch.utils.data.IterableDataset):
    """Training rows in blocks of ``batch_size`` rows of one task; each block's task is drawn with ``probabilities``.

    An epoch has as many rows as all tasks together. The order depends only on (seed, epoch), so a
    resumed run sees the same batches; each task's rows are reshuffled whenever they run out.
    """

    def __init__(self, datasets: list, batch_size: int, probabilities: np.ndarray, seed: int) -> None:
        self.datasets = datasets
        self.batch_size = batch_size
        self.probabilities = np.asarray(probabilities)
        self.seed = seed
        self.epoch = 0
        self.blocks = math.ceil(sum(len(d) for d in datasets) / batch_size)

    def __len__(self) -> int:
        return self.blocks * self.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict]:
        rng = np.random.default_rng([self.seed, self.epoch])
        orders = [rng.permutation(len(d)) for d in self.datasets]
        positions = [0] * len(self.datasets)
        for _ in range(self.blocks):
            task = int(rng.choice(len(self.datasets), p=self.probabilities))
            for _ in range(self.batch_size):
                if positions[task] == len(orders[task]):
                    orders[task], positions[task] = rng.permutation(len(orders[task])), 0
                yield self.datasets[task][int(orders[task][positions[task]])]
                positions[task] += 1

    def select(self, indices):
        """Rows from all tasks, shuffled by the seed (the recipe's fixed training sample)."""
        from datasets import concatenate_datasets

        pool = concatenate_datasets(self.datasets).shuffle(seed=self.seed)
        return pool.select([i for i in indices if i < len(pool)])  # len(self) is rounded up to whole batches


def _prepare(task: LabelledSource, index: int, config: RunConfig, tokenizer, run: RunDir) -> LabelledData:
    try:
        return prepared_once(run.prep / task.name, lambda: prepare_labelled_data(
            task, config.data, tokenizer, rejected_dir(run, task.name), config.training.seed, task_index=index,
            cleaning=config.cleaning), LabelledData)
    except DataError as exc:
        raise DataError(f"task {task.name!r}: {exc.message}", where=exc.where or f"multitask.tasks.{task.name}",
                        hint=exc.hint) from None


def rejected_dir(run: RunDir, task: str) -> Path:
    """Where a task's skipped rows go (``<dir>/rejected.jsonl``): one file per task, so none overwrites another."""
    return run.root / "rejected" / task


def _stats(sources: list[LabelledSource], datas: list[LabelledData]) -> dict:
    keys = ["rows_read", "rows_rejected", "rows_train", "rows_eval", "truncated", "tokens_train"]
    keys += [key for key in ("rows_cleaned", "rows_rejected_cleaning") if key in datas[0].stats]
    totals = {key: sum(d.stats[key] for d in datas) for key in keys}
    return {**totals, "tasks": {task.name: data.stats for task, data in zip(sources, datas)}}
