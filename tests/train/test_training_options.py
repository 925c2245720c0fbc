"""Training options of SFT runs doing what they say: `training.dropout` reaches the model config dropouts and the
LoRA dropout, and early stopping stops a run whose metric stops improving (keeping the best checkpoint)."""

from __future__ import annotations

import pytest
import torch

from dstune.config import validate_config
from dstune.models.fast_dropout import FastDropout
from dstune.testing import write_chat_jsonl
from dstune.train.history import read_history
from dstune.train.recipe import train
from dstune.train.rundir import RunDir
from dstune.train.tasks import build_task

pytestmark = pytest.mark.usefixtures("one_torch_thread")
QUIET = {"log": lambda *a, **k: None}
QUESTIONS = ["What is the code?", "Tell me the code.", "Which code?", "Code please."]


def sft_config(model_dir, tmp_path, training, data=None):
    data = data or {"train": str(write_chat_jsonl(tmp_path / "chat.jsonl", [(q, "alpha bravo") for q in QUESTIONS], 8)),
                    "eval_split": 0.0}
    return validate_config({
        "model": {"name": str(model_dir)},
        "data": {**data, "max_length": 64},
        "method": {"type": "lora", "r": 4, "alpha": 8},  # lora dropout left at its default (0.1)
        "training": training,
        "tracking": {"mlflow": {"enabled": False}},
        "output_dir": str(tmp_path / "run"),
    })


def built_sft_model(model_dir, tmp_path, dropout):
    config = sft_config(model_dir, tmp_path, {"dropout": dropout})
    parts = build_task(config, RunDir(tmp_path / "run"), **QUIET)
    return parts.model, parts.adapter_report


def test_dropout_override_reaches_the_model_config_and_the_lora_dropout(tiny_llama_dir, tiny_v3_dir, tmp_path):
    model, _ = built_sft_model(tiny_llama_dir, tmp_path, 0.3)
    config = model.get_base_model().config
    dropouts = {key: value for key, value in vars(config).items() if "dropout" in key and isinstance(value, float)}
    assert dropouts and set(dropouts.values()) == {0.3}, dropouts  # attention_dropout, mlp dropout, ...
    attention = [m.attention_dropout for m in model.modules() if hasattr(m, "attention_dropout")]
    assert attention and set(attention) == {0.3}  # read by the attention layers, not only stored in the config
    assert model.peft_config["default"].lora_dropout == 0.3
    lora = [d for m in model.modules() if isinstance(getattr(m, "lora_dropout", None), torch.nn.ModuleDict)
            for d in m.lora_dropout.values()]
    assert lora and all(type(d) is FastDropout and d.p == 0.3 for d in lora)

    # DeepSeek-V3: the attention gets it too, and the Linear (MLA) adapters keep it even where peft's parameter
    # LoRA of the dense/shared MLPs forces the adapter config's lora_dropout to 0 (the run says so)
    v3, report = built_sft_model(tiny_v3_dir, tmp_path, 0.3)
    assert {m.attention_dropout for m in v3.modules() if hasattr(m, "attention_dropout")} == {0.3}
    mla = [d for n, m in v3.named_modules() if n.endswith("q_a_proj") and isinstance(m.lora_dropout, torch.nn.ModuleDict)
           for d in m.lora_dropout.values()]
    assert mla and all(isinstance(d, torch.nn.Dropout) and d.p == 0.3 for d in mla)
    if v3.peft_config["default"].lora_dropout != 0.3:
        assert any("lora dropout 0.3 on the Linear adapters" in note for note in report.notes), report.notes


def test_early_stopping_stops_a_run_whose_metric_does_not_improve(tiny_llama_dir, tmp_path):
    # a learning rate of 1e-30 leaves every float32 weight as it is, so eval_loss repeats exactly: no improvement
    data = {"train": str(write_chat_jsonl(tmp_path / "train.jsonl", [(q, "alpha bravo") for q in QUESTIONS], 16)),
            "validation": str(write_chat_jsonl(tmp_path / "eval.jsonl", [(q, "charlie") for q in QUESTIONS]))}
    config = sft_config(tiny_llama_dir, tmp_path, {
        "max_steps": 20, "batch_size": 4, "learning_rate": 1e-30, "warmup_ratio": 0.0, "eval_strategy": "steps",
        "eval_steps": 2, "logging_steps": 1, "early_stopping_patience": 1, "save_total_limit": None}, data)
    result = train(config, **QUIET)
    evaluations = [row for row in read_history(tmp_path / "run" / "history.jsonl") if "eval_loss" in row]
    assert [row["step"] for row in evaluations] == [2, 4]  # one evaluation without improvement, then stop
    assert evaluations[0]["eval_loss"] == evaluations[1]["eval_loss"]
    assert result.metrics["global_step"] == 4 < config.training.max_steps
    assert result.metrics["best_checkpoint"].endswith("checkpoint-2")


def test_gradient_checkpointing_trains_with_the_same_losses(tiny_llama_dir, tmp_path, monkeypatch):
    """Recomputing activations in backward changes memory, not the result (LoRA dropout masks included)."""
    from transformers.models.llama import modeling_llama

    calls = {}  # MLP forwards: the decoder layer's own forward carries transformers' checkpointing wrapper
    forward = modeling_llama.LlamaMLP.forward

    def counted(self, *args, **kwargs):
        calls[current] = calls.get(current, 0) + 1
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", counted)
    losses = {}
    for checkpointing in (False, True):
        current = checkpointing
        (tmp_path / str(checkpointing)).mkdir()
        config = sft_config(tiny_llama_dir, tmp_path / str(checkpointing),
                            {"max_steps": 4, "logging_steps": 1, "eval_strategy": "no", "batch_size": 2,
                             "gradient_checkpointing": checkpointing, "save_strategy": "no"})
        train(config, **QUIET)
        losses[checkpointing] = [r["loss"] for r in read_history(tmp_path / str(checkpointing) / "run" / "history.jsonl")
                                 if "loss" in r]
    assert len(losses[True]) == 4
    assert calls[True] > calls[False]  # the layers really ran again in backward
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
