"""Evaluation of classification and token-classification models: predictions, metrics, calibration.

Rows are encoded exactly as in training (:class:`~dstune.data.labelled.LabelledEncoder`), scored
in batches of similar length (sorted, so little padding), right-padded with explicit position ids
(a padded row gets the same probabilities as alone). The metrics are the heads issue's
(:mod:`dstune.evaluate.metrics`); this module adds calibration, per-class thresholds, per-example
scores and the paired statistics that `dstune compare` tests.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dstune.config.task import LabelledTaskFields
from dstune.data.label_space import LabelSpace
from dstune.data.labelled import LabelledEncoder, LabelledSource, spaced_words
from dstune.data.readers import Record
from dstune.errors import DataError, ModelError
from dstune.evaluate.significance import Metric, mean_metric

IGNORE_INDEX = -100


@dataclass
class LabelledPredictions:
    """Scores of one labelled task on the evaluated rows."""

    space: LabelSpace
    scores: np.ndarray
    """single/multi: (n, C) probabilities; token: (n, T) predicted tag ids (-100 where unlabelled)."""
    labels: np.ndarray
    """single: (n,) ids; multi: (n, C) multi-hot; token: (n, T) tag ids, -100 where unlabelled."""
    confidence: np.ndarray | None
    """token: (n, T) top-tag probability per position; None otherwise."""
    texts: list[str]
    wheres: list[str]


def label_space_of(model, weights_dir: Path | None, kind_hint: str, settings: LabelledTaskFields,
                   task_name: str | None = None) -> LabelSpace:
    """The label space saved with the heads (``heads/<task>.json``), else the model config's ``id2label``."""
    from dstune.models.heads import read_head_cards

    if weights_dir is not None:
        _, specs = read_head_cards(weights_dir)
        chosen = [spec for spec in specs if task_name in (None, spec.name)]
        if chosen:
            return chosen[0].space
    config = getattr(model, "config", None)
    id2label = getattr(config, "id2label", None) or {}
    names = [id2label[i] for i in sorted(id2label, key=int)]
    if not names:
        raise ModelError("the model names no labels (config.id2label is empty and there is no heads/ folder)")
    if kind_hint == "token":
        kind = "token"
    else:
        kind = "multi" if getattr(config, "problem_type", None) == "multi_label_classification" else "single"
    return LabelSpace(kind, names, settings.hierarchical, settings.separator,
                      [settings.threshold] * len(names) if kind == "multi" else None)


def predict_labelled(model, tokenizer, records: list[Record], space: LabelSpace, settings: LabelledTaskFields, *,
                     max_length: int = 512, batch_size: int = 16, head: str | None = None) -> LabelledPredictions:
    """Encode ``records`` as training did and score them."""
    task = "token_classification" if space.kind == "token" else "classification"
    source = LabelledSource("eval", task, settings.model_copy(update={"multi_label": space.kind == "multi"}), "")
    encoder = LabelledEncoder(tokenizer, max_length, source, space)
    rows, texts = [], []
    for record in records:
        try:
            rows.append(encoder.encode(record.data))
        except (ValueError, TypeError) as exc:
            raise DataError(str(exc), where=record.where(), hint="fix the row or its label") from None
        texts.append(_display_text(record.data, settings, space.kind))
    outputs = score_rows(model, [row["input_ids"] for row in rows], tokenizer.pad_token_id or 0, batch_size, head)
    return _collect(space, rows, outputs, texts, [r.where() for r in records])


def score_rows(model, rows: list[list[int]], pad: int, batch_size: int = 16, head: str | None = None) -> list[np.ndarray]:
    """Per row: the logits of its pooled output (C,) or of each of its tokens (len, C), in input order.

    Models with several heads (dstune's multi-task heads) return a dict: ``head`` picks one (default the first).
    """
    import torch

    from dstune.evaluate.generate import position_ids

    takes_positions = _takes_position_ids(model)
    out: list[np.ndarray] = [np.empty(0)] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        batch = order[start: start + batch_size]
        width = max(len(rows[i]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(batch):
            ids[row, : len(rows[i])] = torch.tensor(rows[i])
            mask[row, : len(rows[i])] = 1
        extra = {"position_ids": position_ids(mask).to(device)} if takes_positions else {}
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), **extra).logits
        if isinstance(logits, dict):  # dstune heads: one entry per task
            logits = logits[head] if head else next(iter(logits.values()))
        for row, i in enumerate(batch):
            value = logits[row].float().cpu().numpy()
            out[i] = value[: len(rows[i])] if value.ndim == 2 else value
    return out


