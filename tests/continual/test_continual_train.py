"""End to end: `train()` with EWC + distillation + replay + retain_eval on the tiny DeepSeek-V3 writes the
forgetting to history.jsonl, MLflow, plots/forgetting.png and metrics.json, and keeps eval_loss in charge
of early stopping and the best checkpoint."""

from __future__ import annotations

import json

import pytest

from dstune.config import validate_config
from dstune.testing import write_chat_jsonl
from dstune.train.history import read_history
from dstune.train.recipe import train

NEW_TASK = [("你好吗？", "我很好，谢谢。"), ("合同方A应当怎样？", "甲方应当按时付款。")]
OLD_TASK = [("What is AI?", "Artificial intelligence is the science of making machines that think."),
            ("Hello, how are you?", "I am fine, thank you.")]
GENERAL = ["The quick brown fox jumps over the lazy dog.", "The answer is 42."]


def write_chat(path, pairs, n):
    write_chat_jsonl(path, pairs, n)
    return str(path)


def write_text(path, texts, n):
    path.write_text("".join(json.dumps({"text": texts[i % len(texts)]}) + "\n" for i in range(n)), encoding="utf-8")
    return str(path)


@pytest.fixture
def continual_config(tiny_v3_dir, tmp_path):
    new = write_chat(tmp_path / "new.jsonl", NEW_TASK, 24)
    old = write_chat(tmp_path / "old.jsonl", OLD_TASK, 12)
    general = write_text(tmp_path / "general.jsonl", GENERAL, 6)
    return validate_config({
        "model": {"name": str(tiny_v3_dir)},
        "data": {"train": new, "eval_split": 0.25, "max_length": 48},
        "method": {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "training": {"max_steps": 6, "batch_size": 4, "learning_rate": 5e-3, "eval_strategy": "steps",
                     "eval_steps": 3, "logging_steps": 1, "warmup_ratio": 0.0, "early_stopping_patience": 2},
        "continual": {
            "ewc": {"lambda": 10.0, "fisher_data": old, "fisher_samples": 6},
            "distill": {"teacher": "base", "alpha": 0.5, "temperature": 2.0},
            "replay": {"data": general, "ratio": 0.25},
            "retain_eval": {"old_task": old, "general": general},
            "retain_max_samples": 4,
        },
        "output_dir": str(tmp_path / "runs" / "b"),
    })


def test_continual_run_reports_forgetting_everywhere(continual_config, tmp_path):
    import mlflow

    continual_config.tracking.mlflow.enabled = True
    result = train(continual_config, log=lambda *a: None)
    run = tmp_path / "runs" / "b"
    m = json.loads((run / "metrics.json").read_text())
    assert m == {**m, **{k: v for k, v in result.metrics.items() if k in m}}
    for name in ("old_task", "general"):
        before, after = m[f"retain_{name}_loss_before"], m[f"retain_{name}_loss_after"]
        assert m[f"forgetting_{name}"] == pytest.approx(after - before)
    assert m["data_rows_replay"] == 6  # a quarter of the 24 mixed rows (18 train + 6 replayed)
    assert m["best_checkpoint"]  # eval_loss still picks the best checkpoint

    history = read_history(run / "history.jsonl")
    retain_steps = [r["step"] for r in history if "forgetting_old_task" in r]
    assert retain_steps == [0, 3, 6, 6]  # before, each evaluation, the final model
    assert next(r["forgetting_general"] for r in history if "forgetting_general" in r) == 0.0
    assert sum("eval_loss" in r for r in history) == 2
    train_rows = [r for r in history if "loss" in r and "learning_rate" in r]
    assert all({"task_loss", "distill_kl", "ewc_penalty"} <= set(r) for r in train_rows)
    assert train_rows[0]["ewc_penalty"] == pytest.approx(0.0, abs=1e-6)  # at the anchor on step 1
    assert train_rows[-1]["ewc_penalty"] > 0

    assert (run / "plots" / "forgetting.png").is_file() and (run / "plots" / "forgetting.png") in result.plots
    assert (run / "continual" / "fisher.safetensors").is_file()
    assert (run / "continual" / "anchor.safetensors").is_file()

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (mlrun,) = client.search_runs([client.get_experiment_by_name("dstune").experiment_id])
    assert len(client.get_metric_history(mlrun.info.run_id, "forgetting_old_task")) == 4
    assert "final/forgetting_general" in mlrun.data.metrics and "ewc_penalty" in mlrun.data.metrics


def test_resumed_continual_run_keeps_its_baseline_and_fisher(continual_config, tmp_path):
    import shutil

    cfg = continual_config
    cfg.training = cfg.training.model_copy(update={"max_steps": 4, "eval_steps": 2, "save_steps": 2,
                                                   "save_total_limit": None, "early_stopping_patience": None})
    cfg.continual = cfg.continual.model_copy(update={"distill": None, "replay": None})
    first = train(cfg, log=lambda *a: None).metrics
    run = tmp_path / "runs" / "b"
    shutil.rmtree(run / "checkpoints" / "checkpoint-4")
    shutil.rmtree(run / "adapter")
    (run / "metrics.json").unlink()
    fisher = (run / "continual" / "fisher.safetensors").read_bytes()
    resumed = train(cfg, resume=True, log=lambda *a: None).metrics
    assert (run / "continual" / "fisher.safetensors").read_bytes() == fisher
    assert resumed["retain_old_task_loss_before"] == first["retain_old_task_loss_before"]
    assert resumed["forgetting_old_task"] == pytest.approx(first["forgetting_old_task"], rel=1e-4, abs=1e-5)
