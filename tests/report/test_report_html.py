"""End to end on a tiny trained run: `dstune eval` → MLflow, `compare` BASE RUN, `report` (self-contained
HTML with every section), review CSV filled in and imported back, and clear user errors."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from dstune.cli import app
from dstune.config import validate_config
from dstune.testing import write_chat_jsonl
from dstune.train.recipe import train

PAIRS = [("What is AI?", "Artificial intelligence is the science of making machines that think."),
         ("你好吗？", "我很好，谢谢。"), ("Tell me the answer.", "<think>6 times 7</think>The answer is 42.")]


@pytest.fixture(scope="module")
def trained_run(tiny_v3_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    data = root / "chat.jsonl"
    write_chat_jsonl(data, PAIRS * 4)
    config = validate_config({
        "model": {"name": str(tiny_v3_dir)},
        "data": {"train": str(data), "eval_split": 0.25, "max_length": 64},
        "method": {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "training": {"max_steps": 4, "batch_size": 4, "learning_rate": 5e-3, "eval_strategy": "steps",
                     "eval_steps": 2, "logging_steps": 1, "warmup_ratio": 0.0},
        "evaluation": {"generation": {"max_new_tokens": 6}, "bootstrap": 200},
        "output_dir": str(root / "demo"),
    })
    train(config, log=lambda *a: None)
    return root / "demo", data


def _cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_eval_compare_report_and_review_round_trip(trained_run, tiny_v3_dir):
    import mlflow

    run, data = trained_run
    output = _cli("eval", run, "--split", "validation", "--sample", "2", "--explain", "2")
    assert "ROUGE units: jieba word segmentation" in output and "BLEU tokenizer: zh" in output
    body = json.loads((run / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert body["metrics"]["examples"] == 3 and "held out for validation" in body["data"]
    prediction = json.loads((run / "eval" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert {"input", "reference", "prediction", "scores", "verdict"} <= set(prediction)

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{run.parent / 'mlflow.db'}")
    (logged,) = client.search_runs([client.get_experiment_by_name("dstune").experiment_id])
    assert logged.info.run_name == "demo" and "eval/exact_match" in logged.data.metrics
    assert "final/eval_loss_after" in logged.data.metrics  # the training run itself, not a new one
    assert any(a.path == "eval" for a in client.list_artifacts(logged.info.run_id))

    _cli("compare", tiny_v3_dir, run, "--data", data, "--no-judge")
    assert (run / "eval" / f"compare_{tiny_v3_dir.name}.json").is_file()

    review = run / "eval" / "review.csv"
    with open(review, encoding="utf-8-sig", newline="") as stream:
        rows = list(csv.DictReader(stream))
    rows[0].update(reviewer_verdict="acceptable")
    rows[-1].update(reviewer_verdict="incorrect", error_category="hallucination")
    with open(review, "w", encoding="utf-8-sig", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    output = _cli("eval", run, "--import-review", review)
    assert "reviewer-adjusted" in output and "hallucination" in output
    assert "reviewer_adjusted_accuracy" in json.loads((run / "eval" / "metrics.json").read_text())["metrics"]

    _cli("report", run)
    html = (run / "report.html").read_text(encoding="utf-8")
    for anchor in ("summary", "config", "data", "curves", "final", "evaluation", "confusion", "calibration",
                   "errors", "comparisons", "attention"):
        assert f'<section id="{anchor}">' in html, anchor
    assert html.count("data:image/png;base64,") >= 1  # the loss curve, embedded
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing fetched: opens offline
    assert "lora" in html and "reviewer-adjusted accuracy" in html and "hallucination" in html
    assert 'class="heatmap"' in html and "B − A" in html and "jieba word segmentation" in html


def test_report_of_a_run_without_evaluation_says_what_to_run(trained_run, tmp_path):
    run, _ = trained_run
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.yaml", "metrics.json", "history.jsonl"):
        (bare / name).write_bytes((run / name).read_bytes())
    _cli("report", bare)
    text = (bare / "report.html").read_text(encoding="utf-8")
    assert f"dstune eval {bare}" in text and "No comparison yet" in text


def test_user_errors_are_one_clear_message(tiny_v3_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dstune", "eval", str(tiny_v3_dir)], capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 2 and "--data" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr
