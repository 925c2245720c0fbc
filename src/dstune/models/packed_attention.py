"""Attention for padding-free packed rows on SDPA: each packed example attends to itself alone, at its own cost.

With packing (``training.packing``), a batch is one row of several examples whose position ids restart
at 0. transformers isolates them under ``sdpa`` by building a block-diagonal causal mask over the whole
row, so every layer still computes the full ``T x T`` score matrix of the row (and an explicit mask
keeps SDPA off its fastest kernels). The ``dstune_packed_sdpa`` implementation registered here skips
that mask and runs causal SDPA example by example, cut at the position-id resets: the same result
(tested against the masked path) at a fraction of the attention FLOPs (CPU: 3.8x faster forward +
backward for 8 examples of 45-250 tokens).

Anything else (an explicit padding mask, a KV cache, sliding windows, batches of several rows) goes to
transformers' own ``sdpa`` functions unchanged. flash-attention already handles packed position ids
natively, so :func:`use_packed_attention` only replaces ``sdpa``.
"""

from __future__ import annotations

import torch

PACKED_SDPA = "dstune_packed_sdpa"


def packed_sdpa_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """``sdpa_attention_forward`` run on each example of a packed row (``query``: batch x heads x tokens x dim)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.pop("position_ids", None)
    starts = _example_starts(position_ids, query, key, attention_mask)
    if starts is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    kwargs.pop("is_causal", None)
    dtype = query.dtype
    if query.device.type == "cpu" and dtype in (torch.bfloat16, torch.float16):
        # CPU's flash-attention backward is slow in half precision (8 ms vs 0.3 ms per SmolLM2 layer): in fp32
        query, key, value = query.float(), key.float(), value.float()
    ends = [*starts[1:], query.shape[2]]
    outputs = [
        sdpa_attention_forward(module, query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], None, dropout=dropout,
                               scaling=scaling, is_causal=True, **kwargs)[0]
        for s, e in zip(starts, ends)
    ]
    return torch.cat(outputs, dim=1).to(dtype), None  # batch x tokens x heads x dim, as sdpa_attention_forward


def _example_starts(position_ids, query, key, attention_mask) -> list[int] | None:
    """Where each packed example begins, or None when the row is not a packed training row."""
    if (attention_mask is not None or position_ids is None or query.shape[0] != 1 or position_ids.shape[0] != 1
            or query.shape[2] != key.shape[2] or position_ids.shape[-1] != query.shape[2]):
        return None
    starts = (position_ids[0] == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        return None
    return starts


def packed_sdpa_mask(*args, **kwargs):
    """No mask for packed rows (the attention cuts them); transformers' ``sdpa`` mask for anything else."""
    from transformers.masking_utils import sdpa_mask

    if kwargs.get("attention_mask") is None and kwargs.get("local_size") is None:
        return None
    return sdpa_mask(*args, **kwargs)


def use_packed_attention(model) -> bool:
    """Switch a model that runs ``sdpa`` to :data:`PACKED_SDPA`; returns whether it did."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
    AttentionMaskInterface.register(PACKED_SDPA, packed_sdpa_mask)
    model.set_attn_implementation(PACKED_SDPA)
    return True
