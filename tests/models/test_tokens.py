"""Domain vocabulary: new rows start as the mean of the term's old pieces, LoRA trains exactly those rows,
and an SFT run with added tokens saves a tokenizer and adapter that plain peft loads."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from dstune.config import validate_config
from dstune.config.schema import MethodSection
from dstune.models.adapters import AdapterTask, apply_method
from dstune.models.tokens import add_terms, read_terms, resize_and_init, trainable_rows
from dstune.train.recipe import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TERMS = ["myocardial", "心肌梗死"]


def test_new_rows_start_as_the_mean_of_their_pieces_and_only_they_train(tiny_v3_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_v3_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_v3_dir)
    old_input = model.get_input_embeddings().weight.detach().clone()
    old_output = model.get_output_embeddings().weight.detach().clone()
    terms_file = tmp_path / "terms.txt"
    terms_file.write_text("# medical terms\nmyocardial\n\n心肌梗死\na\n", encoding="utf-8")
    assert read_terms(str(terms_file)) == [*TERMS, "a"]
    new = add_terms(tokenizer, str(terms_file))
    assert new.terms == tuple(TERMS)  # "a" is one token already
    assert tokenizer.tokenize("myocardial") == ["myocardial"]
    resize_and_init(model, new, len(tokenizer))
    for token_id, pieces in zip(new.ids, new.pieces):
        torch.testing.assert_close(model.get_input_embeddings().weight[token_id], old_input[list(pieces)].mean(0))
        torch.testing.assert_close(model.get_output_embeddings().weight[token_id], old_output[list(pieces)].mean(0))

    method = MethodSection(type="lora", r=4, targets=["o_proj"])
    peft_model, _ = apply_method(model, method, task=AdapterTask(token_rows=trainable_rows(model, new)))
    trainable = {name: p.shape for name, p in peft_model.named_parameters() if p.requires_grad}
    token_params = {name: shape for name, shape in trainable.items() if "trainable_tokens" in name}
    assert len(token_params) == 2 and all(shape == (2, 64) for shape in token_params.values())  # embed + lm_head rows
    assert all("lora_" in name or "trainable_tokens" in name for name in trainable)


def test_sft_with_added_tokens_reloads_with_plain_peft(tiny_llama_dir, tmp_path):
    from peft import PeftModel

    rows = [{"messages": [{"role": "user", "content": f"What is {t}?"},
                          {"role": "assistant", "content": f"{t} is a medical term."}]} for t in TERMS * 8]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    cfg = validate_config({
        "model": {"name": str(tiny_llama_dir), "add_tokens": TERMS},
        "data": {"train": str(data), "eval_split": 0.0, "max_length": 48},
        "method": {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "training": {"max_steps": 4, "batch_size": 4, "learning_rate": 1e-2, "logging_steps": 1, "warmup_ratio": 0.0},
        "tracking": {"mlflow": {"enabled": False}},
        "output_dir": str(tmp_path / "run"),
    })
    result = train(cfg, log=lambda *a: None)
    adapter = tmp_path / "run" / "adapter"
    saved = load_file(adapter / "adapter_model.safetensors")
    assert not any(key.endswith(("embed_tokens.weight", "lm_head.weight")) for key in saved)  # rows only
    assert any("trainable_tokens_delta" in key for key in saved)
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    ids = tokenizer("What is myocardial 心肌梗死?", return_tensors="pt")["input_ids"]
    assert tokenizer.convert_tokens_to_ids("myocardial") in ids[0]

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    old_rows = base.get_input_embeddings().weight.detach().clone()
    base.resize_token_embeddings(len(tokenizer))
    reloaded = PeftModel.from_pretrained(base, adapter).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, result.model.eval()(input_ids=ids).logits)
        merged = reloaded.get_input_embeddings()(torch.arange(len(tokenizer))[None])[0]
    torch.testing.assert_close(merged[: len(old_rows)], old_rows)  # the old vocabulary did not move
