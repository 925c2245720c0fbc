"""Generation metrics: BLEU and chrF (sacrebleu), ROUGE-1/2/L that is right for Chinese, exact match.

ROUGE counts overlapping units, so the units decide what it means: on unsegmented Chinese a
whitespace tokenizer sees one "word" per sentence and ROUGE collapses to exact match. Here the
units are CJK characters (``char``), jieba words (``jieba``) or whitespace words (``words``); the
choice is returned with the scores so that every report states it. BLEU uses sacrebleu's own
``zh`` tokenizer for Chinese.

Every metric comes back as a :class:`~dstune.evaluate.significance.Metric`, so `compare` can
test differences with the same numbers.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from dstune.evaluate.significance import Metric, mean_metric

CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]")
_LATIN_OR_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]|[^\W_]+")
_WORD = re.compile(r"[^\W_]+")
_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)


def has_cjk(texts: list[str]) -> bool:
    """True when any text contains Chinese, Japanese or Korean characters."""
    return any(CJK.search(text) for text in texts)


def split_think(text: str) -> tuple[str | None, str]:
    """``(think, answer)``: the ``<think>...</think>`` block (None if absent) and the text after it.

    DeepSeek-R1 templates open the think block in the prompt, so an answer may hold only ``</think>``.
    """
    if "</think>" in text and "<think>" not in text.split("</think>", 1)[0]:
        think, answer = text.split("</think>", 1)
        return think.strip(), answer.strip()
    match = _THINK.search(text)
    if match is None:
        return None, text.strip()
    return match.group(1).strip(), (text[: match.start()] + text[match.end():]).strip()


def normalize(text: str) -> str:
    """Case-folded, with whitespace runs collapsed: what exact match compares."""
    return " ".join(text.split()).casefold()


def resolve_tokenizers(references: list[str], bleu: str = "auto", rouge: str = "auto") -> tuple[str, str]:
    """The concrete (BLEU, ROUGE) tokenizers for ``auto``: Chinese-aware when the references hold CJK."""
    chinese = has_cjk(references)
    return (("zh" if chinese else "13a") if bleu == "auto" else bleu,
            ("jieba" if chinese else "words") if rouge == "auto" else rouge)


def rouge_units(text: str, mode: str) -> list[str]:
    """The units ROUGE counts: ``char`` (CJK characters, latin words), ``jieba`` words, or ``words``."""
    text = text.casefold()
    if mode == "char":
        return _LATIN_OR_CJK.findall(text)
    if mode == "jieba":
        import jieba

        jieba.setLogLevel(logging.WARNING)
        return [piece.strip() for piece in jieba.lcut(text) if _LATIN_OR_CJK.search(piece)]
    if mode == "words":
        return _WORD.findall(text)
    raise ValueError(f"unknown ROUGE tokenization {mode!r}; expected char, jieba or words")


def _ngrams(units: list[str], n: int) -> Counter:
    return Counter(tuple(units[i: i + n]) for i in range(len(units) - n + 1))


def _f1(overlap: float, hyp_total: float, ref_total: float) -> float:
    if overlap == 0 or hyp_total == 0 or ref_total == 0:
        return 0.0
    precision, recall = overlap / hyp_total, overlap / ref_total
    return 2 * precision * recall / (precision + recall)


def rouge_n(hyp: list[str], ref: list[str], n: int) -> float:
    """ROUGE-N F1 of two unit lists."""
    h, r = _ngrams(hyp, n), _ngrams(ref, n)
    return _f1(sum((h & r).values()), sum(h.values()), sum(r.values()))


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (O(len(a) * len(b)) time, O(len(b)) memory)."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(hyp: list[str], ref: list[str]) -> float:
    """ROUGE-L F1 (sentence-level LCS)."""
    return _f1(lcs_length(hyp, ref), len(hyp), len(ref))


@dataclass(frozen=True)
class TextScores:
    metrics: dict[str, Metric]
    bleu_tokenize: str
    rouge_tokenize: str

    def corpus(self) -> dict[str, float]:
        return {name: metric.value for name, metric in self.metrics.items()}

    def example(self, index: int) -> dict[str, float]:
        return {name: float(metric.per_example[index]) for name, metric in self.metrics.items()}


def score_texts(predictions: list[str], references: list[str], *, bleu_tokenize: str = "auto",
                rouge_tokenize: str = "auto", normalize_exact: bool = True, prefix: str = "") -> TextScores:
    """BLEU, chrF, ROUGE-1/2/L and exact match of ``predictions`` against one reference each."""
    bleu_tok, rouge_tok = resolve_tokenizers(references, bleu_tokenize, rouge_tokenize)
    metrics = {**_sacrebleu_metrics(predictions, references, bleu_tok), **_rouge_metrics(predictions, references, rouge_tok)}
    same = [normalize(p) == normalize(r) if normalize_exact else p == r for p, r in zip(predictions, references)]
    metrics["exact_match"] = mean_metric("exact_match", np.array(same, dtype=float), binary=True)
    renamed = {f"{prefix}{name}": _renamed(metric, f"{prefix}{name}") for name, metric in metrics.items()}
    return TextScores(renamed, bleu_tok, rouge_tok)


def _renamed(metric: Metric, name: str) -> Metric:
    from dataclasses import replace

    return metric if metric.name == name else replace(metric, name=name)


def _sacrebleu_metrics(predictions: list[str], references: list[str], tokenize: str) -> dict[str, Metric]:
    """Corpus BLEU and chrF from sacrebleu's per-sentence statistics; sentence scores per example."""
    from sacrebleu.metrics import BLEU, CHRF

    out = {}
    for name, corpus, sentence in (
        ("bleu", BLEU(tokenize=tokenize), BLEU(tokenize=tokenize, effective_order=True)),
        ("chrf", CHRF(), CHRF()),
    ):
        stats = np.array(corpus._extract_corpus_statistics(predictions, [references]), dtype=float)
        per_example = np.array([sentence.sentence_score(p, [r]).score for p, r in zip(predictions, references)])

        def aggregate(sums: np.ndarray, metric=corpus) -> float:
            return float(metric._compute_score_from_stats([round(x) for x in sums]).score)

        out[name] = Metric(name, stats, aggregate, per_example, np.ones(len(predictions), dtype=bool))
    return out


def _rouge_metrics(predictions: list[str], references: list[str], tokenize: str) -> dict[str, Metric]:
    """ROUGE-1/2/L F1 per example; the corpus value is their mean (as rouge-score reports it)."""
    pairs = [(rouge_units(p, tokenize), rouge_units(r, tokenize)) for p, r in zip(predictions, references)]
    return {
        "rouge1": mean_metric("rouge1", [rouge_n(h, r, 1) for h, r in pairs]),
        "rouge2": mean_metric("rouge2", [rouge_n(h, r, 2) for h, r in pairs]),
        "rougeL": mean_metric("rougeL", [rouge_l(h, r) for h, r in pairs]),
    }
