"""Data for continual learning: earlier-task and general sets encoded like the task's own training data,
replay mixing, and the positions at which a model's outputs are supervised.

A task type makes its data usable here by registering an encoder (file -> tokenized dataset with the
same columns as its training set); ``sft`` is registered below.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dstune.errors import ConfigError

if TYPE_CHECKING:
    import datasets
    import torch

    from dstune.config.schema import RunConfig

IGNORE_INDEX = -100

SetEncoder = Callable[["RunConfig", str, Any, Path], "datasets.Dataset"]
ENCODERS: dict[str, SetEncoder] = {}
SHIFTED_TASKS = {"sft"}  # tasks whose logits at position t predict the label at t + 1 (causal LM)


def register_encoder(task_type: str) -> Callable[[SetEncoder], SetEncoder]:
    def decorate(encoder: SetEncoder) -> SetEncoder:
        ENCODERS[task_type] = encoder
        return encoder

    return decorate


@register_encoder("sft")
def encode_sft_file(config: RunConfig, path: str, tokenizer, out_dir: Path) -> datasets.Dataset:
    """A file in any SFT format (chat rows or raw text), tokenized exactly as ``data.train`` is."""
    from dstune.data.sft import prepare_sft_data

    section = config.data.model_copy(
        update={"train": path, "validation": None, "eval_split": 0.0, "max_samples": None, "format": "auto"}
    )
    return prepare_sft_data(section, tokenizer, out_dir, seed=config.training.seed).train


def load_set(
    config: RunConfig, files: list[str], tokenizer, out_dir: Path, *, key: str, max_samples: int | None = None
) -> datasets.Dataset:
    """Encode ``files`` as the task's data, concatenated; a seeded sample of ``max_samples`` rows if set.

    ``key`` is the config key the files came from (for error messages); rows rejected with
    ``data.on_error: skip`` are written to ``out_dir/rejected.jsonl``.
    """
    import datasets

    encoder = ENCODERS.get(config.task.type)
    if encoder is None:
        raise ConfigError(
            f"continual data sets are not supported for task.type {config.task.type!r} yet",
            where=key,
            hint=f"supported task types: {', '.join(sorted(ENCODERS))}",
        )
    parts = [encoder(config, file, tokenizer, out_dir / str(n)) for n, file in enumerate(files)]
    dataset = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    if max_samples is not None and len(dataset) > max_samples:
        dataset = dataset.shuffle(seed=config.training.seed).select(range(max_samples))
    return dataset


def mix_replay(train: datasets.Dataset, replay: datasets.Dataset, ratio: float, seed: int) -> datasets.Dataset:
    """``train`` plus replayed rows making up ``ratio`` of the result (cycling through ``replay`` if it is small).

    The rows are drawn once, by ``seed``, so a resumed run sees the same mixed set; the Trainer
    shuffles the mix every epoch.
    """
    import datasets
    import numpy as np

    wanted = max(1, round(len(train) * ratio / (1.0 - ratio)))
    rng = np.random.default_rng(seed)
    rounds = -(-wanted // len(replay))
    indices = np.concatenate([rng.permutation(len(replay)) for _ in range(rounds)])[:wanted]
    replayed = replay.select(indices.tolist()).select_columns(train.column_names).cast(train.features)
    return datasets.concatenate_datasets([train, replayed])


def supervised_logits(logits: torch.Tensor, labels: torch.Tensor | None, shift: bool) -> torch.Tensor:
    """The rows of ``logits`` that have a label: ``[N, num_classes]``.

    ``shift`` (causal LM, ``[B, T, V]``): the logits at position t predict the label at t + 1, and
    only positions whose label is not -100 count. Otherwise every position with a label that is
    not -100 (token classification ``[B, T, C]``, single-label ``[B, C]``), or every row when the
    labels are not per-row class ids (multi-label, or no labels).
    """
    if shift:
        return logits[:, :-1][labels[:, 1:] != IGNORE_INDEX]
    if labels is not None and labels.dim() == logits.dim() - 1 and not labels.is_floating_point():
        return logits[labels != IGNORE_INDEX]
    return logits.reshape(-1, logits.size(-1))


def model_inputs(inputs: dict) -> dict:
    """The batch without its labels (a forward pass that needs only the logits)."""
    return {key: value for key, value in inputs.items() if key != "labels"}


def single_examples(dataset: datasets.Dataset, collator: Callable, device) -> Iterator[dict]:
    """Batches of one example each, collated and moved to ``device``."""
    for row in dataset:
        batch = collator([row])
        yield {key: value.to(device) if hasattr(value, "to") else value for key, value in batch.items()}


def model_device(model) -> torch.device:
    return next(model.parameters()).device
