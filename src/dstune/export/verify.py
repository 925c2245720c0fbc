"""Is the artifact the model that was trained? Compare its outputs with PyTorch's and write the figures.

Every export writes ``verification.json`` next to the artifact: what was compared, on how many
inputs, the figures, the threshold and whether it passed. A failed check raises
:class:`ExportVerificationError` (the artifact stays on disk for inspection, marked as failed).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from dstune.errors import DstuneError

VERIFICATION_FILE = "verification.json"

SAMPLE_PROMPTS = [
    "What is artificial intelligence?",
    "Summarise the payment terms of a supply contract in one sentence.",
    "你好，请介绍一下你自己。",
    "Is this transaction suspicious: 40 transfers of 999 USD in one hour?",
    "合同中甲方的主要义务是什么？",
    "Write a short polite reply to a customer asking for a refund.",
    "List three risks of lending to a new small business.",
    "Explain overfitting to a new engineer.",
]

SAMPLE_TEXTS = [
    "The quarterly revenue grew by 12 percent.",
    "Please reset my password, I cannot log in.",
    "被告人通过电信网络实施诈骗，数额巨大。",
    "The patient reports chest pain and shortness of breath.",
    "I love this product, it works perfectly!",
    "Payment is overdue by ninety days and the borrower cannot be reached.",
    "甲方应于合同签订后十日内支付全部款项。",
    "What time does the store open on Sunday?",
]


class ExportVerificationError(DstuneError):
    """An exported artifact does not behave like the PyTorch model it came from."""


def sample_chat_prompts(tokenizer, count: int) -> list[list[int]]:
    """Token ids of ``count`` short user prompts rendered with the model's chat template (plain text without one)."""
    prompts = [SAMPLE_PROMPTS[i % len(SAMPLE_PROMPTS)] for i in range(count)]
    if getattr(tokenizer, "chat_template", None):
        return [
            list(tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                               tokenize=True, return_dict=True)["input_ids"])
            for p in prompts
        ]
    return [tokenizer(p)["input_ids"] for p in prompts]


def sample_texts(count: int) -> list[str]:
    """``count`` short texts (English and Chinese) for checking classifiers."""
    return [SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] for i in range(count)]


def logit_figures(reference: torch.Tensor, candidate: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, Any]:
    """Max and mean |Δ|, the max |Δ| relative to the logit scale, and how often the argmax agrees.

    ``mask`` (same leading shape as the logits, without the class axis) selects the positions that count.
    """
    reference, candidate = reference.detach().float().cpu(), candidate.detach().float().cpu()
    if mask is not None:
        keep = mask.bool().cpu()
        reference, candidate = reference[keep], candidate[keep]
    diff = (reference - candidate).abs()
    scale = max(1.0, reference.abs().max().item())
    agree = (reference.argmax(-1) == candidate.argmax(-1)).float()
    return {
        "max_abs_diff": diff.max().item(),
        "mean_abs_diff": diff.mean().item(),
        "relative_max_diff": diff.max().item() / scale,
        "argmax_agreement": agree.mean().item(),
        "positions": int(agree.numel()),
    }


def write_verification(directory: Path, check: str, figures: dict[str, Any], threshold: dict[str, float],
                       passed: bool, **context: Any) -> dict[str, Any]:
    """Write ``verification.json`` in ``directory`` and return what was written."""
    record = {
        "check": check,
        "passed": passed,
        "threshold": threshold,
        "figures": figures,
        **context,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (directory / VERIFICATION_FILE).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n",
                                               encoding="utf-8")
    return record


def require(record: dict[str, Any], artifact: Path, hint: str) -> dict[str, Any]:
    """Raise :class:`ExportVerificationError` unless the verification ``record`` passed."""
    if record["passed"]:
        return record
    figures = ", ".join(f"{k}={_fmt(v)}" for k, v in record["figures"].items())
    limits = ", ".join(f"{k} {_fmt(v)}" for k, v in record["threshold"].items())
    raise ExportVerificationError(
        f"{record['check']} failed: {figures} (required: {limits}); the artifact is kept for inspection "
        f"and marked as failed in {VERIFICATION_FILE}",
        where=str(artifact),
        hint=hint,
    )


def read_verification(directory: Path) -> dict[str, Any] | None:
    """The verification record of an artifact folder, if any."""
    path = Path(directory) / VERIFICATION_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
