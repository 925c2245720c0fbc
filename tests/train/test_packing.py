"""Padding-free packing and the supervised-positions-only loss give the losses and gradients of padded batches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dstune.data.collate import packed_collator, padded_collator
from dstune.data.sft import IGNORE_INDEX
from dstune.train.lm_loss import causal_lm_of, selective_lm_loss, supports_selective_logits

LENGTHS = [7, 19, 3, 12]  # examples of very different lengths, as in chat data


def examples(vocab_size: int, seed: int = 0) -> list[dict]:
    """Token ids with a prompt part (label -100) and a supervised answer part, like assistant-only SFT rows."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in LENGTHS:
        ids = torch.randint(5, vocab_size, (n,), generator=g).tolist()
        prompt = max(1, n // 3)
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return rows


def load(path, attn: str = "sdpa"):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn, dtype=torch.float32).eval()


def with_lora(model):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=False)
    return get_peft_model(model, config)


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-position next-token loss, 0 where unsupervised: ``[B, T - 1]``."""
    return nn.functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), labels[:, 1:], ignore_index=IGNORE_INDEX, reduction="none"
    )


def per_example_packed(model, rows, **forward) -> list[float]:
    batch = packed_collator()(rows)
    losses = token_losses(model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], **forward).logits,
                          batch["labels"])[0]
    out, start = [], 0
    for row in rows:
        out.append(float(losses[start : start + len(row["input_ids"]) - 1].sum()))
        start += len(row["input_ids"])
    return out


def per_example_alone(model, rows) -> list[float]:
    return [float(token_losses(model(input_ids=torch.tensor([row["input_ids"]])).logits,
                               torch.tensor([row["labels"]])).sum()) for row in rows]


@pytest.mark.parametrize("arch", ["llama", "deepseek_v3"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_examples_do_not_see_each_other(arch, attn, tiny_llama_dir, tiny_v3_dir, one_torch_thread):
    model = load({"llama": tiny_llama_dir, "deepseek_v3": tiny_v3_dir}[arch], attn)
    rows = examples(model.config.vocab_size)
    with torch.no_grad():
        alone = per_example_alone(model, rows)
        packed = per_example_packed(model, rows, use_cache=False)
        cached = per_example_packed(model, rows)  # transformers' default use_cache=True: boundaries ignored
    assert packed == pytest.approx(alone, rel=1e-5, abs=1e-5)
    assert cached[1:] != pytest.approx(alone[1:], rel=1e-3)  # why DstuneTrainer passes use_cache=False


def test_packed_collator_keeps_the_supervised_tokens(tokenizer):
    rows = examples(len(tokenizer))
    packed, padded = packed_collator()(rows), padded_collator(tokenizer)(rows)
    assert packed["input_ids"].shape == (1, sum(LENGTHS)) and "attention_mask" not in packed
    assert packed["position_ids"][0].tolist() == [i for n in LENGTHS for i in range(n)]
    # the same tokens are predicted: the first label of each example is never a target in either layout
    assert (packed["labels"][:, 1:] != IGNORE_INDEX).sum() == (padded["labels"][:, 1:] != IGNORE_INDEX).sum()
    assert padded["input_ids"].numel() > packed["input_ids"].numel()


def grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["llama", "deepseek_v3"])
@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_selective_loss_equals_the_full_logits_loss(arch, layout, tiny_llama_dir, tiny_v3_dir, tokenizer,
                                                    one_torch_thread):
    model = with_lora(load({"llama": tiny_llama_dir, "deepseek_v3": tiny_v3_dir}[arch])).train()
    assert supports_selective_logits(model) and causal_lm_of(model) is model.get_base_model()
    rows = examples(model.config.vocab_size)
    batch = (packed_collator() if layout == "packed" else padded_collator(tokenizer))(rows)
    batch["use_cache"] = False
    n_items = (batch["labels"][:, 1:] != IGNORE_INDEX).sum() + 5  # as if the accumulation window were larger

    reference = model(**batch, num_items_in_batch=n_items).loss  # transformers: all logits, ForCausalLMLoss
    reference.backward()
    expected = grads(model)
    model.zero_grad()
    loss, outputs = selective_lm_loss(model, batch, n_items)
    loss.backward()
    got = grads(model)

    assert float(loss.detach()) == pytest.approx(float(reference.detach()), rel=1e-5)
    assert outputs.logits.shape == (n_items - 5, model.config.vocab_size)  # supervised rows only
    assert expected.keys() == got.keys() and len(got) > 0
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)
    # without num_items_in_batch: the batch mean, as transformers
    model.zero_grad()
    with torch.no_grad():
        assert float(selective_lm_loss(model, batch)[0]) == pytest.approx(float(model(**batch).loss), rel=1e-5)


def test_models_without_mask_slicing_fall_back_to_the_full_forward():
    class OldStyle(nn.Module):
        def forward(self, input_ids, logits_to_keep=0):  # indexes hidden[:, logits_to_keep]: a mask would break it
            ...

    assert not supports_selective_logits(OldStyle())
    assert not supports_selective_logits(nn.Linear(2, 2))


PAIRS = [
    ("What is AI?", "Artificial intelligence is the science of making machines that think."),
    ("Hello, how are you?", "I am fine, thank you."),
    ("你好吗？", "我很好，谢谢。"),
    ("Tell me the answer, please, and explain how you got it step by step.", "42."),
]


def run_config(model_dir, data, out, **training):
    from dstune.config import validate_config

    return validate_config({
        "model": {"name": str(model_dir)},
        "data": {"train": str(data), "eval_split": 0.25, "max_length": 64},
        "method": {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
        "training": {"max_steps": 6, "batch_size": 4, "learning_rate": 5e-3, "eval_strategy": "steps",
                     "eval_steps": 6, "logging_steps": 1, "warmup_ratio": 0.0, "group_by_length": False,
                     "early_stopping_patience": None, **training},
        "tracking": {"mlflow": {"enabled": False}},
        "output_dir": str(out),
    })


@pytest.mark.parametrize("arch", ["llama", "deepseek_v3"])
def test_packed_training_follows_the_padded_loss_curve(arch, tiny_llama_dir, tiny_v3_dir, tmp_path,
                                                       one_torch_thread):
    from dstune.testing import write_chat_jsonl
    from dstune.train.history import read_history
    from dstune.train.recipe import train

    data = write_chat_jsonl(tmp_path / "chat.jsonl", PAIRS, n=32)
    model_dir = {"llama": tiny_llama_dir, "deepseek_v3": tiny_v3_dir}[arch]
    curves, metrics = {}, {}
    for packing in (True, False):
        out = tmp_path / f"packing-{packing}"
        result = train(run_config(model_dir, data, out, packing=packing), log=lambda *a: None)
        curves[packing] = [r["loss"] for r in read_history(out / "history.jsonl") if "loss" in r]
        metrics[packing] = result.metrics
    assert len(curves[True]) == 6
    assert curves[True] == pytest.approx(curves[False], rel=1e-4)  # same batches, same order: same losses
    assert curves[True][-1] < curves[True][0]
    for key in ("eval_loss_before", "eval_loss_after", "train_loss_after"):  # evaluation pads in both runs
        assert metrics[True][key] == pytest.approx(metrics[False][key], rel=1e-4), key
