"""`dstune export --format merged` on a real tiny DeepSeek-V3 LoRA run: the merged weights reload with plain
transformers, give the adapter model's logits, keep the training chat template, and a bad merge fails."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from dstune.cli import app
from dstune.config import validate_config
from dstune.testing import write_chat_jsonl
from dstune.train.recipe import train

PAIRS = [("What is AI?", "Artificial intelligence is the science of making machines that think."),
         ("你好吗？", "我很好，谢谢。"), ("Tell me the answer.", "The answer is 42.")]


@pytest.fixture(scope="module")
def lora_run(tiny_v3_dir, tmp_path_factory):
    """A finished 4-step LoRA run on tiny DeepSeek-V3 (MLA attention + MoE; MLP LoRA through ParamWrapper)."""
    root = tmp_path_factory.mktemp("merge")
    data = root / "chat.jsonl"
    write_chat_jsonl(data, PAIRS * 8)
    config = validate_config({
        "model": {"name": str(tiny_v3_dir)},
        "data": {"train": str(data), "eval_split": 0.25, "max_length": 64},
        "method": {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
        "training": {"max_steps": 4, "batch_size": 4, "learning_rate": 5e-3, "eval_strategy": "steps",
                     "eval_steps": 4, "warmup_ratio": 0.0, "logging_steps": 2},
        "tracking": {"mlflow": {"enabled": False}},
        "output_dir": str(root / "run"),
    })
    train(config, log=lambda *a: None)
    return root / "run"


def _chat_ids(tokenizer):
    return tokenizer.apply_chat_template([{"role": "user", "content": "What is AI?"}], add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)["input_ids"]


def test_merged_export_matches_adapter_and_loads_with_plain_transformers(lora_run, tiny_v3_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = CliRunner().invoke(app, ["export", str(lora_run), "--format", "merged"])
    assert result.exit_code == 0, result.output
    assert "verified" in result.output
    merged = lora_run / "export" / "merged"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "README.md", "verification.json"):
        assert (merged / name).is_file(), name
    record = json.loads((merged / "verification.json").read_text())
    assert record["passed"] and record["figures"]["argmax_agreement"] == 1.0
    card = (merged / "README.md").read_text()
    assert f"base_model: {tiny_v3_dir}" in card and "eval_loss_after" in card and "vllm serve" in card

    tokenizer = AutoTokenizer.from_pretrained(merged)
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(lora_run / "adapter").chat_template
    ids = _chat_ids(tokenizer)
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(merged).eval()(input_ids=ids).logits
        adapter_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_v3_dir),
                                                  lora_run / "adapter").eval()
        expected = adapter_model(input_ids=ids).logits
        torch.testing.assert_close(plain, expected, atol=1e-4, rtol=1e-4)
        with adapter_model.disable_adapter():  # the adapter matters, so the equality above proves something
            assert not torch.allclose(adapter_model(input_ids=ids).logits, expected, atol=1e-3)


def test_a_merge_that_changes_the_model_fails_verification(lora_run, tmp_path, monkeypatch):
    from dstune.export import export, merge
    from dstune.export.verify import ExportVerificationError

    real_merge = merge._merge

    def broken_merge(*args, **kwargs):  # as if the LoRA update had been scaled wrongly
        model = real_merge(*args, **kwargs)
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(1.5)
        return model

    monkeypatch.setattr(merge, "_merge", broken_merge)
    with pytest.raises(ExportVerificationError, match="merged vs adapter logits"):
        export(lora_run, "merged", output=tmp_path / "out", log=lambda *a: None)
    record = json.loads((tmp_path / "out" / "merged" / "verification.json").read_text())
    assert record["passed"] is False and record["figures"]["relative_max_diff"] > 1e-3
