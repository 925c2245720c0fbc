"""The data report: per-split statistics, the printed summary table, data_report.json and an HTML page.

The HTML page is self-contained (inline SVG, no scripts): a length histogram per split and a bar
chart of the label distribution per split, below the same summary table that is printed.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import datasets
    from rich.console import Console

    from dstune.data.labels import LabelRules
    from dstune.data.validate import RowSchema

REPORT_JSON = "data_report.json"
REPORT_HTML = "data_report.html"
PERCENTILES = (5, 25, 50, 75, 95)
_BINS = 20
_TOP_LABELS = 30
_TABLE_LABELS = 12


def split_stats(dataset: datasets.Dataset, schema: RowSchema, rules: LabelRules, tokenizer=None) -> dict:
    """Rows, label distribution (and per hierarchy level), length percentiles in characters and tokens."""
    chars: list[int] = []
    tokens: list[int] = []
    for batch in dataset.iter(batch_size=1_000):
        documents = [schema.document({"texts": t, "tokens": k}) for t, k in zip(batch["texts"], batch["tokens"])]
        chars.extend(len(doc) for doc in documents)
        if tokenizer is not None:
            tokens.extend(len(ids) for ids in tokenizer(documents, add_special_tokens=False)["input_ids"])
    stats: dict = {
        "rows": len(dataset),
        "length_chars": percentiles(chars),
        "_chars": chars,
    }
    if tokenizer is not None:
        stats["length_tokens"] = percentiles(tokens)
    if schema.task == "classification":
        labels = [label for label in dataset["label"] if label is not None]
        stats["labels"] = dict(Counter(labels).most_common())
        levels = rules.level_counts(labels)
        if len(levels) > 1:
            stats["label_levels"] = levels
    if schema.task == "token_classification":
        stats["entities"] = dict(Counter(t[2:] for tags in dataset["tags"] for t in tags if t.startswith("B-")))
    return stats


def percentiles(values: list[int]) -> dict:
    if not values:
        return {}
    array = np.asarray(values)
    out = {f"p{p}": int(np.percentile(array, p)) for p in PERCENTILES}
    return {
        "min": int(array.min()),
        **out,
        "max": int(array.max()),
        "mean": round(float(array.mean()), 1),
    }


def add_histogram(report: dict) -> None:
    """Replace each split's raw lengths with counts over shared bins (``report["histogram"]``)."""
    lengths = {name: split.pop("_chars") for name, split in report["splits"].items()}
    top = max((max(v) for v in lengths.values() if v), default=1)
    edges = np.linspace(0, top + 1, _BINS + 1)
    report["histogram"] = {
        "edges": [int(e) for e in edges],
        "counts": {name: np.histogram(v, bins=edges)[0].tolist() for name, v in lengths.items()},
    }


def summary_rows(report: dict) -> list[tuple[str, list[str]]]:
    """(metric, one value per split) rows of the summary table; shared by the console and the HTML page."""
    splits = list(report["splits"])
    rows: list[tuple[str, list[str]]] = []

    def per_split(name: str, values: dict) -> None:
        rows.append((name, [str(values.get(s, "")) for s in splits]))

    def first_column(name: str, value: str) -> None:
        rows.append((name, [value] + [""] * (len(splits) - 1)))

    per_split("rows read", report.get("rows_read", {}))
    for stage, counts in report.get("rejected", {}).get("by_split", {}).items():
        per_split(f"left out: {stage}", counts)
    for step, counts in report.get("cleaning", {}).items():
        masked = "".join(f", {kind} {n}" for kind, n in counts.get("masked", {}).items())
        first_column(
            f"step {step}",
            f"changed {counts['changed']}, removed {counts['rejected']}{masked}",
        )
    for split, counts in report.get("leakage", {}).items():
        first_column(f"leakage into {split}", f"exact {counts['exact']}, near {counts['near']}")
    per_split("rows kept", {s: v["rows"] for s, v in report["splits"].items()})
    for unit in ("chars", "tokens"):
        key = f"length_{unit}"
        if any(key in v for v in report["splits"].values()):
            per_split(
                f"{unit} p5/p50/p95/max",
                {s: _pct_text(v.get(key, {})) for s, v in report["splits"].items()},
            )
    kind = "labels" if any("labels" in v for v in report["splits"].values()) else "entities"
    totals: Counter[str] = Counter()
    for split in report["splits"].values():
        totals.update(split.get(kind, {}))
    for label, _ in totals.most_common(_TABLE_LABELS):
        per_split(
            f"{kind[:-1]} {label}",
            {s: v.get(kind, {}).get(label, 0) for s, v in report["splits"].items()},
        )
    if len(totals) > _TABLE_LABELS:
        first_column(f"... {len(totals) - _TABLE_LABELS} more {kind}", "see data_report.json")
    agreement = report.get("agreement")
    if agreement:
        first_column(
            f"agreement ({agreement['method']} kappa)",
            f"{agreement['kappa']} over {agreement['items']} items",
        )
    return rows


