"""Human error analysis: a stratified sample of errors and near misses out, reviewers' verdicts back in.

`dstune eval --sample 500` writes ``eval/review.csv`` (UTF-8 with BOM, so Excel shows Chinese) and
``eval/review.html`` with empty ``reviewer_verdict`` and ``error_category`` columns. Strata are
the automatic outcome (error, near miss) crossed with the true label (classification) or the
reference length (generation); each stratum gets a share of the sample proportional to its size,
and at least one row. `dstune eval --import-review review.csv` reads the filled file back, counts
the error categories, and re-estimates accuracy: each reviewed stratum's share of answers judged
acceptable is applied to the whole stratum (``review_meta.json`` keeps the stratum sizes).
"""

from __future__ import annotations

import csv
import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dstune.errors import DataError

COLUMNS = ["id", "stratum", "auto_verdict", "auto_score", "source", "input", "reference", "prediction",
           "reviewer_verdict", "error_category", "reviewer_notes"]
REVIEWER_COLUMNS = ("reviewer_verdict", "error_category", "reviewer_notes")
SUGGESTED_CATEGORIES = ("factual error", "incomplete", "hallucination", "wrong format", "wrong language",
                        "reference is wrong", "ambiguous question", "other")
ACCEPT = {"correct", "acceptable", "ok", "yes", "y", "1", "true", "对", "正确", "可接受"}
REJECT = {"incorrect", "wrong", "no", "n", "0", "false", "错", "错误"}
SKIP = {"", "unclear", "skip", "?", "不确定"}
META = "review_meta.json"


@dataclass(frozen=True)
class Outcome:
    """An evaluated example as the review sees it."""

    id: int
    verdict: str  # correct | near_miss | error
    correct: bool  # the automatic verdict (a classifier's near miss is right, but only just)
    score: float
    group: str  # second stratum key: true label or reference-length band
    source: str
    input: str
    reference: str
    prediction: str

    @property
    def stratum(self) -> str:
        return f"{self.verdict}/{self.group}"


def length_band(text: str, edges: tuple[int, int]) -> str:
    """``short``, ``medium`` or ``long`` by character count against ``edges`` (the tertiles)."""
    n = len(text)
    return "short" if n <= edges[0] else "medium" if n <= edges[1] else "long"


def tertiles(texts: list[str]) -> tuple[int, int]:
    lengths = [len(t) for t in texts] or [0]
    low, high = np.percentile(lengths, [100 / 3, 200 / 3])
    return int(low), int(high)


def draw_sample(outcomes: list[Outcome], size: int, seed: int = 0) -> list[Outcome]:
    """Up to ``size`` errors and near misses, stratified with proportional allocation (at least 1 per stratum)."""
    strata: dict[str, list[Outcome]] = defaultdict(list)
    for outcome in outcomes:
        if outcome.verdict != "correct":
            strata[outcome.stratum].append(outcome)
    quotas = allocate({name: len(rows) for name, rows in strata.items()}, size)
    rng = np.random.default_rng(seed)
    picked = []
    for name in sorted(strata):
        rows = strata[name]
        chosen = rng.choice(len(rows), size=quotas[name], replace=False)
        picked += [rows[i] for i in sorted(chosen)]
    return sorted(picked, key=lambda o: (o.stratum, o.id))


def allocate(sizes: dict[str, int], total: int) -> dict[str, int]:
    """Proportional allocation of ``total`` over strata (largest remainder), each stratum at least 1 when possible.

    Strata whose proportional share is below one row get exactly one (largest first, while rows are
    left); the rest is shared proportionally among the other strata.
    """
    if sum(sizes.values()) <= total:
        return dict(sizes)
    quotas = {name: 0 for name in sizes}
    remaining, budget = dict(sizes), total
    while remaining:
        population = sum(remaining.values())
        small = [n for n in remaining if budget * remaining[n] / population < 1]
        if not small:
            break
        for name in sorted(small, key=lambda n: -remaining[n]):
            quotas[name] = 1 if budget > 0 else 0
            budget -= quotas[name]
            del remaining[name]
    if remaining:
        population = sum(remaining.values())
        shares = {n: budget * remaining[n] / population for n in remaining}
        for name, share in shares.items():
            quotas[name] = int(share)
        left = budget - sum(int(share) for share in shares.values())
        for name in sorted(shares, key=lambda n: -(shares[n] - int(shares[n])))[:left]:
            quotas[name] += 1
    return quotas


