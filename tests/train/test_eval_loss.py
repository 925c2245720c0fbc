"""eval_loss is the mean token cross-entropy of the evaluation set, whatever the batching."""

import pytest
import torch

from dstune.config import validate_config
from dstune.testing import write_chat_jsonl
from dstune.train import recipe
from dstune.train.rundir import RunDir
from dstune.train.tasks import build_task

PAIRS = [("What is AI?", "Artificial intelligence is the science of making machines that think."),
         ("Hi", "Hello!"), ("你好吗？", "我很好，谢谢。今天的天气很好，我们去公园散步吧。"), ("2+2?", "4")]


def test_eval_loss_is_the_token_mean_for_any_batch_size_and_grouping(tiny_llama_dir, tmp_path):
    data = write_chat_jsonl(tmp_path / "chat.jsonl", PAIRS, 14)
    losses = {}
    for eval_batch, grouped in ((1, False), (3, True), (5, False)):
        config = validate_config({
            "model": {"name": str(tiny_llama_dir)},
            "data": {"train": str(data), "eval_split": 0.5, "max_length": 64},
            "method": {"type": "full"},
            "training": {"max_steps": 1, "batch_size": 2, "eval_batch_size": eval_batch, "eval_strategy": "no",
                         "save_strategy": "no", "packing": False, "group_by_length": grouped},
            "tracking": {"mlflow": {"enabled": False}},
            "output_dir": str(tmp_path / f"run{eval_batch}"),
        })
        run = RunDir(tmp_path / f"run{eval_batch}")
        run.prepare(config, resume=False)
        parts = build_task(config, run, lambda *a, **k: None)
        trainer = recipe._build_trainer(config, parts, run)
        losses[eval_batch] = trainer.evaluate(parts.eval)["eval_loss"]

    model = parts.model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for row in parts.eval:
            ids, labels = torch.tensor([row["input_ids"]]), torch.tensor([row["labels"]])
            logits = model(input_ids=ids).logits[0, :-1]
            target = labels[0, 1:]
            total += torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum").item()
            tokens += int((target != -100).sum())
    assert losses[1] == pytest.approx(total / tokens, rel=1e-5)
    assert losses[3] == pytest.approx(losses[1], rel=1e-5) and losses[5] == pytest.approx(losses[1], rel=1e-5)
