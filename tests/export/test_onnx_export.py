"""`dstune export --format onnx [--quantize int8]` and `dstune bench`: a tiny classifier, a tiny Llama and a tiny
DeepSeek-V3 (MLA + MoE), checked against PyTorch, and all three backends measured side by side."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dstune.config.deploy import BenchSection
from dstune.export import export
from dstune.export.verify import read_verification

pytestmark = pytest.mark.slow  # each ONNX export traces and optimises a graph (10-30 s on a small CPU)

NEW_TEXTS = ["my password does not work", "chest pain since this morning", "overdue payment reminder",
             "great product", "store hours please"]


def _quiet(*args):
    pass


def test_classifier_onnx_and_int8_match_pytorch_and_bench_compares_all_three(tiny_classifier_dir, tmp_path):
    import onnxruntime as ort
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from dstune.export.bench import bench

    bundle, (fp32, int8) = export(tiny_classifier_dir, "onnx", quantize="int8", output=tmp_path / "exp", log=_quiet)
    assert fp32["passed"] and fp32["figures"]["prediction_agreement"] == 1.0
    assert fp32["figures"]["max_abs_diff"] < 1e-3
    assert int8["passed"] and int8["figures"]["prediction_agreement"] == 1.0
    for name, record in (("onnx", fp32), ("onnx-int8", int8)):
        assert read_verification(bundle.root / name) == record  # the figures sit next to the artifact
    manifest = json.loads((bundle.root / "artifacts.json").read_text())
    assert set(manifest["artifacts"]) == {"onnx", "onnx-int8"} and manifest["task"] == "sequence-classification"
    size = lambda d: sum(f.stat().st_size for f in d.iterdir() if f.name.startswith("model.onnx"))
    assert size(bundle.root / "onnx-int8") < size(bundle.root / "onnx")  # tiny model: embeddings dominate

    # independent of dstune: a plain ONNX Runtime session on texts the export never saw
    tokenizer = AutoTokenizer.from_pretrained(bundle.root / "onnx")
    encoded = tokenizer(NEW_TEXTS, padding=True, return_tensors="np")
    with torch.no_grad():
        expected = AutoModelForSequenceClassification.from_pretrained(tiny_classifier_dir)(
            **tokenizer(NEW_TEXTS, padding=True, return_tensors="pt")).logits.numpy()
    for name in ("onnx", "onnx-int8"):
        session = ort.InferenceSession(str(bundle.root / name / "model.onnx"), providers=["CPUExecutionProvider"])
        feed = {i.name: encoded[i.name].astype(np.int64) for i in session.get_inputs()}
        logits = session.run(["logits"], feed)[0]
        assert (logits.argmax(-1) == expected.argmax(-1)).all(), name

    result = bench(bundle.root, BenchSection(batch_sizes=[1, 2], seq_lens=[16], iterations=3, warmup=1))
    rows = {(r["backend"], r["batch"]) for r in result["rows"]}
    assert rows == {(b, n) for b in ("pytorch-eager", "onnx-fp32", "onnx-int8") for n in (1, 2)}
    assert all(r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] and r["sequences_per_s"] > 0 for r in result["rows"])
    assert json.loads((bundle.root / "bench.json").read_text())["rows"] == result["rows"]
    assert "CPUExecutionProvider" in result["providers"]["available"]


def test_a_gpu_provider_that_falls_back_to_the_cpu_is_reported_not_benchmarked(tiny_classifier_dir, tmp_path,
                                                                               monkeypatch):
    import dstune.export.bench as bench_module

    bundle, _ = export(tiny_classifier_dir, "onnx", output=tmp_path / "exp", log=_quiet)
    # as on a CUDA machine whose ONNX Runtime lacks the CUDA libraries: the session silently runs on the CPU
    monkeypatch.setattr(bench_module, "_providers", lambda: {"available": ["CPUExecutionProvider"],
                                                             "gpu_tried": ["CUDAExecutionProvider"], "gpu_failed": {}})
    result = bench_module.bench(bundle.root, BenchSection(batch_sizes=[1], seq_lens=[8], iterations=2, warmup=1),
                                log=_quiet)
    assert {r["backend"] for r in result["rows"]} == {"pytorch-eager", "onnx-fp32"}
    (failure,) = result["providers"]["gpu_failed"].values()
    assert "fell back to CPUExecutionProvider" in failure and "CUDAExecutionProvider did not start" in failure


@pytest.mark.parametrize("model_fixture", ["tiny_llama_dir", "tiny_v3_dir"])  # v3: MLA attention + routed MoE
def test_causal_lm_onnx_export_reproduces_greedy_decoding(model_fixture, request, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dstune.export.runtime import OnnxCausalLM, load_exported, onnx_session

    model_dir = request.getfixturevalue(model_fixture)
    bundle, (record,) = export(model_dir, "onnx", output=tmp_path / "exp", overrides={"verify_samples": 3},
                               log=_quiet)
    assert record["passed"] and record["figures"]["next_token_agreement"] == 1.0
    assert record["figures"]["positions"] == 3 * 16

    # free-running greedy decoding through the exported KV-cache step equals PyTorch's generate
    tokenizer = AutoTokenizer.from_pretrained(bundle.root / "onnx")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "你好，请介绍一下你自己。"}],
                                           add_generation_prompt=True, return_dict=True)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        expected = model.generate(torch.tensor([prompt]), max_new_tokens=12, min_new_tokens=12, do_sample=False,
                                  pad_token_id=tokenizer.pad_token_id)[0, len(prompt):].tolist()
    lm = OnnxCausalLM(onnx_session(load_exported(bundle.root / "onnx")))
    assert lm.greedy(prompt, 12) == expected


def test_failed_verification_names_the_figures_and_the_artifact(tmp_path):
    from dstune.export.verify import ExportVerificationError, require, write_verification

    record = write_verification(tmp_path, "onnx-int8 vs PyTorch", {"prediction_agreement": 0.5},
                                {"prediction_agreement": 0.8}, False)
    with pytest.raises(ExportVerificationError) as info:
        require(record, tmp_path, hint="ship the float32 export")
    message = info.value.render()
    assert "prediction_agreement=0.5" in message and str(tmp_path) in message and "float32" in message
