"""What can be exported, benchmarked or served: a run directory or a plain model, and its task.

Three task kinds are deployable: ``causal-lm`` (SFT runs, any HF causal LM, a .gguf file),
``sequence-classification`` and ``token-classification`` (plain Hugging Face
``*ForSequenceClassification`` / ``*ForTokenClassification`` folders, and run directories whose
``model/`` is one).

Run directories are mapped by their ``task.type``. A task module that trains something else
registers how its runs load with :func:`register_run_task`, e.g. the classification heads::

    register_run_task("classification", "sequence-classification", load_classification_run)

so that export, bench and serve work for it without changes here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dstune.config.deploy import DeploySection
from dstune.errors import ModelError
from dstune.models.inference import LoadedModel, load_for_inference

TaskKind = Literal["causal-lm", "sequence-classification", "token-classification"]
RunLoader = Callable[[Path, Any], LoadedModel]  # (run_dir, RunConfig) -> LoadedModel


@dataclass(frozen=True)
class RunTask:
    """How runs of one ``task.type`` deploy: their task kind, and a loader (None: the default for the kind)."""

    kind: TaskKind
    loader: RunLoader | None = None


RUN_TASKS: dict[str, RunTask] = {"sft": RunTask("causal-lm")}


def register_run_task(task_type: str, kind: TaskKind, loader: RunLoader | None = None) -> None:
    """Declare that runs with ``task.type == task_type`` deploy as ``kind``, loaded by ``loader``."""
    RUN_TASKS[task_type] = RunTask(kind, loader)


@dataclass
class Deployable:
    """A loaded model ready to export / bench / serve, with what it is and how to deploy it."""

    loaded: LoadedModel
    task: TaskKind
    name: str
    settings: DeploySection

    @property
    def model(self):
        return self.loaded.model

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def is_run(self) -> bool:
        return self.loaded.config is not None


def is_run_dir(path: Path) -> bool:
    """A dstune run directory (it has the resolved config.yaml; loading an unfinished one fails clearly)."""
    return (path / "config.yaml").is_file()


def task_of_folder(path: Path) -> TaskKind:
    """The task kind of a Hugging Face model folder, from the architecture named in its config.json."""
    config_file = path / "config.json"
    if not config_file.is_file():
        return "causal-lm"  # a hub id or .gguf file: load_for_inference decides
    architectures = json.loads(config_file.read_text(encoding="utf-8")).get("architectures") or []
    for arch in architectures:
        if arch.endswith("ForSequenceClassification"):
            return "sequence-classification"
        if arch.endswith("ForTokenClassification"):
            return "token-classification"
    return "causal-lm"


def load_deployable(path: str | Path, *, dtype: str | None = None) -> Deployable:
    """Load a run directory or a plain model for deployment (eval mode, the run's own tokenizer and template)."""
    path = Path(path)
    if is_run_dir(path):
        return _load_run(path, dtype)
    task = task_of_folder(path) if path.is_dir() else "causal-lm"
    loaded = _load_classifier(path, task) if task != "causal-lm" else load_for_inference(path, dtype=dtype)
    return Deployable(loaded, task, _name_of(path), DeploySection())


def deploy_settings(path: str | Path) -> DeploySection:
    """The ``deploy`` section of a run's config (defaults for plain models), without loading any weights."""
    path = Path(path)
    if not is_run_dir(path):
        return DeploySection()
    from dstune.models.inference import load_run_config

    return load_run_config(path).deploy or DeploySection()


def _load_run(path: Path, dtype: str | None) -> Deployable:
    from dstune.models.inference import load_run_config

    config = load_run_config(path)
    settings = config.deploy or DeploySection()
    run_task = RUN_TASKS.get(config.task.type)
    if run_task is None:
        kind = task_of_folder(path / "model") if (path / "model").is_dir() else None
        if kind in (None, "causal-lm"):
            raise ModelError(
                f"runs of task.type {config.task.type!r} cannot be exported or served yet",
                where=f"{path}/config.yaml",
                hint="export the run's model/ folder directly if it is a Hugging Face classifier",
            )
        run_task = RunTask(kind)
    if run_task.loader is not None:
        loaded = run_task.loader(path, config)
    elif run_task.kind == "causal-lm":
        loaded = load_for_inference(path, dtype=dtype)
    else:
        loaded = _load_classifier(path / "model", run_task.kind)
        loaded = LoadedModel(loaded.model, loaded.tokenizer, "model", path, config)
    return Deployable(loaded, run_task.kind, _name_of(path), settings)


def _load_classifier(path: Path, task: TaskKind) -> LoadedModel:
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

    cls = AutoModelForSequenceClassification if task == "sequence-classification" else AutoModelForTokenClassification
    try:
        model = cls.from_pretrained(path).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the {task} model in {path}: {exc}") from None
    return LoadedModel(model, tokenizer, "hf", path)


def _name_of(path: Path) -> str:
    """A short model id for the API and file names: the folder (or file) name."""
    path = Path(path)
    return (path.name or str(path)).removesuffix(".gguf")