def write_review(outcomes: list[Outcome], sample: list[Outcome], out_dir: Path, metric: str) -> tuple[Path, Path]:
    """``review.csv`` + ``review_meta.json`` (stratum sizes, automatic accuracy); returns (csv, meta) paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "review.csv"
    _keep_reviewed(csv_path)
    with open(csv_path, "w", encoding="utf-8-sig", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(COLUMNS)
        for o in sample:
            writer.writerow([o.id, o.stratum, o.verdict, f"{o.score:.4g}", o.source, o.input, o.reference,
                             o.prediction, "", "", ""])
    meta = {
        "population": len(outcomes),
        "auto_correct": sum(o.correct for o in outcomes),
        "strata": _strata_sizes(outcomes),
        "sampled": len(sample),
        "metric": metric,
        "verdicts": "reviewer_verdict: correct | acceptable | incorrect | unclear (empty = not reviewed)",
        "categories": list(SUGGESTED_CATEGORIES),
    }
    meta_path = out_dir / META
    meta_path.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return csv_path, meta_path


def _keep_reviewed(csv_path: Path) -> None:
    """A review.csv that reviewers already filled in is renamed (review.<time>.csv), never overwritten."""
    if not csv_path.is_file():
        return
    with open(csv_path, encoding="utf-8-sig", newline="") as stream:
        filled = any((row.get("reviewer_verdict") or "").strip() for row in csv.DictReader(stream))
    if filled:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(csv_path.stat().st_mtime))
        csv_path.rename(csv_path.with_name(f"review.{stamp}.csv"))
        meta = csv_path.with_name(META)
        if meta.is_file():
            meta.rename(csv_path.with_name(f"review.{stamp}.meta.json"))


def _strata_sizes(outcomes: list[Outcome]) -> dict[str, dict[str, int]]:
    sizes: dict[str, dict[str, int]] = defaultdict(lambda: {"size": 0, "auto_correct": 0})
    for o in outcomes:
        sizes[o.stratum]["size"] += 1
        sizes[o.stratum]["auto_correct"] += int(o.correct)
    return dict(sizes)


def read_review(path: Path) -> list[dict]:
    """The rows of a (filled) review CSV; missing columns and unknown verdicts name the line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"review file not found: {path}", hint="pass the review.csv that `dstune eval` wrote")
    with open(path, encoding="utf-8-sig", newline="") as stream:
        reader = csv.DictReader(stream)
        missing = [c for c in ("id", "stratum", "auto_verdict", "reviewer_verdict") if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"missing column(s) {', '.join(missing)}", where=str(path),
                            hint="keep the header row that `dstune eval` wrote; only fill the reviewer columns")
        rows = []
        for row in reader:
            verdict = (row.get("reviewer_verdict") or "").strip().casefold()
            if verdict not in ACCEPT | REJECT | SKIP:
                raise DataError(f"unknown reviewer_verdict {row['reviewer_verdict']!r}",
                                where=f"{path}:{reader.line_num}", hint="use correct, acceptable, incorrect or unclear")
            rows.append({**row, "accepted": None if verdict in SKIP else verdict in ACCEPT})
    return rows


def summarize_review(rows: list[dict], meta: dict | None) -> dict:
    """Verdict and category counts, and accuracy re-estimated from the reviewers' verdicts per stratum."""
    reviewed = [r for r in rows if r["accepted"] is not None]
    categories = Counter(c.strip().casefold() for r in reviewed if not r["accepted"]
                         for c in (r.get("error_category") or "uncategorised").replace(";", ",").split(",") if c.strip())
    by_stratum: dict[str, list[bool]] = defaultdict(list)
    for r in reviewed:
        by_stratum[r["stratum"]].append(bool(r["accepted"]))
    out = {
        "rows": len(rows), "reviewed": len(reviewed),
        "accepted": sum(bool(r["accepted"]) for r in reviewed),
        "rejected": sum(not r["accepted"] for r in reviewed),
        "error_categories": dict(categories.most_common()),
        "strata": {name: {"reviewed": len(v), "accepted_share": float(np.mean(v))} for name, v in by_stratum.items()},
    }
    if meta:
        out.update(_adjusted_accuracy(meta, by_stratum))
    return out


def _adjusted_accuracy(meta: dict, by_stratum: dict[str, list[bool]]) -> dict:
    """Automatic accuracy, and the estimate where each reviewed stratum's accepted share replaces its automatic one."""
    population, strata = meta["population"], meta["strata"]
    correct = float(meta["auto_correct"])
    for name, verdicts in by_stratum.items():
        stratum = strata.get(name, {"size": 0, "auto_correct": 0})
        correct += stratum["size"] * float(np.mean(verdicts)) - stratum["auto_correct"]
    return {
        "population": population,
        "auto_accuracy": meta["auto_correct"] / population if population else float("nan"),
        "reviewer_adjusted_accuracy": correct / population if population else float("nan"),
        "unreviewed_strata": sorted(n for n in meta["strata"] if n not in by_stratum and not n.startswith("correct/")),
        "metric": meta.get("metric"),
    }


def load_meta(csv_path: Path) -> dict | None:
    """The sample's stratum sizes beside the CSV (``review_meta.json``, or ``<stem>.meta.json`` of a kept one)."""
    csv_path = Path(csv_path)
    for path in (csv_path.with_name(f"{csv_path.stem}.meta.json"), csv_path.with_name(META)):
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    return None


def review_table_html(csv_path: Path, limit: int | None = None) -> str:
    """The review rows as an HTML table, reviewer columns left blank (shaded) for filling in."""
    from dstune.report.html import table

    with open(csv_path, encoding="utf-8-sig", newline="") as stream:
        rows = list(csv.DictReader(stream))
    shown = rows if limit is None else rows[:limit]
    body = [[_number(row.get(c, "")) if c in ("id", "auto_score") else row.get(c, "") for c in COLUMNS] for row in shown]
    text = [COLUMNS.index(c) for c in ("input", "reference", "prediction")]
    blank = [COLUMNS.index(c) for c in REVIEWER_COLUMNS]
    more = f'<p class="muted">First {len(shown)} of {len(rows)} rows; all are in {csv_path.name}.</p>' \
        if len(shown) < len(rows) else ""
    return table(COLUMNS, body, text_columns=text, blank_columns=blank, css_class="wide") + more


def write_review_html(csv_path: Path) -> Path:
    """``review.html`` beside the CSV: the sample as a table with the suggested verdicts and categories."""
    from dstune.report.html import page

    intro = (f"<p>Fill <b>reviewer_verdict</b> (correct, acceptable, incorrect or unclear) and "
             f"<b>error_category</b> (e.g. {', '.join(SUGGESTED_CATEGORIES)}) in {csv_path.name}, then run "
             f"<code>dstune eval RUN_DIR --import-review {csv_path.name}</code>.</p>")
    out = csv_path.with_suffix(".html")
    out.write_text(page("Error analysis: review sample", intro + review_table_html(csv_path)), encoding="utf-8")
    return out


def _number(value: str) -> object:
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value
