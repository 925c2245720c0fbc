"""Evaluation of labelled tasks during and after training.

During training the Trainer calls :meth:`LabelledEvaluation.preprocess` on each batch (scores are
reduced to probabilities or tag ids, so that evaluation does not keep whole logits) and
:meth:`LabelledEvaluation.compute_metrics` at each evaluation; the metrics go to history.jsonl and
MLflow as ``eval_accuracy``, ``eval_macro_f1``, ... (multi-task: ``eval_<task>_<metric>`` and
``eval_combined_score``), and ``training.metric_for_best`` may name any of them.

After training, :meth:`final_metrics` predicts the validation set once more with the kept model,
tunes multi-label thresholds there (when configured; the tuned thresholds are saved with the
heads, and the metrics at them are optimistic, being measured on the same set), draws
``plots/confusion_matrix.png`` (``confusion_matrix_<task>.png`` per task in multi-task runs) and
returns the metrics for metrics.json, with their values before training from history.jsonl.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import numpy as np
import torch

from dstune.data.label_space import LabelSpace
from dstune.errors import ConfigError
from dstune.evaluate.metrics import PRIMARY_METRIC, confusion, task_metrics, tune_thresholds
from dstune.evaluate.plots import plot_confusion
from dstune.models.heads import HeadSpec, write_head_cards
from dstune.train.history import read_history
from dstune.train.rundir import RunDir
from dstune.train.trainer import RunCallback


class LabelledEvaluation(RunCallback):
    """Metrics, final evaluation, plots and head cards of one or more labelled tasks."""

    def __init__(self, specs: list[HeadSpec], packed: bool, run: RunDir, eval_dataset, tune: dict[str, bool],
                 implementation: str) -> None:
        self.specs = specs
        self.packed = packed
        self.run = run
        self.eval_dataset = eval_dataset
        self.tune = tune
        self.implementation = implementation
        self._plots: list[Path] = []

    # --- during training -----------------------------------------------------------------------

    def preprocess(self, logits, labels: torch.Tensor) -> torch.Tensor:
        """Probabilities (classification) or tag ids (token tasks); packed rows keep the task in column 0."""
        if not self.packed:
            logits = logits[0] if isinstance(logits, tuple | list) else logits
            return _scores(self.specs[0].space.kind, logits)
        tasks = labels[:, 0]
        scores = {i: _scores(spec.space.kind, logits[spec.name][tasks == i])
                  for i, spec in enumerate(self.specs) if (tasks == i).any()}
        width = max((s.shape[1] for s in scores.values()), default=1)
        out = torch.full((len(tasks), 1 + width), -100.0, device=tasks.device)
        out[:, 0] = tasks.to(out.dtype)
        for index, value in scores.items():
            out[tasks == index, 1 : 1 + value.shape[1]] = value.to(out.dtype)
        return out

    def compute_metrics(self, eval_pred) -> dict[str, float]:
        out, primary = {}, {}
        for spec, predictions, labels in self._per_task(eval_pred.predictions, eval_pred.label_ids):
            metrics = task_metrics(spec.space, predictions, labels)
            out.update(metrics if len(self.specs) == 1 else {f"{spec.name}_{k}": v for k, v in metrics.items()})
            primary[spec.name] = (metrics[PRIMARY_METRIC[spec.space.kind]], spec.weight)
        if len(self.specs) > 1 and primary:
            total = sum(weight for _, weight in primary.values())
            out["combined_score"] = sum(value * weight for value, weight in primary.values()) / total
        return out

    def _per_task(self, predictions: np.ndarray, labels: np.ndarray):
        """(spec, predictions, labels) of each task present, unpacked to the task's own shapes."""
        if not self.packed:
            yield self.specs[0], predictions, labels
            return
        tasks = np.asarray(labels)[:, 0]
        for index, spec in enumerate(self.specs):
            rows = tasks == index
            if not rows.any():
                continue
            p, y, size = predictions[rows, 1:], labels[rows, 1:], len(spec.space)
            if spec.space.kind == "single":
                yield spec, p[:, :size], y[:, 0]
            elif spec.space.kind == "multi":
                yield spec, p[:, :size], y[:, :size]
            else:
                yield spec, p, y

    # --- after training ------------------------------------------------------------------------

    def final_metrics(self) -> dict:
        """Validation metrics of the kept model (thresholds tuned first), before/after, confusion matrices."""
        if self.eval_dataset is None or self.trainer is None:
            return {}
        output = self.trainer.predict(self.eval_dataset, metric_key_prefix="final")
        out: dict = {}
        primary = []
        for spec, predictions, labels in self._per_task(output.predictions, output.label_ids):
            prefix = "eval_" if len(self.specs) == 1 else f"eval_{spec.name}_"
            if spec.space.kind == "multi" and self.tune.get(spec.name):
                spec.space.thresholds = tune_thresholds(predictions, labels, spec.space.thresholds)
                out[f"{prefix}thresholds"] = dict(zip(spec.space.names, spec.space.thresholds))
            metrics = task_metrics(spec.space, predictions, labels)
            out.update({f"{prefix}{key}_after": value for key, value in metrics.items()})
            primary.append((metrics[PRIMARY_METRIC[spec.space.kind]], spec.weight))
            matrix, rows, columns = confusion(spec.space, predictions, labels)
            out[f"{prefix}confusion_matrix"] = {"labels": rows, "columns": columns, "matrix": matrix.tolist()}
            if self.trainer.is_world_process_zero():
                self._plot(spec, matrix, rows, columns)
        if len(self.specs) > 1 and primary:
            out["eval_combined_score_after"] = sum(v * w for v, w in primary) / sum(w for _, w in primary)
        out.update(self._before(out))
        return out

    def _plot(self, spec: HeadSpec, matrix: np.ndarray, rows: list[str], columns: list[str]) -> None:
        name = "confusion_matrix.png" if len(self.specs) == 1 else f"confusion_matrix_{spec.name}.png"
        title = f"{spec.name}: confusion matrix (validation)"
        xlabel = "outcome" if spec.space.kind == "multi" else "predicted"
        self._plots.append(plot_confusion(matrix, rows, columns, title, self.run.plots / name, xlabel))

    def _before(self, after: dict) -> dict:
        """``eval_<metric>_before`` from the evaluation logged before training (history.jsonl)."""
        logged = next((row for row in read_history(self.run.history) if "eval_before_loss" in row), {})
        out = {}
        for key in after:
            if key.endswith("_after") and f"eval_before_{key[5:-6]}" in logged:
                out[f"{key[:-6]}_before"] = logged[f"eval_before_{key[5:-6]}"]
        return out

    def plots(self) -> list[Path]:
        return list(self._plots)

    def save_files(self, directory: Path) -> None:
        """transformers' classes keep the head in the weights: write the label spaces beside them."""
        if self.implementation == "transformers":
            write_head_cards(directory, self.specs, "transformers", None)


