"""Resuming a run that died: killed with SIGKILL mid-epoch, or while it was writing a checkpoint.

The resumed run must see the same data order and log the same losses as a run that was never
interrupted, and a checkpoint whose writing did not finish must never be taken for a complete one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import yaml

from dstune.config import validate_config
from dstune.testing import write_chat_jsonl
from dstune.train.history import read_history
from dstune.train.recipe import train
from dstune.train.rundir import RunDir

# `python -m dstune` with every optimiser step slowed down, so that the test can kill it mid-epoch
SLOW_DSTUNE = textwrap.dedent("""
    import runpy, sys, time
    from dstune.train.trainer import DstuneTrainer
    step = DstuneTrainer.training_step
    def slow_step(self, *args, **kwargs):
        time.sleep(0.25)
        return step(self, *args, **kwargs)
    DstuneTrainer.training_step = slow_step
    sys.argv = ["dstune", *sys.argv[1:]]
    runpy.run_module("dstune", run_name="__main__")
""")


def write_arithmetic_chat(path, n=48):
    """Rows that differ from each other (and in length), so that a different order gives different losses."""
    return write_chat_jsonl(path, [(f"What is {i} plus {i % 7}?", f"{i} plus {i % 7} is {i + i % 7}." + " Easy." * (i % 5))
                                   for i in range(n)])


def tiny_config(model_dir, data, out, **training):
    return validate_config({
        "model": {"name": str(model_dir)},
        "data": {"train": str(data), "eval_split": 1 / 3, "max_length": 64},  # 32 train / 16 eval rows
        "method": {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
        "training": {"batch_size": 2, "learning_rate": 5e-3, "warmup_ratio": 0.0, "logging_steps": 1,
                     "eval_strategy": "no", "save_strategy": "steps", "early_stopping_patience": None, **training},
        "tracking": {"mlflow": {"enabled": False}},
        "output_dir": str(out),
    })


def losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_history(run_dir / "history.jsonl") if "loss" in r}


def kill_config(model_dir, data, out):
    # 32 training rows, 2 per step: 16 steps per epoch; the kill lands in epoch 1, the run ends in epoch 2
    return tiny_config(model_dir, data, out, max_steps=24, save_steps=4)


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_with_the_same_data_order_and_losses(tiny_llama_dir, tmp_path):
    data = write_arithmetic_chat(tmp_path / "chat.jsonl")
    reference = train(kill_config(tiny_llama_dir, data, tmp_path / "reference"), log=lambda *a: None)
    expected = losses(tmp_path / "reference")
    assert sorted(expected) == list(range(1, 25))

    run = tmp_path / "run"
    config = kill_config(tiny_llama_dir, data, run)
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_DSTUNE, "train", str(config_file)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    try:
        while RunDir(run).last_checkpoint() is None or RunDir(run).last_checkpoint().name != "checkpoint-8":
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() < deadline, "no checkpoint-8 within 3 minutes"
            time.sleep(0.05)
        time.sleep(0.4)  # a step or two further: the kill lands between checkpoints
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = max(losses(run))
    assert 8 <= killed_at < 16, killed_at  # mid-epoch, after checkpoint-8
    assert not (run / "metrics.json").exists()

    done = subprocess.run([sys.executable, "-m", "dstune", "train", str(run / "config.yaml"), "--resume"], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = losses(run)
    assert sorted(resumed) == list(range(1, 25))  # the steps after the checkpoint are logged once, not twice
    for step in range(1, 25):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-4, abs=1e-5), step
    final = json.loads((run / "metrics.json").read_text())
    assert final["train_loss_after"] == pytest.approx(reference.metrics["train_loss_after"], rel=1e-4)
    assert final["global_step"] == 24


def test_a_checkpoint_whose_writing_was_interrupted_is_never_resumed_from(tiny_llama_dir, tmp_path, monkeypatch):
    from transformers import Trainer

    data = write_arithmetic_chat(tmp_path / "chat.jsonl")
    run = tmp_path / "run"
    cfg = tiny_config(tiny_llama_dir, data, run, max_steps=6, save_steps=3, save_total_limit=None,
                      packing=False)  # padded batches, dstune's seeded length-grouped order

    save_rng = Trainer._save_rng_state

    def dies_at_step_6(self, output_dir):
        if self.state.global_step == 6:  # weights and optimizer written, RNG state and trainer state not yet
            raise SystemExit("killed while saving")
        save_rng(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", dies_at_step_6)
    with pytest.raises(SystemExit):
        train(cfg, log=lambda *a: None)
    monkeypatch.undo()
    checkpoints = run / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [".partial-checkpoint-6", "checkpoint-3"]
    assert RunDir(run).last_checkpoint() == checkpoints / "checkpoint-3"
    before_crash = losses(run)
    assert sorted(before_crash) == list(range(1, 7))

    notes = []
    train(cfg, resume=True, log=notes.append)
    assert any("ignoring" in str(n) and ".partial-checkpoint-6" in str(n) for n in notes), notes
    assert any("resuming from" in str(n) and "checkpoint-3" in str(n) for n in notes), notes
    after = losses(run)
    assert sorted(after) == list(range(1, 7))
    for step in range(4, 7):
        assert after[step] == pytest.approx(before_crash[step], rel=1e-5, abs=1e-6), step
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-3", "checkpoint-6"]

    # a checkpoint folder without the file the Trainer writes last (e.g. written in place by another tool)
    shutil.rmtree(checkpoints / "checkpoint-3")
    (checkpoints / "checkpoint-6" / "trainer_state.json").unlink()
    assert RunDir(run).last_checkpoint() is None
    assert RunDir(run).incomplete_checkpoints() == [checkpoints / "checkpoint-6"]
