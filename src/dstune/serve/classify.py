"""`/v1/classify`: sequence and token classification through transformers pipelines.

Serves plain Hugging Face classifier folders and run directories whose task is registered as a
classification kind (see :func:`dstune.export.source.register_run_task`).
"""

from __future__ import annotations

from typing import Any

from dstune.export.source import Deployable

MAX_LENGTH = 512


class ClassifierEngine:
    """A sequence or token classifier behind a transformers pipeline."""

    def __init__(self, deployable: Deployable):
        from transformers import pipeline

        self.deployable, self.name, self.task = deployable, deployable.name, deployable.task
        if self.task == "sequence-classification":
            self.pipe = pipeline("text-classification", model=deployable.model, tokenizer=deployable.tokenizer,
                                 top_k=None, truncation=True, max_length=MAX_LENGTH)
        else:
            self.pipe = pipeline("token-classification", model=deployable.model, tokenizer=deployable.tokenizer,
                                 aggregation_strategy="simple")

    def classify(self, texts: list[str]) -> list[dict[str, Any]]:
        """One result per text: the label and every label's score, or the entities found."""
        outputs = self.pipe(texts)
        if self.task == "sequence-classification":
            return [_sequence_result(i, scores) for i, scores in enumerate(outputs)]
        return [{"index": i, "entities": [_entity(e) for e in entities]} for i, entities in enumerate(outputs)]


def _sequence_result(index: int, scores: list[dict[str, Any]]) -> dict[str, Any]:
    best = max(scores, key=lambda s: s["score"])
    return {"index": index, "label": best["label"], "score": float(best["score"]),
            "scores": {s["label"]: float(s["score"]) for s in scores}}


def _entity(entity: dict[str, Any]) -> dict[str, Any]:
    return {"entity": entity.get("entity_group", entity.get("entity")), "word": entity["word"],
            "score": float(entity["score"]), "start": entity["start"], "end": entity["end"]}
