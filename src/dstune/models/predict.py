"""Predict with a trained classification / token-classification / multi-task run: each task's output for a text.

::

    from dstune.models.predict import load_predictor

    predictor = load_predictor("runs/legal")
    predictor.predict("被告人通过电话冒充客服骗取钱财")
    # {"case_type": {"label": "刑事/诈骗/电信诈骗", "score": 0.91, "path": ["刑事", "刑事/诈骗", ...],
    #                "scores": {...}},
    #  "ner": {"tags": ["B-PER", ...], "entities": [{"type": "PER", "text": "...", "start": 0, "end": 3}]}}

Classification tasks read the text after the run's ``cleaning`` rewrites (term maps, regex rules,
normalisation: what the model was trained on); token tasks split it into words (whitespace-separated
runs, each CJK character on its own) or take a list of words.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dstune.data.clean import Cleaner
from dstune.data.labelled import encode_words, spaced_words, split_words
from dstune.errors import ModelError
from dstune.evaluate.metrics import extract_entities
from dstune.models.heads import HeadSpec, read_head_cards


@dataclass
class Predictor:
    model: Any  # HeadedModel, or a transformers classification model (optionally with its peft adapter)
    tokenizer: Any
    specs: list[HeadSpec]
    implementation: str  # "dstune" | "transformers"
    max_length: int = 512
    cleaner: Any = None  # the run's cleaning steps (dstune.data.clean.Cleaner): inputs are rewritten as in training

    def predict(self, text: str | list[str]) -> dict[str, Any]:
        """Every task's output for one text (or one list of words)."""
        return self.predict_batch([text])[0]

    def predict_batch(self, texts: list[str | list[str]]) -> list[dict[str, Any]]:
        if self.cleaner:
            # text-rewriting steps exist only where no task reads words (the config refuses them for token tasks)
            texts = [t if isinstance(t, list) else cleaned for t, cleaned in
                     zip(texts, self.cleaner.rewrite([t if isinstance(t, str) else "" for t in texts]))]
        out: list[dict[str, Any]] = [{} for _ in texts]
        for kind_group in ({"single", "multi"}, {"token"}):
            specs = [spec for spec in self.specs if spec.space.kind in kind_group]
            if not specs:
                continue
            logits, word_ids = self.logits(texts, token_level="token" in kind_group)
            for spec in specs:
                for row, result in enumerate(self._decode(spec, logits[spec.name], word_ids, texts)):
                    out[row][spec.name] = result
        return out

    @torch.no_grad()
    def logits(self, texts: list[str | list[str]], token_level: bool = False) -> tuple[dict[str, torch.Tensor], list]:
        """Each head's logits for a batch, and (token level) the word of each position's first sub-token."""
        if token_level:
            rows = [encode_words(self.tokenizer, t if isinstance(t, list) else split_words(t), self.max_length)
                    for t in texts]
            word_ids = [row["word_ids"] for row in rows]
            batch = self.tokenizer.pad({"input_ids": [row["input_ids"] for row in rows]}, return_tensors="pt")
        else:
            joined = [t if isinstance(t, str) else "".join(spaced_words(t)) for t in texts]
            batch = self.tokenizer(joined, padding=True, truncation=True, max_length=self.max_length,
                                   return_tensors="pt")
            word_ids = []
        device = next(self.model.parameters()).device
        inputs = {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}
        output = self.model(**inputs)
        if self.implementation == "dstune":
            return {name: value.float().cpu() for name, value in output.logits.items()}, word_ids
        return {self.specs[0].name: output.logits.float().cpu()}, word_ids

    def _decode(self, spec: HeadSpec, logits: torch.Tensor, word_ids: list, texts: list) -> list[dict]:
        space = spec.space
        if space.kind == "token":
            return [_entities(space, row, ids, text) for row, ids, text in zip(logits, word_ids, texts)]
        probs = (torch.sigmoid(logits) if space.kind == "multi" else torch.softmax(logits, -1)).numpy()
        chosen = space.predict(probs)
        results = []
        for row, pick in zip(probs, chosen):
            scores = {name: round(float(p), 6) for name, p in zip(space.names, row)}
            if space.kind == "multi":
                results.append({"labels": [n for n, on in zip(space.names, pick) if on], "scores": scores})
                continue
            result = {"label": space.names[int(pick)], "score": scores[space.names[int(pick)]], "scores": scores}
            if space.hierarchical:
                result["path"] = space.levels(result["label"])
            results.append(result)
        return results


def _entities(space, logits: torch.Tensor, word_ids: list, text: str | list[str]) -> dict:
    words = text if isinstance(text, list) else split_words(text)
    tags = ["O"] * len(words)
    for position, word in enumerate(word_ids):
        if word is not None and position < len(logits):
            tags[word] = space.names[int(logits[position].argmax())]
    joiner = "" if all(len(w) == 1 and not w.isascii() for w in words) else " "
    entities = [{"type": kind, "text": joiner.join(words[start : end + 1]), "start": start, "end": end + 1}
                for kind, start, end in extract_entities(tags)]
    return {"tags": tags, "entities": entities}


def load_predictor(run_dir: str | Path, dtype: str | None = None) -> Predictor:
    """The model, tokenizer and heads of a finished classification / token-classification / multitask run."""
    from transformers import AutoTokenizer

    from dstune.models.inference import load_run_config

    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    weights = run_dir / ("adapter" if (run_dir / "adapter").is_dir() else "model")
    index, specs = read_head_cards(weights)
    if not specs:
        raise ModelError(f"{weights} has no heads/heads.json: not a labelled-task run, or it did not finish",
                         hint="predict works on runs with task.type classification, token_classification or multitask")
    tokenizer = AutoTokenizer.from_pretrained(weights)
    model_cfg = config.model.model_copy(update={"dtype": dtype} if dtype else {})
    model = _load_model(index, specs, weights, tokenizer, model_cfg).eval()
    cleaner = Cleaner.for_run(config.cleaning, tokenizer)
    return Predictor(model, tokenizer, specs, index["implementation"], config.data.max_length, cleaner)


def _load_model(index: dict, specs: list[HeadSpec], weights: Path, tokenizer, model_cfg):
    from peft import PeftModel
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoModelForTokenClassification

    from dstune.config.schema import MethodSection
    from dstune.models.headed import HeadedModel
    from dstune.models.load import load_model
    from dstune.models.task_model import label_config

    adapter = (weights / "adapter_config.json").is_file()
    if index["implementation"] == "transformers":
        auto = AutoModelForTokenClassification if specs[0].space.kind == "token" else AutoModelForSequenceClassification
        if not adapter:
            return auto.from_pretrained(weights)
        base = load_model(auto, model_cfg, MethodSection(type="lora"), **label_config(specs[0].space, tokenizer))
        return PeftModel.from_pretrained(_fit_vocab(base, tokenizer), weights)
    if adapter:
        backbone = load_model(AutoModel, model_cfg, MethodSection(type="lora"))
        backbone = PeftModel.from_pretrained(_fit_vocab(backbone, tokenizer), weights)
    else:
        backbone = AutoModel.from_pretrained(weights)
    return HeadedModel.from_directory(backbone, weights)


def _fit_vocab(model, tokenizer):
    """Resize the base model's embeddings to a tokenizer that gained domain tokens (their rows are in the adapter)."""
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    return model
