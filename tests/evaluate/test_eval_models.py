"""Evaluation on tiny models: padding-side invariance, classifier metrics, compare with significance."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from dstune.cli import app
from dstune.config.evaluation import GenerationSettings
from dstune.evaluate.generate import generate_answers, reference_nll
from dstune.evaluate.labelled import score_rows
from dstune.models.inference import load_for_inference
from dstune.testing import build_tokenizer, save_tiny_causal_lm, tiny_llama_config

QUESTIONS = ["What is AI?", "Hello, how are you?", "你好吗？", "Tell me the answer.", "What can I do for you today?",
             "合同方A与合同方B签订本合同。", "The quick brown fox", "人工智能是什么？", "Let me reason step by step.",
             "Thank you."]
LABELS = ["合同", "刑事", "other"]


def _prompts(questions=QUESTIONS):
    return [[{"role": "user", "content": q}] for q in questions]


def test_generation_and_reference_perplexity_do_not_depend_on_padding(tiny_v3_dir):
    loaded = load_for_inference(tiny_v3_dir)
    model, tokenizer = loaded.model, loaded.tokenizer
    tokenizer.padding_side = "right"  # as training leaves it: generation must not care
    prompts = _prompts(QUESTIONS[:6])  # 17 to 23 tokens once templated: the batch is padded
    settings = GenerationSettings(max_new_tokens=6, batch_size=6)
    batched = generate_answers(model, tokenizer, prompts, settings)
    alone = [generate_answers(model, tokenizer, [p], settings.model_copy(update={"batch_size": 1}))[0]
             for p in prompts]
    assert batched == alone and tokenizer.padding_side == "right"

    refs = [f"answer number {i}" for i in range(len(prompts))]
    right = reference_nll(model, tokenizer, prompts, refs, batch_size=6, padding_side="right")
    left = reference_nll(model, tokenizer, prompts, refs, batch_size=6, padding_side="left")
    single = [reference_nll(model, tokenizer, [p], [r], batch_size=1)[0] for p, r in zip(prompts, refs)]
    for a, b, c in zip(right, left, single):
        assert a[1] == b[1] == c[1]
        assert a[0] == pytest.approx(b[0], rel=1e-4) and a[0] == pytest.approx(c[0], rel=1e-4)


@pytest.fixture(scope="module")
def tiny_classifier_dir(tmp_path_factory):
    """A tiny Llama sequence classifier (3 labels, Chinese names) saved with its tokenizer."""
    import torch
    from transformers import LlamaForSequenceClassification

    path = tmp_path_factory.mktemp("tiny_clf")
    tokenizer = build_tokenizer()
    config = tiny_llama_config(len(tokenizer), num_labels=3, id2label=dict(enumerate(LABELS)),
                               label2id={n: i for i, n in enumerate(LABELS)}, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_classifier_scores_do_not_depend_on_padding(tiny_classifier_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_classifier_dir)
    rows = [tokenizer(q)["input_ids"] for q in QUESTIONS]
    batched = score_rows(model, rows, tokenizer.pad_token_id, batch_size=10)
    alone = score_rows(model, rows, tokenizer.pad_token_id, batch_size=1)
    np.testing.assert_allclose(np.stack(batched), np.stack(alone), rtol=1e-4, atol=1e-5)


def test_eval_of_a_classifier_writes_metrics_calibration_and_plots(tiny_classifier_dir, tmp_path):
    data = tmp_path / "cases.jsonl"
    rows = [{"text": q, "label": LABELS[i % 3]} for i, q in enumerate(QUESTIONS * 2)]
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval", str(tiny_classifier_dir), "--data", str(data), "--out", str(out),
                                      "--sample", "5", "--explain", "1"])
    assert result.exit_code == 0, result.output
    body = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert body["task"] == "classification"
    for key in ("accuracy", "macro_f1", "ece"):
        assert 0.0 <= body["metrics"][key] <= 1.0
    assert sum(map(sum, body["confusion"]["matrix"])) == len(rows) and body["confusion"]["rows"] == LABELS
    assert set(body["thresholds"]) == set(LABELS) and len(body["calibration"]["bins"]) == 10
    for name in ("plots/confusion_matrix.png", "plots/reliability.png", "predictions.jsonl", "review.csv",
                 "explain.html"):
        assert (out / name).is_file(), name
    first = json.loads((out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert first["reference"] == "合同" and first["prediction"] in LABELS and "confidence" in first["scores"]


@pytest.fixture(scope="module")
def constructed_pair(tiny_v3_dir, tmp_path_factory):
    """Data whose references are model A's own greedy answers (A: exact match 1.0) and a different model B."""
    other = save_tiny_causal_lm(tmp_path_factory.mktemp("tiny_v3_other"), seed=1)
    loaded = load_for_inference(tiny_v3_dir)
    answers = generate_answers(loaded.model, loaded.tokenizer, _prompts(), GenerationSettings(max_new_tokens=6))
    assert all(answers)
    data = tmp_path_factory.mktemp("pair") / "test.jsonl"
    rows = [{"instruction": q, "output": a} for q, a in zip(QUESTIONS, answers)]
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return tiny_v3_dir, other, data


