"""Causal-LM loss computed only where labels exist.

A standard forward projects every position onto the vocabulary (``[batch, tokens, vocab]`` logits,
upcast to float32 for the loss): with assistant-only labels most of those rows are thrown away,
and for a 49k-vocabulary model they are the largest activation of the step. Here the model's own
forward is asked for the supervised positions only, through transformers' ``logits_to_keep`` with
a boolean ``[batch, tokens]`` mask (the model slices its final hidden states before ``lm_head``,
so logit scaling, soft-capping and tied embeddings stay the model's business), and the
cross-entropy is taken over those rows: ``sum / num_items_in_batch`` exactly as transformers'
``ForCausalLMLoss`` does, so gradient accumulation scales the same way.

Going through the model's forward (not its decoder and head separately) keeps peft, DDP/FSDP
wrappers and ``torch.compile`` in the loop. Models whose forward cannot take a boolean
``logits_to_keep`` get the ordinary forward (:func:`supports_selective_logits`).
"""

from __future__ import annotations

import inspect
import sys

import torch
from torch import nn

from dstune.data.sft import IGNORE_INDEX


def causal_lm_of(model) -> nn.Module:
    """The transformers ``*ForCausalLM`` module inside accelerate/DDP, torch.compile and peft wrappers."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        if hasattr(model, "get_base_model"):  # peft
            model = model.get_base_model()
        elif hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif isinstance(getattr(model, "module", None), nn.Module):  # DDP / DataParallel
            model = model.module
    return model


def supports_selective_logits(model) -> bool:
    """Whether the model's forward slices its hidden states with a boolean ``logits_to_keep`` mask.

    That is transformers' ``slice_logits_to_keep`` (every current decoder-only model); older code
    that indexes ``hidden_states[:, logits_to_keep]`` would misread a mask, so it is not used there.
    """
    lm = causal_lm_of(model)
    forward = getattr(type(lm), "forward", None)
    if forward is None or "logits_to_keep" not in inspect.signature(forward).parameters:
        return False
    module = sys.modules.get(type(lm).__module__)
    return module is not None and hasattr(module, "slice_logits_to_keep")


def supervised_mask(labels: torch.Tensor) -> torch.Tensor:
    """``[batch, tokens]`` booleans: the positions whose next label is supervised (the last position never is)."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return mask


def selective_lm_loss(
    model, inputs: dict, num_items_in_batch: torch.Tensor | int | None = None
) -> tuple[torch.Tensor, object]:
    """``(loss, outputs)``: token cross-entropy at the supervised positions, logits computed only there.

    ``outputs.logits`` holds those rows only (``[N, vocab]``, in :func:`supervised_mask` order).
    ``num_items_in_batch`` given: ``sum / num_items_in_batch`` (normalised over the whole
    gradient-accumulation window); otherwise the mean over the batch's supervised tokens.
    """
    labels = inputs["labels"]
    keep = supervised_mask(labels)
    forward = {key: value for key, value in inputs.items() if key != "labels"}
    outputs = model(**forward, logits_to_keep=keep)
    logits = outputs.logits.reshape(-1, outputs.logits.size(-1)).float()
    targets = labels[:, 1:][keep[:, :-1]].to(logits.device)
    if num_items_in_batch is None:
        loss = nn.functional.cross_entropy(logits, targets, reduction="mean") if targets.numel() else logits.sum() * 0
    else:
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(logits.device)
        loss = nn.functional.cross_entropy(logits, targets, reduction="sum") / num_items_in_batch
    outputs["loss"] = loss
    return loss, outputs
