"""`dstune train --nproc 2` (accelerate launch, DDP over gloo on the CPU) against one process with twice the
gradient accumulation: the same examples make up every optimiser step, so the losses must agree; and the run
directory, history, MLflow and summary are written once."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from dstune.testing import write_chat_jsonl
from dstune.train.history import read_history

pytestmark = pytest.mark.slow  # three processes start: ~1 minute per case on 2 CPU cores


def write_arithmetic_chat(path, n=48):
    """Rows that differ from each other (and in length), so that a different order gives different losses."""
    return write_chat_jsonl(path, [(f"What is {i} plus {i % 7}?", f"{i} plus {i % 7} is {i + i % 7}." + " Easy." * (i % 5))
                                   for i in range(n)])


def write_config(path, model_dir, data, out, *, accumulation, eval_batch_size, packing, mlflow=False):
    config = {
        "model": {"name": str(model_dir)},
        "data": {"train": str(data), "eval_split": 1 / 3, "max_length": 64},  # 32 train / 16 eval rows
        "method": {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
        "training": {
            "max_steps": 10,  # 8 steps per epoch at 4 examples per step: crosses into the second epoch
            "batch_size": 2,
            "gradient_accumulation_steps": accumulation,
            "eval_batch_size": eval_batch_size,
            "learning_rate": 5e-3,
            "warmup_ratio": 0.0,
            "packing": packing,
            "group_by_length": True,  # used when packing is off: dstune's seeded length-grouped sampler
            "eval_strategy": "no",
            "save_strategy": "steps",
            "save_steps": 5,
            "logging_steps": 1,
            "early_stopping_patience": None,
        },
        "tracking": {"mlflow": {"enabled": mlflow}},
        "output_dir": str(out),
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def dstune(*args, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "dstune", *args], capture_output=True, text=True, timeout=timeout,
                          env=env, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


@pytest.mark.parametrize("packing", [True, False], ids=["packed", "padded-length-grouped"])
def test_two_processes_match_one_process_with_twice_the_accumulation(tiny_llama_dir, tmp_path, packing):
    import mlflow

    data = write_arithmetic_chat(tmp_path / "chat.jsonl")
    one = tmp_path / "runs" / "one"
    two = tmp_path / "runs" / "two"
    # evaluation losses are averaged per *global* eval batch (transformers weights the tokens of all
    # processes' batches together), so the single process evaluates two examples at a time
    dstune("train", str(write_config(tmp_path / "one.yaml", tiny_llama_dir, data, one, accumulation=2,
                                     eval_batch_size=2, packing=packing)))
    done = dstune("train", str(write_config(tmp_path / "two.yaml", tiny_llama_dir, data, two, accumulation=1,
                                            eval_batch_size=1, packing=packing, mlflow=True)), "--nproc", "2")

    single = {r["step"]: r for r in read_history(one / "history.jsonl") if "loss" in r}
    double = {r["step"]: r for r in read_history(two / "history.jsonl") if "loss" in r}
    assert sorted(double) == sorted(single) == list(range(1, 11))  # every step logged once, by one process
    for step in single:
        assert double[step]["loss"] == pytest.approx(single[step]["loss"], rel=2e-4), step
        assert double[step]["grad_norm"] == pytest.approx(single[step]["grad_norm"], rel=2e-3), step
    m1 = json.loads((one / "metrics.json").read_text())
    m2 = json.loads((two / "metrics.json").read_text())
    for key in ("train_loss_before", "eval_loss_before", "train_loss_after", "eval_loss_after", "train_loss"):
        assert m2[key] == pytest.approx(m1[key], rel=2e-4), key
    assert m2["eval_loss_after"] < m2["eval_loss_before"] - 0.5

    # written once: one summary, complete checkpoints, one MLflow run with the final metrics
    assert done.stdout.count("dstune train: summary") == 1
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["checkpoint-10", "checkpoint-5"]
    assert (two / "prep" / "train").is_dir()  # tokenized once by the main process, loaded by the other
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("dstune").experiment_id])
    assert len(runs) == 1 and runs[0].data.metrics["final/train_loss_after"] == pytest.approx(m2["train_loss_after"])
