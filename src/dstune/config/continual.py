"""The ``continual`` section: protect what the model already knew while it learns a new task.

Three protections, each optional, and a measurement::

    continual:
      ewc:                         # elastic weight consolidation (diagonal Fisher)
        lambda: 1000
        fisher_data: data/task_a.jsonl
        fisher_samples: 128
        previous_fisher: runs/task_a   # chain A -> B -> C: accumulate that run's Fisher (online EWC)
        decay: 0.9
      distill:                     # knowledge distillation from a teacher
        teacher: base              # the model before this run (LoRA: adapters disabled, no second copy)
        temperature: 2.0
        alpha: 0.5
      replay:                      # mix earlier or general data into every epoch
        data: data/general.jsonl
        ratio: 0.2
      retain_eval:                 # sets whose loss must not rise: evaluated before training and at every eval
        task_a: data/task_a_val.jsonl
        general: data/general_val.jsonl
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from dstune.config.base import Section

_SET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class EWCSection(Section):
    """Elastic weight consolidation: a quadratic pull towards the parameters before this run, weighted by
    the diagonal Fisher information of the earlier task(s) — ``lambda / 2 * sum F_i (theta_i - theta*_i)^2``."""

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)  # "lambda"

    lambda_: float = Field(
        1.0, alias="lambda", gt=0,
        description="Penalty strength. The Fisher is in units of the per-example mean token loss, so useful values "
        "depend on the model and method (LoRA on a 135M model: 1e2-1e5); watch `ewc_penalty` in the logs.",
    )
    fisher_data: str | list[str] | None = Field(
        None, description="Data of the earlier task(s) (any format data.train accepts) to estimate the Fisher on.",
    )
    fisher_samples: int = Field(128, gt=0, description="Examples drawn (seeded) from fisher_data for the estimate.")
    fisher: Literal["empirical", "true"] = Field(
        "empirical",
        description="empirical: gradients of the data's own labels; true: of labels sampled from the model's "
        "predictions (the Fisher information proper; a little noisier, needs no trustworthy labels).",
    )
    previous_fisher: str | None = Field(
        None,
        description="A run directory (its continual/fisher.safetensors) or a .safetensors file holding the Fisher "
        "of still earlier tasks; it is added as decay * F_previous (online EWC), so a chain A -> B -> C accumulates.",
    )
    decay: float = Field(
        1.0, gt=0.0, le=1.0, description="Online-EWC decay of previous_fisher (1.0: older tasks count fully)."
    )

    @model_validator(mode="after")
    def _needs_a_fisher(self) -> EWCSection:
        if self.fisher_data is None and self.previous_fisher is None:
            raise ValueError(
                "continual.ewc needs fisher_data (the earlier task's data) and/or previous_fisher (a run directory "
                "with continual/fisher.safetensors)"
            )
        return self

    @property
    def fisher_files(self) -> list[str]:
        """``fisher_data`` as a list (empty when unset)."""
        if self.fisher_data is None:
            return []
        return [self.fisher_data] if isinstance(self.fisher_data, str) else list(self.fisher_data)


class DistillSection(Section):
    """Knowledge distillation: ``(1 - alpha) * task loss + alpha * T^2 * KL`` between teacher and student
    distributions at the supervised positions (every assistant token; every token of replayed text; every
    labelled row or token of a classification task)."""

    teacher: str = Field(
        "base",
        description="base: the model this run starts from (LoRA: the same weights with adapters disabled, no "
        "second copy; full/freeze: a frozen copy); or a finished run directory; or a model id / folder with "
        "the same tokenizer. classification / token_classification: a finished run directory of such a task "
        "(one task, pooling: auto) with the same labels in the same order, e.g. the previous task's run; base "
        "only when model.name is already a classifier trained on these labels (else its head is untrained).",
    )
    temperature: float = Field(2.0, gt=0, description="Softmax temperature T for both distributions.")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="Weight of the distillation term against the task loss.")
    direction: Literal["forward", "reverse"] = Field(
        "forward", description="forward: KL(teacher || student) (Hinton); reverse: KL(student || teacher)."
    )
    cache_teacher: bool = Field(
        False,
        description="Keep the teacher's logits of each training example in CPU memory (float16), so later "
        "epochs skip the teacher forward pass. For small data sets: costs seq_len x vocab x 2 bytes per example.",
    )


class ReplaySection(Section):
    """Rehearsal: mix rows of earlier-task or general data into the training set of every epoch."""

    data: str | list[str] = Field(description="Earlier-task or general data (any format data.train accepts).")
    ratio: float = Field(
        0.2, gt=0.0, lt=1.0, description="Share of replayed rows in the mixed training set (0.2: one in five)."
    )

    @property
    def files(self) -> list[str]:
        return [self.data] if isinstance(self.data, str) else list(self.data)


class ContinualSection(Section):
    """Continual learning: EWC, distillation and replay against forgetting, and forgetting measured."""

    ewc: EWCSection | None = Field(None, description="Elastic weight consolidation.")
    distill: DistillSection | None = Field(None, description="Knowledge distillation from a teacher.")
    replay: ReplaySection | None = Field(None, description="Replay of earlier or general data.")
    retain_eval: dict[str, str] = Field(
        default_factory=dict,
        description="name: data file. Evaluated before training, at every evaluation and at the end; the "
        "forgetting (loss now minus loss before training) is logged as forgetting_<name>.",
    )
    retain_max_samples: int | None = Field(
        128, gt=0, description="Examples used from each retain_eval set (seeded sample); null uses them all."
    )

    @field_validator("retain_eval")
    @classmethod
    def _names_are_metric_safe(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [name for name in value if not _SET_NAME.match(name)]
        if bad:
            raise ValueError(
                f"retain_eval names {bad} must be letters, digits, '_' or '-' (they become metric names)"
            )
        return value
