"""Label synonyms, sets and hierarchy levels; majority vote with ties; Cohen's and Fleiss' kappa by hand."""

from __future__ import annotations

import numpy as np
import pytest

from dstune.config.cleaning import LabelSettings
from dstune.data.formats import RowError
from dstune.data.labels import (
    LabelRules,
    agreement,
    cohen_kappa,
    fleiss_kappa,
    join_annotator_rows,
    majority_vote,
    vote_labels,
)

LEVELS = [
    ["刑事", "民事"],
    ["诈骗", "盗窃", "合同"],
    ["电信诈骗", "合同诈骗", "买卖合同"],
]


def test_synonyms_paths_and_levels():
    rules = LabelRules(LabelSettings(synonyms={"电诈": "刑事/诈骗/电信诈骗"}, levels=LEVELS))
    assert rules.normalise("电诈") == "刑事/诈骗/电信诈骗"
    assert rules.normalise(" 民事 / 合同 ") == "民事/合同"
    with pytest.raises(RowError, match="'行政' is not a level-1 label"):
        rules.normalise("行政/处罚")
    with pytest.raises(RowError, match="'盗窃' is not a level-3 label"):
        rules.normalise("刑事/盗窃/盗窃")
    with pytest.raises(RowError, match="has 4 levels"):
        rules.normalise("刑事/诈骗/电信诈骗/其他")
    assert rules.level_counts(["刑事/诈骗/电信诈骗", "刑事/盗窃", "民事/合同/买卖合同"]) == [
        {"刑事": 2, "民事": 1},
        {"诈骗": 1, "盗窃": 1, "合同": 1},
        {"电信诈骗": 1, "买卖合同": 1},
    ]


def test_allowed_set_and_bad_values():
    rules = LabelRules(LabelSettings(allowed=["positive", "negative"], synonyms={"pos": "positive"}))
    assert rules.normalise("pos") == "positive"
    with pytest.raises(RowError, match="'neutral' is not in the label set"):
        rules.normalise("neutral")
    with pytest.raises(RowError, match="label is empty"):
        rules.normalise("  ")
    with pytest.raises(RowError, match="must be a string"):
        rules.normalise(["positive"])


def test_majority_vote_and_ties():
    assert majority_vote(["a", "b", "a"]).label == "a"
    tie = majority_vote(["b", "a"])
    assert tie.label is None and tie.tied == ["b", "a"]
    assert majority_vote(["b", "a"], on_tie="first").label == "b"
    labels, ties = vote_labels([["a", "a", "b"], ["x", "y"], []], "reject")
    assert labels == ["a", None, None] and ties == [
        None,
        "annotators tie between 'x', 'y'",
        None,
    ]


def test_rows_per_annotator_are_joined_by_id():
    first, labels, names = join_annotator_rows(
        ["1", "2", "1", "1"],
        [["a"], ["b"], ["a"], ["c"]],
        [["ann1"], ["ann1"], ["ann2"], ["ann3"]],
    )
    assert first == [0, 1] and labels == [["a", "a", "c"], ["b"]] and names == [["ann1", "ann2", "ann3"], ["ann1"]]


def test_cohen_kappa_by_hand():
    # 50 items: both yes 20, A yes/B no 5, A no/B yes 10, both no 15.
    # p_o = 35/50 = 0.7; p_e = 0.5*0.6 + 0.5*0.4 = 0.5; kappa = (0.7 - 0.5) / 0.5 = 0.4
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    result = agreement([{"A": x, "B": y} for x, y in zip(a, b)])
    assert result["method"] == "cohen" and result["kappa"] == pytest.approx(0.4)
    assert result["per_label"] == {
        "no": pytest.approx(0.4),
        "yes": pytest.approx(0.4),
    }  # two labels: each = overall


def test_fleiss_kappa_by_hand():
    # Fleiss (1971) worked example: 10 items, 14 raters, 5 categories.
    # P_bar = 0.378, P_e = 0.213 -> kappa = (0.378 - 0.213) / (1 - 0.213) = 0.210
    counts = np.array([
        [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
    ])  # fmt: skip
    overall, per_category = fleiss_kappa(counts)
    assert overall == pytest.approx(0.210, abs=1e-3)
    # category 1: p_1 = 20/140; sum n_i1 (14 - n_i1) = 2*12 + 7*7 + 3*11 + 2*12 + 6*8 = 178
    # kappa_1 = 1 - 178 / (10 * 14 * 13 * (1/7) * (6/7)) = 1 - 178/222.857 = 0.2013
    assert per_category[0] == pytest.approx(1 - 178 / (10 * 14 * 13 * (1 / 7) * (6 / 7)))


def test_fleiss_agreement_over_three_annotators():
    items = [
        {"1": "a", "2": "a", "3": "a"},
        {"1": "b", "2": "b", "3": "b"},
        {"1": "a", "2": "b", "3": "a"},
    ]
    result = agreement(items)
    assert result["method"] == "fleiss" and result["items"] == 3 and result["annotators_per_item"] == 3
    # P_i = 1, 1, 1/3 -> P_bar = 7/9; p_a = 5/9, p_b = 4/9 -> P_e = 41/81; kappa = (63/81 - 41/81) / (40/81) = 0.55
    assert result["kappa"] == pytest.approx(0.55)
