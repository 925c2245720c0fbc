"""Read a YAML config, apply ``--set`` overrides, validate, and explain what is wrong."""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from dstune.config.schema import RunConfig
from dstune.errors import ConfigError

_TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "string": "a string",
    "list": "a list",
    "dict": "a mapping (key: value lines)",
    "model": "a mapping (key: value lines)",
    "literal": "one of the allowed values",
}


def load_config(path: str | Path, overrides: list[str] | None = None, model: type[BaseModel] = RunConfig) -> RunConfig:
    """Load ``path``, apply ``key.path=value`` overrides, and return the validated config (a ``model``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}", hint="check the path; run from the folder it is relative to")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"not valid YAML ({getattr(exc, 'problem', exc)})", where=where) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("the top level must be a mapping of sections (model:, data:, ...)", where=str(path))
    for item in overrides or []:
        apply_override(raw, item)
    return validate_config(raw, source=str(path), model=model)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``a.b.c=value`` in the nested dict; the value is parsed as YAML (so 3, true, [a, b] work)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key.path=value, got {item!r}", hint="e.g. --set training.epochs=1")
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(value) if value.strip() else None


def validate_config(raw: dict[str, Any], source: str = "config", model: type[BaseModel] = RunConfig) -> RunConfig:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(err) for err in exc.errors()]
        message = "invalid config:\n" + "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(message, where=source, hint="fix the keys above, or run `dstune train --help`") from None


def _describe(err: dict[str, Any]) -> str:
    loc = [str(part) for part in err["loc"]]
    key = ".".join(loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        known = _fields_at(RunConfig, loc[:-1])
        guess = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
        hint = f"; did you mean '{'.'.join([*loc[:-1], guess[0]])}'?" if guess else ""
        return f"unknown key '{key}'{hint} (allowed here: {', '.join(sorted(known))})"
    if kind == "missing":
        return f"'{key}' is required"
    if kind == "value_error":
        text = str(err["msg"]).removeprefix("Value error, ")
        return text if key == "(top level)" else f"{key}: {text}"
    expected = _TYPE_WORDS.get(kind.split("_")[0])
    got = err.get("input")
    if expected and kind.endswith(("_type", "_parsing")):
        return f"'{key}' must be {expected}, got {got!r}"
    return f"'{key}': {err['msg']} (got {got!r})"


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    """Field names of the section at ``loc`` (for did-you-mean)."""
    parts = iter(loc)
    for part in parts:
        annotation = getattr(model.model_fields.get(part), "annotation", None)
        section = _section_type(annotation)
        if section is None:
            return []
        if typing.get_origin(annotation) in (dict, list):
            next(parts, None)  # the mapping key or list index (e.g. a multitask task name)
        model = section
    return [field.alias or name for name, field in model.model_fields.items()]


def _section_type(annotation) -> type[BaseModel] | None:
    """The section model of a field annotated ``Section`` or ``Section | None``; None for plain values."""
    candidates = typing.get_args(annotation) or (annotation,)
    sections = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
    return sections[0] if len(sections) == 1 else None


def dump_config(config: RunConfig) -> str:
    """The resolved config as YAML, every default filled in."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
