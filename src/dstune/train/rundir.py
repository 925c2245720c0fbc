"""The run directory (SPEC.md): what lives where, and the rules that keep it honest.

A run is complete exactly when ``metrics.json`` exists: it is written last, after the weights,
so a crashed run never looks finished. Files are written through a temporary name and renamed;
so are checkpoints (:class:`dstune.train.trainer.DstuneTrainer` writes ``.partial-checkpoint-N/``
and renames it), and a ``checkpoint-N`` without ``trainer_state.json`` is never resumed from.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from dstune.config.load import dump_config
from dstune.config.schema import RunConfig
from dstune.errors import ConfigError

CHECKPOINT_COMPLETE = "trainer_state.json"  # the Trainer writes it after the weights, optimizer and RNG states
PARTIAL_CHECKPOINT_PREFIX = ".partial-"  # a checkpoint being written (or whose writing was killed)


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def history(self) -> Path:
        return self.root / "history.jsonl"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def baseline(self) -> Path:
        """Losses measured before training (kept so that a resumed run still reports them)."""
        return self.root / "baseline.json"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def params_report(self) -> Path:
        return self.root / "trainable_params.json"

    @property
    def prep(self) -> Path:
        """Tokenized data shared by the main process with the others (multi-process runs only)."""
        return self.root / "prep"

    def weights_dir(self, method: str) -> Path:
        return self.root / ("adapter" if method in ("lora", "qlora") else "model")

    def checkpoints_by_step(self) -> list[Path]:
        """``checkpoint-N`` folders, oldest first (complete or not)."""
        if not self.checkpoints.is_dir():
            return []
        found = [p for p in self.checkpoints.iterdir() if p.is_dir() and _checkpoint_step(p) is not None]
        return sorted(found, key=_checkpoint_step)

    def last_checkpoint(self) -> Path | None:
        """The newest complete checkpoint (one holding ``trainer_state.json``, which is written last)."""
        complete = [p for p in self.checkpoints_by_step() if (p / CHECKPOINT_COMPLETE).is_file()]
        return complete[-1] if complete else None

    def incomplete_checkpoints(self) -> list[Path]:
        """Checkpoints whose writing did not finish: ``checkpoint-N`` without ``trainer_state.json``, and
        ``.partial-*`` folders left by a process killed while saving."""
        partial = sorted(self.checkpoints.glob(f"{PARTIAL_CHECKPOINT_PREFIX}*")) if self.checkpoints.is_dir() else []
        return [p for p in self.checkpoints_by_step() if not (p / CHECKPOINT_COMPLETE).is_file()] + partial

    def prepare(self, config: RunConfig, resume: bool, *, write: bool = True, log: Callable = print) -> Path | None:
        """Create or check the directory; return the checkpoint to resume from (if resuming).

        ``write=False`` (processes other than the main one) checks without touching anything.
        """
        if resume:
            return self._check_resume(config, write, log)
        if self.metrics.exists():
            raise ConfigError(
                f"{self.root} already holds a finished run",
                where="output_dir",
                hint="choose another output_dir (--set output_dir=runs/new) or delete the old run",
            )
        if self.last_checkpoint() is not None:
            raise ConfigError(
                f"{self.root} holds checkpoints of an unfinished run",
                where="output_dir",
                hint="add --resume to continue it, or choose another output_dir",
            )
        if not write:
            return None
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in (self.history, self.baseline, self.params_report, self.root / "rejected.jsonl"):
            stale.unlink(missing_ok=True)
        write_text_atomic(self.config, dump_config(config))
        return None

    def _check_resume(self, config: RunConfig, write: bool = True, log: Callable = print) -> Path:
        checkpoint = self.last_checkpoint()
        broken = self.incomplete_checkpoints()
        for path in broken:
            log(f"[yellow]note:[/] ignoring {path}: its writing did not finish (killed while saving)")
        if checkpoint is None:
            raise ConfigError(
                f"--resume: no checkpoint found in {self.checkpoints}",
                where="output_dir",
                hint="run without --resume to start from scratch",
            )
        if self.metrics.exists():
            raise ConfigError(f"--resume: {self.root} already holds a finished run", where="output_dir")
        saved = yaml.safe_load(self.config.read_text(encoding="utf-8")) if self.config.exists() else {}
        current = config.model_dump(mode="json")
        changed = sorted(_diff(saved, current))
        if changed:
            raise ConfigError(
                "--resume needs the same config as the interrupted run; these keys differ: " + ", ".join(changed),
                where=str(self.config),
                hint="resume with the saved config (dstune train <output_dir>/config.yaml --resume)",
            )
        if write:
            for path in broken:
                shutil.rmtree(path, ignore_errors=True)
        return checkpoint


def _checkpoint_step(path: Path) -> int | None:
    name, _, step = path.name.partition("-")
    return int(step) if name == "checkpoint" and step.isdigit() else None


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a fully written directory into place (the old one, if any, is removed first)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _diff(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in set(a) | set(b):
            out += _diff(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]
