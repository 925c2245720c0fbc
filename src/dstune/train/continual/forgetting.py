"""Forgetting, measured: the loss on earlier-task or general sets before, during and after training.

:class:`RetainEvalCallback` evaluates every ``continual.retain_eval`` set when training starts, after
each evaluation of the new task's validation set, and at the end (on the final model, the best
checkpoint when one is kept). Each time it logs ``retain_<name>_loss`` and ``forgetting_<name>``
(the loss now minus the loss before training: above zero means forgotten) through the Trainer, so
they land in history.jsonl, MLflow, TensorBoard and W&B beside ``eval_loss``. At the end it draws
plots/forgetting.png and hands the before/after values and the forgetting to metrics.json.

The main evaluation is left alone: ``eval_loss`` stays the metric for early stopping and the best
checkpoint, and these measurements never take part in that decision.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from dstune.train.history import read_history
from dstune.train.rundir import write_json_atomic
from dstune.train.trainer import RunCallback

if TYPE_CHECKING:
    import datasets


class RetainEvalCallback(RunCallback):
    """Evaluate the retain sets at the start, at every evaluation and at the end; log the forgetting."""

    def __init__(self, sets: dict[str, datasets.Dataset], baseline: Path, history: Path, plot: Path) -> None:
        self.sets = sets
        self.baseline_path = baseline  # losses before training, kept for a resumed run
        self.history_path = history
        self.plot_path = plot
        self.before: dict[str, float] = {}
        self.after: dict[str, float] = {}
        self._training = False
        self._plotted: Path | None = None

    # -- Trainer events

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step > 0 and self.baseline_path.is_file():
            self.before = json.loads(self.baseline_path.read_text(encoding="utf-8"))
        else:
            self.before = self.evaluate()
            if state.is_world_process_zero:
                self.baseline_path.parent.mkdir(parents=True, exist_ok=True)
                write_json_atomic(self.baseline_path, self.before)
            self._log(self.before)
        self._training = True

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self._training:  # the recipe's own measurements before and after training are not steps
            self._log(self.evaluate())

    def on_train_end(self, args, state, control, **kwargs):
        self._training = False
        self.after = self.evaluate()
        self._log(self.after)
        if state.is_world_process_zero:
            self._plotted = plot_forgetting(read_history(self.history_path), self.plot_path)

    # -- results for the recipe

    def final_metrics(self) -> dict[str, float]:
        out = {}
        for name, after in self.after.items():
            before = self.before.get(name)
            out[f"retain_{name}_loss_before"] = before
            out[f"retain_{name}_loss_after"] = after
            out[f"forgetting_{name}"] = None if before is None else after - before
        return out

    def plots(self) -> list[Path]:
        return [self._plotted] if self._plotted else []

    # -- helpers

    def evaluate(self) -> dict[str, float]:
        """Mean loss on each retain set, computed as the Trainer computes eval_loss (no logging, no callbacks)."""
        return {name: mean_eval_loss(self.trainer, dataset) for name, dataset in self.sets.items()}

    def _log(self, losses: dict[str, float]) -> None:
        logs = {}
        for name, loss in losses.items():
            logs[f"retain_{name}_loss"] = loss
            if name in self.before:
                logs[f"forgetting_{name}"] = loss - self.before[name]
        self.trainer.log(logs)


def mean_eval_loss(trainer, dataset: datasets.Dataset) -> float:
    """The loss over ``dataset`` as ``Trainer.evaluate`` reports it (mean of the batch losses weighted by batch
    size, gathered over processes), without its logging and callbacks (those would count it as an evaluation)."""
    import torch
    from transformers.trainer_pt_utils import find_batch_size

    model = trainer.model
    was_training = model.training
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64), 0
    for inputs in trainer.get_eval_dataloader(dataset):
        loss, _, _ = trainer.prediction_step(model, inputs, prediction_loss_only=True)
        losses = trainer.accelerator.gather_for_metrics(loss.detach().reshape(1).repeat(find_batch_size(inputs)))
        total += losses.double().sum().cpu()
        count += losses.numel()
    model.train(was_training)
    return float(total / max(count, 1))


def plot_forgetting(history: list[dict], out: Path) -> Path | None:
    """plots/forgetting.png: the new task's eval loss (left) beside each retain set's forgetting (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({key[len("forgetting_"):] for row in history for key in row if key.startswith("forgetting_")})
    if not names:
        return None
    evals = sorted([(r["step"], r["eval_loss"]) for r in history if "eval_loss" in r]
                   + [(0, r["eval_before_loss"]) for r in history if "eval_before_loss" in r])
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    if evals:
        left.plot(*zip(*evals), marker="o", color="tab:orange", label="new task: eval loss")
    left.set_title("new task")
    left.set_xlabel("optimiser step")
    left.set_ylabel("loss")
    for name in names:
        points = [(r["step"], r[f"forgetting_{name}"]) for r in history if f"forgetting_{name}" in r]
        right.plot(*zip(*points), marker="o", label=name)
    right.axhline(0.0, color="grey", linewidth=0.8)
    right.set_title("forgetting: retain loss minus its value before training")
    right.set_xlabel("optimiser step")
    right.set_ylabel("loss increase")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