def _compare(a, b, data, out):
    result = CliRunner().invoke(app, ["compare", str(a), str(b), "--data", str(data), "--out", str(out),
                                      "--set", "generation.max_new_tokens=6", "--set", "bootstrap=300", "--no-judge"])
    assert result.exit_code == 0, result.output
    return {m["metric"]: m for m in json.loads(out.read_text(encoding="utf-8"))["metrics"]}, result.output


def test_compare_finds_a_constructed_accuracy_gap(constructed_pair, tmp_path):
    a, b, data = constructed_pair
    metrics, output = _compare(a, b, data, tmp_path / "ab.json")
    em = metrics["exact_match"]
    assert em["a"] == 1.0 and em["b"] < 0.5 and em["test"] == "McNemar exact"
    assert em["significant"] and em["p_value"] < 0.05 and em["ci_high"] < 0
    assert em["verdict"].startswith("B is worse") and em["losses"] == 10 * (1 - em["b"])
    assert {"bleu", "chrf", "rouge1", "rouge2", "rougeL", "perplexity"} <= set(metrics)
    assert "B is worse than A on exact_match" in output
    sides = (tmp_path / "ab.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(sides) == len(QUESTIONS) and "prediction_b" in json.loads(sides[0])


def test_compare_of_identical_models_is_not_significant(constructed_pair, tmp_path):
    a, _, data = constructed_pair
    metrics, output = _compare(a, a, data, tmp_path / "aa.json")
    for m in metrics.values():
        assert m["p_value"] == pytest.approx(1.0) and m["ci_low"] <= 0 <= m["ci_high"], m
        assert not m["significant"] and m["ties"] == len(QUESTIONS)
    assert "cannot tell A and B apart" in output


def test_eval_of_a_token_classifier_reports_entity_f1(tmp_path):
    import torch
    from transformers import LlamaForTokenClassification

    tags = ["O", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    tokenizer = build_tokenizer()
    config = tiny_llama_config(len(tokenizer), num_labels=5, id2label=dict(enumerate(tags)),
                               label2id={n: i for i, n in enumerate(tags)}, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForTokenClassification(config).save_pretrained(tmp_path / "ner")
    tokenizer.save_pretrained(tmp_path / "ner")
    rows = [{"tokens": list("合同方甲与乙签订"), "tags": ["B-ORG", "I-ORG", "I-ORG", "B-PER", "O", "B-PER", "O", "O"]},
            {"tokens": "The quick brown fox".split(), "tags": ["O", "B-PER", "I-PER", "O"]}] * 3
    data = tmp_path / "ner.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "ner"), "--data", str(data), "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    body = json.loads((tmp_path / "e" / "metrics.json").read_text(encoding="utf-8"))
    assert body["task"] == "token_classification"
    assert {"f1", "precision", "recall", "token_accuracy", "ece"} <= set(body["metrics"])
    first = json.loads((tmp_path / "e" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert first["reference"] == "B-ORG I-ORG I-ORG B-PER O B-PER O O" and len(first["prediction"].split()) == 8


def test_eval_and_compare_on_a_trained_classification_run(lora_classifier_run, tiny_bert_dir, tmp_path):
    """The run directory itself (adapter + head + label names), as a user evaluates what `dstune train` left."""
    from dstune.models.predict import load_predictor
    from dstune.testing import toy_classification_rows, write_jsonl

    data = write_jsonl(tmp_path / "test.jsonl", toy_classification_rows(24, seed=11))
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval", str(lora_classifier_run), "--data", str(data), "--out", str(out),
                                      "--sample", "5"])
    assert result.exit_code == 0, result.output
    body = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert body["task"] == "classification" and body["confusion"]["rows"] == ["ai", "contract", "greet"]
    predicted = [json.loads(line)["prediction"] for line in (out / "predictions.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]
    expected = [p["classification"]["label"] for p in load_predictor(lora_classifier_run).predict_batch(
        [r["text"] for r in rows])]
    assert predicted == expected  # eval scores what the run predicts
    accuracy = sum(p == r["label"] for p, r in zip(predicted, rows)) / len(rows)
    assert body["metrics"]["accuracy"] == pytest.approx(accuracy)

    result = CliRunner().invoke(app, ["compare", str(lora_classifier_run), str(lora_classifier_run), "--data",
                                      str(data), "--out", str(tmp_path / "aa.json"), "--set", "bootstrap=200",
                                      "--no-judge"])
    assert result.exit_code == 0, result.output
    metrics = {m["metric"]: m for m in json.loads((tmp_path / "aa.json").read_text())["metrics"]}
    assert metrics["accuracy"]["p_value"] == pytest.approx(1.0) and not metrics["accuracy"]["significant"]
