"""Metrics of labelled tasks: entity F1 against hand-computed cases, multi-label thresholds, hierarchical
predictions that are always consistent, and the classification metrics themselves."""

from __future__ import annotations

import numpy as np
import pytest

from dstune.data.label_space import LabelSpace
from dstune.evaluate.metrics import (
    classification_metrics,
    confusion,
    entity_scores,
    extract_entities,
    multilabel_metrics,
    tune_thresholds,
)


@pytest.mark.parametrize(
    "tags, expected",
    [
        (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 1), ("LOC", 3, 3)]),
        (["I-PER", "I-PER", "O"], [("PER", 0, 1)]),  # an I- without B- starts an entity (CoNLL / seqeval default)
        (["B-PER", "B-PER", "I-PER"], [("PER", 0, 0), ("PER", 1, 2)]),
        (["B-PER", "I-LOC", "I-LOC"], [("PER", 0, 0), ("LOC", 1, 2)]),  # a type change ends the entity
        (["O", "O"], []),
    ],
)
def test_extract_entities_follows_seqeval(tags, expected):
    assert extract_entities(tags) == expected


def test_entity_f1_against_hand_computed_counts():
    truth = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-PER"]]
    guess = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "I-ORG", "B-PER"]]
    # true entities: PER(0,0-1) LOC(0,3) ORG(1,0) PER(1,2) = 4; predicted: PER(0,0-1) ORG(1,0-1) PER(1,2) = 3
    # exact matches: PER(0,0-1) and PER(1,2) = 2 -> P = 2/3, R = 2/4, F1 = 4/7
    scores = entity_scores(truth, guess)
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(0.5)
    assert scores["f1"] == pytest.approx(4 / 7)
    assert scores["f1_PER"] == pytest.approx(1.0)
    assert scores["f1_ORG"] == 0.0 and scores["f1_LOC"] == 0.0


def test_tuned_thresholds_recover_labels_a_fixed_half_misses():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=(200, 2))
    # label 0 is scored low but separably (positives ~0.3, negatives ~0.1); label 1 is well calibrated
    probs = np.stack([0.1 + 0.2 * labels[:, 0] + rng.uniform(-0.05, 0.05, 200),
                      0.2 + 0.6 * labels[:, 1] + rng.uniform(-0.1, 0.1, 200)], axis=1)
    space = LabelSpace("multi", ["rare", "common"])
    at_half = multilabel_metrics(space, probs, labels)
    space.thresholds = tune_thresholds(probs, labels, space.thresholds)
    tuned = multilabel_metrics(space, probs, labels)
    assert 0.15 < space.thresholds[0] < 0.25, space.thresholds
    assert at_half["recall_rare"] == 0.0 and tuned["recall_rare"] == 1.0 and tuned["precision_rare"] == 1.0
    assert tuned["macro_f1"] == 1.0 > at_half["macro_f1"]
    assert tune_thresholds(probs, np.zeros_like(labels), [0.5, 0.4]) == [0.5, 0.4]  # no positives: keep default


def test_hierarchical_prediction_walks_the_tree_and_stays_consistent():
    names = ["刑事/诈骗/电信诈骗", "刑事/诈骗/合同诈骗", "刑事/盗窃", "民事/合同", "民事/婚姻"]
    space = LabelSpace("single", names, hierarchical=True)
    # the best single leaf is 民事/合同 (0.3), but 刑事 holds 0.6 of the mass, 刑事/诈骗 0.45 of it
    probs = np.array([[0.25, 0.2, 0.15, 0.3, 0.1]])
    picked = names[int(space.predict(probs)[0])]
    assert picked == "刑事/诈骗/电信诈骗"
    levels = space.levels(picked)
    assert levels == ["刑事", "刑事/诈骗", "刑事/诈骗/电信诈骗"]
    rng = np.random.default_rng(1)
    for row in rng.dirichlet(np.ones(len(names)), size=50):  # any scores give a path from the root to a label
        path = space.levels(names[int(space.predict(row[None])[0])])
        assert all(child.startswith(parent + "/") for parent, child in zip(path, path[1:]))

    metrics = classification_metrics(space, np.eye(5)[[0, 1, 3]] * 0.9 + 0.02, np.array([0, 2, 4]))
    assert metrics["level1_accuracy"] == 1.0  # 刑事, 刑事, 民事 all right at the top level
    assert metrics["level2_accuracy"] == pytest.approx(1 / 3)
    assert metrics["accuracy"] == pytest.approx(1 / 3)


def test_classification_metrics_and_confusion_matrix():
    space = LabelSpace("single", ["a", "b", "合同"])
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    labels = np.array([0, 1, 1, 2])
    metrics = classification_metrics(space, probs, labels)
    assert metrics["accuracy"] == 0.75 and metrics["micro_f1"] == 0.75
    assert metrics["macro_f1"] == pytest.approx(np.mean([2 / 3, 2 / 3, 1.0]))
    assert metrics["precision_a"] == 0.5 and metrics["recall_b"] == 0.5
    assert "precision_2" in metrics  # a name MLflow would mangle is keyed by its index
    assert metrics["roc_auc"] == pytest.approx(1.0)
    matrix, rows, columns = confusion(space, probs, labels)
    assert matrix.tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]] and rows == columns == ["a", "b", "合同"]
