"""Knowledge distillation: keep the student's output distribution close to a teacher's.

The loss hook mixes ``(1 - alpha) * task loss + alpha * T^2 * KL`` with the KL between the
temperature-softened distributions of teacher and student at the supervised positions: every
assistant token of an SFT example (and every token of replayed text), every labelled token or row
of a classification batch. It works on logits only, so any task whose model returns ``logits``
can use it.

Teachers: the run's own base weights with the LoRA adapters disabled (no second copy in memory),
or a separate frozen model (a finished run, a model id or folder with the same tokenizer).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

from dstune.errors import ConfigError
from dstune.train.continual.data import model_device, model_inputs, supervised_logits

if TYPE_CHECKING:
    from dstune.config.continual import DistillSection
    from dstune.config.schema import RunConfig


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0, direction: str = "forward"
) -> torch.Tensor:
    """``T^2 * KL`` between the softened distributions, averaged over rows (``[N, V]`` logits each).

    forward: KL(teacher || student), the classic Hinton loss; reverse: KL(student || teacher). Both
    are zero exactly when the two distributions agree. Logits are cut to the shorter vocabulary
    (checkpoints pad their embedding matrices differently).
    """
    if student.size(0) == 0:  # no supervised position in this batch
        return student.sum() * 0.0
    width = min(student.size(-1), teacher.size(-1))
    s = nn.functional.log_softmax(student[..., :width].float() / temperature, dim=-1)
    t = nn.functional.log_softmax(teacher[..., :width].float() / temperature, dim=-1)
    p, q = (t, s) if direction == "forward" else (s, t)
    kl = nn.functional.kl_div(q, p, reduction="batchmean", log_target=True)
    return kl * temperature**2


class Teacher(Protocol):
    def logits(self, model: nn.Module, inputs: dict) -> torch.Tensor:
        """The teacher's logits for a batch (no gradient)."""
        ...


class AdapterOffTeacher:
    """The student's own base weights: the PEFT model with its adapters disabled (no second copy)."""

    def logits(self, model: nn.Module, inputs: dict) -> torch.Tensor:
        peft_model = _unwrap(model)
        with torch.no_grad(), peft_model.disable_adapter(), _eval_mode(peft_model):
            return peft_model(**model_inputs(inputs)).logits


class FrozenTeacher:
    """A separate model, frozen and in eval mode; moved to the student's device on first use."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval().requires_grad_(False)

    def logits(self, model: nn.Module, inputs: dict) -> torch.Tensor:
        device = model_device(model)
        if model_device(self.model) != device:
            self.model.to(device)
        with torch.no_grad():
            return self.model(**model_inputs(inputs)).logits


class DistillationHook:
    """Loss hook: ``(1 - alpha) * loss + alpha * T^2 * KL(teacher, student)`` at the supervised positions.

    With ``cache``, the teacher's logits of each example (its supervised rows, float16 on the CPU)
    are kept by token content, so later epochs skip the teacher's forward pass.
    """

    def __init__(self, teacher: Teacher, settings: DistillSection, *, shift: bool, cache: bool = False) -> None:
        self.teacher = teacher
        self.settings = settings
        self.shift = shift
        self.cache: dict[bytes, torch.Tensor] | None = {} if cache else None

    def __call__(self, model, inputs, outputs, loss):
        labels = inputs.get("labels")
        student = supervised_logits(outputs.logits, labels, self.shift)
        teacher = self.teacher_rows(model, inputs).to(student.device)
        kl = distillation_loss(student, teacher, self.settings.temperature, self.settings.direction)
        alpha = self.settings.alpha
        return (1.0 - alpha) * loss + alpha * kl, {"distill_kl": float(kl.detach())}

    def teacher_rows(self, model, inputs: dict) -> torch.Tensor:
        """The teacher's logits at the supervised positions, in the order :func:`supervised_logits` gives."""
        labels = inputs.get("labels")
        if self.cache is None:
            return supervised_logits(self.teacher.logits(model, inputs), labels, self.shift)
        keys = _example_keys(inputs)
        if not all(key in self.cache for key in keys):
            logits = self.teacher.logits(model, inputs)
            for row, key in enumerate(keys):
                part = supervised_logits(logits[row : row + 1], _row(labels, row), self.shift)
                self.cache[key] = part.to("cpu", torch.float16)
        return torch.cat([self.cache[key] for key in keys]).float()


