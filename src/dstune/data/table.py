"""Validated rows as a memory-mapped Arrow table (a ``datasets.Dataset``), and the rejected rows.

Rows are streamed from the reader through the task schema straight into an Arrow file in batches,
then memory-mapped: a large input is never held in RAM as Python objects, nor twice. Every row
that is not kept becomes a :class:`Rejection` with file, line, stage and reason; ``rejected.jsonl``
lists them all, and ``on_error: fail`` stops on malformed rows listing the first 20 and the total.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from dstune.data.formats import RowError
from dstune.data.readers import Record, iter_records
from dstune.data.validate import ARROW_SCHEMA, RowSchema
from dstune.errors import DataError

if TYPE_CHECKING:
    import datasets

MAX_LISTED_PROBLEMS = 20
_BATCH_ROWS = 5_000


@dataclass(frozen=True)
class Rejection:
    """A row that was left out, where it came from and why."""

    where: str
    line: int
    stage: str
    """read, validate, vote (annotator tie), clean:<n>:<step>, dedup or leakage."""
    reason: str
    row: object


def load_table(spec: str, schema: RowSchema, encoding: str, path: Path) -> tuple[datasets.Dataset, list[Rejection]]:
    """Read ``spec``, validate every row with ``schema``, write the valid ones to the Arrow file ``path``.

    Returns the memory-mapped dataset and the rows that could not be read or validated.
    """
    import datasets

    rejected: list[Rejection] = []
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        pa.OSFile(str(path), "wb") as sink,
        pa.ipc.new_stream(sink, ARROW_SCHEMA) as writer,
    ):
        for batch in _batches(_validated(iter_records(spec, encoding=encoding), schema, rejected)):
            writer.write_batch(pa.RecordBatch.from_pylist(batch, schema=ARROW_SCHEMA))
    return datasets.Dataset.from_file(str(path)), rejected


def _validated(records: Iterable[Record], schema: RowSchema, rejected: list[Rejection]) -> Iterator[dict]:
    for record in records:
        if record.error:
            rejected.append(
                Rejection(
                    record.where(),
                    record.line,
                    "read",
                    record.error,
                    record.data.get("raw"),
                )
            )
            continue
        try:
            columns = schema.extract(record.data)
        except RowError as exc:
            rejected.append(Rejection(record.where(), record.line, "validate", str(exc), record.data))
            continue
        yield {**columns, "_where": record.where(), "_line": record.line}


def _batches(rows: Iterable[dict]) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for row in rows:
        batch.append(row)
        if len(batch) == _BATCH_ROWS:
            yield batch
            batch = []
    if batch:
        yield batch


def fail_on_malformed(rejected: list[Rejection], rejected_path: Path) -> None:
    """``on_error: fail``: stop, listing the first 20 malformed rows (unreadable or invalid) and the total."""
    malformed = [r for r in rejected if r.stage in ("read", "validate")]
    if not malformed:
        return
    listed = [f"{r.where}: {r.reason}" for r in malformed[:MAX_LISTED_PROBLEMS]]
    if len(malformed) > MAX_LISTED_PROBLEMS:
        listed.append(f"... and {len(malformed) - MAX_LISTED_PROBLEMS} more")
    raise DataError(
        f"{len(malformed)} malformed row(s):\n" + "\n".join(listed),
        hint=f"fix these rows, or set data.on_error: skip to leave them out (they are then written to {rejected_path})",
    )


def write_rejected(rejected: list[Rejection], path: Path) -> None:
    """Every left-out row with file, line, stage and reason, one JSON object per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        out.writelines(json.dumps(asdict(rejection), ensure_ascii=False, default=str) + "\n" for rejection in rejected)


def count_by_stage(rejected: dict[str, list[Rejection]]) -> dict[str, dict[str, int]]:
    """stage → split → number of rows left out, from the rejections of each split."""
    counts: dict[str, dict[str, int]] = {}
    for split, rows in rejected.items():
        for r in rows:
            per_split = counts.setdefault(r.stage, {})
            per_split[split] = per_split.get(split, 0) + 1
    return counts
