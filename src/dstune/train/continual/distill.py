"""Knowledge distillation: keep the student's output distribution close to a teacher's.

The loss hook mixes ``(1 - alpha) * task loss + alpha * T^2 * KL`` with the KL between the
temperature-softened distributions of teacher and student at the supervised positions: every
assistant token of an SFT example (and every token of replayed text), every labelled token or row
of a classification batch. It works on logits only, so any task whose model returns ``logits``
can use it.

Teachers (``continual.distill.teacher``):

- SFT: ``base``, the run's own base weights with the LoRA adapters disabled (no second copy in
  memory; full/freeze: a frozen copy), or a separate frozen model: a finished run, a model id or
  folder with the same tokenizer.
- classification / token_classification: logits are compared label by label, so the teacher must
  have the student's label names in the same order. The usual teacher is the previous task's
  finished run directory (transformers classification class, one task, same labels, same
  vocabulary). ``base`` is accepted only when ``model.name`` is itself a classifier trained on these
  labels (its config's ``id2label`` equals the run's labels): otherwise the base head is the new,
  randomly initialised one. Students with dstune's own heads (``pooling: mean``, multitask) return a
  dict of logits per task and are refused for now.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

from dstune.errors import ConfigError, ModelError
from dstune.train.continual.data import model_device, model_inputs, supervised_logits

if TYPE_CHECKING:
    from dstune.config.continual import DistillSection
    from dstune.config.schema import RunConfig


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0, direction: str = "forward",
    vocab_size: int | None = None, independent: bool = False,
) -> torch.Tensor:
    """``T^2 * KL`` between the softened distributions, averaged over rows (``[N, V]`` logits each).

    ``independent`` (multi-label classification: one sigmoid per label): the sum over labels of the
    KL between the two Bernoulli distributions of each label, instead of one softmax over the row.

    forward: KL(teacher || student), the classic Hinton loss; reverse: KL(student || teacher). Both
    are zero exactly when the two distributions agree. Logits of different widths are cut to the
    shorter one only when both cover ``vocab_size`` (the tokenizer's length: checkpoints pad their
    embedding matrices differently); any other mismatch (label sets, vocabularies) is an error.
    """
    width = min(student.size(-1), teacher.size(-1))
    if student.size(-1) != teacher.size(-1) and (vocab_size is None or width < vocab_size):
        raise ConfigError(
            f"the teacher's logits have {teacher.size(-1)} columns and the student's {student.size(-1)}"
            + (f" (the tokenizer has {vocab_size} tokens)" if vocab_size is not None else "")
            + ": they do not describe the same outputs",
            where="continual.distill.teacher",
            hint="use a teacher with the same tokenizer (SFT) or the same labels in the same order (classification)",
        )
    if student.size(0) == 0:  # no supervised position in this batch
        return student.sum() * 0.0
    student, teacher = student[..., :width].float() / temperature, teacher[..., :width].float() / temperature
    if independent:
        # log p(on), log p(off) of each label, as a trailing axis of two outcomes
        s = torch.stack([nn.functional.logsigmoid(student), nn.functional.logsigmoid(-student)], dim=-1)
        t = torch.stack([nn.functional.logsigmoid(teacher), nn.functional.logsigmoid(-teacher)], dim=-1)
        p, q = (t, s) if direction == "forward" else (s, t)
        kl = (p.exp() * (p - q)).sum(dim=(-1, -2)).mean()
        return kl * temperature**2
    s = nn.functional.log_softmax(student, dim=-1)
    t = nn.functional.log_softmax(teacher, dim=-1)
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

    def __init__(self, teacher: Teacher, settings: DistillSection, *, shift: bool, cache: bool = False,
                 vocab_size: int | None = None, independent: bool = False) -> None:
        self.teacher = teacher
        self.independent = independent  # multi-label: per-label Bernoulli KL
        self.settings = settings
        self.shift = shift
        self.vocab_size = vocab_size  # SFT: the tokenizer's length (logits may be padded beyond it)
        self.cache: dict[bytes, torch.Tensor] | None = {} if cache else None

    def __call__(self, model, inputs, outputs, loss):
        labels = inputs.get("labels")
        student = supervised_logits(outputs.logits, labels, self.shift)
        teacher = self.teacher_rows(model, inputs).to(student.device)
        kl = distillation_loss(student, teacher, self.settings.temperature, self.settings.direction, self.vocab_size,
                               self.independent)
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


LABELLED_TASKS = ("classification", "token_classification")


def build_teacher(config: RunConfig, model: nn.Module, tokenizer, log=print) -> Teacher:
    """The teacher ``continual.distill.teacher`` names, checked against the student's tokenizer (and labels)."""
    from peft import PeftModel

    from dstune.models.headed import HeadedModel

    spec = config.continual.distill.teacher
    if isinstance(_unwrap(model), HeadedModel):
        raise ConfigError(
            "distillation needs a transformers classification class (pooling: auto) for now: this run uses "
            "dstune's own heads (pooling: mean, multitask, or an architecture without such a class), which "
            "return a dict of logits per task that the distillation cannot compare yet",
            where="continual.distill",
            hint="use task.pooling: auto on an architecture with a *ForSequenceClassification / "
            "*ForTokenClassification class, or remove continual.distill for this run",
        )
    if config.task.type in LABELLED_TASKS:
        return _labelled_teacher(config, model, tokenizer, spec, log)
    if config.task.type != "sft":
        raise ConfigError(
            f"distillation is not supported for task.type {config.task.type!r} yet",
            where="continual.distill.teacher",
            hint="remove continual.distill for this run",
        )
    if spec == "base" and isinstance(model, PeftModel):
        log("distill: teacher = the base weights with the LoRA adapters disabled (no second copy)")
        return AdapterOffTeacher()
    teacher_model, teacher_tokenizer = _load_teacher(config, spec)
    check_same_vocabulary(tokenizer, teacher_tokenizer, spec)
    log(f"distill: teacher = {spec if spec != 'base' else config.model.name} (a separate frozen copy)")
    return FrozenTeacher(teacher_model)


