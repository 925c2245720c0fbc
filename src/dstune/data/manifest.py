"""``manifest.json``: input hashes, the resolved config and output hashes of a ``data prepare`` run.

A re-run whose inputs, config and outputs all match the manifest does no work; a changed input
is named before the work is redone.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "manifest.json"
_BLOCK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def input_digest(spec: str) -> str:
    """sha256 of a local file; for a Hugging Face dataset name, the fingerprint of its cached copy."""
    path = Path(spec).expanduser()
    if path.is_file():
        return file_sha256(path)
    import datasets

    from dstune.errors import DataError

    name, _, split = spec.partition(":")
    try:
        return "hf:" + datasets.load_dataset(name, split=split or "train")._fingerprint
    except Exception as exc:  # as in readers: offline, not found, bad split, ...
        raise DataError(f"cannot load {spec!r} to fingerprint it: {exc}", hint="use a local file") from None


@dataclass
class Manifest:
    inputs: dict[str, dict[str, str]]
    """role (train, validation, test, term_map ...) → {"path", "sha256"}."""
    config: dict
    outputs: dict[str, str] | None = None
    """output file name → sha256 (filled in after writing)."""

    @classmethod
    def for_inputs(cls, inputs: dict[str, str], config: dict) -> Manifest:
        return cls(
            {role: {"path": spec, "sha256": input_digest(spec)} for role, spec in inputs.items()},
            config,
        )

    def changes_since(self, out_dir: Path) -> list[str] | None:
        """What differs from the manifest in ``out_dir``: [] when nothing (skip the run), None when there is none."""
        path = out_dir / MANIFEST
        if not path.is_file():
            return None
        old = json.loads(path.read_text(encoding="utf-8"))
        changes = []
        for role, entry in self.inputs.items():
            before = old.get("inputs", {}).get(role)
            if before is None or before != entry:
                was = "new" if before is None else f"sha256 {before['sha256'][:12]} -> {entry['sha256'][:12]}"
                changes.append(f"input {role} ({entry['path']}) changed: {was}")
        changes += [f"input {role} removed" for role in old.get("inputs", {}) if role not in self.inputs]
        if old.get("config") != self.config:
            changes.append("the config changed")
        for name, digest in (old.get("outputs") or {}).items():
            target = out_dir / name
            if not target.is_file() or file_sha256(target) != digest:
                changes.append(f"output {name} is missing or was modified")
        return changes

    def write(self, out_dir: Path, output_names: list[str]) -> None:
        self.outputs = {name: file_sha256(out_dir / name) for name in output_names}
        body = {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "inputs": self.inputs, "config": self.config,
                "outputs": self.outputs}  # fmt: skip
        (out_dir / MANIFEST).write_text(json.dumps(body, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
