"""End to end: `dstune train` on a tiny DeepSeek-V3 — the loss goes down, the run directory is complete,
the adapter reloads with plain peft, resume reproduces the losses, user errors are clear."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from dstune.config import validate_config
from dstune.train.history import read_history
from dstune.train.recipe import train

PAIRS = [
    ("What is AI?", "Artificial intelligence is the science of making machines that think."),
    ("Hello, how are you?", "I am fine, thank you. What can I do for you today?"),
    ("你好吗？", "我很好，谢谢。"),
    ("Tell me the answer.", "The answer is 42."),
]


def write_chat_data(path, n=48):
    rows = []
    for i in range(n):
        q, a = PAIRS[i % len(PAIRS)]
        rows.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def tiny_config(model_dir, data, out, method="lora", **training):
    raw = {
        "model": {"name": str(model_dir)},
        "data": {"train": str(data), "eval_split": 0.25, "max_length": 64},
        "method": {"type": method, "r": 8, "alpha": 16, "dropout": 0.0, "trainable_layers": 1},
        "training": {
            "max_steps": 20,
            "batch_size": 4,
            "learning_rate": 5e-3 if method == "lora" else 1e-3,
            "eval_strategy": "steps",
            "eval_steps": 10,
            "logging_steps": 2,
            "warmup_ratio": 0.0,
            **training,
        },
        "tracking": {"mlflow": {"enabled": False}},
        "output_dir": str(out),
    }
    return validate_config(raw)


@pytest.fixture
def chat_data(tmp_path):
    return write_chat_data(tmp_path / "chat.jsonl")


def test_lora_sft_lowers_loss_and_adapter_reloads_with_plain_peft(tiny_v3_dir, chat_data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = train(tiny_config(tiny_v3_dir, chat_data, tmp_path / "run"), log=lambda *a: None)
    m = result.metrics
    assert m["eval_loss_after"] < 0.8 * m["eval_loss_before"], m
    assert m["train_loss_after"] < 0.8 * m["train_loss_before"], m

    run = tmp_path / "run"
    for name in ["config.yaml", "history.jsonl", "metrics.json", "baseline.json", "trainable_params.json",
                 "plots/loss.png", "adapter/adapter_config.json", "adapter/adapter_model.safetensors",
                 "adapter/tokenizer.json", "adapter/tokenizer_config.json"]:
        assert (run / name).is_file(), name
    assert list((run / "checkpoints").glob("checkpoint-*"))
    history = read_history(run / "history.jsonl")
    assert any("loss" in r and "learning_rate" in r for r in history)
    assert any("eval_loss" in r for r in history)

    ids = torch.tensor([[3, 10, 20, 30, 40, 50, 60, 4]])
    trained = result.model.eval()
    with torch.no_grad():
        expected = trained(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_v3_dir)
        reloaded = PeftModel.from_pretrained(base, run / "adapter").eval()
        got = reloaded(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # the adapter changed the model (otherwise the comparison above proves nothing)
    with torch.no_grad(), reloaded.disable_adapter():
        assert not torch.allclose(reloaded(input_ids=ids).logits, got, atol=1e-3)


@pytest.mark.parametrize(("model_fixture", "lora_dropout"), [("tiny_v3_dir", 0.0), ("tiny_llama_dir", 0.1)])
def test_resume_gives_the_same_losses_as_an_uninterrupted_run(model_fixture, lora_dropout, chat_data, tmp_path,
                                                              request):
    # with LoRA dropout, the masks after the resume must be the ones the uninterrupted run drew (RNG restored)
    cfg = tiny_config(request.getfixturevalue(model_fixture), chat_data, tmp_path / "run", max_steps=8,
                      logging_steps=1, eval_steps=4, save_steps=4, early_stopping_patience=None, save_total_limit=None)
    cfg.method.dropout = lora_dropout
    train(cfg, log=lambda *a: None)
    run = tmp_path / "run"
    full = {r["step"]: r["loss"] for r in read_history(run / "history.jsonl") if "loss" in r}
    assert sorted(full) == list(range(1, 9))
    # pretend the run died after checkpoint-4 was written
    shutil.rmtree(run / "checkpoints" / "checkpoint-8")
    shutil.rmtree(run / "adapter")
    (run / "metrics.json").unlink()
    result = train(cfg, resume=True, log=lambda *a: None)
    resumed = {r["step"]: r["loss"] for r in read_history(run / "history.jsonl") if "loss" in r}
    assert sorted(resumed) == list(range(1, 9))
    for step in range(5, 9):
        assert resumed[step] == pytest.approx(full[step], rel=1e-5, abs=1e-6), step
    assert result.metrics["global_step"] == 8
    assert "eval_loss_before" in result.metrics  # the baseline survives the resume


@pytest.mark.parametrize("method", ["full", "freeze"])
def test_full_and_freeze_train_and_save_a_plain_model(tiny_llama_dir, chat_data, tmp_path, method):
    from transformers import AutoModelForCausalLM

    result = train(tiny_config(tiny_llama_dir, chat_data, tmp_path / "run", method=method, max_steps=10),
                   log=lambda *a: None)
    assert result.metrics["train_loss_after"] < result.metrics["train_loss_before"]
    model_dir = tmp_path / "run" / "model"
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "tokenizer.json").is_file()
    AutoModelForCausalLM.from_pretrained(model_dir)  # loads without dstune


def test_mlflow_embedded_store_gets_params_metrics_and_config(tiny_v3_dir, chat_data, tmp_path):
    import mlflow

    cfg = tiny_config(tiny_v3_dir, chat_data, tmp_path / "runs" / "demo", max_steps=4, eval_steps=2)
    cfg.tracking.mlflow.enabled = True
    train(cfg, log=lambda *a: None)
    db = tmp_path / "runs" / "mlflow.db"
    assert db.is_file()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("dstune").experiment_id])
    assert run.info.run_name == "demo" and run.info.status == "FINISHED"
    assert "final/eval_loss_after" in run.data.metrics and "loss" in run.data.metrics
    assert len(client.get_metric_history(run.info.run_id, "loss")) >= 2
    assert any(a.path == "config.yaml" for a in client.list_artifacts(run.info.run_id))


def test_a_run_that_crashes_is_failed_in_mlflow_with_its_config(tiny_v3_dir, chat_data, tmp_path, monkeypatch):
    import mlflow

    import dstune.train.recipe as recipe

    def crash(*args, **kwargs):
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr(recipe, "_measure", crash)  # the first thing done inside the MLflow run
    cfg = tiny_config(tiny_v3_dir, chat_data, tmp_path / "runs" / "demo", max_steps=2, eval_steps=2)
    cfg.tracking.mlflow.enabled = True
    with pytest.raises(RuntimeError, match="out of memory"):
        train(cfg, log=lambda *a: None)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("dstune").experiment_id])
    assert run.info.status == "FAILED"
    assert any(a.path == "config.yaml" for a in client.list_artifacts(run.info.run_id))
    assert not (tmp_path / "runs" / "demo" / "metrics.json").exists()  # nothing looks finished


def test_finished_run_is_not_overwritten(tiny_v3_dir, chat_data, tmp_path):
    from dstune.errors import ConfigError

    cfg = tiny_config(tiny_v3_dir, chat_data, tmp_path / "run", max_steps=2, eval_steps=2)
    train(cfg, log=lambda *a: None)
    with pytest.raises(ConfigError, match="already holds a finished run"):
        train(cfg, log=lambda *a: None)


# --- the real CLI: user errors are one clear message, exit code 2, no traceback -------------------

def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "dstune", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def write_yaml(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "body, expected",
    [
        ("model: {name: m}\ndata: {trian: x.jsonl}\noutput_dir: o\n", "did you mean 'data.train'"),
        ("model: {name: m}\ndata: {train: x.jsonl}\ntraining: {batch_size: many}\noutput_dir: o\n",
         "'training.batch_size' must be an integer"),
        ("model: {name: m}\ndata: {train: x.jsonl}\nmethod: {type: lorra}\noutput_dir: o\n", "method.type"),
        ("model: {name: m\n", "not valid YAML"),
    ],
)
def test_cli_config_errors_are_clear(tmp_path, body, expected):
    proc = run_cli("train", str(write_yaml(tmp_path / "c.yaml", body)))
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.parametrize(("args", "expected"), [
    (["train"], "Missing argument 'config'"),
    (["plan", "--model", "deepseek-v3", "--gpus", "0"], "Invalid value for '--gpus'"),
    (["plan", "--model", "deepseek-v3", "--seq-len", "many"], "Invalid value for '--seq-len'"),
    (["serve", "runs/no-such-run"], "model path not found: runs/no-such-run"),
])
def test_cli_argument_errors_are_one_message_without_traceback(args, expected, tmp_path):
    (tmp_path / "runs").mkdir()  # runs/<name> is then plainly a local path, never a hub id to retry
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert expected in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_cli_missing_data_file_and_malformed_line(tiny_v3_dir, chat_data, tmp_path):
    base = f"model: {{name: {tiny_v3_dir}}}\noutput_dir: {tmp_path}/run\ntracking: {{mlflow: {{enabled: false}}}}\n"
    proc = run_cli("train", str(write_yaml(tmp_path / "a.yaml", base + "data: {train: nowhere.jsonl}\n")))
    assert proc.returncode == 2 and "nowhere.jsonl" in proc.stdout and "Traceback" not in proc.stderr

    lines = chat_data.read_text().splitlines()
    lines[6] = '{"messages": [{"role": "user", "content": "hi"}'  # line 7: truncated JSON
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    proc = run_cli("train", str(write_yaml(tmp_path / "b.yaml", base + f"data: {{train: {bad}}}\n")))
    assert proc.returncode == 2
    assert f"{bad}:7" in proc.stdout and "Traceback" not in proc.stderr
    proc = run_cli("--debug", "train", str(tmp_path / "b.yaml"))
    assert "Traceback" in proc.stderr  # --debug shows it


def test_cli_train_end_to_end(tiny_v3_dir, chat_data, tmp_path):
    cfg = write_yaml(tmp_path / "c.yaml", f"""
