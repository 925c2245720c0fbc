"""Deployable artifacts: merged safetensors, ONNX (float32 / int8), each verified against PyTorch.

A registry maps each ``--format`` to its exporter, so a new format is a new module plus one
line here. ``export`` is what `dstune export` calls.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from dstune.config.deploy import ExportSection
from dstune.errors import DstuneError
from dstune.export.bundle import Bundle, default_root
from dstune.export.source import deploy_settings


def _merged(source: Path, bundle: Bundle, settings: ExportSection, quantize: str | None, log: Callable):
    from dstune.export.merge import export_merged

    if quantize:
        raise DstuneError("--quantize applies to --format onnx", hint="drop --quantize, or use --format onnx")
    return [export_merged(source, bundle, settings, log)]


def _onnx(source: Path, bundle: Bundle, settings: ExportSection, quantize: str | None, log: Callable):
    from dstune.export.onnx import export_onnx

    return export_onnx(source, bundle, settings, quantize, log)


FORMATS: dict[str, Callable[..., list[dict[str, Any]]]] = {"merged": _merged, "onnx": _onnx}


def export(source: str | Path, fmt: str, *, quantize: str | None = None, output: str | Path | None = None,
           overrides: dict[str, Any] | None = None, log: Callable = print) -> tuple[Bundle, list[dict[str, Any]]]:
    """Export ``source`` (run directory or model) as ``fmt`` into its export folder; return it and the checks."""
    source = Path(source)
    if fmt not in FORMATS:
        raise DstuneError(f"unknown export format {fmt!r}", hint=f"choose one of: {', '.join(FORMATS)}")
    if not source.exists() and not _looks_like_hub_id(str(source)):
        raise DstuneError(f"{source} does not exist", hint="pass a run directory or a model folder")
    settings = deploy_settings(source).export
    if overrides:
        settings = settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})
        settings = ExportSection.model_validate(settings.model_dump())
    bundle = Bundle(default_root(source, Path(output) if output else None))
    return bundle, FORMATS[fmt](source, bundle, settings, quantize, log)


def _looks_like_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~"))
