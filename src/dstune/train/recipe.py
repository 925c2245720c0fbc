"""The training recipe: setup → measure → train → measure → save. One path for every method.

Reads top to bottom. The Hugging Face Trainer does the loop, checkpointing, resume (optimizer,
scheduler, RNG and data position), early stopping and the tracking integrations; dstune adds the
validated config, the data pipeline, adapter verification and an honest run directory.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from dstune.config.schema import RunConfig
from dstune.report.plots import plot_training
from dstune.train.continual import continual_parts
from dstune.train.distributed import barrier, init_distributed
from dstune.train.history import HistoryCallback, read_history, truncate_history
from dstune.train.rundir import RunDir, replace_dir, write_json_atomic
from dstune.train.tasks import TaskParts, build_task
from dstune.train.tracking import log_summary, report_to, tracking_run, ui_command
from dstune.train.trainer import DstuneTrainer, RunCallback

TRAIN_SAMPLE_SIZE = 64  # training examples re-evaluated before and after training (train loss before/after)


@dataclass
class TrainResult:
    run: RunDir
    weights_dir: Path
    metrics: dict
    data_stats: dict
    adapter_report: dict
    plots: list[Path] = field(default_factory=list)
    mlflow_ui: str | None = None
    model: object = field(default=None, repr=False)  # the trained model, in memory (best checkpoint if kept)
    main_process: bool = True  # False on the other processes of a multi-process run (they report nothing)


def train(config: RunConfig, resume: bool = False, log=print) -> TrainResult:
    from dstune.models.load import check_method_environment

    started = time.time()
    # -- setup: fail on anything user-fixable before the heavy work starts. Several processes (accelerate
    # launch): the run directory, data preparation, logs, tracking and saving happen on the main one only.
    main = init_distributed(config.training.ddp_timeout).is_main_process
    log = log if main else _quiet
    check_method_environment(config.method)
    run = RunDir(Path(config.output_dir))
    checkpoint = run.prepare(config, resume, write=main, log=log)
    barrier()
    parts = continual_parts(config, build_task(config, run, log), run, log)
    if main:
        write_json_atomic(run.params_report, parts.adapter_report.to_dict())
    for note in parts.adapter_report.notes:
        log(f"[yellow]note:[/] {note}")
    log(parts.adapter_report.table())
    trainer = _build_trainer(config, parts, run)

    with tracking_run(config, run.root, trainer.is_world_process_zero()) as mlflow_run:
        # -- measure the starting point (kept on disk so that a resumed run still reports it)
        if checkpoint is None:
            baseline = _measure(trainer, parts, "before")
            if trainer.is_world_process_zero():
                write_json_atomic(run.baseline, baseline)
        else:
            baseline = json.loads(run.baseline.read_text()) if run.baseline.exists() else {}
            if main:
                truncate_history(run.history, _step_of(checkpoint))
            log(f"resuming from {checkpoint}")
        # -- train
        outcome = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        # -- measure again and save (metrics.json last: its presence marks the run complete)
        final = _measure(trainer, parts, "after")
        metrics = {
            **baseline,
            **final,
            "train_loss": outcome.training_loss,
            "global_step": trainer.state.global_step,
            "epoch": trainer.state.epoch,
            "best_checkpoint": trainer.state.best_model_checkpoint,
            "train_runtime_s": outcome.metrics.get("train_runtime"),
            "wall_time_s": round(time.time() - started, 1),
            **{f"data_{k}": v for k, v in parts.data_stats.items() if isinstance(v, int)},
            **{k: v for cb in _run_callbacks(parts) for k, v in cb.final_metrics().items()},
        }
        weights = run.weights_dir(config.method.type)
        plots: list[Path] = []
        weights = _save_weights(trainer, parts.tokenizer, weights, _run_callbacks(parts))
        if trainer.is_world_process_zero():
            plot = plot_training(read_history(run.history), run.plots / "loss.png")
            plots = ([plot] if plot else []) + [p for cb in _run_callbacks(parts) for p in cb.plots()]
            write_json_atomic(run.metrics, metrics)
            log_summary(mlflow_run, metrics)
    return TrainResult(
        run=run,
        weights_dir=weights,
        metrics=metrics,
        data_stats=parts.data_stats,
        adapter_report=parts.adapter_report.to_dict(),
        plots=plots,
        mlflow_ui=ui_command(config, run.root) if config.tracking.mlflow.enabled else None,
        model=trainer.model,
        main_process=main,
    )


def _build_trainer(config: RunConfig, parts: TaskParts, run: RunDir) -> DstuneTrainer:
    import torch
    from transformers import EarlyStoppingCallback, TrainingArguments

    t = config.training
    has_eval = parts.eval is not None and t.eval_strategy != "no"
    packed = parts.causal_lm and t.packing
    args = TrainingArguments(
        output_dir=str(run.checkpoints),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        eval_strategy=t.eval_strategy if has_eval else "no",
        eval_steps=t.eval_steps,
        save_strategy=t.save_strategy,
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        load_best_model_at_end=bool(t.early_stopping_patience) and has_eval,
        metric_for_best_model=t.metric_for_best if has_eval else None,
        greater_is_better=t.greater_is_better if has_eval else None,
        **({"gradient_checkpointing": True} if t.gradient_checkpointing else {}),
        **({"torch_compile": True} if t.torch_compile else {}),
        **({"use_liger_kernel": True} if parts.causal_lm and _liger_available() else {}),  # CUDA only
        seed=t.seed,
        data_seed=t.seed,
        # packed batches have no padding to save: length grouping would only make batches less random
        train_sampling_strategy="group_by_length" if t.group_by_length and not packed else "random",
        bf16=torch.cuda.is_available() and config.model.dtype == "bfloat16",
        fp16=torch.cuda.is_available() and config.model.dtype == "float16",
        report_to=report_to(config),
        run_name=config.tracking.mlflow.run_name or run.root.name,
        label_names=["labels"],
        prediction_loss_only=parts.compute_metrics is None,  # else evaluation keeps every batch's logits
        remove_unused_columns=False,
        dataloader_num_workers=0,
        ddp_timeout=t.ddp_timeout,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    callbacks = [HistoryCallback(run.history), *parts.callbacks]
    if t.early_stopping_patience and has_eval:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=t.early_stopping_patience))
    return DstuneTrainer(
        model=parts.model,
        args=args,
        train_dataset=parts.train,
        eval_dataset=parts.eval if has_eval else None,
        data_collator=parts.collator,
        processing_class=parts.tokenizer,
        callbacks=callbacks,
        compute_metrics=parts.compute_metrics,
        preprocess_logits_for_metrics=parts.preprocess_logits_for_metrics,
        loss_hooks=parts.loss_hooks,
        causal_lm=parts.causal_lm,
        eval_data_collator=parts.eval_collator,
    )


def _liger_available() -> bool:
    """Liger kernels (fused linear cross-entropy, RMSNorm, RoPE, SwiGLU) on CUDA, when the package is installed."""
    import importlib.util

    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is not None


def _run_callbacks(parts: TaskParts) -> list[RunCallback]:
    return [callback for callback in parts.callbacks if isinstance(callback, RunCallback)]


def _measure(trainer, parts: TaskParts, when: str) -> dict:
    """Mean token loss on the eval set and on a fixed random sample of the training set (seed 0).

    Early stopping is detached meanwhile: these evaluations are measurements, not training decisions.
    """
    from transformers import EarlyStoppingCallback

    stopper = trainer.pop_callback(EarlyStoppingCallback)
    out = {}
    sample = _train_sample(parts.train)
    out[f"train_loss_{when}"] = trainer.evaluate(sample, metric_key_prefix=f"train_sample_{when}")[
        f"train_sample_{when}_loss"
    ]
    if parts.eval is not None:
        out[f"eval_loss_{when}"] = trainer.evaluate(parts.eval, metric_key_prefix=f"eval_{when}")[f"eval_{when}_loss"]
    if stopper is not None:
        trainer.add_callback(stopper)
    return out


def _train_sample(train):
    """``TRAIN_SAMPLE_SIZE`` training examples drawn with seed 0 (the file order may be sorted by topic or length)."""
    size = min(TRAIN_SAMPLE_SIZE, len(train))
    if hasattr(train, "shuffle"):  # a datasets.Dataset; multi-task streams are interleaved already
        return train.shuffle(seed=0).select(range(size))
    return train.select(range(size))


def _save_weights(trainer, tokenizer, final: Path, callbacks: list[RunCallback] = ()) -> Path:
    """Write the adapter (PEFT format) or full model (safetensors) with the tokenizer, then move it into place.

    Every process calls this (FSDP and ZeRO-3 gather the weights collectively); the main one writes.
    """
    tmp = final.with_name(f".{final.name}.partial")
    trainer.save_model(str(tmp))
    if not trainer.is_world_process_zero():
        return final
    tokenizer.save_pretrained(str(tmp))
    for callback in callbacks:
        callback.save_files(tmp)
    replace_dir(tmp, final)
    return final


def _quiet(*args, **kwargs) -> None:
    """The log of a process other than the main one."""


def _step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.rsplit("-", 1)[-1])
