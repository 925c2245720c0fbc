"""Metrics of labelled tasks, computed with scikit-learn from scores and label ids.

* single-label (and hierarchical) classification: accuracy, macro/micro F1, per-class precision and
  recall, ROC AUC (one-vs-rest, averaged over the classes present with both outcomes), per-level
  accuracy for hierarchical labels;
* multi-label: subset accuracy, macro/micro F1, per-label precision/recall, ROC AUC, at the
  per-label thresholds of the label space;
* token classification: entity-level precision/recall/F1 with seqeval's default (CoNLL) semantics
  (an ``I-X`` that does not continue an ``X`` entity starts one) and token accuracy.

Per-class keys use the label name when it is safe as a metric name, else the label's index (MLflow
would map other characters, such as Chinese, to ``_`` and merge different labels).
"""

from __future__ import annotations

import re

import numpy as np

from dstune.data.label_space import LabelSpace

IGNORE_INDEX = -100
PRIMARY_METRIC = {"single": "macro_f1", "multi": "macro_f1", "token": "f1"}
"""The metric of each kind that the multi-task combined score averages."""
_SAFE_NAME = re.compile(r"^[0-9A-Za-z_\-. :/]+$")


def task_metrics(space: LabelSpace, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The metrics of one task: ``predictions`` are probabilities (single, multi) or tag ids (token)."""
    if space.kind == "token":
        return token_metrics(space, predictions, labels)
    if space.kind == "multi":
        return multilabel_metrics(space, predictions, labels)
    return classification_metrics(space, predictions, labels)


def classification_metrics(space: LabelSpace, probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    predicted = space.predict(probs)
    every = list(range(len(space)))
    out = {
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(f1_score(labels, predicted, labels=every, average="macro", zero_division=0)),
        "micro_f1": float(f1_score(labels, predicted, labels=every, average="micro", zero_division=0)),
        **_per_class(space, labels, predicted),
    }
    auc = _mean_auc(np.eye(len(space), dtype=np.int64)[labels], probs)
    if auc is not None:
        out["roc_auc"] = auc
    if space.hierarchical:
        for depth in range(1, space.depth + 1):
            truth = [_prefix(space, space.names[i], depth) for i in labels]
            guess = [_prefix(space, space.names[i], depth) for i in predicted]
            out[f"level{depth}_accuracy"] = float(np.mean([t == g for t, g in zip(truth, guess)]))
    return out


def multilabel_metrics(space: LabelSpace, probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    labels = np.asarray(labels).astype(np.int64)
    predicted = space.predict(probs)
    out = {
        "accuracy": float(accuracy_score(labels, predicted)),  # exact match of the whole label set
        "macro_f1": float(f1_score(labels, predicted, average="macro", zero_division=0)),
        "micro_f1": float(f1_score(labels, predicted, average="micro", zero_division=0)),
        **_per_class(space, labels, predicted),
    }
    auc = _mean_auc(labels, probs)
    if auc is not None:
        out["roc_auc"] = auc
    return out


def token_metrics(space: LabelSpace, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Entity P/R/F1 (micro over entities, and F1 per type) and accuracy over the labelled tokens."""
    truth, guess = tag_sequences(space, predictions, labels)
    out = entity_scores(truth, guess, [name[2:] for name in space.names if name.startswith("B-")])
    flat_true = [t for seq in truth for t in seq]
    flat_pred = [p for seq in guess for p in seq]
    out["token_accuracy"] = float(np.mean([t == p for t, p in zip(flat_true, flat_pred)])) if flat_true else 0.0
    return out


def tag_sequences(space: LabelSpace, predictions: np.ndarray, labels: np.ndarray) -> tuple[list, list]:
    """True and predicted tag names of every sequence, at the positions that carry a label."""
    truth, guess = [], []
    for pred_row, label_row in zip(np.asarray(predictions), np.asarray(labels)):
        width = min(len(pred_row), len(label_row))
        keep = label_row[:width] != IGNORE_INDEX
        truth.append([space.names[int(i)] for i in label_row[:width][keep]])
        guess.append([space.names[int(i)] if 0 <= i < len(space) else "O" for i in pred_row[:width][keep]])
    return truth, guess


def extract_entities(tags: list[str]) -> list[tuple[str, int, int]]:
    """``(type, first, last)`` of each entity in a BIO sequence, seqeval/CoNLL style."""
    entities, start, kind = [], 0, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, typ = (tag[0], tag[2:]) if tag[:2] in ("B-", "I-") else ("O", None)
        if kind is not None and (prefix != "I" or typ != kind):
            entities.append((kind, start, i - 1))
            kind = None
        if prefix != "O" and kind is None:
            start, kind = i, typ
    return entities


def entity_scores(truth: list[list[str]], guess: list[list[str]], types: list[str] = ()) -> dict[str, float]:
    """Precision, recall and F1 over exact entity matches (micro), plus ``f1_<type>`` per entity type.

    ``types`` (the label space's entity types) name an unsafe type by its index there.
    """
    true_set = {(n, *e) for n, seq in enumerate(truth) for e in extract_entities(seq)}
    pred_set = {(n, *e) for n, seq in enumerate(guess) for e in extract_entities(seq)}
    out = _prf(len(true_set & pred_set), len(pred_set), len(true_set))
    for kind in sorted({e[1] for e in true_set | pred_set}):
        t = {e for e in true_set if e[1] == kind}
        p = {e for e in pred_set if e[1] == kind}
        out[f"f1_{_key(kind, types.index(kind) if kind in types else len(types))}"] = _prf(len(t & p), len(p), len(t))["f1"]
    return out


def confusion(space: LabelSpace, probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, list[str], list[str]]:
    """The confusion matrix (rows: true, columns: predicted); multi-label: per label TP, FP, FN, TN; token
    tasks: over the tags of the labelled positions (``probs`` are then predicted tag ids)."""
    from sklearn.metrics import confusion_matrix, multilabel_confusion_matrix

    if space.kind == "token":
        width = min(np.shape(labels)[1], np.shape(probs)[1])
        labels, probs = np.asarray(labels)[:, :width], np.asarray(probs)[:, :width]
        keep = labels != IGNORE_INDEX
        truth, guess = labels[keep].astype(np.int64), probs[keep].astype(np.int64)
        return confusion_matrix(truth, guess, labels=list(range(len(space)))), list(space.names), list(space.names)
    predicted = space.predict(probs)
    if space.kind == "multi":
        per_label = multilabel_confusion_matrix(np.asarray(labels).astype(np.int64), predicted)  # [[tn, fp], [fn, tp]]
        matrix = np.stack([per_label[:, 1, 1], per_label[:, 0, 1], per_label[:, 1, 0], per_label[:, 0, 0]], axis=1)
        return matrix, list(space.names), ["TP", "FP", "FN", "TN"]
    matrix = confusion_matrix(np.asarray(labels).astype(np.int64), predicted, labels=list(range(len(space))))
    return matrix, list(space.names), list(space.names)


def tune_thresholds(probs: np.ndarray, labels: np.ndarray, default: list[float]) -> list[float]:
    """Per label, the threshold with the best F1 on (probs, labels); labels without positives keep ``default``."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels).astype(np.int64)
    tuned = []
    for column, fallback in enumerate(default):
        p, y = probs[:, column], labels[:, column]
        if y.sum() == 0:
            tuned.append(float(fallback))
            continue
        candidates = np.unique(p)  # thresholds between two neighbouring scores all predict the same
        scores = [_prf(int(((p >= c) & (y == 1)).sum()), int((p >= c).sum()), int(y.sum()))["f1"] for c in candidates]
        best = int(np.argmax(scores))  # the lowest threshold among ties
        below = candidates[best - 1] if best > 0 else 0.0
        tuned.append(float(min(max((candidates[best] + below) / 2, 1e-4), 1 - 1e-4)))  # midway to the score below
    return tuned


def _per_class(space: LabelSpace, labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import precision_recall_fscore_support

    every = list(range(len(space)))
    precision, recall, _, _ = precision_recall_fscore_support(labels, predicted, labels=every, zero_division=0)
    out = {}
    for i, name in enumerate(space.names):
        out[f"precision_{_key(name, i)}"] = float(precision[i])
        out[f"recall_{_key(name, i)}"] = float(recall[i])
    return out


def _mean_auc(one_hot: np.ndarray, probs: np.ndarray) -> float | None:
    """Mean one-vs-rest ROC AUC over the columns whose truth has both outcomes; None if there is none."""
    from sklearn.metrics import roc_auc_score

    scores = [roc_auc_score(one_hot[:, c], probs[:, c]) for c in range(one_hot.shape[1])
              if 0 < one_hot[:, c].sum() < len(one_hot)]
    return float(np.mean(scores)) if scores else None


def _prf(hits: int, predicted: int, actual: int) -> dict[str, float]:
    precision = hits / predicted if predicted else 0.0
    recall = hits / actual if actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def _prefix(space: LabelSpace, name: str, depth: int) -> str:
    levels = space.levels(name)
    return levels[min(depth, len(levels)) - 1]


def _key(name: str, fallback: int | str) -> str:
    """A metric-name-safe form of a label: the name itself when safe, else its index."""
    return name if _SAFE_NAME.match(name) else str(fallback)
