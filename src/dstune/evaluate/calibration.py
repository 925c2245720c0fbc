"""Calibration of classifier probabilities: reliability table, expected calibration error, plot, thresholds.

A model is calibrated when, among predictions made with confidence 0.8, 80% are right. The
reliability table bins predictions by confidence (equal-width bins) and compares each bin's mean
confidence with its accuracy; the expected calibration error (ECE) is the count-weighted mean gap
(Guo et al., 2017). Single-label tasks use the top-class confidence and whether it was right;
multi-label tasks use every (example, label) probability and whether the label was present.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from dstune.data.label_space import LabelSpace


@dataclass(frozen=True)
class Bin:
    low: float
    high: float
    count: int
    confidence: float
    accuracy: float


def confidence_and_outcome(space: LabelSpace, probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What calibration is measured on: (confidence, 1 if right else 0) per event."""
    probs = np.asarray(probs, dtype=float)
    if space.kind == "multi":
        return probs.reshape(-1), np.asarray(labels, dtype=float).reshape(-1)
    predicted = space.predict(probs)
    confidence = probs[np.arange(len(probs)), predicted]
    return confidence, (predicted == np.asarray(labels).reshape(-1)).astype(float)


def reliability(confidence: np.ndarray, outcome: np.ndarray, bins: int = 10) -> list[Bin]:
    """Equal-width confidence bins over [0, 1] (the last bin includes 1.0); empty bins are kept with count 0."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    table = []
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        table.append(Bin(float(edges[b]), float(edges[b + 1]), count,
                         float(confidence[inside].mean()) if count else float("nan"),
                         float(outcome[inside].mean()) if count else float("nan")))
    return table


def expected_calibration_error(table: list[Bin]) -> float:
    """Σ (bin count / total) · |bin accuracy − bin confidence|."""
    total = sum(b.count for b in table)
    if total == 0:
        return float("nan")
    return float(sum(b.count / total * abs(b.accuracy - b.confidence) for b in table if b.count))


def calibration_report(space: LabelSpace, probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> dict:
    """``{"ece", "max_gap", "bins": [...], "measured_on"}`` for metrics.json."""
    confidence, outcome = confidence_and_outcome(space, probs, labels)
    table = reliability(confidence, outcome, bins)
    gaps = [abs(b.accuracy - b.confidence) for b in table if b.count]
    return {
        "ece": expected_calibration_error(table),
        "max_gap": float(max(gaps)) if gaps else float("nan"),
        "bins": [asdict(b) for b in table],
        "measured_on": "every label probability" if space.kind == "multi" else "top-class confidence",
    }


def per_class_thresholds(space: LabelSpace, probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Per class, the one-vs-rest probability threshold with the best F1 on this data.

    Multi-label tasks predict with these thresholds; for single-label tasks they say how sure the
    model must be before a class is worth acting on (e.g. route lower scores to a person).
    Tuned on the evaluated data, so F1 at them is optimistic there: apply them to new data.
    """
    from dstune.evaluate.metrics import tune_thresholds

    labels = np.asarray(labels)
    one_hot = labels if space.kind == "multi" else np.eye(len(space), dtype=np.int64)[labels.reshape(-1)]
    default = space.thresholds or [0.5] * len(space)
    return dict(zip(space.names, tune_thresholds(probs, one_hot, default)))


def plot_reliability(report: dict, out: Path, title: str = "Reliability") -> Path:
    """Reliability diagram: accuracy per confidence bin against the diagonal, with bin counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = [b for b in report["bins"] if b["count"]]
    fig, (ax, counts) = plt.subplots(2, 1, figsize=(5.5, 6), dpi=120, height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", label="perfectly calibrated")
    centres = [(b["low"] + b["high"]) / 2 for b in report["bins"]]
    width = report["bins"][0]["high"] - report["bins"][0]["low"]
    ax.bar([(b["low"] + b["high"]) / 2 for b in bins], [b["accuracy"] for b in bins], width=width * 0.9,
           color="tab:blue", alpha=0.7, label="accuracy in bin")
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o", color="tab:orange",
            label="mean confidence → accuracy")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"{title} (ECE = {report['ece']:.3f})")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    counts.bar(centres, [b["count"] for b in report["bins"]], width=width * 0.9, color="tab:grey")
    counts.set_xlabel(f"confidence ({report['measured_on']})")
    counts.set_ylabel("count")
    counts.set_xlim(0, 1)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
