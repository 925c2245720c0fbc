"""The Trainer dstune trains with: Hugging Face's, plus loss hooks (EWC, distillation, ...)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """LengthGroupedSampler whose order depends only on (seed, epoch).

    transformers' version draws from the global RNG, which a resumed run restores to the state of
    the checkpoint, not of the epoch start, so the resumed epoch would see a different order.
    """

    def __init__(self, *args, seed: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


class LossHook(Protocol):
    """Adds a term to the training loss. Returns the new loss and named scalars to log."""

    def __call__(self, model, inputs: dict, outputs, loss: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]: ...


class RunCallback(TrainerCallback):
    """A callback that works through the trainer (evaluates extra sets, logs) and adds to the run's results.

    :class:`DstuneTrainer` sets ``trainer`` when it is built; the recipe merges :meth:`final_metrics`
    into metrics.json and lists :meth:`plots` in the summary.
    """

    trainer: Trainer | None = None

    def final_metrics(self) -> dict[str, float]:
        return {}

    def plots(self) -> list[Path]:
        return []

    def save_files(self, directory: Path) -> None:
        """Write files that belong beside the final weights (called with the weights directory, main process)."""


class DstuneTrainer(Trainer):
    """transformers.Trainer whose training loss passes through ``loss_hooks`` (none: identical to Trainer)."""

    def __init__(self, *args, loss_hooks: list[LossHook] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_hooks = list(loss_hooks or [])
        self._hook_logs: dict[str, list[float]] = {}
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, RunCallback):
                callback.trainer = self

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler) is LengthGroupedSampler:
            sampler = EpochSeededLengthGroupedSampler(
                sampler.batch_size, lengths=sampler.lengths, seed=self.args.data_seed or self.args.seed
            )
        return sampler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self.loss_hooks or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        # Hooks see a per-batch mean loss. When the loss is already divided over the gradient-accumulation
        # window (normalised by num_items_in_batch), undo that around them, so that an added term counts once
        # per optimiser step, as the task loss does.
        scale = self.current_gradient_accumulation_steps if self._loss_scaled_for_ga(num_items_in_batch) else 1
        loss = loss * scale
        for hook in self.loss_hooks:
            loss, logs = hook(model, inputs, outputs, loss)
            for key, value in logs.items():
                self._hook_logs.setdefault(key, []).append(float(value))
        loss = loss / scale
        return (loss, outputs) if return_outputs else loss

    def _loss_scaled_for_ga(self, num_items_in_batch) -> bool:
        """Whether Trainer.training_step will take the loss as already scaled for gradient accumulation."""
        if self.loss_is_scaled_for_ga is not None:
            return self.loss_is_scaled_for_ga
        return (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """Add the mean of each hook scalar since the last log to the training logs."""
        if "loss" in logs and self._hook_logs:
            logs.update({key: sum(values) / len(values) for key, values in self._hook_logs.items()})
            self._hook_logs.clear()
        super().log(logs, *args, **kwargs)

    # -- models that save and load themselves (``save_pretrained`` + ``load_trained``): dstune's multi-head
    # models write the backbone as peft/transformers do plus one file per head, not one state dict.

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        if not hasattr(self.model, "load_trained"):
            return super()._save(output_dir, state_dict)
        output_dir = output_dir or self.args.output_dir
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            self.model.save_pretrained(output_dir)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)
            torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        target = self.model if model is None else model
        if hasattr(target, "load_trained"):
            target.load_trained(resume_from_checkpoint)
        else:
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        if hasattr(self.model, "load_trained"):
            self.model.load_trained(self.state.best_model_checkpoint)
        else:
            super()._load_best_model()
