"""Frozen weights stored and multiplied in bfloat16, everything else kept in float32 (``method.frozen_dtype``).

Under LoRA the base weights never change, so their precision only matters for the products they take
part in. On CPUs with AMX or AVX512-BF16 a bf16 matmul runs several times faster than an fp32 one, and
bf16 weights take half the memory. Loading the whole model in bf16 (``model.dtype: bfloat16``) gets
that speed but also runs the residual stream, norms, attention, softmax and loss in bf16, which shows
in the loss curve. :func:`use_low_precision_frozen` keeps those in float32: each frozen ``nn.Linear``
casts its float32 input to bf16, multiplies by its bf16 weight (forward and, through autograd, the
input-gradient product of backward) and returns float32; each frozen ``nn.Embedding`` looks its rows
up in bf16 and returns float32. Trainable parameters (LoRA adapters, heads, new token rows) are not
touched, so optimizer states and saved adapters stay float32.

Modules are changed in place by swapping their class, which keeps parameter names: state dicts,
peft's adapter saving and checkpoints are unaffected. A weight shared by several modules (tied input
and output embeddings) is converted only when every module using it can take it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F


class _LowPrecisionLinear(nn.Linear):
    """``nn.Linear`` holding a low-precision frozen weight; input and output keep the caller's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(self.weight.dtype)
        return F.linear(x.to(self.weight.dtype), self.weight, bias).to(x.dtype)


class _LowPrecisionEmbedding(nn.Embedding):
    """``nn.Embedding`` holding a low-precision frozen table; returns rows in the compute dtype."""

    compute_dtype: torch.dtype = torch.float32

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids).to(self.compute_dtype)


_SWAPS = {nn.Linear: _LowPrecisionLinear, nn.Embedding: _LowPrecisionEmbedding}


def cpu_has_native_bf16() -> bool | None:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX); None where /proc/cpuinfo is unreadable.

    Without it torch emulates bf16 matmuls, about 100x slower than fp32 (seen on an AVX2-only EPYC).
    """
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return None
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def use_low_precision_frozen(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> dict[str, int]:
    """Store every frozen float32 ``nn.Linear``/``nn.Embedding`` weight of ``model`` in ``dtype`` (see module doc).

    Returns ``{"modules": ..., "parameters": ...}``: how many modules were switched and how many
    weight elements are now held in ``dtype``.
    """
    users: dict[int, list[nn.Module]] = {}
    weights: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for param in module.parameters(recurse=False):
            users.setdefault(id(param), []).append(module)
            weights[id(param)] = param

    def convertible(module: nn.Module) -> bool:
        return (
            type(module) in _SWAPS
            and module.weight.dtype == torch.float32
            and not any(p.requires_grad for p in module.parameters(recurse=False))
        )

    switched: set[int] = set()
    parameters = 0
    for key, param in weights.items():
        modules = users[key]
        if param.requires_grad or not all(convertible(m) for m in modules):
            continue
        if not any(m.weight is param for m in modules):
            continue  # a bias: converted with its module's weight, on the fly
        param.data = param.data.to(dtype)
        parameters += param.numel()
        for module in modules:
            if id(module) in switched:
                continue
            if isinstance(module, nn.Embedding):
                module.compute_dtype = torch.float32
            module.__class__ = _SWAPS[type(module)]
            switched.add(id(module))
    return {"modules": len(switched), "parameters": parameters}
