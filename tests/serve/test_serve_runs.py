"""`dstune serve` on what `dstune train` leaves: the CLI's state builder loads an adapter run directory and answers
exactly as plain transformers + peft do with the run's saved tokenizer and chat template; `--ab` serves the base
model and the run side by side."""

from __future__ import annotations

import openai
import pytest
import torch

from dstune.config import validate_config
from dstune.config.deploy import ServeSection
from dstune.serve.server import build_state
from dstune.testing import write_chat_jsonl
from dstune.train.recipe import train

QUESTIONS = ["What is the code?", "Tell me the code.", "Which code?", "Code please."]
LIMITS = ServeSection(max_tokens_limit=16, default_max_tokens=6, max_concurrent=2)
QUIET = {"log": lambda *a, **k: None}


@pytest.fixture(scope="module")
def sft_run(tiny_llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("served_run")
    data = write_chat_jsonl(root / "chat.jsonl", [(q, "alpha bravo charlie") for q in QUESTIONS], 8)
    train(validate_config({
        "model": {"name": str(tiny_llama_dir)},
        "data": {"train": str(data), "eval_split": 0.0, "max_length": 64},
        "method": {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "training": {"max_steps": 12, "batch_size": 4, "learning_rate": 5e-3, "eval_strategy": "no",
                     "save_strategy": "no", "warmup_ratio": 0.0},
        "tracking": {"mlflow": {"enabled": False}},
        "output_dir": str(root / "run"),
    }), **QUIET)
    return root / "run"


def test_an_adapter_run_is_served_as_plain_peft_would_answer(sft_run, tiny_llama_dir, run_server):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    messages = [{"role": "user", "content": QUESTIONS[1]}]
    with run_server(build_state(sft_run, LIMITS, **QUIET)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        (model_id,) = [m.id for m in client.models.list()]
        reply = client.chat.completions.create(model=model_id, messages=messages, max_tokens=6, temperature=0)

    tokenizer = AutoTokenizer.from_pretrained(sft_run / "adapter")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), sft_run / "adapter").eval()
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    with torch.no_grad():
        new = model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)[0, len(prompt):]
    assert reply.choices[0].message.content == tokenizer.decode(new, skip_special_tokens=True)
    assert reply.usage.prompt_tokens == len(prompt)


def test_ab_serves_the_base_model_and_the_run_sticky_by_session(sft_run, tiny_llama_dir, run_server, tmp_path):
    state = build_state(None, LIMITS, ab=(tiny_llama_dir, sft_run), split=0.5, ab_log=tmp_path / "ab.sqlite",
                        **QUIET)
    with run_server(state) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        assert [m.id for m in client.models.list()] == ["ab"]
        seen = {}
        for session in [f"user-{i}" for i in range(12)]:
            for _ in range(2):  # the second message of a conversation goes to the same variant
                body = client.chat.completions.with_raw_response.create(
                    model="ab", max_tokens=2, messages=[{"role": "user", "content": QUESTIONS[0]}],
                    extra_headers={"X-Session-ID": session}).parse()
                assert seen.setdefault(session, (body.variant, body.model)) == (body.variant, body.model)
    assert {variant for variant, _ in seen.values()} == {"A", "B"}
    assert len({model for _, model in seen.values()}) == 2  # two different models behind the two variants
