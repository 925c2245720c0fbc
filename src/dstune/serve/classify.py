"""`/v1/classify`: sequence and token classification, decoded as the model was trained to be read.

Run directories (classification, token_classification, multitask) answer through the run's own
predictor — :func:`dstune.models.predict.load_predictor`, what ``dstune eval`` uses — so the served
labels are the ones the run was evaluated with: tuned multi-label thresholds, consistent
hierarchical paths, tags on each word's first sub-token, and every head of a multi-task run
(dstune heads included). Plain Hugging Face ``*ForSequenceClassification`` /
``*ForTokenClassification`` folders go through transformers pipelines.
"""

from __future__ import annotations

from typing import Any

from dstune.export.source import Deployable

MAX_LENGTH = 512


class ClassifierEngine:
    """A sequence or token classifier (or a multi-task run): its run's predictor, else a transformers pipeline."""

    def __init__(self, deployable: Deployable):
        self.deployable, self.name, self.task = deployable, deployable.name, deployable.task
        self.predictor = deployable.predictor
        if self.predictor is not None:
            return
        from transformers import pipeline

        if self.task == "sequence-classification":
            self.pipe = pipeline("text-classification", model=deployable.model, tokenizer=deployable.tokenizer,
                                 top_k=None, truncation=True, max_length=MAX_LENGTH)
        else:
            self.pipe = pipeline("token-classification", model=deployable.model, tokenizer=deployable.tokenizer,
                                 aggregation_strategy="simple")

    def classify(self, texts: list[str]) -> list[dict[str, Any]]:
        """One result per text: the label and every label's score, or the entities found."""
        if self.predictor is not None:
            return [_run_result(i, out) for i, out in enumerate(self.predictor.predict_batch(texts))]
        outputs = self.pipe(texts)
        if self.task == "sequence-classification":
            return [_sequence_result(i, scores) for i, scores in enumerate(outputs)]
        return [{"index": i, "entities": [_entity(e) for e in entities]} for i, entities in enumerate(outputs)]


def _run_result(index: int, outputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A run's prediction for one text: a single task's result at the top level, several tasks under "tasks"."""
    if len(outputs) == 1:
        return {"index": index, **next(iter(outputs.values()))}
    return {"index": index, "tasks": outputs}


def _sequence_result(index: int, scores: list[dict[str, Any]]) -> dict[str, Any]:
    best = max(scores, key=lambda s: s["score"])
    return {"index": index, "label": best["label"], "score": float(best["score"]),
            "scores": {s["label"]: float(s["score"]) for s in scores}}


def _entity(entity: dict[str, Any]) -> dict[str, Any]:
    return {"entity": entity.get("entity_group", entity.get("entity")), "word": entity["word"],
            "score": float(entity["score"]), "start": entity["start"], "end": entity["end"]}
