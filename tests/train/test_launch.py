"""`dstune train --nproc N` re-launches itself through accelerate; the shipped accelerate configs are valid."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dstune.train import launch

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "examples" / "accelerate").glob("*.yaml"))


def test_every_documented_setup_is_shipped():
    assert {p.name for p in CONFIGS} >= {"ddp.yaml", "fsdp.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml",
                                         "multi_node.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_accelerate_config_is_one_accelerate_reads(path):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    config = load_config_from_file(str(path))  # unknown top-level keys are errors there
    options = {action.dest for action in launch_command_parser()._actions}
    for section in ("fsdp_config", "deepspeed_config"):
        unknown = set(getattr(config, section) or {}) - options
        assert not unknown, f"{path.name}: {section} keys accelerate launch does not know: {unknown}"
    assert config.mixed_precision == "no"  # precision comes from the dstune config (model.dtype)


def test_launch_command_runs_dstune_as_a_module_in_n_processes(tmp_path):
    cmd = launch.launch_command(2, ["train", "cfg.yaml", "--resume"])
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "2" and "--multi_gpu" in cmd
    assert cmd[-5:] == ["-m", "dstune", "train", "cfg.yaml", "--resume"]
    with_config = launch.launch_command(4, ["train", "cfg.yaml"], tmp_path / "fsdp.yaml")
    assert with_config[with_config.index("--config_file") + 1] == str(tmp_path / "fsdp.yaml")
    assert "--multi_gpu" not in with_config  # the file decides the distributed type


def test_cli_nproc_validates_the_config_once_then_relaunches(tiny_llama_dir, tmp_path, monkeypatch):
    from dstune.cli import app

    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "hello"}\n', encoding="utf-8")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{name: {tiny_llama_dir}}}\ndata: {{train: {data}}}\noutput_dir: {tmp_path}/run\n")
    calls = []
    monkeypatch.setattr(launch, "relaunch", lambda n, args, accelerate_config=None: calls.append((n, args)) or 0)
    result = CliRunner().invoke(app, ["train", str(cfg), "--nproc", "2", "--set", "training.epochs=1", "--resume"])
    assert result.exit_code == 0, result.output
    assert calls == [(2, ["train", str(cfg), "--set", "training.epochs=1", "--resume"])]
    assert not (tmp_path / "run").exists()  # nothing ran in the launching process

    bad = CliRunner().invoke(app, ["train", str(cfg), "--nproc", "2", "--set", "training.epochz=1"])
    assert bad.exit_code != 0 and len(calls) == 1  # a config error stops before any process starts
