"""Multi-task: one backbone, a classification head and a NER head; save → load gives identical outputs for
every head; a missing task file fails before training and names the task; batches hold one task each,
drawn with the configured sampling; a resumed run continues with the same losses."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from dstune.config import validate_config
from dstune.config.cleaning import CleaningSection
from dstune.errors import DataError
from dstune.models.predict import Predictor, load_predictor
from dstune.testing import toy_classification_rows, toy_ner_rows, write_jsonl
from dstune.train.history import read_history
from dstune.train.multitask import TaskBatchStream, task_probabilities
from dstune.train.recipe import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")
QUIET = {"log": lambda *a: None}


def multitask_config(model_dir, tmp_path, tasks=None, multitask=None, **training):
    topics = write_jsonl(tmp_path / "topics.jsonl", toy_classification_rows(48))
    ner = write_jsonl(tmp_path / "ner.jsonl", toy_ner_rows(32))
    return validate_config({
        "model": {"name": str(model_dir)},
        "task": {"type": "multitask"},
        "multitask": {
            "tasks": tasks or {"topic": {"type": "classification", "train": str(topics), "pooling": "mean"},
                               "ner": {"type": "token_classification", "train": str(ner), "weight": 0.5}},
            **(multitask or {}),
        },
        "data": {"eval_split": 0.25, "max_length": 32},
        "method": {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
        "training": {"max_steps": 20, "batch_size": 8, "learning_rate": 5e-3, "eval_strategy": "steps",
                     "eval_steps": 10, "logging_steps": 5, "warmup_ratio": 0.0, **training},
        "tracking": {"mlflow": {"enabled": False}},
        "output_dir": str(tmp_path / "run"),
    })


def test_multitask_run_saves_every_head_and_loads_them_back_identically(tiny_v3_dir, tmp_path):
    cfg = multitask_config(tiny_v3_dir, tmp_path, multitask={"sampling": "temperature", "loss_weighting": "uncertainty"})
    assert cfg.training.metric_for_best == "eval_combined_score"
    result = train(cfg, **QUIET)
    m = result.metrics
    assert m["eval_loss_after"] < m["eval_loss_before"], m
    assert {"eval_topic_accuracy_after", "eval_ner_f1_after", "eval_combined_score_after"} <= set(m)
    assert any("eval_combined_score" in row and "eval_ner_f1" in row for row in read_history(tmp_path / "run" / "history.jsonl"))
    heads = tmp_path / "run" / "adapter" / "heads"
    assert {p.name for p in heads.iterdir()} == {"heads.json", "topic.json", "topic.safetensors", "ner.json",
                                                   "ner.safetensors", "loss_weights.safetensors"}
    assert (tmp_path / "run" / "plots" / "confusion_matrix_topic.png").is_file()

    loaded = load_predictor(tmp_path / "run")
    trained = Predictor(result.model.eval(), loaded.tokenizer, result.model.specs, "dstune")
    texts = ["hello how are you", "合同 甲方 付款 the"]
    words = [["alice", "smith", "is", "in", "北", "京"], ["zyxwvut", "jones", "for", "paris"]]
    for batch, token_level in ((texts, False), (words, True)):
        got, want = loaded.logits(batch, token_level)[0], trained.logits(batch, token_level)[0]
        assert set(got) == {"topic", "ner"}
        for name in got:
            torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-5)
    out = loaded.predict("bob is in 北京")
    assert set(out) == {"topic", "ner"} and len(out["ner"]["tags"]) == 5


def test_missing_task_file_fails_before_training_and_names_the_task(tiny_v3_dir, tmp_path):
    topics = write_jsonl(tmp_path / "t.jsonl", toy_classification_rows(12))
    tasks = {"topic": {"type": "classification", "train": str(topics)},
             "ner": {"type": "token_classification", "train": str(tmp_path / "missing_ner.jsonl")}}
    with pytest.raises(DataError) as error:
        train(multitask_config(tiny_v3_dir, tmp_path, tasks), **QUIET)
    assert "task 'ner'" in str(error.value) and "multitask.tasks.ner.train" in str(error.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_batches_hold_one_task_each_drawn_by_the_sampling_rule():
    from datasets import Dataset

    sets = [Dataset.from_dict({"input_ids": [[i]] * n, "labels": [[0]] * n, "task": [i] * n})
            for i, n in enumerate([300, 30])]
    assert task_probabilities([300, 30], "proportional", 2.0).tolist() == pytest.approx([10 / 11, 1 / 11])
    assert task_probabilities([300, 30], "equal", 2.0).tolist() == [0.5, 0.5]
    temperature = task_probabilities([300, 30], "temperature", 2.0)
    assert temperature[1] == pytest.approx(np.sqrt(30) / (np.sqrt(300) + np.sqrt(30)))
    stream = TaskBatchStream(sets, batch_size=5, probabilities=temperature, seed=3)
    rows = list(stream)
    assert len(rows) == len(stream) == 330
    blocks = [{row["task"] for row in rows[i : i + 5]} for i in range(0, 330, 5)]
    assert all(len(block) == 1 for block in blocks)
    share = np.mean([block == {1} for block in blocks])
    assert 0.1 < share < 0.45  # ≈ 0.24 expected; proportional would give ≈ 0.09
    assert [r["task"] for r in list(stream)] == [r["task"] for r in rows]  # same epoch, same order
    stream.set_epoch(1)
    assert [r["task"] for r in list(stream)] != [r["task"] for r in rows]


def test_resumed_multitask_run_continues_with_the_same_losses(tiny_bert_dir, tmp_path):
    cfg = multitask_config(tiny_bert_dir, tmp_path, max_steps=6, logging_steps=1, eval_steps=3,
                           early_stopping_patience=None, save_total_limit=None)
    train(cfg, **QUIET)
    run = tmp_path / "run"
    full = {r["step"]: r["loss"] for r in read_history(run / "history.jsonl") if "loss" in r}
    shutil.rmtree(run / "checkpoints" / "checkpoint-6")
    shutil.rmtree(run / "adapter")
    (run / "metrics.json").unlink()
    train(cfg, resume=True, **QUIET)
    resumed = {r["step"]: r["loss"] for r in read_history(run / "history.jsonl") if "loss" in r}
    for step in range(4, 7):
        assert resumed[step] == pytest.approx(full[step], rel=1e-4, abs=1e-5), step


def test_cleaning_filters_every_task_and_each_task_reports_its_own_rejected_rows(tiny_bert_dir, tmp_path):
    topics = write_jsonl(tmp_path / "short_topics.jsonl",
                         [*toy_classification_rows(24), {"text": "hi", "label": "greet"}])
    ner = write_jsonl(tmp_path / "short_ner.jsonl", [{"tokens": ["ok"], "tags": ["O"]}, *toy_ner_rows(16)])
    tasks = {"topic": {"type": "classification", "train": str(topics)},
             "ner": {"type": "token_classification", "train": str(ner)}}
    cfg = multitask_config(tiny_bert_dir, tmp_path, tasks, max_steps=2, eval_steps=2)
    cfg.cleaning = CleaningSection(steps=[{"type": "length", "min": 6}])
    cfg.data.on_error = "skip"
    result = train(cfg, **QUIET)
    assert result.metrics["data_rows_rejected_cleaning"] == 2, result.data_stats
    assert result.data_stats["tasks"]["ner"]["cleaning"] == {"0:length": {"changed": 0, "rejected": 1}}
    for task, line in (("topic", 25), ("ner", 1)):  # one file per task: neither overwrites the other
        lines = (tmp_path / "run" / "rejected" / task / "rejected.jsonl").read_text().splitlines()
        (row,) = [json.loads(text) for text in lines]
        assert row["line"] == line and "below the minimum 6" in row["reason"], task