def check_metric_name(name: str, specs: list[HeadSpec], where: str = "training.metric_for_best") -> None:
    """Fail early when the metric that picks the best checkpoint is not one these tasks report."""
    known = ["eval_loss", *(f"eval_{key}" for key in expected_metrics(specs))]
    if name in known:
        return
    guess = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    raise ConfigError(
        f"{name!r} is not a metric of this task" + (f"; did you mean {guess[0]!r}?" if guess else ""),
        where=where, hint="choose one of: " + ", ".join(known[:20]) + (", ..." if len(known) > 20 else ""),
    )


def expected_metrics(specs: list[HeadSpec]) -> list[str]:
    """The metric names compute_metrics reports for these tasks (found by scoring one perfect example)."""
    names: list[str] = []
    for spec in specs:
        keys = list(task_metrics(spec.space, *_perfect_example(spec.space)))
        names += keys if len(specs) == 1 else [f"{spec.name}_{key}" for key in keys]
    return names + (["combined_score"] if len(specs) > 1 else [])


def _perfect_example(space: LabelSpace) -> tuple[np.ndarray, np.ndarray]:
    size = len(space)
    if space.kind == "token":
        tags = np.arange(size)[None, :]
        return tags, tags
    if space.kind == "multi":
        return np.eye(size), np.eye(size, dtype=np.int64)
    return np.eye(size), np.arange(size)


def _scores(kind: str, logits: torch.Tensor) -> torch.Tensor:
    if kind == "token":
        return logits.argmax(-1).float()
    if kind == "multi":
        return torch.sigmoid(logits.float())
    return torch.softmax(logits.float(), -1)
