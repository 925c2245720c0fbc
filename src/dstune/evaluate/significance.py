"""Paired significance for A/B comparisons on the same examples.

Every metric is a :class:`Metric`: per-example *additive* statistics and a function that turns
their column sums into the corpus value (BLEU from n-gram counts, accuracy from [correct, 1],
macro F1 from confusion-matrix cells, perplexity from [nll, tokens]). That one shape lets a
paired bootstrap (confidence interval of B − A) and a paired permutation test (p-value) resample
any metric by reweighting rows, without re-running the metric itself. Accuracy-like metrics get
McNemar's exact test on the discordant pairs instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

Aggregate = Callable[[np.ndarray], float]
_CHUNK = 100  # resamples drawn at once (memory: chunk x examples)


@dataclass(frozen=True)
class Metric:
    """A corpus metric: ``value = aggregate(stats[valid].sum(axis=0))``."""

    name: str
    stats: np.ndarray
    """(n_examples, k) additive per-example statistics."""
    aggregate: Aggregate
    per_example: np.ndarray
    """(n_examples,) the metric on each example alone (win/tie/loss, review, predictions.jsonl)."""
    valid: np.ndarray
    """(n_examples,) bool: examples that have a score (e.g. the judge scored them)."""
    higher_is_better: bool = True
    test: Literal["mcnemar", "permutation"] = "permutation"

    @property
    def value(self) -> float:
        """The corpus value over the valid examples (NaN when there are none)."""
        if not self.valid.any():
            return float("nan")
        return float(self.aggregate(self.stats[self.valid].sum(axis=0)))


def ratio(sums: np.ndarray) -> float:
    """``sums[0] / sums[1]`` (NaN for 0 / 0): the aggregate of mean-of-examples metrics."""
    return float(sums[0] / sums[1]) if sums[1] else float("nan")


def mean_metric(name: str, values, *, higher_is_better: bool = True, binary: bool = False) -> Metric:
    """A metric that is the mean of per-example values; NaN values count as unscored."""
    values = np.asarray(values, dtype=float)
    valid = np.isfinite(values)
    filled = np.where(valid, values, 0.0)
    stats = np.stack([filled, valid.astype(float)], axis=1)
    return Metric(name, stats, ratio, values, valid, higher_is_better, "mcnemar" if binary else "permutation")


@dataclass(frozen=True)
class PairedResult:
    """B versus A on one metric: values, difference (B − A), its CI and p-value, per-example wins."""

    metric: str
    a: float
    b: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    test: str
    wins: int
    ties: int
    losses: int
    n: int
    alpha: float
    higher_is_better: bool

    @property
    def significant(self) -> bool:
        return bool(self.p_value < self.alpha)

    def verdict(self) -> str:
        """One plain sentence a reader can act on."""
        ci = f"{100 * (1 - self.alpha):.0f}% CI [{self.ci_low:+.4g}, {self.ci_high:+.4g}]"
        if not self.significant:
            return (f"not significant (p = {self.p_value:.3g} ≥ {self.alpha:g}; {ci}): these {self.n} examples "
                    f"cannot tell A and B apart on {self.metric}")
        better = (self.diff > 0) == self.higher_is_better
        return f"B is {'better' if better else 'worse'} than A on {self.metric} (p = {self.p_value:.3g}; {ci})"

    def to_dict(self) -> dict:
        return {**asdict(self), "significant": self.significant, "verdict": self.verdict()}


def compare_metric(a: Metric, b: Metric, *, resamples: int = 1000, alpha: float = 0.05, seed: int = 0) -> PairedResult:
    """Paired comparison of the same metric for systems A and B on the same examples."""
    if a.stats.shape != b.stats.shape:
        raise ValueError(f"{a.name}: A and B were scored on different examples ({a.stats.shape} vs {b.stats.shape})")
    both = a.valid & b.valid
    sa, sb = a.stats[both], b.stats[both]
    n = int(both.sum())
    if n == 0:
        nan = float("nan")
        return PairedResult(a.name, nan, nan, nan, nan, nan, 1.0, "none", 0, 0, 0, 0, alpha, a.higher_is_better)
    value_a, value_b = a.aggregate(sa.sum(0)), b.aggregate(sb.sum(0))
    rng = np.random.default_rng(seed)
    low, high = bootstrap_ci(sa, sb, a.aggregate, resamples, alpha, rng)
    if a.test == "mcnemar":
        p_value, test = mcnemar(a.per_example[both], b.per_example[both]), "McNemar exact"
    else:
        p_value, test = permutation_p(sa, sb, a.aggregate, resamples, rng), "paired permutation"
    wins, ties, losses = win_tie_loss(a.per_example[both], b.per_example[both], a.higher_is_better)
    return PairedResult(a.name, float(value_a), float(value_b), float(value_b - value_a), low, high, p_value, test,
                        wins, ties, losses, n, alpha, a.higher_is_better)


def bootstrap_ci(sa: np.ndarray, sb: np.ndarray, aggregate: Aggregate, resamples: int, alpha: float,
                 rng: np.random.Generator) -> tuple[float, float]:
    """Percentile CI of B − A over ``resamples`` paired bootstrap resamples of the examples."""
    n = len(sa)
    deltas = []
    for size in _chunks(resamples):
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=size).astype(float)
        deltas += _deltas(weights @ sa, weights @ sb, aggregate)
    low, high = np.nanpercentile(deltas, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def permutation_p(sa: np.ndarray, sb: np.ndarray, aggregate: Aggregate, resamples: int,
                  rng: np.random.Generator) -> float:
    """Two-sided p-value of B − A: how often swapping A and B on random examples gives as large a difference."""
    observed = abs(aggregate(sb.sum(0)) - aggregate(sa.sum(0)))
    total_a, total_b, gap = sa.sum(0), sb.sum(0), sb - sa
    extreme = 0
    for size in _chunks(resamples):
        swaps = rng.integers(0, 2, size=(size, len(sa))).astype(float) @ gap
        deltas = np.abs(_deltas(total_a + swaps, total_b - swaps, aggregate))
        extreme += int(np.sum(deltas >= observed - 1e-12 * max(1.0, observed)))
    return (extreme + 1) / (resamples + 1)


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """McNemar's exact test: a binomial test on the examples exactly one of the two systems got right."""
    from scipy.stats import binomtest

    only_a = int(np.sum((correct_a > 0.5) & (correct_b <= 0.5)))
    only_b = int(np.sum((correct_b > 0.5) & (correct_a <= 0.5)))
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_b, only_a + only_b, 0.5).pvalue)


def win_tie_loss(a: np.ndarray, b: np.ndarray, higher_is_better: bool = True) -> tuple[int, int, int]:
    """Per-example (B better, equal, B worse) counts."""
    gap = (b - a) if higher_is_better else (a - b)
    close = np.isclose(a, b, rtol=1e-9, atol=1e-12)
    return int(np.sum((gap > 0) & ~close)), int(np.sum(close)), int(np.sum((gap < 0) & ~close))


def _chunks(total: int):
    for start in range(0, total, _CHUNK):
        yield min(_CHUNK, total - start)


def _deltas(sums_a: np.ndarray, sums_b: np.ndarray, aggregate: Aggregate) -> list[float]:
    return [aggregate(row_b) - aggregate(row_a) for row_a, row_b in zip(sums_a, sums_b)]
