"""Read data rows from JSONL, JSON, CSV/TSV, Parquet files or a Hugging Face dataset.

Every row keeps where it came from (file and line, or file and row), so that later stages can
report a bad row as ``data/train.jsonl:7: reason``. Problems with the file itself (missing,
undecodable, not JSON, ragged CSV) raise :class:`~dstune.errors.DataError` at once.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dstune.errors import DataError

JSONL_SUFFIXES = (".jsonl", ".ndjson")
SUPPORTED_SUFFIXES = (*JSONL_SUFFIXES, ".json", ".csv", ".tsv", ".parquet")
_SUPPORTED_TEXT = ", ".join(SUPPORTED_SUFFIXES) + ", or a cached Hugging Face dataset name (name or name:split)"


@dataclass(frozen=True)
class Record:
    """One data row and where it came from."""

    source: str
    """File path or Hugging Face dataset name."""
    line: int
    """1-based physical line (JSONL, CSV, TSV) or 1-based element index (JSON array, Parquet, HF dataset)."""
    data: dict
    unit: Literal["line", "row"] = "line"
    """Whether ``line`` counts physical lines or rows."""

    def where(self) -> str:
        """``data/train.jsonl:7`` for line-based files, ``data/train.parquet: row 7`` otherwise."""
        return f"{self.source}:{self.line}" if self.unit == "line" else f"{self.source}: row {self.line}"


def read_records(spec: str, *, encoding: str = "utf-8") -> list[Record]:
    """Read every row of a local file or a cached Hugging Face dataset (``name`` or ``name:split``)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        raise DataError(f"{spec} is a directory", hint=f"point at one data file: {_SUPPORTED_TEXT}")
    if path.is_file():
        records = _read_file(path, spec, encoding)
    elif path.suffix.lower() in SUPPORTED_SUFFIXES or _looks_like_path(spec):
        raise DataError(f"data file not found: {spec}", hint=f"check the path; supported inputs: {_SUPPORTED_TEXT}")
    else:
        records = _read_hf_dataset(spec)
    if not records:
        raise DataError("no data rows", where=spec, hint="the file is empty or has only a header; add rows")
    return records


def _looks_like_path(spec: str) -> bool:
    """True for specs that can only be meant as local paths (a Hub id is ``name`` or ``owner/name``)."""
    return spec.startswith((".", "/", "~")) or "\\" in spec or spec.count("/") > 1


def _read_file(path: Path, spec: str, encoding: str) -> list[Record]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(path, spec)
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(
            f"unsupported data file type {suffix or '(no extension)'!r}",
            where=spec,
            hint=f"convert it to one of: {_SUPPORTED_TEXT}",
        )
    text = _decode(path.read_bytes(), spec, encoding)
    if not text.strip():
        raise DataError("the data file is empty", where=spec, hint="add rows, or point data.train at another file")
    if suffix in (".csv", ".tsv"):
        return _read_delimited(text, spec, "\t" if suffix == ".tsv" else ",")
    if suffix == ".json":
        return _read_json(text, spec)
    return list(_read_jsonl(text, spec))


def _decode(raw: bytes, spec: str, encoding: str) -> str:
    """Decode file bytes, dropping a UTF-8 byte-order mark; report the line and byte offset of bad bytes."""
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        return raw.decode(codec).removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"cannot decode byte 0x{raw[exc.start]:02x} at byte offset {exc.start} as {encoding}",
            where=f"{spec}:{line}",
            hint="set data.encoding to the file's encoding (Chinese files are often gb18030), "
            "or convert the file to UTF-8",
        ) from None
    except LookupError:
        raise DataError(
            f"unknown text encoding {encoding!r}", hint="use a Python codec name such as utf-8 or gb18030"
        ) from None


def _read_jsonl(text: str, spec: str) -> Iterator[Record]:
    """One JSON object per line; blank lines are skipped."""
    for number, line in enumerate(text.split("\n"), start=1):  # not splitlines(): JSON strings may hold U+2028
        if line.strip():
            yield Record(spec, number, _parse_object(line, f"{spec}:{number}"))


def _parse_object(line: str, where: str) -> dict:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"invalid JSON: {exc.msg} (column {exc.colno})",
            where=where,
            hint="each line of a JSONL file must be one complete JSON object",
        ) from None
    return _require_object(value, where)


def _require_object(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise DataError(
            f"expected a JSON object ({{...}}), got a {_json_type(value)}",
            where=where,
            hint='each row must be an object such as {"messages": [...]} or {"instruction": ..., "output": ...}',
        )
    return value


def _json_type(value: object) -> str:
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _read_json(text: str, spec: str) -> list[Record]:
    """A JSON array of objects, a single object, or JSONL content in a .json file."""
    if not text.lstrip().startswith("["):
        try:
            return [Record(spec, 1, _require_object(json.loads(text), f"{spec}:1"))]
        except json.JSONDecodeError:
            return list(_read_jsonl(text, spec))
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"invalid JSON: {exc.msg} (column {exc.colno})", where=f"{spec}:{exc.lineno}", hint="fix the JSON syntax"
        ) from None
    return [Record(spec, i, _require_object(row, f"{spec}: row {i}"), "row") for i, row in enumerate(rows, start=1)]


def _read_delimited(text: str, spec: str, delimiter: str) -> list[Record]:
    """CSV/TSV with a header row (line 1); quoted fields may span lines, rows keep their first line."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = next(reader)
    records: list[Record] = []
    start = reader.line_num + 1
    for row in reader:
        if row:
            if len(row) != len(header):
                raise DataError(
                    f"row has {len(row)} fields but the header has {len(header)} ({', '.join(header)})",
                    where=f"{spec}:{start}",
                    hint="quote fields that contain the delimiter, or fix the row",
                )
            records.append(Record(spec, start, dict(zip(header, row))))
        start = reader.line_num + 1
    return records


def _read_parquet(path: Path, spec: str) -> list[Record]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pyarrow.ArrowException, OSError) as exc:
        raise DataError(
            f"cannot read Parquet file: {exc}", where=spec, hint="check that the file is valid Parquet"
        ) from None
    return [Record(spec, i, row, "row") for i, row in enumerate(rows, start=1)]


def _read_hf_dataset(spec: str) -> list[Record]:
    """``name`` or ``name:split`` from the Hugging Face cache (or the Hub when online)."""
    import datasets

    name, _, split = spec.partition(":")
    try:
        dataset = datasets.load_dataset(name, split=split or "train")
    except Exception as exc:  # datasets raises many types here: offline, not found, bad split, ...
        raise DataError(
            f"{spec!r} is not a local file and could not be loaded as a Hugging Face dataset "
            f"(it is not cached, or this machine is offline): {exc}",
            hint=f"use a local file ({', '.join(SUPPORTED_SUFFIXES)}), or download the dataset once while online",
        ) from None
    return [Record(spec, i, dict(row), "row") for i, row in enumerate(dataset, start=1)]