def _pct_text(p: dict) -> str:
    return f"{p['p5']}/{p['p50']}/{p['p95']}/{p['max']}" if p else ""


def print_summary(report: dict, console: Console, title: str) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("")
    for split in report["splits"]:
        table.add_column(split, justify="right")
    for name, values in summary_rows(report):
        table.add_row(name, *values)
    console.print(table)


def write_report(report: dict, out_dir: Path, title: str) -> list[str]:
    """data_report.json and data_report.html in ``out_dir``; returns their names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / REPORT_JSON).write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    (out_dir / REPORT_HTML).write_text(_html(report, title), encoding="utf-8")
    return [REPORT_JSON, REPORT_HTML]


def _html(report: dict, title: str) -> str:
    splits = list(report["splits"])
    head = "".join(f"<th>{html.escape(s)}</th>" for s in splits)
    body = "".join(
        f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{html.escape(v)}</td>" for v in values) + "</tr>"
        for name, values in summary_rows(report)
    )
    charts = []
    hist = report.get("histogram")
    for split in splits:
        if hist:
            edges = hist["edges"]
            bars = {f"{edges[i]}-{edges[i + 1]}": c for i, c in enumerate(hist["counts"][split])}
            charts.append(f"<h2>Length in characters: {html.escape(split)}</h2>" + _bar_chart(bars, vertical=True))
        labels = report["splits"][split].get("labels") or report["splits"][split].get("entities")
        if labels:
            top = dict(list(labels.items())[:_TOP_LABELS])
            charts.append(f"<h2>Labels: {html.escape(split)}</h2>" + _bar_chart(top, vertical=False))
    style = "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<table><tr><th></th>{head}</tr>{body}</table>{''.join(charts)}"
        f"<h2>Details</h2><pre>{html.escape(json.dumps(report, ensure_ascii=False, indent=1))}</pre></body></html>\n"
    )


def _bar_chart(values: dict[str, int], vertical: bool) -> str:
    """An inline SVG bar chart: vertical bars (a histogram) or horizontal bars with their labels."""
    peak = max(values.values(), default=0) or 1
    if vertical:
        width, height, bar = 24, 160, 22
        rects = "".join(
            f"<rect x='{i * width}' y='{height - round(height * v / peak)}' width='{bar}' "
            f"height='{round(height * v / peak)}' fill='#4a78c2'><title>{html.escape(k)}: {v}</title></rect>"
            for i, (k, v) in enumerate(values.items())
        )
        return f"<svg width='{len(values) * width}' height='{height}'>{rects}</svg>"
    row, label_w, bar_w = 20, 220, 400
    items = "".join(
        f"<text x='{label_w - 6}' y='{i * row + 14}' text-anchor='end' font-size='12'>{html.escape(k)}</text>"
        f"<rect x='{label_w}' y='{i * row + 3}' width='{max(1, round(bar_w * v / peak))}' height='{row - 6}' "
        f"fill='#c2794a'/><text x='{label_w + round(bar_w * v / peak) + 4}' y='{i * row + 14}' font-size='12'>{v}</text>"
        for i, (k, v) in enumerate(values.items())
    )
    return f"<svg width='{label_w + bar_w + 60}' height='{len(values) * row}'>{items}</svg>"
