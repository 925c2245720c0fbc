"""A shared transformers backbone with one head per task (multi-task, and heads transformers lacks).

``forward`` runs the backbone once and every head on every row, so that a batch may mix tasks;
with ``labels`` (packed by :class:`~dstune.data.labelled.LabelledCollator`: task index in column 0)
each task's loss is taken over its own rows and the task losses are combined with fixed weights,
or (``uncertainty``, training only) as ``Σ exp(-s_t)·L_t + s_t`` with a learned ``s_t`` per task.

Saving writes the backbone as transformers/peft do (``adapter_model.safetensors`` for LoRA, or the
full ``model.safetensors``) plus the head files described in :mod:`dstune.models.heads`.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.utils import ModelOutput

from dstune.models.heads import HEADS_DIR, HeadSpec, TaskHead, label_loss, read_head_cards, write_head_cards

UNCERTAINTY_FILE = "loss_weights.safetensors"


@dataclass
class HeadsOutput(ModelOutput):
    """``loss`` (with labels) and each head's logits over every row: (B, C) or (B, T, C) for token heads."""

    loss: torch.Tensor | None = None
    logits: dict[str, torch.Tensor] | None = None


class HeadedModel(nn.Module):
    """``backbone`` (an ``AutoModel``, optionally wrapped by peft) and one :class:`TaskHead` per spec."""

    accepts_loss_kwargs = False  # the loss is a per-batch mean: the Trainer scales it for gradient accumulation
    main_input_name = "input_ids"

    def __init__(self, backbone: nn.Module, specs: list[HeadSpec], loss_weighting: str = "fixed") -> None:
        super().__init__()
        self.backbone = backbone
        self.specs = list(specs)
        self.hidden_size = backbone_hidden_size(backbone)
        self.heads = nn.ModuleDict({spec.name: TaskHead(self.hidden_size, spec) for spec in self.specs})
        self.loss_weighting = loss_weighting
        self.log_vars = nn.Parameter(torch.zeros(len(self.specs))) if loss_weighting == "uncertainty" else None
        self._takes_positions = "position_ids" in inspect.signature(_base(backbone).forward).parameters

    @property
    def config(self):
        """The backbone's config (the Trainer and its integrations read it)."""
        return _base(self.backbone).config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> HeadsOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        kwargs = {}
        if self._takes_positions:  # positions from the mask: left and right padding give the same vectors
            kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        logits = {spec.name: self.heads[spec.name](hidden, attention_mask) for spec in self.specs}
        return HeadsOutput(loss=None if labels is None else self._loss(logits, labels), logits=logits)

    def _loss(self, logits: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        tasks, rest = labels[:, 0], labels[:, 1:]
        total = logits[self.specs[0].name].sum() * 0.0
        for index, spec in enumerate(self.specs):
            rows = tasks == index
            if not rows.any():
                continue
            task_logits = logits[spec.name][rows]
            task_labels = _unpack(rest[rows], spec.space.kind, task_logits)
            weights, gamma = self._loss_settings(spec, task_logits)
            loss = label_loss(task_logits, task_labels, spec.space.kind, weights, gamma)
            if self.log_vars is not None and self.training:
                total = total + torch.exp(-self.log_vars[index]) * loss + self.log_vars[index]
            else:
                total = total + spec.weight * loss
        return total

    def _loss_settings(self, spec: HeadSpec, like: torch.Tensor) -> tuple[torch.Tensor | None, float | None]:
        """Class weights and focal gamma apply to the training loss only; evaluation reports plain losses."""
        if not self.training:
            return None, None
        weights = None
        if spec.class_weights is not None:
            weights = torch.tensor(spec.class_weights, device=like.device, dtype=like.dtype)
        return weights, spec.focal_gamma

    # --- Trainer hooks -------------------------------------------------------------------------

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def save_pretrained(self, directory: str | Path, is_main_process: bool = True, **_: object) -> None:
        """The backbone (adapter or full weights, as transformers/peft save it) and the head files."""
        if not is_main_process:
            return
        directory = Path(directory)
        self.backbone.save_pretrained(str(directory))
        extra = {"loss_weighting": self.loss_weighting,
                 "backbone": "adapter" if _is_peft(self.backbone) else "model"}
        write_head_cards(directory, self.specs, "dstune", self.hidden_size, extra)
        for spec in self.specs:
            state = {k: v.detach().contiguous().cpu() for k, v in self.heads[spec.name].state_dict().items()}
            save_file(state, str(directory / HEADS_DIR / f"{spec.name}.safetensors"))
        if self.log_vars is not None:
            save_file({"log_vars": self.log_vars.detach().cpu()}, str(directory / HEADS_DIR / UNCERTAINTY_FILE))

    def load_trained(self, directory: str | Path) -> None:
        """Load what :meth:`save_pretrained` wrote (a checkpoint) into this model: backbone weights and heads."""
        directory = Path(directory)
        if _is_peft(self.backbone):
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.backbone, load_file(str(directory / "adapter_model.safetensors")))
        else:
            from transformers.trainer_utils import load_sharded_checkpoint

            if (directory / "model.safetensors").is_file():
                self.backbone.load_state_dict(load_file(str(directory / "model.safetensors")), strict=False)
            else:
                load_sharded_checkpoint(self.backbone, str(directory), strict=False)
        self.load_heads(directory)

    def load_heads(self, directory: str | Path) -> None:
        """Head weights (and learned uncertainty weights) from ``directory/heads``."""
        folder = Path(directory) / HEADS_DIR
        device = next(self.heads.parameters()).device
        for spec in self.specs:
            self.heads[spec.name].load_state_dict(load_file(str(folder / f"{spec.name}.safetensors"), device=str(device)))
        if self.log_vars is not None and (folder / UNCERTAINTY_FILE).is_file():
            with torch.no_grad():
                self.log_vars.copy_(load_file(str(folder / UNCERTAINTY_FILE))["log_vars"])

    @classmethod
    def from_directory(cls, backbone: nn.Module, directory: str | Path) -> HeadedModel:
        """The heads saved in ``directory`` on an already loaded ``backbone`` (with its adapter, if any)."""
        index, specs = read_head_cards(directory)
        model = cls(backbone, specs, index.get("loss_weighting", "fixed"))
        model.to(next(backbone.parameters()).device)
        model.load_heads(directory)
        return model


def backbone_hidden_size(backbone: nn.Module) -> int:
    config = _base(backbone).config
    return config.get_text_config().hidden_size


def _unpack(rest: torch.Tensor, kind: str, logits: torch.Tensor) -> torch.Tensor:
    """One task's label ids from packed rows: a class id, a multi-hot vector, or one tag id per position."""
    if kind == "single":
        return rest[:, 0]
    if kind == "multi":
        return rest[:, : logits.shape[-1]]
    return rest[:, : logits.shape[1]]


def _base(backbone: nn.Module) -> nn.Module:
    return backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone


def _is_peft(module: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(module, PeftModel)


def heads_index(directory: str | Path) -> dict:
    """``heads/heads.json`` of a weights directory ({} when it has none)."""
    path = Path(directory) / HEADS_DIR / "heads.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
