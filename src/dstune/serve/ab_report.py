"""`dstune compare --ab-log FILE`: conversion per variant, its significance, and the sample size still needed.

The unit is the conversation (session): it converted if any of its responses got ``success: true``.
Per variant: the conversion rate with a Wilson 95% interval (and the mean score, if scores were
sent). Between variants: the difference B − A with a Wald interval, a two-sided two-proportion
z-test (pooled variance), and the conversations per variant needed to detect the observed
difference at the chosen significance level and power (normal approximation).
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

from dstune.errors import DataError

_Z = NormalDist()


@dataclass
class VariantStats:
    variant: str
    model: str
    conversations: int
    conversions: int
    rate: float
    ci_low: float
    ci_high: float
    responses: int
    with_feedback: int
    mean_score: float | None


@dataclass
class ABReport:
    variants: list[VariantStats]
    difference: float  # rate(B) - rate(A)
    diff_ci_low: float
    diff_ci_high: float
    z: float | None
    p_value: float | None
    alpha: float
    power: float
    needed_per_variant: int | None  # conversations per variant to detect the observed difference
    additional_needed: int | None  # more conversations in total (both variants) than logged so far
    split: float | None

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value < self.alpha

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "significant": self.significant}


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion ((0, 1) with no data)."""
    if n == 0:
        return 0.0, 1.0
    z = _Z.inv_cdf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def two_proportion_z(x1: int, n1: int, x2: int, n2: int) -> tuple[float | None, float | None]:
    """Two-sided z-test of p1 == p2 with pooled variance: (z, p-value); (None, None) when undefined."""
    if n1 == 0 or n2 == 0:
        return None, None
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return None, None
    z = (x2 / n2 - x1 / n1) / se
    return z, 2 * (1 - _Z.cdf(abs(z)))


def sample_size_per_variant(p1: float, p2: float, alpha: float = 0.05, power: float = 0.8) -> int | None:
    """Conversations per variant for a two-sided test at ``alpha`` to detect p1 vs p2 with ``power``."""
    if p1 == p2:
        return None
    z_a, z_b = _Z.inv_cdf(1 - alpha / 2), _Z.inv_cdf(power)
    p_bar = (p1 + p2) / 2
    numerator = z_a * math.sqrt(2 * p_bar * (1 - p_bar)) + z_b * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return math.ceil(numerator**2 / (p1 - p2) ** 2)


def ab_report(path: str | Path, alpha: float = 0.05, power: float = 0.8) -> ABReport:
    """Read the A/B log at ``path`` and compute the report."""
    stats = [_variant_stats(_connect(path), name) for name in ("A", "B")]
    a, b = stats
    z, p_value = two_proportion_z(a.conversions, a.conversations, b.conversions, b.conversations)
    difference = b.rate - a.rate
    se = math.sqrt(_var(a) + _var(b))
    z_ci = _Z.inv_cdf(1 - alpha / 2)
    needed = sample_size_per_variant(a.rate, b.rate, alpha, power) if a.conversations and b.conversations else None
    additional = None if needed is None else max(0, needed - a.conversations) + max(0, needed - b.conversations)
    split = _connect(path).execute("SELECT value FROM meta WHERE key = 'split'").fetchone()
    return ABReport(stats, difference, difference - z_ci * se, difference + z_ci * se, z, p_value, alpha, power,
                    needed, additional, float(split[0]) if split else None)


def _connect(path: str | Path) -> sqlite3.Connection:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"A/B log not found: {path}", hint="it is written by `dstune serve --ab A B --ab-log FILE`")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        db.execute("SELECT 1 FROM responses LIMIT 1")
    except sqlite3.DatabaseError as exc:
        raise DataError(f"{path} is not a dstune A/B log ({exc})") from None
    return db


def _variant_stats(db: sqlite3.Connection, variant: str) -> VariantStats:
    conversations, conversions = db.execute(
        """SELECT COUNT(*), COALESCE(SUM(converted), 0) FROM (
               SELECT r.session, MAX(COALESCE(f.success, 0)) AS converted
               FROM responses r LEFT JOIN feedback f ON f.response_id = r.id
               WHERE r.variant = ? GROUP BY r.session)""", (variant,)).fetchone()
    responses, with_feedback, mean_score = db.execute(
        """SELECT COUNT(DISTINCT r.id), COUNT(DISTINCT f.response_id), AVG(f.score)
           FROM responses r LEFT JOIN feedback f ON f.response_id = r.id WHERE r.variant = ?""",
        (variant,)).fetchone()
    model = db.execute("SELECT value FROM meta WHERE key = ?", (f"variant_{variant}",)).fetchone()
    low, high = wilson_interval(conversions, conversations)
    return VariantStats(variant, model[0].split("\t")[0] if model else "?", conversations, conversions,
                        conversions / conversations if conversations else 0.0, low, high, responses, with_feedback,
                        mean_score)


def _var(stats: VariantStats) -> float:
    n = stats.conversations
    return stats.rate * (1 - stats.rate) / n if n else 0.0


def render_report(report: ABReport):
    """A rich table of both variants and a few sentences on the difference."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title="Online A/B: conversion per conversation")
    for column in ("variant", "model", "conversations", "conversions", "rate", "95% CI", "mean score"):
        table.add_column(column, justify="left" if column in ("variant", "model") else "right")
    for v in report.variants:
        table.add_row(v.variant, v.model, str(v.conversations), str(v.conversions), f"{v.rate:.1%}",
                      f"{v.ci_low:.1%} – {v.ci_high:.1%}", "-" if v.mean_score is None else f"{v.mean_score:.3g}")
    lines = [
        (f"difference B − A: {report.difference:+.1%} (95% CI {report.diff_ci_low:+.1%} to "
         f"{report.diff_ci_high:+.1%})")
    ]
    if report.p_value is None:
        lines.append("two-proportion z-test: undefined (a variant has no conversations, or no variance)")
    else:
        verdict = "significant" if report.significant else "not significant"
        lines.append(f"two-proportion z-test: z = {report.z:.3f}, p = {report.p_value:.4f} — {verdict} at "
                     f"α = {report.alpha}")
    if report.needed_per_variant is not None:
        lines.append(f"to detect a difference this size with {report.power:.0%} power: {report.needed_per_variant:,} "
                     f"conversations per variant ({report.additional_needed:,} more in total than logged)")
    else:
        lines.append("no observed difference: no sample size can be computed for it")
    return Group(table, Text("\n".join(lines)))
