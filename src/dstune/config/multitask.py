"""The ``multitask`` section: one shared backbone, one head per task, each task with its own data.

::

    task: {type: multitask}
    multitask:
      sampling: temperature        # proportional | equal | temperature
      temperature: 2.0
      loss_weighting: fixed        # fixed (each task's weight) | uncertainty (learned, Kendall et al. 2018)
      tasks:
        domain: {type: classification, train: data/domain.jsonl, weight: 1.0}
        ner: {type: token_classification, train: data/ner.jsonl, validation: data/ner_dev.jsonl}

Every training batch holds one task, drawn with probability proportional to its training rows
(``proportional``), equal (``equal``) or proportional to rows^(1/temperature) (``temperature``).
Evaluation reports each task's metrics as ``eval_<task>_<metric>`` and ``eval_combined_score``: the
weighted mean of each task's main metric (macro F1 for classification, entity F1 for token
classification), which early stopping watches by default.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from dstune.config.base import Section
from dstune.config.task import LabelledTaskFields

_TASK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


class MultitaskTask(LabelledTaskFields):
    """One task of a multi-task run: its type, data files and weight, plus the labelled-task settings."""

    type: Literal["classification", "token_classification"] = Field(description="The task's head type.")
    train: str = Field(description="Training data of this task (file or HF dataset name).")
    validation: str | None = Field(None, description="Validation data; if unset, data.eval_split of train.")
    max_samples: int | None = Field(None, gt=0, description="Use only the first N training rows of this task.")
    weight: float = Field(1.0, gt=0.0, description="Loss weight (fixed weighting) and weight in the combined score.")


class MultitaskSection(Section):
    """Shared backbone, per-task heads, batch sampling and loss weighting."""

    tasks: dict[str, MultitaskTask] = Field(min_length=1, description="Task name → task settings.")
    sampling: Literal["proportional", "equal", "temperature"] = Field(
        "proportional", description="How the task of each training batch is drawn."
    )
    temperature: float = Field(2.0, gt=0.0, description="temperature sampling: p(task) ∝ rows^(1/temperature).")
    loss_weighting: Literal["fixed", "uncertainty"] = Field(
        "fixed",
        description="fixed: loss = Σ weight·loss_task; uncertainty: loss = Σ exp(-s)·loss_task + s with a learned "
        "s per task (saved with the heads).",
    )

    @field_validator("tasks")
    @classmethod
    def _names_are_identifiers(cls, tasks: dict[str, MultitaskTask]) -> dict[str, MultitaskTask]:
        bad = [name for name in tasks if not _TASK_NAME.match(name)]
        if bad:
            raise ValueError(
                f"task names {bad} must start with a letter and use only letters, digits, _ and - "
                "(they name metrics and head files)"
            )
        return tasks
