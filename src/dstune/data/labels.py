"""Labels: synonyms, label sets, hierarchical paths, annotator majority vote and agreement (kappa).

A hierarchical label is a path such as ``刑事/诈骗/电信诈骗``; ``labels.levels`` lists the allowed
labels at each level. Several annotators label an item either as a list in one row
(``labels: [a, b, c]``, annotator = position) or as one row per annotator sharing an id.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from dstune.config.cleaning import LabelSettings
from dstune.data.formats import RowError


class LabelRules:
    """Normalises one label: synonym map, path clean-up, per-level sets, the allowed set."""

    def __init__(self, settings: LabelSettings) -> None:
        self.settings = settings
        self.allowed = set(settings.allowed) if settings.allowed is not None else None
        self.levels = [set(level) for level in settings.levels] if settings.levels else None

    def normalise(self, label: object) -> str:
        """The canonical label, or :class:`RowError` saying why it is not acceptable."""
        if isinstance(label, bool) or not isinstance(label, str | int):
            raise RowError(f"label must be a string, got {type(label).__name__}")
        text = str(label).strip()
        if not text:
            raise RowError("label is empty")
        text = self.settings.synonyms.get(text, text)
        sep = self.settings.separator
        parts = [part.strip() for part in text.split(sep)]
        if self.levels is not None:
            self._check_levels(parts, text)
        text = sep.join(parts)
        if self.allowed is not None and text not in self.allowed:
            raise RowError(f"label {text!r} is not in the label set (cleaning.labels.allowed)")
        return text

    def _check_levels(self, parts: list[str], label: str) -> None:
        if len(parts) > len(self.levels):
            raise RowError(
                f"label {label!r} has {len(parts)} levels; cleaning.labels.levels defines {len(self.levels)}"
            )
        for depth, (part, allowed) in enumerate(zip(parts, self.levels), start=1):
            if part not in allowed:
                raise RowError(f"label {label!r}: {part!r} is not a level-{depth} label (cleaning.labels.levels)")

    def level_counts(self, labels: list[str]) -> list[dict[str, int]]:
        """Label counts at each hierarchy level (level 1 first); one level for flat labels."""
        paths = [label.split(self.settings.separator) for label in labels]
        depth = max((len(path) for path in paths), default=1)
        return [
            dict(Counter(path[level] for path in paths if len(path) > level).most_common()) for level in range(depth)
        ]


@dataclass(frozen=True)
class Vote:
    label: str | None
    """The majority label; None when tied and ``on_tie`` is reject."""
    tied: list[str]
    """The labels that tied for the most votes (empty when there is a clear majority)."""


def majority_vote(annotations: list[str], on_tie: str = "reject") -> Vote:
    """The most frequent label; a tie is reported, and resolved to the tied label seen first if ``on_tie`` is first."""
    counts = Counter(annotations)
    top = max(counts.values())
    tied = [label for label in counts if counts[label] == top]  # Counter keeps first-seen order
    if len(tied) == 1:
        return Vote(tied[0], [])
    return Vote(tied[0] if on_tie == "first" else None, tied)


def cohen_kappa(first: list[str], second: list[str]) -> float:
    """Cohen's kappa of two annotators who labelled the same items (1 = perfect, 0 = chance)."""
    if len(first) != len(second) or not first:
        raise ValueError("cohen_kappa needs two equally long, non-empty label lists")
    a, b = np.asarray(first), np.asarray(second)
    observed = float(np.mean(a == b))
    expected = sum(float(np.mean(a == c)) * float(np.mean(b == c)) for c in set(first) | set(second))
    return 1.0 if expected == 1.0 else (observed - expected) / (1.0 - expected)


def fleiss_kappa(counts: np.ndarray) -> tuple[float, np.ndarray]:
    """Fleiss' kappa from an items × categories matrix of rating counts (same number of ratings per item).

    Returns the overall kappa and the kappa of each category.
    """
    counts = np.asarray(counts, dtype=float)
    n_items, raters = counts.shape[0], counts.sum(axis=1)
    if n_items == 0 or not np.all(raters == raters[0]) or raters[0] < 2:
        raise ValueError("fleiss_kappa needs at least one item and the same number (>= 2) of ratings per item")
    n = raters[0]
    p_cat = counts.sum(axis=0) / (n_items * n)
    p_item = ((counts * (counts - 1)).sum(axis=1)) / (n * (n - 1))
    p_bar, p_e = p_item.mean(), float((p_cat**2).sum())
    overall = 1.0 if p_e == 1.0 else float((p_bar - p_e) / (1 - p_e))
    disagreement = (counts * (n - counts)).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_category = 1 - disagreement / (n_items * n * (n - 1) * p_cat * (1 - p_cat))
    return overall, per_category


def agreement(items: list[dict[str, str]]) -> dict:
    """Inter-annotator agreement over items given as ``{annotator: label}``: overall and per label.

    Two annotators: Cohen's kappa (per label: each label against the rest). More: Fleiss' kappa over
    the items with the most common number of ratings.
    """
    rated = [item for item in items if len(item) >= 2]
    if not rated:
        return {}
    annotators = sorted({name for item in rated for name in item})
    if len(annotators) == 2:
        pairs = [item for item in rated if len(item) == 2]
        first = [item[annotators[0]] for item in pairs]
        second = [item[annotators[1]] for item in pairs]
        labels = sorted(set(first) | set(second))
        per_label = {c: cohen_kappa([x == c for x in first], [y == c for y in second]) for c in labels}
        return _agreement("cohen", cohen_kappa(first, second), per_label, len(pairs), 2)
    n = Counter(len(item) for item in rated).most_common(1)[0][0]
    used = [item for item in rated if len(item) == n]
    labels = sorted({label for item in used for label in item.values()})
    matrix = np.array([[list(item.values()).count(c) for c in labels] for item in used])
    overall, per_category = fleiss_kappa(matrix)
    return _agreement("fleiss", overall, dict(zip(labels, per_category.tolist())), len(used), n)


def _agreement(method: str, overall: float, per_label: dict, items: int, raters: int) -> dict:
    def rounded(value: float) -> float | None:
        return None if np.isnan(value) else round(float(value), 4)

    return {
        "method": method,
        "kappa": rounded(overall),
        "per_label": {label: rounded(value) for label, value in per_label.items()},
        "items": items,
        "annotators_per_item": raters,
    }


def join_annotator_rows(
    item_ids: list[str], annotations: list[list[str]], annotators: list[list[str]]
) -> tuple[list[int], list[list[str]], list[list[str]]]:
    """One row per annotator → one row per item: the first row of each id, with every annotator's label."""
    first: dict[str, int] = {}
    labels: dict[str, list[str]] = {}
    names: dict[str, list[str]] = {}
    for row, (item, labelled, who) in enumerate(zip(item_ids, annotations, annotators)):
        first.setdefault(item, row)
        labels.setdefault(item, []).extend(labelled)
        names.setdefault(item, []).extend(who)
    return list(first.values()), list(labels.values()), list(names.values())


def vote_labels(annotations: list[list[str]], on_tie: str) -> tuple[list[str | None], list[str | None]]:
    """Per row: the majority label (None where there are no annotations or a rejected tie) and the tie, if any."""
    labels: list[str | None] = []
    ties: list[str | None] = []
    for labelled in annotations:
        vote = majority_vote(labelled, on_tie) if labelled else Vote(None, [])
        labels.append(vote.label)
        tie = f"annotators tie between {', '.join(map(repr, vote.tied))}" if vote.tied else None
        ties.append(tie)
    return labels, ties
