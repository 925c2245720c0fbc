"""Paired significance: identical systems are never 'different', clear differences are found."""

from __future__ import annotations

import numpy as np
import pytest

from dstune.evaluate.significance import compare_metric, mcnemar, mean_metric, win_tie_loss
from dstune.evaluate.text_metrics import score_texts


def test_identical_systems_give_p_one_and_a_ci_containing_zero():
    rng = np.random.default_rng(1)
    values = rng.random(40)
    result = compare_metric(mean_metric("rougeL", values), mean_metric("rougeL", values.copy()), resamples=200)
    assert result.p_value == pytest.approx(1.0)
    assert result.ci_low <= 0.0 <= result.ci_high
    assert result.ties == 40 and not result.significant
    assert "not significant" in result.verdict() and "cannot tell A and B apart" in result.verdict()


def test_mcnemar_exact_value_and_significant_accuracy_gain():
    a = np.zeros(10)
    b = np.ones(10)
    assert mcnemar(a, b) == pytest.approx(2 * 0.5 ** 10)  # 10 discordant pairs, all for B
    result = compare_metric(mean_metric("accuracy", a, binary=True), mean_metric("accuracy", b, binary=True),
                            resamples=200)
    assert result.test == "McNemar exact" and result.significant
    assert result.diff == 1.0 and (result.wins, result.ties, result.losses) == (10, 0, 0)
    assert result.verdict().startswith("B is better")


def test_permutation_finds_a_real_shift_and_ci_covers_it():
    rng = np.random.default_rng(0)
    a = rng.normal(0.5, 0.1, 200)
    b = a + 0.05 + rng.normal(0, 0.02, 200)
    result = compare_metric(mean_metric("chrf", a), mean_metric("chrf", b), resamples=500)
    assert result.p_value < 0.01
    assert result.ci_low < 0.05 < result.ci_high


def test_lower_is_better_metrics_flip_wins():
    assert win_tie_loss(np.array([3.0, 2.0, 1.0]), np.array([2.0, 2.0, 5.0]), higher_is_better=False) == (1, 1, 1)


def test_corpus_bleu_is_resampled_from_sentence_statistics():
    refs = ["the cat sat on the mat", "a dog runs in the park", "it is raining today", "we like green tea"]
    worse = ["the cat sat", "a dog", "it rains", "we like tea"]
    a, b = score_texts(refs, refs).metrics["bleu"], score_texts(worse, refs).metrics["bleu"]
    result = compare_metric(a, b, resamples=200)
    assert result.a == pytest.approx(100.0) and result.b < 50
    assert result.diff == pytest.approx(result.b - result.a)
    assert result.ci_high < 0 and result.losses == 4


def test_unscored_examples_are_left_out_of_the_pairing():
    a = mean_metric("judge_readability", [4.0, float("nan"), 3.0])
    b = mean_metric("judge_readability", [5.0, 1.0, float("nan")])
    result = compare_metric(a, b, resamples=100)
    assert result.n == 1 and result.a == 4.0 and result.b == 5.0
