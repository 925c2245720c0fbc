"""Batches for causal-LM fine-tuning: padding-free packing, or dynamic padding.

Packing (``training.packing``) concatenates the examples of a batch into one row of shape
``[1, total_tokens]`` with ``position_ids`` that restart at 0 for every example, and no padding
and no attention mask. transformers reads the restarts as example boundaries and builds a
block-diagonal causal mask (sdpa / eager / flex attention; FlashAttention gets the same boundaries
as ``cu_seqlens``), so no token attends across examples — *provided the forward pass runs without
a KV cache* (``use_cache=False``; with a cache, transformers ignores the restarts).
:class:`dstune.train.trainer.DstuneTrainer` passes ``use_cache=False`` for causal LMs.

The first label of every example becomes -100: it would be predicted from the end of the
previous example. Unpacked, that position is never predicted either (labels are shifted), so the
supervised positions — and the loss — are the same; ``tests/train/test_packing.py`` proves it.
"""

from __future__ import annotations

from collections.abc import Callable

from dstune.data.sft import IGNORE_INDEX


def padded_collator(tokenizer) -> Callable:
    """Dynamic right padding to the longest example of the batch (labels padded with -100)."""
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX, return_tensors="pt")


def packed_collator() -> Callable:
    """Padding-free: the batch as one row, ``position_ids`` reset per example, first label of each example -100."""
    from transformers import DataCollatorWithFlattening

    return DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX, return_tensors="pt")


def sft_collator(tokenizer, packing: bool) -> Callable:
    """The training collator for causal-LM SFT."""
    return packed_collator() if packing else padded_collator(tokenizer)
