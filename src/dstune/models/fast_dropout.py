"""Inverted dropout whose random mask is cheap on CPU; dstune puts it on the inputs of LoRA modules.

peft applies ``nn.Dropout`` to the input of every LoRA module, and on CPU drawing that Bernoulli mask
(``bernoulli_``, one random draw per element) costs far more than the rank-r matmul it feeds: 23% of a
SmolLM2-135M LoRA step in a profile (see benchmarks/sft_throughput.py). :class:`FastDropout` draws
64-bit random words and cuts each into four 16-bit uniform integers, keeping an element when its
integer is at or above ``round(p * 65536)``. Every element is still kept independently, with
probability ``1 - p'`` where ``p' = round(p * 65536) / 65536`` (``|p' - p| <= 2**-17``), and scaled by
``1 / (1 - p')``: the same inverted dropout, from torch's seeded generator (so resumed runs replay it).
On other devices (CUDA draws masks fast) and in eval mode it is ``nn.Dropout``.
"""

from __future__ import annotations

import torch
from torch import nn

_LEVELS = 1 << 16


class FastDropout(nn.Dropout):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        dropped = round(self.p * _LEVELS)
        count = x.numel()
        words = torch.randint(-(1 << 63), (1 << 63) - 1, ((count + 3) // 4,), dtype=torch.int64)
        keep = words.view(torch.int16)[:count].view(x.shape) >= dropped - (_LEVELS >> 1)
        return _ScaledMask.apply(x, keep, _LEVELS / (_LEVELS - dropped))


class _ScaledMask(torch.autograd.Function):
    """``x * keep * scale`` in one pass (the mask converted once), saving only the boolean mask for backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x * keep.to(x.dtype).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return grad * keep.to(grad.dtype).mul_(ctx.scale), None, None


def use_fast_dropout(model: nn.Module) -> int:
    """Replace every LoRA input dropout (``lora_dropout`` of peft's layers) by :class:`FastDropout`; returns how many.

    The adapter's config keeps ``lora_dropout: p``: what is saved still loads with plain peft.
    """
    replaced = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict):
            continue
        for name, dropout in dropouts.items():
            if type(dropout) is nn.Dropout and dropout.p > 0:
                dropouts[name] = FastDropout(dropout.p)
                replaced += 1
    return replaced