model: {{name: {tiny_v3_dir}}}
data: {{train: {chat_data}, max_length: 64}}
method: {{r: 4, alpha: 8}}
training: {{max_steps: 4, batch_size: 4, eval_strategy: steps, eval_steps: 2, logging_steps: 1}}
output_dir: {tmp_path}/runs/cli
""")
    proc = run_cli("train", str(cfg), "--set", "training.learning_rate=0.005")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "eval loss" in proc.stdout and "mlflow ui --backend-store-uri" in proc.stdout
    saved = (tmp_path / "runs" / "cli" / "config.yaml").read_text()
    assert "learning_rate: 0.005" in saved and "lr_scheduler: cosine" in saved


no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
QLORA_MESSAGE = "method.type: qlora needs a CUDA GPU"


def qlora_yaml(tmp_path, model_dir, data):
    return write_yaml(tmp_path / "q.yaml", f"""
model: {{name: {model_dir}}}
data: {{train: {data}}}
method: {{type: qlora}}
tracking: {{mlflow: {{enabled: false}}}}
output_dir: {tmp_path}/runs/q
""")


@no_cuda
def test_cli_qlora_without_cuda_stops_at_config_time(tiny_v3_dir, chat_data, tmp_path):
    proc = run_cli("train", str(qlora_yaml(tmp_path, tiny_v3_dir, chat_data)))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert QLORA_MESSAGE in proc.stdout and "use method.type: lora on CPU" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "runs" / "q").exists()  # stopped before the run directory was made


@no_cuda
def test_cli_qlora_without_cuda_stops_before_nproc_starts_processes(tiny_v3_dir, chat_data, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from dstune.cli import app
    from dstune.errors import ConfigError
    from dstune.train import launch

    calls = []
    monkeypatch.setattr(launch, "relaunch", lambda *args, **kwargs: calls.append(args) or 0)
    result = CliRunner().invoke(app, ["train", str(qlora_yaml(tmp_path, tiny_v3_dir, chat_data)), "--nproc", "2"])
    assert isinstance(result.exception, ConfigError) and QLORA_MESSAGE in str(result.exception)  # main() prints it
    assert calls == [] and not (tmp_path / "runs" / "q").exists()
