"""Calibration (ECE, reliability plot), per-class thresholds and classifier paired statistics."""

from __future__ import annotations

import numpy as np
import pytest

from dstune.data.label_space import LabelSpace
from dstune.evaluate.calibration import (
    calibration_report,
    expected_calibration_error,
    per_class_thresholds,
    plot_reliability,
    reliability,
)
from dstune.evaluate.labelled import LabelledPredictions, paired_metrics


def test_ece_matches_hand_computation():
    confidence = np.array([0.9, 0.9, 0.6, 0.6])
    outcome = np.array([1.0, 0.0, 1.0, 1.0])
    table = reliability(confidence, outcome, bins=10)
    assert [b.count for b in table if b.count] == [2, 2]
    # bin (0.5, 0.6]: |1.0 - 0.6| * 2/4 ; bin (0.8, 0.9]: |0.5 - 0.9| * 2/4
    assert expected_calibration_error(table) == pytest.approx(0.4)


def test_single_label_calibration_report_and_plot(tmp_path):
    space = LabelSpace("single", ["a", "b"])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    labels = np.array([0, 1, 1, 0])
    report = calibration_report(space, probs, labels, bins=5)
    assert report["measured_on"] == "top-class confidence"
    assert 0 <= report["ece"] <= 1 and len(report["bins"]) == 5
    out = plot_reliability(report, tmp_path / "reliability.png")
    assert out.is_file() and out.stat().st_size > 1000


def test_per_class_thresholds_separate_the_classes():
    space = LabelSpace("single", ["neg", "pos"])
    probs = np.array([[0.9, 0.1], [0.7, 0.3], [0.4, 0.6], [0.2, 0.8]])
    thresholds = per_class_thresholds(space, probs, np.array([0, 0, 1, 1]))
    assert set(thresholds) == {"neg", "pos"}
    assert 0.3 < thresholds["pos"] <= 0.6 and 0.4 < thresholds["neg"] <= 0.7


def test_macro_f1_statistics_agree_with_sklearn():
    from sklearn.metrics import f1_score

    space = LabelSpace("single", ["x", "y", "z"])
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=30)
    labels = rng.integers(0, 3, 30)
    pred = LabelledPredictions(space, probs, labels, None, [""] * 30, [""] * 30)
    metrics = paired_metrics(pred)
    expected = f1_score(labels, probs.argmax(1), labels=[0, 1, 2], average="macro", zero_division=0)
    assert metrics["macro_f1"].value == pytest.approx(expected)
    assert metrics["accuracy"].value == pytest.approx(np.mean(probs.argmax(1) == labels))
