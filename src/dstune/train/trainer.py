"""The Trainer dstune trains with: Hugging Face's, plus loss hooks (EWC, distillation, ...)."""

from __future__ import annotations

from typing import Protocol

import torch
from transformers import Trainer


class LossHook(Protocol):
    """Adds a term to the training loss. Returns the new loss and named scalars to log."""

    def __call__(self, model, inputs: dict, outputs, loss: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]: ...


class DstuneTrainer(Trainer):
    """transformers.Trainer whose training loss passes through ``loss_hooks`` (none: identical to Trainer)."""

    def __init__(self, *args, loss_hooks: list[LossHook] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_hooks = list(loss_hooks or [])
        self._hook_logs: dict[str, list[float]] = {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self.loss_hooks or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        for hook in self.loss_hooks:
            loss, logs = hook(model, inputs, outputs, loss)
            for key, value in logs.items():
                self._hook_logs.setdefault(key, []).append(float(value))
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """Add the mean of each hook scalar since the last log to the training logs."""
        if "loss" in logs and self._hook_logs:
            logs.update({key: sum(values) / len(values) for key, values in self._hook_logs.items()})
            self._hook_logs.clear()
        super().log(logs, *args, **kwargs)
