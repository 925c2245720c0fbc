"""Train/validation/test split: stratified by label, grouped by a key (one case never on two sides), seeded."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np


def split_indices(
    n_rows: int,
    shares: dict[str, float],
    *,
    labels: list[str | None] | None = None,
    groups: list[str | None] | None = None,
    seed: int = 42,
) -> dict[str, np.ndarray]:
    """Row indices of ``train`` and each split in ``shares`` (e.g. ``{"validation": 0.1, "test": 0.1}``).

    Units are rows, or whole groups when ``groups`` is given. With ``labels`` each label (a group's
    most common label) is split separately, so every split keeps the label proportions. Within a
    stratum the units are shuffled with ``seed`` and each goes to the split furthest below its
    target row count, or to train once every target is met. Indices come back in file order.
    """
    units = _units(n_rows, groups)
    strata: dict[str | None, list[list[int]]] = defaultdict(list)
    for unit in units:
        strata[_stratum(unit, labels)].append(unit)
    rng = np.random.default_rng(seed)
    assigned: dict[str, list[int]] = {name: [] for name in ["train", *shares]}
    for key in sorted(strata, key=str):
        members = strata[key]
        order = rng.permutation(len(members))
        total = sum(len(unit) for unit in members)
        targets = {name: share * total for name, share in shares.items()}
        for index in order:
            unit = members[index]
            name = _most_behind(targets, len(unit))
            assigned[name].extend(unit)
            if name != "train":
                targets[name] -= len(unit)
    return {name: np.array(sorted(rows), dtype=np.int64) for name, rows in assigned.items()}


def _units(n_rows: int, groups: list[str | None] | None) -> list[list[int]]:
    if groups is None:
        return [[i] for i in range(n_rows)]
    members: dict[str, list[int]] = defaultdict(list)
    for i, group in enumerate(groups):
        members[str(group)].append(i)
    return list(members.values())


def _stratum(unit: list[int], labels: list[str | None] | None) -> str | None:
    if labels is None:
        return None
    return Counter(labels[i] for i in unit).most_common(1)[0][0]


def _most_behind(remaining: dict[str, float], size: int) -> str:
    """The split whose remaining target is largest, if at least half of ``size`` is still wanted; else train."""
    if not remaining:
        return "train"
    name = max(remaining, key=remaining.get)
    return name if remaining[name] >= size / 2 else "train"
