"""`dstune export` and `dstune bench` on classification run directories.

A LoRA run (the default method) whose model is a transformers classification class merges into a
plain Hugging Face classifier (the head peft trained as ``modules_to_save`` included, label names in
config.json) that reloads with ``AutoModelFor*Classification`` and gives the run's predictions;
it exports to ONNX + int8 and benchmarks. A run with dstune's own heads is refused with what to do
instead, and is still served.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dstune.cli import app
from dstune.errors import ModelError
from dstune.export import export
from dstune.models.predict import load_predictor
from dstune.testing import toy_ner_rows, train_toy_labelled_run

NEW_TEXTS = ["hello how are you today", "甲方 付款 按时 签订", "machines think science", "fine thank you",
             "what can the a do", "science reason answer", "合同 乙方 交货", "hello fine today"]
LABELS = {"0": "ai", "1": "contract", "2": "greet"}


def _quiet(*args):
    pass


def _labels(predictions: list[dict]) -> list[str]:
    return [p["classification"]["label"] for p in predictions]


def test_lora_classification_run_merges_into_a_plain_transformers_classifier(lora_classifier_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    run = lora_classifier_run
    result = CliRunner().invoke(app, ["export", str(run), "--format", "merged"])
    assert result.exit_code == 0, result.output
    merged = run / "export" / "merged"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "README.md", "verification.json",
                 "heads/classification.json"):
        assert (merged / name).is_file(), name
    record = json.loads((merged / "verification.json").read_text())
    assert record["passed"] and record["figures"]["prediction_agreement"] == 1.0, record
    config = json.loads((merged / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"] and config["id2label"] == LABELS
    assert config["problem_type"] == "single_label_classification"
    assert "pipeline_tag: text-classification" in (merged / "README.md").read_text()

    predictor = load_predictor(run)
    tokenizer = AutoTokenizer.from_pretrained(merged)
    plain = AutoModelForSequenceClassification.from_pretrained(merged).eval()
    batch = tokenizer(NEW_TEXTS, padding=True, return_tensors="pt")
    expected = predictor.logits(NEW_TEXTS)[0]["classification"]
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).logits, expected, atol=1e-5, rtol=1e-5)
        with predictor.model.disable_adapter():  # adapter and trained head matter: the equality proves the merge
            assert not torch.allclose(predictor.model(**batch).logits, expected, atol=1e-3)
    served = pipeline("text-classification", model=str(merged))(NEW_TEXTS)
    assert [s["label"] for s in served] == _labels(predictor.predict_batch(NEW_TEXTS))


def test_lora_token_classification_run_merges_and_tags_as_the_run_does(tiny_bert_dir, tmp_path, one_torch_thread):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    run = train_toy_labelled_run(tiny_bert_dir, tmp_path, "token_classification")
    bundle, (record,) = export(run, "merged", output=tmp_path / "exp", log=_quiet)
    assert record["passed"] and record["figures"]["prediction_agreement"] == 1.0, record
    merged = bundle.root / "merged"
    plain = AutoModelForTokenClassification.from_pretrained(merged).eval()
    assert plain.config.id2label == {0: "O", 1: "B-LOC", 2: "I-LOC", 3: "B-PER", 4: "I-PER"}

    predictor = load_predictor(run)
    reloaded = type(predictor)(plain, AutoTokenizer.from_pretrained(merged), predictor.specs, "transformers",
                               predictor.max_length)
    words = [row["tokens"] for row in toy_ner_rows(4, seed=3)]
    name = predictor.specs[0].name
    torch.testing.assert_close(reloaded.logits(words, token_level=True)[0][name],
                               predictor.logits(words, token_level=True)[0][name], atol=1e-5, rtol=1e-5)
    assert reloaded.predict_batch(words) == predictor.predict_batch(words)

    from dstune.export.source import load_deployable
    from dstune.serve.classify import ClassifierEngine

    texts = [" ".join(w) for w in words]  # /v1/classify on the run: the run's word-level tags and entities
    served = ClassifierEngine(load_deployable(run)).classify(texts)
    expected = [p[name] for p in predictor.predict_batch(texts)]
    assert [{k: s[k] for k in ("tags", "entities")} for s in served] == expected


def test_lora_classification_run_exports_to_onnx_int8_and_benches(lora_classifier_run, tmp_path):
    import onnxruntime as ort
    from transformers import AutoTokenizer

    from dstune.config.deploy import BenchSection
    from dstune.export.bench import bench

    run = lora_classifier_run
    bundle, (fp32, int8) = export(run, "onnx", quantize="int8", output=tmp_path / "exp", log=_quiet)
    assert fp32["passed"] and fp32["figures"]["prediction_agreement"] == 1.0, fp32
    assert int8["passed"], int8
    expected = _labels(load_predictor(run).predict_batch(NEW_TEXTS))
    tokenizer = AutoTokenizer.from_pretrained(bundle.root / "onnx")
    encoded = tokenizer(NEW_TEXTS, padding=True, return_tensors="np")
    logits = {}
    for name in ("onnx", "onnx-int8"):  # plain ONNX Runtime, label names from the export's own config.json
        folder = bundle.root / name
        id2label = json.loads((folder / "config.json").read_text())["id2label"]
        session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        logits[name] = session.run(["logits"], {i.name: encoded[i.name].astype(np.int64)
                                                for i in session.get_inputs()})[0]
        assert (folder / "heads" / "classification.json").is_file(), name
    assert [id2label[str(i)] for i in logits["onnx"].argmax(-1)] == expected
    # int8 rounding may flip only a near-tied decision: where it disagrees, fp32's margin between its top two
    # classes is within twice int8's logit error on that text
    top2 = np.sort(logits["onnx"], axis=-1)[:, -2:]
    error = np.abs(logits["onnx-int8"] - logits["onnx"]).max(-1)
    flipped = logits["onnx-int8"].argmax(-1) != logits["onnx"].argmax(-1)
    assert flipped.mean() <= 0.25 and ((top2[:, 1] - top2[:, 0])[flipped] <= 2 * error[flipped]).all()

    result = bench(bundle.root, BenchSection(batch_sizes=[1], seq_lens=[16], iterations=2, warmup=1), log=_quiet)
    assert {r["backend"] for r in result["rows"]} == {"pytorch-eager", "onnx-fp32", "onnx-int8"}
    assert result["task"] == "sequence-classification"


def test_run_with_dstune_heads_is_refused_with_what_to_do_and_still_classifies(tiny_bert_dir, tmp_path,
                                                                                one_torch_thread):
    from dstune.config.deploy import BenchSection
    from dstune.export.bench import bench
    from dstune.export.source import load_deployable
    from dstune.serve.classify import ClassifierEngine

    run = train_toy_labelled_run(tiny_bert_dir, tmp_path, steps=4, pooling="mean")  # mean pooling: dstune heads
    for attempt in (lambda: export(run, "merged", output=tmp_path / "exp", log=_quiet),
                    lambda: export(run, "onnx", output=tmp_path / "exp", log=_quiet),
                    lambda: bench(run, BenchSection(iterations=1), log=_quiet)):
        with pytest.raises(ModelError) as info:
            attempt()
        message = info.value.render()
        assert "mean pooling" in message and f"dstune serve {run}" in message and "pooling: auto" in message
    assert not (tmp_path / "exp" / "merged").exists()

    served = ClassifierEngine(load_deployable(run)).classify(NEW_TEXTS)
    assert [s["label"] for s in served] == _labels(load_predictor(run).predict_batch(NEW_TEXTS))
