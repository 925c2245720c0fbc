"""The export folder: one place per source model holding its artifacts and what is known about them.

::

    <run>/export/            (or --output DIR; plain models default to ./exports/<name>/)
      artifacts.json         source, task, and each artifact's folder + verification summary
      merged/                safetensors + tokenizer + chat template + README.md + verification.json
                             (+ heads/: a classification run's label files)
      onnx/                  model.onnx (+ .data) + export.json + tokenizer (+ heads/) + verification.json
      onnx-int8/             the same, weights quantised to int8
      bench.json             written by `dstune bench`
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dstune.errors import DstuneError

MANIFEST = "artifacts.json"


@dataclass(frozen=True)
class Bundle:
    """An export folder and its manifest."""

    root: Path

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def manifest(self) -> dict[str, Any]:
        """The manifest ({} when nothing was exported yet)."""
        if not self.manifest_path.is_file():
            return {}
        return json.loads(self.manifest_path.read_text(encoding="utf-8"))

    def artifact_dir(self, name: str) -> Path:
        return self.root / name

    def fresh_dir(self, name: str) -> Path:
        """An empty folder for artifact ``name`` (an older export of it is replaced)."""
        path = self.artifact_dir(name)
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def record(self, name: str, *, source: Path, task: str, verification: dict[str, Any], **extra: Any) -> None:
        """Add or replace artifact ``name`` in the manifest."""
        manifest = self.manifest()
        manifest.update({"source": str(Path(source).resolve()), "task": task})
        manifest.setdefault("artifacts", {})[name] = {
            "path": name,
            "passed": verification["passed"],
            "figures": verification["figures"],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **extra,
        }
        self.root.mkdir(parents=True, exist_ok=True)
        self.manifest_path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    def verified(self, name: str) -> Path | None:
        """The folder of artifact ``name`` if it was exported and passed verification."""
        entry = self.manifest().get("artifacts", {}).get(name)
        return self.root / entry["path"] if entry and entry["passed"] else None


def default_root(source: Path, output: Path | None) -> Path:
    """Where exports of ``source`` go: ``--output``, else ``<run>/export``, else ``./exports/<name>``."""
    if output is not None:
        return Path(output)
    if (source / "config.yaml").is_file():
        return source / "export"
    return Path("exports") / (source.name or "model").removesuffix(".gguf")


def find_bundle(artifact: Path) -> Bundle:
    """The export folder for `dstune bench ARTIFACT`: the folder itself, its parent, or ``<run>/export``."""
    artifact = Path(artifact)
    for candidate in (artifact, artifact.parent, artifact / "export"):
        if (candidate / MANIFEST).is_file():
            return Bundle(candidate)
    raise DstuneError(
        f"no exported artifacts found at {artifact}",
        where=str(artifact),
        hint=f"export first: dstune export {artifact} --format onnx --quantize int8 "
        "(or pass the export folder that holds artifacts.json)",
    )
