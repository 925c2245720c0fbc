"""The config of ``dstune data prepare``: a whole run config, or just its ``data``/``cleaning``/``task`` sections."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from dstune.config.base import Section
from dstune.config.cleaning import CleaningSection, token_rows_problem
from dstune.config.load import load_config
from dstune.config.schema import DataSection, RunConfig, TaskSection
from dstune.errors import ConfigError


class PrepareConfig(Section):
    """A data-only config: what ``data prepare`` needs when there is no model to train yet."""

    data: DataSection
    task: TaskSection = TaskSection()
    cleaning: CleaningSection = CleaningSection()


@dataclass(frozen=True)
class PrepareSettings:
    data: DataSection
    cleaning: CleaningSection
    task: str
    """sft, classification or token_classification: cleaning.task, else task.type."""
    tokenizer: str | None
    """For token lengths: cleaning.tokenizer, else model.name of a run config."""

    def __post_init__(self) -> None:
        # the same rule as `dstune train`: a transform on token lists would be a silent no-op or break the tags
        problem = token_rows_problem(self.cleaning.steps) if self.task == "token_classification" else None
        if problem:
            raise ConfigError(problem, where="cleaning.steps",
                              hint="if these files are not token classification data, set cleaning.task")


def load_prepare_settings(path: str | Path, overrides: list[str] | None = None) -> PrepareSettings:
    """Validate ``path`` as a run config when it has a ``model`` section, else as a data-only config."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) if Path(path).is_file() else None
    except yaml.YAMLError:
        raw = None  # load_config reports it with its line
    is_run = isinstance(raw, dict) and "model" in raw
    config = load_config(path, overrides, model=RunConfig if is_run else PrepareConfig)
    cleaning = config.cleaning or CleaningSection()
    model_name = config.model.name if is_run else None
    return PrepareSettings(
        config.data,
        cleaning,
        cleaning.task or config.task.type,
        cleaning.tokenizer or model_name,
    )
