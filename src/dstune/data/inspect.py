"""``dstune data inspect FILE``: what a data file holds, without changing it.

Reads and validates the file (the task is guessed from the first row's keys unless given), counts
malformed rows, exact and near duplicates, and reports labels and lengths like ``data prepare``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from dstune.config.cleaning import CleaningSection, FieldNames
from dstune.data.dedup import duplicates_within
from dstune.data.labels import LabelRules
from dstune.data.prepare import fingerprint_dataset
from dstune.data.readers import iter_records
from dstune.data.report import add_histogram, print_summary, split_stats, write_report
from dstune.data.table import MAX_LISTED_PROBLEMS, count_by_stage, load_table
from dstune.data.validate import detect_task, make_schema

if TYPE_CHECKING:
    from rich.console import Console


def inspect_file(
    spec: str,
    *,
    task: str | None = None,
    encoding: str = "utf-8",
    tokenizer=None,
    out_dir: Path | None = None,
    console: Console | None = None,
) -> dict:
    """The report of one data file; data_report.json/html go to ``out_dir`` (default: ``<stem>_report`` beside it)."""
    log = console.print if console is not None else print
    fields = FieldNames()
    task = task or detect_task(
        next(r for r in iter_records(spec, encoding=encoding) if not r.error).data,
        fields,
    )
    rules = LabelRules(CleaningSection().labels)
    schema = make_schema(task, fields, rules)
    out_dir = out_dir or Path(spec).expanduser().parent / f"{Path(spec).stem}_report"
    work = out_dir / ".work"
    dataset, rejected = load_table(spec, schema, encoding, work / "rows.arrow")
    dedup = CleaningSection().dedup
    duplicates = duplicates_within(fingerprint_dataset(dataset, schema, dedup), dedup)
    report = {
        "task": task,
        "inputs": {"file": spec},
        "rows_read": {"file": len(dataset) + len(rejected)},
        "rejected": {
            "total": len(rejected),
            "by_split": count_by_stage({"file": rejected}),
        },
        "duplicates": {kind: sum(r.startswith(kind) for r in duplicates.values()) for kind in ("exact", "near")},
        "splits": {"file": split_stats(dataset, schema, rules, tokenizer)},
    }
    add_histogram(report)
    files = write_report(report, out_dir, f"dstune data inspect: {spec}")
    del dataset
    shutil.rmtree(work, ignore_errors=True)
    if console is not None:
        print_summary(report, console, f"data inspect: {spec} ({task})")
    for r in rejected[:MAX_LISTED_PROBLEMS]:
        log(f"{r.where}: {r.reason}")
    if len(rejected) > MAX_LISTED_PROBLEMS:
        log(f"... and {len(rejected) - MAX_LISTED_PROBLEMS} more malformed row(s)")
    log(f"{report['duplicates']['exact']} exact and {report['duplicates']['near']} near duplicate(s); "
        f"report: {out_dir / files[1]}")  # fmt: skip
    return report
