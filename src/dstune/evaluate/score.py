"""Score one model on a set of examples: the numbers `eval` writes and `compare` tests.

:func:`evaluate_generation` (causal LMs) and :func:`evaluate_labelled` (classifiers, taggers) both
return a :class:`ModelEvaluation`: one row per example for ``predictions.jsonl``, the metrics for
``metrics.json``, the paired statistics for `compare`, and the outcomes the review samples from.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from dstune.config.evaluation import EvaluationSection
from dstune.evaluate.generate import Example, generate_answers, reference_nll
from dstune.evaluate.review import Outcome, length_band, tertiles
from dstune.evaluate.significance import Metric
from dstune.evaluate.text_metrics import TextScores, score_texts, split_think


@dataclass
class ModelEvaluation:
    task: str  # generation | classification | token_classification
    rows: list[dict]
    metrics: dict
    paired: dict[str, Metric]
    outcomes: list[Outcome]
    details: dict = field(default_factory=dict)  # confusion matrix, calibration, ... (for plots and the report)


# --- generation ------------------------------------------------------------------------------

def evaluate_generation(model, tokenizer, examples: list[Example], settings: EvaluationSection, *,
                        max_length: int = 4096, progress: Callable[[int], None] | None = None) -> ModelEvaluation:
    """Generate an answer per example, then score it against the reference (and the reference's perplexity)."""
    prompts = [e.prompt for e in examples]
    raw = generate_answers(model, tokenizer, prompts, settings.generation, progress)
    nll = reference_nll(model, tokenizer, prompts, [e.reference for e in examples],
                        batch_size=settings.generation.batch_size, max_length=max_length)
    return score_generation(examples, raw, nll, settings)


def score_generation(examples: list[Example], raw: list[str], nll: list[tuple[float, int]],
                     settings: EvaluationSection) -> ModelEvaluation:
    """Metrics of given predictions (split from generation so that it is testable without a model)."""
    predictions, references, thinks = _answer_texts(raw, [e.reference for e in examples], settings.think)
    scores = score_texts(predictions, references, bleu_tokenize=settings.bleu_tokenize,
                         rouge_tokenize=settings.rouge_tokenize, normalize_exact=settings.normalize_exact_match)
    paired = {**scores.metrics, "perplexity": _perplexity(nll)}
    metrics = {name: metric.value for name, metric in paired.items()}
    metrics.update(examples=len(examples), bleu_tokenize=scores.bleu_tokenize, rouge_tokenize=scores.rouge_tokenize,
                   rouge_units=_units_text(scores.rouge_tokenize), think=settings.think)
    if settings.think == "separate":
        metrics.update(_think_metrics(thinks, [split_think(e.reference)[0] for e in examples], settings))
    bands = tertiles(references)
    rows, outcomes = [], []
    for i, example in enumerate(examples):
        per = {**scores.example(i), "perplexity": float(paired["perplexity"].per_example[i])}
        verdict = _verdict(per, settings.near_miss_chrf)
        rows.append({"id": i, "source": example.where, "input": example.input, "reference": example.reference,
                     "prediction": raw[i], **({"think": thinks[i]} if thinks[i] else {}),
                     "verdict": verdict, "scores": per})
        outcomes.append(Outcome(i, verdict, verdict == "correct", per["chrf"], length_band(references[i], bands),
                                example.where, example.input, example.reference, raw[i]))
    return ModelEvaluation("generation", rows, metrics, paired, outcomes, {"text_scores": scores})


def _answer_texts(raw: list[str], references: list[str], mode: str) -> tuple[list[str], list[str], list[str | None]]:
    """(scored predictions, scored references, think blocks of the predictions) for ``think`` mode."""
    if mode == "keep":
        return list(raw), list(references), [None] * len(raw)
    split = [split_think(text) for text in raw]
    return [answer for _, answer in split], [split_think(r)[1] for r in references], [think for think, _ in split]


def _think_metrics(thinks: list[str | None], reference_thinks: list[str | None], settings: EvaluationSection) -> dict:
    """How often the model thought, how long, and (where references think too) how close its thinking was."""
    present = [t for t in thinks if t]
    out = {"think_rate": len(present) / len(thinks) if thinks else 0.0,
           "think_chars_mean": float(np.mean([len(t) for t in present])) if present else 0.0}
    pairs = [(t or "", r) for t, r in zip(thinks, reference_thinks) if r]
    if pairs:
        scores = score_texts([p for p, _ in pairs], [r for _, r in pairs], bleu_tokenize=settings.bleu_tokenize,
                             rouge_tokenize=settings.rouge_tokenize, prefix="think_")
        out.update({k: v for k, v in scores.corpus().items() if k != "think_exact_match"})
    return out


def _perplexity(nll: list[tuple[float, int]]) -> Metric:
    """Corpus perplexity exp(Σ nll / Σ tokens) from per-example [nll, tokens]; per example exp(nll / tokens)."""
    stats = np.array(nll, dtype=float).reshape(-1, 2)

    def aggregate(sums: np.ndarray) -> float:
        return math.exp(sums[0] / sums[1]) if sums[1] else float("nan")

    per_example = np.array([aggregate(row) for row in stats])
    return Metric("perplexity", stats, aggregate, per_example, stats[:, 1] > 0, higher_is_better=False)


def _verdict(scores: dict, near_miss_chrf: float) -> str:
    if scores["exact_match"] >= 1.0:
        return "correct"
    return "near_miss" if scores["chrf"] >= near_miss_chrf else "error"


def _units_text(mode: str) -> str:
    return {"jieba": "jieba word segmentation", "char": "characters (CJK) and words (Latin)",
            "words": "whitespace-separated words"}[mode]


def text_scores(evaluation: ModelEvaluation) -> TextScores:
    return evaluation.details["text_scores"]


# --- classification and token classification -----------------------------------------------

def evaluate_labelled(model, tokenizer, records, space, task_fields, settings: EvaluationSection, *,
                      max_length: int = 512, head: str | None = None) -> ModelEvaluation:
    """Probabilities (or tags) for each row, the heads issue's metrics, calibration and thresholds."""
    from dstune.evaluate.calibration import calibration_report, per_class_thresholds
    from dstune.evaluate.labelled import example_rows, paired_metrics, predict_labelled
    from dstune.evaluate.metrics import confusion, task_metrics

    pred = predict_labelled(model, tokenizer, records, space, task_fields, max_length=max_length,
                            batch_size=settings.generation.batch_size, head=head)
    metrics = {"examples": len(records), **task_metrics(space, pred.scores, pred.labels)}
    matrix, row_names, column_names = confusion(space, pred.scores, pred.labels)
    details = {"confusion": {"matrix": matrix.tolist(), "rows": row_names, "columns": column_names}}
    if space.kind == "token":
        keep = pred.labels != -100
        calibration = _token_calibration(pred.confidence[keep], pred.scores[keep] == pred.labels[keep], settings)
    else:
        calibration = calibration_report(space, pred.scores, pred.labels, settings.calibration_bins)
        details["thresholds"] = per_class_thresholds(space, pred.scores, pred.labels)
    details["calibration"] = calibration
    metrics.update(ece=calibration["ece"], calibration_max_gap=calibration["max_gap"])
    rows, outcomes = _labelled_rows(pred, example_rows(pred), settings.near_miss_margin)
    task = "token_classification" if space.kind == "token" else "classification"
    return ModelEvaluation(task, rows, metrics, paired_metrics(pred), outcomes, details)


def _token_calibration(confidence: np.ndarray, correct: np.ndarray, settings: EvaluationSection) -> dict:
    from dataclasses import asdict

    from dstune.evaluate.calibration import expected_calibration_error, reliability

    table = reliability(confidence, correct.astype(float), settings.calibration_bins)
    gaps = [abs(b.accuracy - b.confidence) for b in table if b.count]
    return {"ece": expected_calibration_error(table), "max_gap": max(gaps) if gaps else float("nan"),
            "bins": [asdict(b) for b in table], "measured_on": "top-tag confidence of each labelled token"}


def _labelled_rows(pred, per_example: list[dict], margin: float) -> tuple[list[dict], list[Outcome]]:
    rows, outcomes = [], []
    for i, (text, where, row) in enumerate(zip(pred.texts, pred.wheres, per_example)):
        right = row["correct"] >= 1.0
        verdict = "error" if not right else "near_miss" if row.get("margin", 1.0) < margin else "correct"
        scores = {k: v for k, v in row.items() if k not in ("reference", "prediction")}
        rows.append({"id": i, "source": where, "input": text, "reference": row["reference"],
                     "prediction": row["prediction"], "verdict": verdict, "scores": scores})
        group = row["reference"] if pred.space.kind != "token" else "sequence"
        outcomes.append(Outcome(i, verdict, right, row.get("margin", row["correct"]), group, where, text,
                                row["reference"], row["prediction"]))
    return rows, outcomes
