"""Stratified and grouped splits keep label proportions and never put one group on two sides."""

from __future__ import annotations

from collections import Counter

import numpy as np

from dstune.data.split import split_indices


def test_stratified_split_keeps_label_proportions_and_is_seeded():
    labels = ["A"] * 60 + ["B"] * 30 + ["C"] * 10
    parts = split_indices(100, {"validation": 0.2, "test": 0.1}, labels=labels, seed=3)
    counts = {name: Counter(labels[i] for i in rows) for name, rows in parts.items()}
    assert counts["validation"] == {"A": 12, "B": 6, "C": 2}
    assert counts["test"] == {"A": 6, "B": 3, "C": 1}
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(100))
    again = split_indices(100, {"validation": 0.2, "test": 0.1}, labels=labels, seed=3)
    assert all((again[k] == parts[k]).all() for k in parts)
    assert not (
        split_indices(100, {"validation": 0.2}, labels=labels, seed=4)["validation"] == parts["validation"]
    ).all()


def test_grouped_split_never_splits_a_group_and_stays_near_the_shares():
    rng = np.random.default_rng(0)
    groups = [f"case{g}" for g in rng.integers(0, 60, size=300)]
    labels = [["fraud", "theft"][int(g[4:]) % 2] for g in groups]
    parts = split_indices(300, {"validation": 0.2, "test": 0.2}, labels=labels, groups=groups, seed=1)
    sides = {name: {groups[i] for i in rows} for name, rows in parts.items()}
    assert not (
        sides["train"] & sides["validation"] or sides["train"] & sides["test"] or sides["validation"] & sides["test"]
    )
    for name in ("validation", "test"):
        assert abs(len(parts[name]) - 60) <= 12
        share = Counter(labels[i] for i in parts[name])["fraud"] / len(parts[name])
        assert abs(share - Counter(labels)["fraud"] / 300) < 0.15


def test_no_shares_keeps_everything_in_train():
    assert split_indices(5, {})["train"].tolist() == [0, 1, 2, 3, 4]
