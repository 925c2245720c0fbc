"""Read data rows from JSONL, JSON, CSV/TSV, Parquet, plain-text files or a Hugging Face dataset.

Every row keeps where it came from (file and line, or file and row), so that later stages can
report a bad row as ``data/train.jsonl:7: reason``. Files are read as a stream (line by line, or
Parquet batch by batch), so a large file is never held in memory as a whole; only a JSON array
file is parsed at once. Problems with the file itself (missing, undecodable, empty) raise
:class:`~dstune.errors.DataError` at once; a row that cannot be parsed (invalid JSON, an array
where an object belongs, a ragged CSV row) is yielded by :func:`iter_records` with its ``error``
set, so that callers can stop or skip it; :func:`read_records` stops at the first one.
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dstune.errors import DataError

JSONL_SUFFIXES = (".jsonl", ".ndjson")
TEXT_SUFFIXES = (".txt",)
SUPPORTED_SUFFIXES = (
    *JSONL_SUFFIXES,
    ".json",
    ".csv",
    ".tsv",
    ".parquet",
    *TEXT_SUFFIXES,
)
_SUPPORTED_TEXT = ", ".join(SUPPORTED_SUFFIXES) + ", or a cached Hugging Face dataset name (name or name:split)"
_PARQUET_BATCH = 10_000


@dataclass(frozen=True)
class Record:
    """One data row and where it came from."""

    source: str
    """File path or Hugging Face dataset name."""
    line: int
    """1-based physical line (JSONL, CSV, TSV, text) or 1-based element index (JSON array, Parquet, HF dataset)."""
    data: dict
    unit: Literal["line", "row"] = "line"
    """Whether ``line`` counts physical lines or rows."""
    error: str | None = None
    """Why the row could not be parsed (``data`` then holds ``{"raw": text}``); None for a good row."""

    def where(self) -> str:
        """``data/train.jsonl:7`` for line-based files, ``data/train.parquet: row 7`` otherwise."""
        return f"{self.source}:{self.line}" if self.unit == "line" else f"{self.source}: row {self.line}"


def read_records(spec: str, *, encoding: str = "utf-8") -> list[Record]:
    """Every row of a local file or a cached Hugging Face dataset; the first unparseable row is an error."""
    records = []
    for record in iter_records(spec, encoding=encoding):
        if record.error:
            raise DataError(
                record.error,
                where=record.where(),
                hint="fix the row (JSONL: one complete JSON object per line; CSV/TSV: quote fields that "
                "contain the delimiter)",
            )
        records.append(record)
    return records


def iter_records(spec: str, *, encoding: str = "utf-8") -> Iterator[Record]:
    """Stream the rows of ``spec`` (a file or ``name[:split]`` of a Hugging Face dataset) in order.

    Raises :class:`DataError` for a missing, undecodable or empty input; unparseable rows come
    back with :attr:`Record.error` set.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        raise DataError(f"{spec} is a directory", hint=f"point at one data file: {_SUPPORTED_TEXT}")
    if path.is_file():
        rows = _file_rows(path, spec, encoding)
    elif path.suffix.lower() in SUPPORTED_SUFFIXES or _looks_like_path(spec):
        raise DataError(
            f"data file not found: {spec}",
            hint=f"check the path; supported inputs: {_SUPPORTED_TEXT}",
        )
    else:
        rows = _hf_rows(spec)
    count = 0
    for count, record in enumerate(rows, start=1):
        yield record
    if count == 0:
        raise DataError(
            "no data rows",
            where=spec,
            hint="the file is empty or has only a header; add rows",
        )


def _looks_like_path(spec: str) -> bool:
    """True for specs that can only be meant as local paths (a Hub id is ``name`` or ``owner/name``)."""
    return spec.startswith((".", "/", "~")) or "\\" in spec or spec.count("/") > 1


def _file_rows(path: Path, spec: str, encoding: str) -> Iterator[Record]:
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(
            f"unsupported data file type {suffix or '(no extension)'!r}",
            where=spec,
            hint=f"convert it to one of: {_SUPPORTED_TEXT}",
        )
    if suffix == ".parquet":
        return _parquet_rows(path, spec)
    codec = _check_codec(encoding)
    if not any(text.strip() for _, text in _decoded_lines(path, spec, codec, encoding)):
        raise DataError(
            "the data file is empty",
            where=spec,
            hint="add rows, or point data.train at another file",
        )
    lines = _decoded_lines(path, spec, codec, encoding)
    if suffix in (".csv", ".tsv"):
        return _delimited_rows(lines, spec, "\t" if suffix == ".tsv" else ",")
    if suffix == ".json":
        return _json_rows("".join(text for _, text in lines), spec)
    if suffix in TEXT_SUFFIXES:
        return _text_rows(lines, spec)
    return _jsonl_rows(lines, spec)


