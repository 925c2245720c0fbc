"""Per-task pieces of the one training path: data, model, collator and metrics for each `task.type`.

A task is a small builder registered by name; the recipe calls ``build`` and hands the parts to
the Trainer. Adding a task type is adding a builder here (or in its own module), not editing the
recipe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dstune.config.schema import RunConfig
from dstune.train.rundir import RunDir


@dataclass
class TaskParts:
    """Everything task-specific that the Trainer needs."""

    tokenizer: Any
    model: Any
    train: Any  # datasets.Dataset
    eval: Any | None  # datasets.Dataset (or None)
    collator: Callable
    data_stats: dict
    adapter_report: Any  # dstune.models.adapters.AdapterReport
    compute_metrics: Callable | None = None
    preprocess_logits_for_metrics: Callable | None = None
    loss_hooks: list = field(default_factory=list)  # dstune.train.trainer.LossHook
    callbacks: list = field(default_factory=list)  # TrainerCallbacks; a RunCallback also adds metrics and plots
    eval_collator: Callable | None = None  # when evaluation batches differ from training's (packed training)
    causal_lm: bool = False  # next-token loss: no KV cache in training, logits only where labels exist


TaskBuilder = Callable[[RunConfig, RunDir, Callable], TaskParts]
TASKS: dict[str, TaskBuilder] = {}


def register_task(name: str) -> Callable[[TaskBuilder], TaskBuilder]:
    def decorate(builder: TaskBuilder) -> TaskBuilder:
        TASKS[name] = builder
        return builder

    return decorate


def build_task(config: RunConfig, run: RunDir, log: Callable = print) -> TaskParts:
    from dstune.errors import ConfigError

    builder = TASKS.get(config.task.type)
    if builder is None:
        raise ConfigError(f"task type {config.task.type!r} cannot be trained yet", where="task.type",
                          hint=f"available: {', '.join(sorted(TASKS))}")
    return builder(config, run, log)


@register_task("sft")
def build_sft(config: RunConfig, run: RunDir, log: Callable = print) -> TaskParts:
    """Causal-LM supervised fine-tuning: loss on assistant tokens only."""
    from transformers import set_seed

    from dstune.data.collate import padded_collator, sft_collator
    from dstune.data.sft import SFTData, prepare_sft_data, resolve_chat_template
    from dstune.models.adapters import AdapterTask, apply_method
    from dstune.models.load import load_causal_lm, load_tokenizer, resolve_source
    from dstune.models.packed_attention import use_packed_attention
    from dstune.models.tokens import add_terms, resize_and_init, trainable_rows
    from dstune.train.distributed import prepared_once

    source = resolve_source(config.model)
    tokenizer = load_tokenizer(config.model, source)
    new_tokens = add_terms(tokenizer, config.model.add_tokens)  # before tokenizing: each term becomes one token
    data = prepared_once(run.prep, lambda: prepare_sft_data(config.data, tokenizer, run.root,
                                                            seed=config.training.seed, cleaning=config.cleaning), SFTData)
    # the template used for training is saved with the weights, so serving renders prompts the same way
    tokenizer.chat_template = resolve_chat_template(tokenizer, config.data.chat_template)
    s = data.stats
    log(f"data: {s['rows_train']} train / {s['rows_eval']} eval rows ({s['rows_rejected']} rejected, "
        f"{s['truncated']} truncated to {config.data.max_length} tokens)" + cleaning_note(s))
    set_seed(config.training.seed)  # adapter init: the same in a fresh process and after another run
    model = load_causal_lm(config.model, config.method, config.training.dropout, source)
    resize_and_init(model, new_tokens, len(tokenizer))
    if config.training.packing:
        use_packed_attention(model)  # sdpa: attention example by example instead of a block mask over the row
    model, report = apply_method(model, config.method, task=AdapterTask(token_rows=trainable_rows(model, new_tokens)))
    tokenizer.padding_side = "right"
    collator = sft_collator(tokenizer, packing=config.training.packing)
    return TaskParts(tokenizer, model, data.train, data.eval, collator, data.stats, report,
                     eval_collator=padded_collator(tokenizer) if config.training.packing else None, causal_lm=True)


def cleaning_note(stats: dict) -> str:
    """What the cleaning steps did, for the data line of the log ('' when the run has none)."""
    if "cleaning" not in stats:
        return ""
    return f"; cleaning changed {stats['rows_cleaned']} rows and rejected {stats['rows_rejected_cleaning']}"


# classification, token_classification and multitask register themselves on import
from dstune.train import labelled, multitask  # noqa: E402,F401
