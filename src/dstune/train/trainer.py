"""The Trainer dstune trains with: Hugging Face's, plus loss hooks (EWC, distillation, ...)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Protocol

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

from dstune.train.lm_loss import selective_lm_loss, supervised_mask, supports_selective_logits
from dstune.train.rundir import PARTIAL_CHECKPOINT_PREFIX


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
    """Adds a term to the training loss. Returns the new loss and named scalars to log.

    A hook that does not read ``outputs.logits`` says so with ``needs_logits = False``; a causal LM then
    keeps computing logits at the supervised positions only (a hook without the attribute gets full logits).
    """

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

    def __init__(self, *args, loss_hooks: list[LossHook] | None = None, causal_lm: bool = False,
                 eval_data_collator=None, **kwargs):
        """``causal_lm``: forward without a KV cache (packed examples stay isolated) and take the loss at the
        supervised positions only (:mod:`dstune.train.lm_loss`); ``eval_data_collator``: batches for
        evaluation when they differ from training's (packed training, padded evaluation)."""
        super().__init__(*args, **kwargs)
        self.loss_hooks = list(loss_hooks or [])
        self.causal_lm = causal_lm
        self.eval_data_collator = eval_data_collator
        # Liger's fused linear cross-entropy never materialises logits, and its forward reads logits_to_keep
        # as a slice: it keeps the standard path
        self._selective_logits = causal_lm and not self.args.use_liger_kernel and supports_selective_logits(self.model)
        self._hook_logs: dict[str, list[float]] = {}
        self._token_loss: list[torch.Tensor] | None = None  # per-example (loss sum, tokens) while evaluating
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, RunCallback):
                callback.trainer = self

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler) is LengthGroupedSampler:
            # groups of the global batch (per device x accumulation x processes): the same examples make up
            # each optimiser step whatever the number of processes
            sampler = EpochSeededLengthGroupedSampler(
                sampler.batch_size * self.args.world_size, lengths=sampler.lengths,
                seed=self.args.data_seed or self.args.seed,
            )
        return sampler

    def _get_dataloader(self, dataset, description, *args, **kwargs):
        if description == "Training" or self.eval_data_collator is None:
            return super()._get_dataloader(dataset, description, *args, **kwargs)
        train_collator, self.data_collator = self.data_collator, self.eval_data_collator
        try:
            return super()._get_dataloader(dataset, description, *args, **kwargs)
        finally:
            self.data_collator = train_collator

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        hooks = self.loss_hooks if model.training else []
        if self.causal_lm:
            inputs = {**inputs, "use_cache": False}
            if self._use_selective_logits(hooks, return_outputs, inputs):
                loss, outputs = self._selective_loss(model, inputs, num_items_in_batch)
                return self._with_hooks(model, inputs, outputs, loss, hooks, return_outputs, num_items_in_batch)
        if not hooks:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        return self._with_hooks(model, inputs, outputs, loss, hooks, return_outputs, num_items_in_batch)

    def _use_selective_logits(self, hooks: list[LossHook], return_outputs: bool, inputs: dict) -> bool:
        """Logits at the supervised positions only: when nothing downstream needs the full logits."""
        return (
            self._selective_logits
            and "labels" in inputs
            and self.label_smoother is None
            and self.compute_loss_func is None
            and (not return_outputs or self.args.prediction_loss_only)
            and not any(getattr(hook, "needs_logits", True) for hook in hooks)
        )

    def _selective_loss(self, model, inputs: dict, num_items_in_batch):
        """Trainer.compute_loss's normalisation, with the loss from :func:`selective_lm_loss`."""
        if not self.model_accepts_loss_kwargs:
            num_items_in_batch = None
        loss, outputs = selective_lm_loss(model, inputs, num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size() if self.args.n_gpu <= 1
                           else self.args.n_gpu)
        return loss, outputs

    def _with_hooks(self, model, inputs, outputs, loss, hooks, return_outputs, num_items_in_batch):
        if not hooks:
            return (loss, outputs) if return_outputs else loss
        # Hooks see a per-batch mean loss. When the loss is already divided over the gradient-accumulation
        # window (normalised by num_items_in_batch), undo that around them, so that an added term counts once
        # per optimiser step, as the task loss does.
        scale = self.current_gradient_accumulation_steps if self._loss_scaled_for_ga(num_items_in_batch) else 1
        loss = loss * scale
        for hook in hooks:
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

    # -- evaluation loss per token: the Trainer averages per-batch mean losses, so its eval_loss would depend on
    # how the examples are batched (length grouping, batch size, number of processes). For causal LMs dstune
    # sums each example's token losses and tokens (gathered across processes without the padding duplicates)
    # and reports the mean token cross-entropy of the whole set. Models without selective logits keep the
    # Trainer's average.

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if self._token_loss is None or not prediction_loss_only or "labels" not in inputs:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        inputs = self._prepare_inputs(inputs)
        labels = inputs["labels"]
        keep = supervised_mask(labels)
        forward = {key: value for key, value in inputs.items() if key != "labels"}
        with torch.no_grad(), self.compute_loss_context_manager():
            logits = model(**forward, use_cache=False, logits_to_keep=keep).logits
        token_loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(), labels[:, 1:][keep[:, :-1]].to(logits.device), reduction="none"
        )
        sums = torch.zeros(len(labels), dtype=torch.float64, device=token_loss.device)
        sums.index_add_(0, keep.nonzero()[:, 0].to(token_loss.device), token_loss.double())
        per_example = torch.stack([sums, keep.sum(1).to(sums)], dim=1)
        self._token_loss.append(self.accelerator.gather_for_metrics(per_example))
        return (per_example[:, 0].sum() / per_example[:, 1].sum().clamp(min=1)).float(), None, None

    def evaluation_loop(self, *args, **kwargs):
        if not self._selective_logits:
            return super().evaluation_loop(*args, **kwargs)
        self._token_loss = []
        try:
            output = super().evaluation_loop(*args, **kwargs)
            totals = torch.cat(self._token_loss).sum(0).tolist() if self._token_loss else [0.0, 0.0]
        finally:
            self._token_loss = None
        key = f"{kwargs.get('metric_key_prefix', 'eval')}_loss"
        if totals[1] > 0 and key in output.metrics:
            output.metrics[key] = totals[0] / totals[1]
        return output

    # -- checkpoints appear whole or not at all: the Trainer writes checkpoint-N in place (weights, then
    # optimizer, RNG states, trainer_state.json), so a process killed meanwhile would leave a folder that
    # looks resumable. Here it writes into checkpoints/.partial-checkpoint-N/ and, once every process has
    # written its part, the main process renames it into place (one atomic rename) and only then rotates
    # old checkpoints away.

    def _save_checkpoint(self, model, trial) -> None:
        from transformers.trainer import TRAINER_STATE_NAME
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_root = os.path.join(run_dir, PARTIAL_CHECKPOINT_PREFIX + name)
        staged, final = os.path.join(staging_root, name), os.path.join(run_dir, name)
        self._checkpoint_staging = staging_root
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._checkpoint_staging = None
        if self.state.best_model_checkpoint == staged:
            self.state.best_model_checkpoint = final
        self.accelerator.wait_for_everyone()  # every process's RNG state (and shards) are in
        if self.args.should_save:
            self.state.save_to_json(os.path.join(staged, TRAINER_STATE_NAME))  # with the final best path
            if os.path.isdir(final):
                shutil.rmtree(final)
            os.replace(staged, final)
            shutil.rmtree(staging_root, ignore_errors=True)
            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()

    def _get_output_dir(self, trial) -> str:
        return getattr(self, "_checkpoint_staging", None) or super()._get_output_dir(trial)

    # -- several processes: evaluating before train() (dstune measures the starting loss) makes accelerate
    # mark the model as prepared (for evaluation), and train() then skips the DDP wrapping: every process
    # would train its own copy without gradient synchronisation. Undo that mark before training.

    def _prepare_for_training(self, *args, **kwargs):
        model = self.model
        if (self.accelerator.num_processes > 1 and not (self.is_fsdp_enabled or self.is_deepspeed_enabled)
                and self.model_wrapped is model and getattr(model, "_is_accelerate_prepared", False)):
            model._is_accelerate_prepared = False
            self.accelerator._models = [m for m in self.accelerator._models if m is not model]
        return super()._prepare_for_training(*args, **kwargs)

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