def _check_codec(encoding: str) -> str:
    """The Python codec for ``encoding``; it must keep ``\\n`` a single byte so that files can be read by line."""
    try:
        codec = codecs.lookup(encoding).name
    except LookupError:
        raise DataError(
            f"unknown text encoding {encoding!r}",
            where="data.encoding",
            hint="use a Python codec name such as utf-8, gbk or gb18030",
        ) from None
    if "\n".encode(codec) != b"\n":
        raise DataError(
            f"encoding {encoding!r} is not ASCII-compatible, so the file cannot be read line by line",
            where="data.encoding",
            hint="convert the file to UTF-8",
        )
    return codec


def _decoded_lines(path: Path, spec: str, codec: str, encoding: str) -> Iterator[tuple[int, str]]:
    """``(line number, text with its line ending)``; a UTF-8 BOM is dropped; bad bytes name line and offset."""
    offset = 0
    with open(path, "rb") as stream:
        for number, raw in enumerate(stream, start=1):  # splits on b"\n" only: JSON strings may hold U+2028
            try:
                text = raw.decode(codec)
            except UnicodeDecodeError as exc:
                at = offset + exc.start
                raise DataError(
                    f"cannot decode byte 0x{raw[exc.start]:02x} at byte offset {at} as {encoding}",
                    where=f"{spec}:{number}",
                    hint="set data.encoding to the file's encoding (Chinese files are often gbk or gb18030), "
                    "or convert the file to UTF-8",
                ) from None
            offset += len(raw)
            yield number, text.removeprefix("\ufeff") if number == 1 else text


def _jsonl_rows(lines: Iterator[tuple[int, str]], spec: str) -> Iterator[Record]:
    """One JSON object per line; blank lines are skipped."""
    for number, text in lines:
        if text.strip():
            yield _parse_object(text, spec, number, "line")


def _parse_object(text: str, spec: str, number: int, unit: Literal["line", "row"]) -> Record:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return Record(
            spec,
            number,
            {"raw": text.rstrip("\r\n")},
            unit,
            f"invalid JSON: {exc.msg} (column {exc.colno})",
        )
    return _object_record(value, spec, number, unit)


def _object_record(value: object, spec: str, number: int, unit: Literal["line", "row"]) -> Record:
    if isinstance(value, dict):
        return Record(spec, number, value, unit)
    return Record(
        spec,
        number,
        {"raw": value},
        unit,
        f"expected a JSON object ({{...}}), got a JSON {_json_type(value)}",
    )


def _json_type(value: object) -> str:
    names = {
        list: "array",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def _json_rows(text: str, spec: str) -> Iterator[Record]:
    """A JSON array of objects, a single object, or JSONL content in a .json file."""
    if not text.lstrip().startswith("["):
        try:
            yield _object_record(json.loads(text), spec, 1, "line")
        except json.JSONDecodeError:
            yield from _jsonl_rows(enumerate(text.split("\n"), start=1), spec)
        return
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"invalid JSON: {exc.msg} (column {exc.colno})",
            where=f"{spec}:{exc.lineno}",
            hint="fix the JSON syntax",
        ) from None
    for index, row in enumerate(rows, start=1):
        yield _object_record(row, spec, index, "row")


def _delimited_rows(lines: Iterator[tuple[int, str]], spec: str, delimiter: str) -> Iterator[Record]:
    """CSV/TSV with a header row (line 1); quoted fields may span lines, rows keep their first line."""
    reader = csv.reader((text for _, text in lines), delimiter=delimiter)
    header = next(reader)
    start = reader.line_num + 1
    for row in reader:
        if len(row) == len(header):
            yield Record(spec, start, dict(zip(header, row)))
        elif row:
            reason = f"row has {len(row)} fields but the header has {len(header)} ({', '.join(header)})"
            yield Record(spec, start, {"raw": delimiter.join(row)}, "line", reason)
        start = reader.line_num + 1


def _text_rows(lines: Iterator[tuple[int, str]], spec: str) -> Iterator[Record]:
    """Plain text: each non-blank line is one ``{"text": ...}`` example."""
    for number, text in lines:
        if text.strip():
            yield Record(spec, number, {"text": text.rstrip("\r\n")})


def _parquet_rows(path: Path, spec: str) -> Iterator[Record]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=_PARQUET_BATCH)
        index = 0
        for batch in batches:
            for row in batch.to_pylist():
                index += 1
                yield Record(spec, index, row, "row")
    except (pyarrow.ArrowException, OSError) as exc:
        raise DataError(
            f"cannot read Parquet file: {exc}",
            where=spec,
            hint="check that the file is valid Parquet",
        ) from None


def _hf_rows(spec: str) -> Iterator[Record]:
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
    for index, row in enumerate(dataset, start=1):
        yield Record(spec, index, dict(row), "row")