def _example_keys(inputs: dict) -> list[bytes]:
    """One key per example: its unpadded token ids and labels."""
    ids, mask, labels = inputs["input_ids"], inputs.get("attention_mask"), inputs.get("labels")
    keys = []
    for row in range(ids.size(0)):
        keep = mask[row].bool() if mask is not None else torch.ones_like(ids[row], dtype=torch.bool)
        parts = [ids[row][keep]] + ([labels[row][keep]] if labels is not None and labels.dim() > 1 else [])
        if labels is not None and labels.dim() == 1:
            parts.append(labels[row : row + 1])
        keys.append(b"|".join(p.cpu().numpy().tobytes() for p in parts))
    return keys


def _row(labels: torch.Tensor | None, row: int) -> torch.Tensor | None:
    return None if labels is None else labels[row : row + 1]


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel (or similar) wrapper."""
    return getattr(model, "module", model)


# --- building the teacher from the config ------------------------------------------------------


def build_teacher(config: RunConfig, model: nn.Module, tokenizer, log=print) -> Teacher:
    """The teacher ``continual.distill.teacher`` names, checked against the student's tokenizer."""
    from peft import PeftModel

    spec = config.continual.distill.teacher
    if spec == "base" and isinstance(model, PeftModel):
        log("distill: teacher = the base weights with the LoRA adapters disabled (no second copy)")
        return AdapterOffTeacher()
    if config.task.type != "sft":
        raise ConfigError(
            f"a separate teacher model is not supported for task.type {config.task.type!r} yet",
            where="continual.distill.teacher",
            hint="use method.type: lora with teacher: base (the base weights with the adapters disabled)",
        )
    teacher_model, teacher_tokenizer = _load_teacher(config, spec)
    check_same_vocabulary(tokenizer, teacher_tokenizer, spec)
    log(f"distill: teacher = {spec if spec != 'base' else config.model.name} (a separate frozen copy)")
    return FrozenTeacher(teacher_model)


def _load_teacher(config: RunConfig, spec: str):
    """(model, tokenizer) of ``base`` (a fresh copy of model.name), a finished run directory, or a model."""
    from pathlib import Path

    from dstune.config.schema import MethodSection
    from dstune.models.inference import load_for_inference
    from dstune.models.load import load_causal_lm, load_tokenizer

    if spec != "base" and (Path(spec) / "config.yaml").is_file():
        loaded = load_for_inference(spec)
        return loaded.model, loaded.tokenizer
    model_cfg = config.model if spec == "base" else config.model.model_copy(update={"name": spec, "revision": None})
    return load_causal_lm(model_cfg, MethodSection(type="full")), load_tokenizer(model_cfg)


def check_same_vocabulary(student_tokenizer, teacher_tokenizer, teacher: str) -> None:
    """Token-level distillation compares distributions id by id: the vocabularies must be identical."""
    student, other = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if student == other:
        return
    differing = sorted(set(student.items()) ^ set(other.items()), key=lambda item: item[1])[:5]
    raise ConfigError(
        f"the teacher {teacher!r} has a different vocabulary ({len(other):,} tokens) than the model being "
        f"trained ({len(student):,} tokens); e.g. {', '.join(f'{tok!r}={i}' for tok, i in differing)} differ",
        where="continual.distill.teacher",
        hint="use a teacher with the same tokenizer (the same model family), e.g. teacher: base",
    )