def _labelled_teacher(config: RunConfig, model: nn.Module, tokenizer, spec: str, log) -> Teacher:
    """Classification / token classification: a teacher with exactly the student's labels, in order."""
    from pathlib import Path

    from peft import PeftModel

    from dstune.models.predict import load_predictor

    labels = label_names(model)
    if spec == "base":
        base = _base_labels(config)
        if base != labels:
            raise ConfigError(
                f"teacher: base would distil towards the classification head of {config.model.name!r}, which "
                f"is not trained on this run's labels {labels} (its config names {base}): the head is newly "
                "initialised, so its logits are random",
                where="continual.distill.teacher",
                hint="set teacher to a finished classification run directory with the same labels in the same "
                "order (e.g. the previous task's run), or model.name to a classifier trained on these labels",
            )
        if isinstance(model, PeftModel):
            log("distill: teacher = the base classifier with the LoRA adapters disabled (no second copy)")
            return AdapterOffTeacher()
        teacher_model, teacher_tokenizer = _load_base_classifier(config)
        check_same_vocabulary(tokenizer, teacher_tokenizer, spec)
        log(f"distill: teacher = {config.model.name} (a separate frozen copy)")
        return FrozenTeacher(teacher_model)
    if not (Path(spec) / "config.yaml").is_file():
        raise ConfigError(
            f"the teacher {spec!r} is not a finished run directory (no config.yaml in it)",
            where="continual.distill.teacher",
            hint="for classification the teacher is a finished classification run directory with the same "
            "labels (e.g. the previous task's run), or base when model.name is already such a classifier",
        )
    try:
        predictor = load_predictor(spec)
    except ModelError as exc:
        raise ConfigError(
            f"the teacher run {spec!r} cannot be loaded as a classification run: {exc.message}",
            where="continual.distill.teacher",
            hint="use a finished classification / token_classification run directory with the same labels",
        ) from None
    if predictor.implementation != "transformers" or len(predictor.specs) != 1:
        raise ConfigError(
            f"the teacher run {spec!r} uses dstune's own heads ({len(predictor.specs)} task(s)), whose logits "
            "come as a dict per task: distillation cannot compare them yet",
            where="continual.distill.teacher",
            hint="use a teacher run with one task trained through a transformers classification class "
            "(pooling: auto)",
        )
    teacher_space = predictor.specs[0].space
    teacher_labels = list(teacher_space.names)
    kind = "token" if config.task.type == "token_classification" else "multi" if config.task.multi_label else "single"
    if teacher_space.kind != kind:
        raise ConfigError(
            f"the teacher run {spec!r} predicts {_KINDS[teacher_space.kind]} and this run {_KINDS[kind]}",
            where="continual.distill.teacher",
            hint=f"use a finished {config.task.type} run of the same kind, with the same labels, as teacher",
        )
    if teacher_labels != labels:
        raise ConfigError(
            f"the teacher run {spec!r} has the labels {teacher_labels} and this run {labels}: distillation "
            "compares logits label by label, so both must be the same labels in the same order",
            where="continual.distill.teacher",
            hint=f"set task.labels: {teacher_labels} (if the new data uses these labels) or use a teacher "
            "trained on this run's label set",
        )
    check_same_vocabulary(tokenizer, predictor.tokenizer, spec)
    log(f"distill: teacher = the classification run {spec} (a separate frozen copy)")
    return FrozenTeacher(predictor.model)


_KINDS = {"single": "one label per text", "multi": "several labels per text", "token": "a tag per token"}


def label_names(model: nn.Module) -> list[str]:
    """The label names of a transformers classification model (optionally inside peft), in output order."""
    inner = _unwrap(model)
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    id2label = inner.config.id2label or {}
    return [id2label[key] for key in sorted(id2label, key=int)]


def _base_labels(config: RunConfig) -> list[str]:
    """The label names in ``model.name``'s own config (a plain backbone has transformers' LABEL_0, LABEL_1)."""
    from transformers import AutoConfig

    from dstune.models.load import _from_pretrained, resolve_source

    base = _from_pretrained(AutoConfig, resolve_source(config.model), config.model, local_files_only=True)
    id2label = getattr(base, "id2label", None) or {}
    return [id2label[key] for key in sorted(id2label, key=int)]


def _load_base_classifier(config: RunConfig):
    """(model, tokenizer): a fresh copy of ``model.name`` as its transformers classification class."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    from dstune.config.schema import MethodSection
    from dstune.models.load import load_model, load_tokenizer

    auto = AutoModelForTokenClassification if config.task.type == "token_classification" else (
        AutoModelForSequenceClassification)
    return load_model(auto, config.model, MethodSection(type="full")), load_tokenizer(config.model)


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