def _takes_position_ids(model) -> bool:
    parameters = inspect.signature(model.forward).parameters
    return "position_ids" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def _collect(space: LabelSpace, rows: list[dict], outputs: list[np.ndarray], texts: list[str],
             wheres: list[str]) -> LabelledPredictions:
    if space.kind == "token":
        width = max(len(row["labels"]) for row in rows)
        tags = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
        labels = np.full_like(tags, IGNORE_INDEX)
        confidence = np.zeros((len(rows), width))
        for n, (row, logits) in enumerate(zip(rows, outputs)):
            probs = _softmax(logits)
            labels[n, : len(row["labels"])] = row["labels"]
            keep = np.asarray(row["labels"]) != IGNORE_INDEX
            tags[n, : len(row["labels"])] = np.where(keep, probs.argmax(-1), IGNORE_INDEX)
            confidence[n, : len(row["labels"])] = probs.max(-1)
        return LabelledPredictions(space, tags, labels, confidence, texts, wheres)
    logits = np.stack(outputs)
    probs = 1 / (1 + np.exp(-logits)) if space.kind == "multi" else _softmax(logits)
    labels = np.array([row["labels"] if space.kind == "multi" else row["labels"][0] for row in rows])
    return LabelledPredictions(space, probs, labels, None, texts, wheres)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def _display_text(row: dict, settings: LabelledTaskFields, kind: str) -> str:
    if kind == "token":
        return "".join(spaced_words([str(w) for w in row.get(settings.tokens_field) or []]))
    return str(row.get(settings.text_field, ""))


# --- per-example views and paired statistics ---------------------------------------------------

def example_rows(pred: LabelledPredictions) -> list[dict]:
    """One dict per example for predictions.jsonl: reference, prediction, correct, confidence, margin."""
    space = pred.space
    if space.kind == "token":
        from dstune.evaluate.metrics import tag_sequences

        truth, guess = tag_sequences(space, pred.scores, pred.labels)
        return [{"reference": " ".join(t), "prediction": " ".join(g), "correct": float(t == g),
                 "f1": _f1_of_counts(counts)} for t, g, counts in zip(truth, guess, _entity_counts(pred))]
    predicted = space.predict(pred.scores)
    rows = []
    for probs, label, guess in zip(pred.scores, pred.labels, predicted):
        top = np.sort(probs)[::-1]
        rows.append({
            "reference": _names(space, label), "prediction": _names(space, guess),
            "correct": float(np.array_equal(np.asarray(label), np.asarray(guess))),
            "confidence": float(top[0]), "margin": float(top[0] - top[1]) if len(top) > 1 else 1.0,
        })
    return rows


def _names(space: LabelSpace, value) -> str:
    if space.kind == "multi":
        return "|".join(name for name, on in zip(space.names, value) if on)
    return space.names[int(value)]


def paired_metrics(pred: LabelledPredictions) -> dict[str, Metric]:
    """accuracy (McNemar) and macro F1 / entity F1 (permutation) as additive per-example statistics."""
    rows = example_rows(pred)
    correct = np.array([row["correct"] for row in rows])
    metrics = {"accuracy": mean_metric("accuracy", correct, binary=True)}
    if pred.space.kind == "token":
        metrics["f1"] = _entity_f1(pred)
    else:
        metrics["macro_f1"] = _macro_f1(pred)
    return metrics


def _macro_f1(pred: LabelledPredictions) -> Metric:
    """Macro F1 from per-example (tp, fp, fn) contributions per class; classes never seen count as 0."""
    space, classes = pred.space, len(pred.space)
    predicted = space.predict(pred.scores)
    truth = pred.labels if space.kind == "multi" else np.eye(classes)[pred.labels]
    guess = predicted if space.kind == "multi" else np.eye(classes)[predicted]
    stats = np.concatenate([truth * guess, (1 - truth) * guess, truth * (1 - guess)], axis=1).astype(float)

    def aggregate(sums: np.ndarray) -> float:
        tp, fp, fn = sums[:classes], sums[classes: 2 * classes], sums[2 * classes:]
        denominator = 2 * tp + fp + fn
        return float(np.mean(np.divide(2 * tp, denominator, out=np.zeros(classes), where=denominator > 0)))

    per_example = np.array([aggregate(row) for row in stats])
    return Metric("macro_f1", stats, aggregate, per_example, np.ones(len(stats), dtype=bool))


def _entity_counts(pred: LabelledPredictions) -> np.ndarray:
    """(n, 3) per-example entity counts: exact matches, predicted, actual (seqeval/CoNLL entities)."""
    from dstune.evaluate.metrics import extract_entities, tag_sequences

    truth, guess = tag_sequences(pred.space, pred.scores, pred.labels)
    stats = []
    for t, g in zip(truth, guess):
        true_set, pred_set = set(extract_entities(t)), set(extract_entities(g))
        stats.append([len(true_set & pred_set), len(pred_set), len(true_set)])
    return np.array(stats, dtype=float).reshape(-1, 3)


def _f1_of_counts(sums: np.ndarray) -> float:
    """Entity F1 from summed (hits, predicted, actual); 1.0 when there is nothing to find and nothing found."""
    return float(2 * sums[0] / (sums[1] + sums[2])) if sums[1] + sums[2] else 1.0


def _entity_f1(pred: LabelledPredictions) -> Metric:
    """Micro entity F1 from per-example entity counts."""
    stats = _entity_counts(pred)
    per_example = np.array([_f1_of_counts(row) for row in stats])
    return Metric("f1", stats, _f1_of_counts, per_example, np.ones(len(stats), dtype=bool))

