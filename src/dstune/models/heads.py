"""Task heads on a transformers backbone: pooling, the heads, their losses, and the head files.

A head is ``dropout → nn.Linear``; a sequence head first pools the backbone's hidden states into
one vector per text:

* ``last``: the last non-padding token (decoders: the only token that has seen the whole text);
* ``cls``: the first non-padding token (``[CLS]`` on BERT-like encoders);
* ``mean``: the mean over non-padding tokens.

Positions come from the attention mask, so left- and right-padded batches pool the same vectors.

Head files (``heads/`` beside the adapter or model weights)::

    heads/heads.json          {"format": "dstune-heads/1", "tasks": [names in task-index order],
                               "implementation": "dstune" | "transformers", "loss_weighting": ...}
    heads/<task>.json         label space (kind, labels, thresholds, hierarchy), pooling, dropout,
                              hidden_size, num_labels
    heads/<task>.safetensors  the Linear layer: "weight" (num_labels × hidden_size) and "bias"

so a head loads without dstune as ``torch.nn.Linear(hidden_size, num_labels)`` with
``load_state_dict(safetensors.torch.load_file(...))``, applied to the pooled output of
``AutoModel`` (with the adapter: ``PeftModel.from_pretrained(AutoModel.from_pretrained(base), dir)``).
With ``implementation: transformers`` the head is inside the weights (peft ``modules_to_save`` of an
``AutoModelForSequenceClassification``/``AutoModelForTokenClassification``) and the JSON files only
carry the label space.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dstune.data.label_space import LabelSpace

HEADS_DIR = "heads"
HEADS_FORMAT = "dstune-heads/1"
IGNORE_INDEX = -100


@dataclass
class HeadSpec:
    """One task's head: its label space, pooling (sequence tasks), dropout and loss settings."""

    name: str
    space: LabelSpace
    pooling: str = "last"  # last | cls | mean (ignored by token heads)
    dropout: float = 0.1
    class_weights: list[float] | None = None
    focal_gamma: float | None = None
    weight: float = 1.0  # loss weight (fixed weighting) and weight in the combined score

    def to_dict(self, hidden_size: int | None = None) -> dict:
        out = {"name": self.name, **self.space.to_dict(), "pooling": self.pooling if self.space.kind != "token" else
               "token", "dropout": self.dropout, "num_labels": len(self.space), "weight": self.weight}
        if hidden_size is not None:
            out["hidden_size"] = hidden_size
        return out

    @classmethod
    def from_dict(cls, data: dict) -> HeadSpec:
        return cls(data["name"], LabelSpace.from_dict(data), data.get("pooling", "last"), data.get("dropout", 0.0),
                   weight=data.get("weight", 1.0))


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """One vector per row of ``hidden`` (B, T, H), from the positions where ``mask`` (B, T) is 1."""
    if how == "mean":
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    positions = torch.arange(mask.shape[1], device=mask.device)
    valid = mask.bool()
    if how == "last":
        index = torch.where(valid, positions, -1).max(dim=1).values
    elif how == "cls":
        index = torch.where(valid, positions, mask.shape[1]).min(dim=1).values
    else:
        raise ValueError(f"unknown pooling {how!r}; expected last, cls or mean")
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index.clamp(0, mask.shape[1] - 1)]


class TaskHead(nn.Linear):
    """``dropout → Linear``; a sequence head pools first. The state dict is a plain Linear's."""

    def __init__(self, hidden_size: int, spec: HeadSpec) -> None:
        super().__init__(hidden_size, len(spec.space))
        self.kind = spec.space.kind
        self.pooling = spec.pooling
        self.p = spec.dropout

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        features = hidden if self.kind == "token" else pool(hidden, mask, self.pooling)
        return super().forward(F.dropout(features.to(self.weight.dtype), self.p, self.training))


def label_loss(
    logits: torch.Tensor, labels: torch.Tensor, kind: str, weights: torch.Tensor | None = None,
    gamma: float | None = None,
) -> torch.Tensor:
    """Cross-entropy (single, token; ``-100`` ignored) or binary cross-entropy (multi), optionally focal.

    ``weights`` are per-class weights (single, token) or per-label positive weights (multi).
    """
    if kind == "multi":
        targets = labels.to(logits.dtype)
        loss = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weights, reduction="none")
        if gamma:
            p = torch.sigmoid(logits)
            loss = loss * (1 - (p * targets + (1 - p) * (1 - targets))) ** gamma
        return loss.mean()
    flat_logits, flat_labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).long()
    keep = flat_labels != IGNORE_INDEX
    if not keep.any():
        return flat_logits.sum() * 0.0
    flat_logits, flat_labels = flat_logits[keep], flat_labels[keep]
    loss = F.cross_entropy(flat_logits, flat_labels, weight=weights, reduction="none")
    if gamma:
        p_true = torch.softmax(flat_logits, -1).gather(1, flat_labels[:, None]).squeeze(1)
        loss = loss * (1 - p_true) ** gamma
    denominator = weights[flat_labels].sum() if weights is not None else torch.tensor(float(len(loss)))
    return loss.sum() / denominator.to(loss.device)


class SpecLoss:
    """A :data:`~dstune.train.trainer.LossHook` that trains a transformers classification model with a
    spec's class weights / focal loss (the model's own loss, unweighted, stays the evaluation loss)."""

    def __init__(self, spec: HeadSpec) -> None:
        self.spec = spec

    def __call__(self, model, inputs: dict, outputs, loss: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        weights = None
        if self.spec.class_weights is not None:
            weights = torch.tensor(self.spec.class_weights, device=outputs.logits.device, dtype=outputs.logits.dtype)
        return label_loss(outputs.logits, inputs["labels"], self.spec.space.kind, weights, self.spec.focal_gamma), {}


# --- head files ------------------------------------------------------------------------------


def write_head_cards(directory: Path, specs: list[HeadSpec], implementation: str, hidden_size: int | None,
                     extra: dict | None = None) -> None:
    """``heads/heads.json`` and one ``heads/<task>.json`` per head (label spaces, pooling, sizes)."""
    folder = Path(directory) / HEADS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    index = {"format": HEADS_FORMAT, "implementation": implementation, "tasks": [s.name for s in specs], **(extra or {})}
    (folder / "heads.json").write_text(json.dumps(index, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for spec in specs:
        text = json.dumps(spec.to_dict(hidden_size), indent=2, ensure_ascii=False) + "\n"
        (folder / f"{spec.name}.json").write_text(text, encoding="utf-8")


def read_head_cards(directory: Path) -> tuple[dict, list[HeadSpec]]:
    """The heads index and the specs, in task-index order; empty when ``directory`` has no heads."""
    folder = Path(directory) / HEADS_DIR
    if not (folder / "heads.json").is_file():
        return {}, []
    index = json.loads((folder / "heads.json").read_text(encoding="utf-8"))
    specs = [HeadSpec.from_dict(json.loads((folder / f"{name}.json").read_text(encoding="utf-8")))
             for name in index["tasks"]]
    return index, specs
