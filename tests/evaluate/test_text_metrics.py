"""Generation metrics against hand-computed values, Chinese included."""

from __future__ import annotations

import math

import pytest

from dstune.config.evaluation import EvaluationSection
from dstune.evaluate.generate import Example
from dstune.evaluate.score import score_generation
from dstune.evaluate.text_metrics import (
    lcs_length,
    resolve_tokenizers,
    rouge_l,
    rouge_n,
    rouge_units,
    score_texts,
    split_think,
)


def test_bleu_with_sacrebleu_zh_tokenizer_matches_hand_computation():
    # hyp 我很好，谢谢。 (7 chars) vs ref 我很好，谢谢你。 (8): n-gram precisions 7/7, 5/6, 4/5, 3/4
    scores = score_texts(["我很好，谢谢。"], ["我很好，谢谢你。"])
    assert scores.bleu_tokenize == "zh"
    expected = 100 * math.exp(1 - 8 / 7) * (1 * 5 / 6 * 4 / 5 * 3 / 4) ** 0.25
    assert scores.corpus()["bleu"] == pytest.approx(expected, abs=1e-6)
    assert scores.corpus()["bleu"] == pytest.approx(72.90, abs=0.01)


def test_chinese_rouge_by_character_matches_hand_computation():
    hyp, ref = rouge_units("我很好谢谢", "char"), rouge_units("我很好", "char")
    assert hyp == ["我", "很", "好", "谢", "谢"]
    assert rouge_n(hyp, ref, 1) == pytest.approx(2 * (3 / 5) * 1 / (3 / 5 + 1))  # P 3/5, R 1 -> 0.75
    assert rouge_n(hyp, ref, 2) == pytest.approx(2 * 0.5 * 1 / 1.5)  # bigrams: 2 of 4 hyp, 2 of 2 ref
    assert rouge_l(hyp, ref) == pytest.approx(0.75)


def test_chinese_rouge_with_jieba_words():
    assert rouge_units("我来到北京清华大学", "jieba") == ["我", "来到", "北京", "清华大学"]
    scores = score_texts(["我来到北京"], ["我来到北京清华大学"], rouge_tokenize="jieba")
    assert scores.corpus()["rouge1"] == pytest.approx(2 * 1 * 0.75 / 1.75)  # P 3/3, R 3/4


def test_whitespace_rouge_is_meaningless_on_chinese_and_auto_avoids_it():
    hyp, ref = "我很好谢谢你", "我很好谢谢"
    words = score_texts([hyp], [ref], rouge_tokenize="words").corpus()["rouge1"]
    auto = score_texts([hyp], [ref])
    assert words == 0.0  # one "word" per sentence: any difference scores zero
    assert auto.rouge_tokenize == "jieba" and auto.corpus()["rouge1"] > 0.8
    assert resolve_tokenizers(["plain English"]) == ("13a", "words")


def test_english_rouge_l_and_lcs():
    hyp, ref = ["the", "cat", "sat", "on", "the", "mat"], ["the", "cat", "is", "on", "the", "mat"]
    assert lcs_length(hyp, ref) == 5
    assert rouge_l(hyp, ref) == pytest.approx(5 / 6)
    assert rouge_units("The Cat, sat!", "words") == ["the", "cat", "sat"]


def test_exact_match_normalises_case_and_whitespace_only():
    scores = score_texts(["  The answer is   42.", "the answer is 42"], ["the answer is 42.", "the answer is 42."])
    assert list(scores.metrics["exact_match"].per_example) == [1.0, 0.0]
    assert scores.metrics["exact_match"].test == "mcnemar"


@pytest.mark.parametrize("text, think, answer", [
    ("<think>step 1</think> 42", "step 1", "42"),
    ("step 1</think>42", "step 1", "42"),  # R1 templates open the block in the prompt
    ("42", None, "42"),
    ("<think>never closed", "never closed", ""),
])
def test_split_think(text, think, answer):
    assert split_think(text) == (think, answer)


def _examples(references):
    return [Example(f"f.jsonl:{i + 1}", [{"role": "user", "content": f"q{i}"}], r) for i, r in enumerate(references)]


def test_think_block_is_scored_separately_or_kept_by_config():
    refs = ["<think>add two and two</think>4", "5"]
    raw = ["<think>add two and two</think> 4", "<think>hmm</think>six"]
    nll = [(2.0, 2), (4.0, 2)]
    separate = score_generation(_examples(refs), raw, nll, EvaluationSection()).metrics
    assert separate["exact_match"] == 0.5 and separate["think_rate"] == 1.0
    assert separate["think_chrf"] == pytest.approx(100.0)  # the one reference with a think block matches
    assert separate["perplexity"] == pytest.approx(math.exp(6 / 4))
    kept = score_generation(_examples(refs), raw, nll, EvaluationSection(think="keep")).metrics
    assert kept["exact_match"] == 0.0 and "think_rate" not in kept
