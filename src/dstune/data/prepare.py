"""``dstune data prepare``: read → validate → labels → clean → dedup → split → leakage → write + report.

Reads top to bottom. Rows live in memory-mapped Arrow files under ``<output_dir>/.work`` while
the run lasts; every row left out on the way is kept as a :class:`~dstune.data.table.Rejection`
and written to ``rejected.jsonl``. ``manifest.json`` makes an unchanged re-run a no-op.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dstune.config.cleaning import DedupSettings
from dstune.config.prepare import PrepareSettings
from dstune.data import labels as lbl
from dstune.data.clean import Cleaner, clean_dataset
from dstune.data.dedup import Fingerprints, duplicates_within, leaks
from dstune.data.manifest import Manifest
from dstune.data.report import add_histogram, print_summary, split_stats, write_report
from dstune.data.split import split_indices
from dstune.data.table import (
    Rejection,
    count_by_stage,
    fail_on_malformed,
    load_table,
    write_rejected,
)
from dstune.data.validate import RowSchema, make_schema
from dstune.data.writers import output_suffix, write_split
from dstune.errors import ConfigError

if TYPE_CHECKING:
    import datasets
    from rich.console import Console

ROLES = ("train", "validation", "test")
REJECTED = "rejected.jsonl"


@dataclass
class PrepareResult:
    out_dir: Path
    skipped: bool
    changes: list[str] = field(default_factory=list)
    report: dict | None = None
    files: list[str] = field(default_factory=list)


@dataclass
class _Part:
    """One split on its way through the pipeline."""

    data: datasets.Dataset
    rejected: list[Rejection] = field(default_factory=list)
    fingerprints: Fingerprints | None = None
    ties: int = 0

    def drop(self, reasons: dict[int, tuple[str, str]], schema: RowSchema) -> None:
        """Leave out the rows in ``reasons`` (row index → (stage, reason)), recording each as a rejection."""
        if not reasons:
            return
        picked = sorted(reasons)
        for i, row in zip(picked, self.data.select(picked)):
            stage, reason = reasons[i]
            self.rejected.append(Rejection(row["_where"], row["_line"], stage, reason, schema.restore(row)))
        keep = np.setdiff1d(np.arange(len(self.data)), picked)
        self.data = self.data.select(keep)
        if self.fingerprints is not None:
            self.fingerprints = self.fingerprints.subset(keep)


def prepare(settings: PrepareSettings, *, force: bool = False, console: Console | None = None) -> PrepareResult:
    """Run the whole preparation described by ``settings`` (or skip it when nothing changed)."""
    log = console.print if console is not None else print
    data, cleaning = settings.data, settings.cleaning
    out = Path(cleaning.output_dir)
    manifest = Manifest.for_inputs(_inputs(settings), _config_record(settings))
    changes = manifest.changes_since(out)
    if changes == [] and not force:
        log(f"{out}: up to date (inputs, config and outputs match {out / 'manifest.json'}); nothing to do")
        return PrepareResult(out, skipped=True)
    for change in changes or []:
        log(f"{change}; preparing again")
    shares = _shares(settings)
    tokenizer = load_tokenizer(settings.tokenizer)
    rules = lbl.LabelRules(cleaning.labels)
    schema = make_schema(settings.task, cleaning.fields, rules, data.format)
    work = out / ".work"
    shutil.rmtree(work, ignore_errors=True)
    # -- read and validate
    parts, rows_read = {}, {}
    for role in ROLES:
        spec = getattr(data, role)
        if spec:
            dataset, bad = load_table(spec, schema, data.encoding, work / f"{role}.arrow")
            parts[role], rows_read[role] = _Part(dataset, bad), len(dataset) + len(bad)
    if data.on_error == "fail":
        fail_on_malformed([r for part in parts.values() for r in part.rejected], out / REJECTED)
    # -- labels, cleaning, duplicates within each input
    agreement_items: list[dict[str, str]] = []
    cleaner = Cleaner(cleaning.steps, tokenizer)
    for part in parts.values():
        if schema.task == "classification":
            agreement_items += _aggregate_labels(part, settings, schema)
        if cleaner:
            _clean(part, cleaner, schema)
        part.fingerprints = fingerprint_dataset(part.data, schema, cleaning.dedup)
        part.drop(
            _staged(duplicates_within(part.fingerprints, cleaning.dedup), "dedup"),
            schema,
        )
    # -- split, then make sure no evaluation row repeats a training row
    _split(parts, shares, settings, schema)
    leakage = _check_leakage(parts, settings, schema)
    # -- report and write
    report = _report(parts, rows_read, cleaner, agreement_items, leakage, settings, schema, tokenizer)
    files = _write(parts, report, out, settings, schema)
    manifest.write(out, files)
    shutil.rmtree(work, ignore_errors=True)
    if console is not None:
        print_summary(report, console, f"data prepare: {out}")
    total = sum(len(p.rejected) for p in parts.values())
    log(f"{total} row(s) left out, each with its reason, in {out / REJECTED}; report: {out / 'data_report.html'}")
    return PrepareResult(out, skipped=False, changes=changes or [], report=report, files=files)


def _inputs(settings: PrepareSettings) -> dict[str, str]:
    """Every input file whose change must trigger a re-run: the data and any term-map dictionary."""
    inputs = {role: getattr(settings.data, role) for role in ROLES if getattr(settings.data, role)}
    for index, step in enumerate(settings.cleaning.steps):
        if step.type == "term_map" and step.file:
            inputs[f"cleaning.steps[{index}].file"] = step.file
    return inputs


def _config_record(settings: PrepareSettings) -> dict:
    return {
        "task": settings.task,
        "tokenizer": settings.tokenizer,
        "data": settings.data.model_dump(mode="json"),
        "cleaning": settings.cleaning.model_dump(mode="json"),
    }


def _shares(settings: PrepareSettings) -> dict[str, float]:
    """Shares of train to hold out: validation (data.eval_split) and test, unless given as files."""
    data, split = settings.data, settings.cleaning.split
    shares = {
        "validation": 0.0 if data.validation else data.eval_split,
        "test": 0.0 if data.test else split.test,
    }
    if sum(shares.values()) >= 1.0:
        raise ConfigError(
            f"data.eval_split + cleaning.split.test = {sum(shares.values()):g} leaves nothing to train on",
            where="cleaning.split.test",
            hint="make the two shares add up to less than 1",
        )
    return {name: share for name, share in shares.items() if share > 0}


def load_tokenizer(name: str | None):
    """The tokenizer for token lengths, or None when none is configured."""
    if name is None:
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot load tokenizer {name!r}: {exc}",
            where="cleaning.tokenizer",
            hint="give a local tokenizer folder or a cached hub id, or remove it (then no token lengths)",
        ) from None


def _aggregate_labels(part: _Part, settings: PrepareSettings, schema: RowSchema) -> list[dict[str, str]]:
    """Join per-annotator rows, vote the label, reject ties (if so configured); the items for kappa."""
    ds = part.data
    if settings.cleaning.fields.annotator is not None:
        first, annotations, annotators = lbl.join_annotator_rows(ds["item_id"], ds["annotations"], ds["annotators"])
        ds = ds.select(first).remove_columns(["annotations", "annotators"])
        ds = ds.add_column("annotations", annotations).add_column("annotators", annotators)
    annotations = ds["annotations"]
    if not any(annotations):
        part.data = ds
        return []
    voted, ties = lbl.vote_labels(annotations, settings.cleaning.labels.on_tie)
    labels = [v if a else old for v, a, old in zip(voted, annotations, ds["label"])]
    part.data = ds.remove_columns(["label"]).add_column("label", labels)
    part.drop(
        {i: ("vote", tie) for i, (tie, label) in enumerate(zip(ties, labels)) if tie and label is None},
        schema,
    )
    part.ties = sum(tie is not None for tie in ties)
    return [dict(zip(who, said)) for who, said in zip(ds["annotators"], annotations) if said]


def _clean(part: _Part, cleaner: Cleaner, schema: RowSchema) -> None:
    cleaned = clean_dataset(part.data, cleaner, schema)
    stages, reasons = cleaned["_stage"], cleaned["_reason"]
    part.data = cleaned.remove_columns(["_stage", "_reason"])
    part.drop(
        {i: (s, r) for i, (s, r) in enumerate(zip(stages, reasons)) if s is not None},
        schema,
    )


def _staged(reasons: dict[int, str], stage: str) -> dict[int, tuple[str, str]]:
    return {i: (stage, reason) for i, reason in reasons.items()}


def fingerprint_dataset(dataset: datasets.Dataset, schema: RowSchema, settings: DedupSettings) -> Fingerprints:
    """Exact hashes and MinHash signatures of every row, computed a batch at a time."""

    def batches():
        for batch in dataset.iter(batch_size=1_000):
            docs = [schema.document({"texts": t, "tokens": k}) for t, k in zip(batch["texts"], batch["tokens"])]
            yield docs, batch["_where"]

    return Fingerprints.of(batches(), settings)


def _split(
    parts: dict[str, _Part],
    shares: dict[str, float],
    settings: PrepareSettings,
    schema: RowSchema,
) -> None:
    """Hold out validation/test rows of train (stratified by label, grouped by the group key, seeded)."""
    if not shares:
        return
    train = parts["train"]
    split = settings.cleaning.split
    stratify = split.stratify and schema.task == "classification"
    indices = split_indices(
        len(train.data),
        shares,
        labels=train.data["label"] if stratify else None,
        groups=train.data["group"] if settings.cleaning.fields.group else None,
        seed=split.seed,
    )
    for name, rows in indices.items():
        held = _Part(train.data.select(rows), fingerprints=train.fingerprints.subset(rows))
        parts[name] = held if name != "train" else _Part(held.data, train.rejected, held.fingerprints, train.ties)


def _check_leakage(parts: dict[str, _Part], settings: PrepareSettings, schema: RowSchema) -> dict[str, dict]:
    """Validation/test rows that repeat a training row: counted, and removed unless leakage is report/off."""
    policy = settings.cleaning.dedup.leakage
    found: dict[str, dict] = {}
    if policy == "off":
        return found
    for name in ("validation", "test"):
        if name in parts:
            reasons = leaks(
                parts[name].fingerprints,
                parts["train"].fingerprints,
                settings.cleaning.dedup,
            )
            found[name] = {kind: sum(r.startswith(kind) for r in reasons.values()) for kind in ("exact", "near")}
            if policy == "remove":
                parts[name].drop(_staged(reasons, "leakage"), schema)
    return found


def _report(parts, rows_read, cleaner, agreement_items, leakage, settings, schema, tokenizer) -> dict:
    """data_report.json's content: inputs, rejections, cleaning, duplicates, leakage, labels, lengths."""
    rejected = [r for part in parts.values() for r in part.rejected]
    by_split = count_by_stage({name: part.rejected for name, part in parts.items()})
    rules = lbl.LabelRules(settings.cleaning.labels)
    report = {
        "task": settings.task,
        "inputs": {role: getattr(settings.data, role) for role in ROLES if getattr(settings.data, role)},
        "rows_read": rows_read,
        "rejected": {"total": len(rejected), "by_split": by_split},
        "cleaning": cleaner.report(),
        "duplicates": {
            kind: sum(r.stage == "dedup" and r.reason.startswith(kind) for r in rejected) for kind in ("exact", "near")
        },
        "leakage": leakage,
        "ties": sum(part.ties for part in parts.values()),
        "agreement": lbl.agreement(agreement_items),
        "splits": {name: split_stats(parts[name].data, schema, rules, tokenizer) for name in ROLES if name in parts},
    }
    add_histogram(report)
    return report


def _write(
    parts: dict[str, _Part],
    report: dict,
    out: Path,
    settings: PrepareSettings,
    schema: RowSchema,
) -> list[str]:
    """The splits, rejected.jsonl and the report; stale split files of an earlier run are removed."""
    suffix = output_suffix(settings.data.train, settings.cleaning.output_format)
    for old in out.glob("*"):
        if old.stem in ROLES and old.is_file():
            old.unlink()
    files = []
    for name in ROLES:
        if name in parts:
            write_split(parts[name].data, schema, out / f"{name}{suffix}")
            files.append(f"{name}{suffix}")
    write_rejected([r for part in parts.values() for r in part.rejected], out / REJECTED)
    return [*files, REJECTED, *write_report(report, out, f"dstune data report: {out}")]
