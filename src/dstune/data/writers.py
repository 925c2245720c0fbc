"""Write prepared splits in JSONL or the input's own format (JSON, CSV, TSV, Parquet, plain text), batch by batch."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from dstune.data.readers import JSONL_SUFFIXES, SUPPORTED_SUFFIXES

if TYPE_CHECKING:
    import datasets

    from dstune.data.validate import RowSchema

_BATCH = 1_000


def output_suffix(train_spec: str, output_format: str) -> str:
    """``.jsonl``, or with ``output_format: input`` the suffix of the training file (JSONL for a Hub dataset)."""
    suffix = Path(train_spec).suffix.lower()
    if output_format == "input" and suffix in SUPPORTED_SUFFIXES and suffix not in JSONL_SUFFIXES:
        return suffix
    return ".jsonl"


def restored_rows(dataset: datasets.Dataset, schema: RowSchema) -> Iterator[dict]:
    """The output rows of ``dataset``, in order."""
    for batch in dataset.iter(batch_size=_BATCH):
        for values in zip(*batch.values()):
            yield schema.restore(dict(zip(batch, values)))


def write_split(dataset: datasets.Dataset, schema: RowSchema, path: Path) -> None:
    """Write ``dataset`` to ``path``; the suffix picks the format."""
    rows = restored_rows(dataset, schema)
    suffix = path.suffix
    if suffix == ".parquet":
        _write_parquet(rows, path)
        return
    with open(path, "w", encoding="utf-8", newline="") as out:
        if suffix in (".csv", ".tsv"):
            _write_delimited(rows, out, "\t" if suffix == ".tsv" else ",")
        elif suffix == ".json":
            out.write("[\n" + ",\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\n]\n")
        elif suffix == ".txt":
            out.writelines(row["text"].replace("\n", " ") + "\n" for row in rows)
        else:
            out.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _write_delimited(rows: Iterator[dict], out, delimiter: str) -> None:
    writer = None
    for row in rows:
        if writer is None:
            writer = csv.DictWriter(out, fieldnames=list(row), delimiter=delimiter)
            writer.writeheader()
        writer.writerow(
            {k: json.dumps(v, ensure_ascii=False) if isinstance(v, list | dict) else v for k, v in row.items()}
        )


def _write_parquet(rows: Iterator[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    batch: list[dict] = []
    for row in [*rows, None]:
        if row is not None:
            batch.append(row)
        if batch and (row is None or len(batch) == _BATCH * 10):
            table = pa.Table.from_pylist(batch) if writer is None else pa.Table.from_pylist(batch, schema=writer.schema)
            writer = writer or pq.ParquetWriter(str(path), table.schema)
            writer.write_table(table)
            batch = []
    if writer is not None:
        writer.close()
    else:
        pq.write_table(pa.table({}), path)
