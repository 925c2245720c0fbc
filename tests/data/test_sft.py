"""SFT encoding: loss on assistant tokens only, think blocks, truncation, and whole-file preparation."""

from __future__ import annotations

import json

import pytest

from dstune.config.schema import DataSection
from dstune.data.formats import RowError
from dstune.data.readers import Record
from dstune.data.sft import IGNORE_INDEX, SFTEncoder, prepare_sft_data, split_eval
from dstune.errors import ConfigError, DataError
from dstune.testing import build_tokenizer

# The DeepSeek-R1 chat template (tokenizer_config.json of deepseek-ai/DeepSeek-R1), tool branches left out:
# every assistant message it renders loses everything up to its last </think>.
R1_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='') %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}"
    "{{bos_token}}{{ns.system_prompt}}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is not none %}"
    "{% set content = message['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}"
    "{%- endif %}"
    "{%- endfor -%}"
    "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"
)
R1_TOKENS = ["<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>"]

TWO_TURNS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is AI?"},
    {"role": "assistant", "content": "The science of machines that think."},
    {"role": "user", "content": "你好"},
    {"role": "assistant", "content": "你好，我很好。"},
]
THINKING = [
    {"role": "user", "content": "What is AI?"},
    {"role": "assistant", "content": "<think> Let me reason. </think>\n\nThe science."},
    {"role": "user", "content": "And 6 * 7?"},
    {"role": "assistant", "content": "<think> step by step </think> 42"},
]


@pytest.fixture(scope="module")
def r1_tokenizer():
    tokenizer = build_tokenizer(chat_template=R1_TEMPLATE)
    tokenizer.add_tokens(R1_TOKENS, special_tokens=True)
    return tokenizer


def supervised_runs(tokenizer, encoded: dict) -> list[str]:
    """The decoded text of each maximal run of supervised tokens."""
    runs, current = [], []
    for token, label in zip(encoded["input_ids"], encoded["labels"]):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def test_every_assistant_turn_and_its_end_marker_is_supervised_and_nothing_else(tokenizer):
    encoded = SFTEncoder(tokenizer, max_length=512).encode(TWO_TURNS)
    assert tokenizer.decode(encoded["input_ids"]) == tokenizer.apply_chat_template(TWO_TURNS, tokenize=False)
    assert supervised_runs(tokenizer, encoded) == [
        "The science of machines that think.<|im_end|>",
        "你好，我很好。<|im_end|>",
    ]
    masked = [tokenizer.decode([t]) for t, label in zip(encoded["input_ids"], encoded["labels"]) if label == -100]
    assert "".join(masked) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is AI?<|im_end|>\n"
        "<|im_start|>assistant\n\n<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n\n"
    )
    assert encoded["truncated"] is False


def test_r1_keeps_think_in_last_turn_and_strips_it_from_history_by_default(r1_tokenizer):
    encoder = SFTEncoder(r1_tokenizer, max_length=512)
    encoded = encoder.encode(THINKING)
    assert supervised_runs(r1_tokenizer, encoded) == [
        "\n\nThe science.<｜end▁of▁sentence｜>",
        "<think> step by step </think> 42<｜end▁of▁sentence｜>",
    ]
    # The context before the last answer is exactly what the template gives the model at inference.
    text = r1_tokenizer.decode(encoded["input_ids"])
    prompt = r1_tokenizer.apply_chat_template(THINKING[:-1], tokenize=False, add_generation_prompt=True)
    assert text.startswith(prompt.removesuffix("<think>\n"))
    assert "Let me reason" not in text


def test_r1_think_history_keep_trains_on_earlier_think_blocks(r1_tokenizer):
    encoded = SFTEncoder(r1_tokenizer, max_length=512, think_history="keep").encode(THINKING)
    assert supervised_runs(r1_tokenizer, encoded) == [
        "<think> Let me reason. </think>\n\nThe science.<｜end▁of▁sentence｜>",
        "<think> step by step </think> 42<｜end▁of▁sentence｜>",
    ]
    assert r1_tokenizer.decode(encoded["input_ids"]).startswith("<|bos|><｜User｜>What is AI?<｜Assistant｜><think>")


def test_templates_that_do_not_strip_are_unaffected_by_think_history(tokenizer):
    strip = SFTEncoder(tokenizer, max_length=512).encode(THINKING)
    keep = SFTEncoder(tokenizer, max_length=512, think_history="keep").encode(THINKING)
    assert strip == keep
    assert supervised_runs(tokenizer, strip)[0] == "<think> Let me reason. </think>\n\nThe science.<|im_end|>"


def test_raw_text_is_fully_supervised_and_ends_with_eos(tokenizer):
    encoded = SFTEncoder(tokenizer, max_length=512).encode("The quick brown fox.")
    assert encoded["labels"] == encoded["input_ids"]
    assert encoded["input_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(encoded["input_ids"]) == "The quick brown fox.<|im_end|>"


def test_long_rows_are_truncated_on_the_right(tokenizer):
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "hello " * 100}]
    encoded = SFTEncoder(tokenizer, max_length=32).encode(conversation)
    assert encoded["truncated"] is True
    assert len(encoded["input_ids"]) == len(encoded["labels"]) == 32
    assert encoded["labels"][-1] != IGNORE_INDEX


def test_row_whose_answer_lies_beyond_max_length_is_rejected(tokenizer):
    conversation = [{"role": "user", "content": "question " * 100}, {"role": "assistant", "content": "yes"}]
    with pytest.raises(RowError, match="no assistant tokens within max_length"):
        SFTEncoder(tokenizer, max_length=32).encode(conversation)


def test_chat_template_chatml_custom_and_missing():
    tokenizer = build_tokenizer()
    tokenizer.chat_template = None
    conversation = TWO_TURNS[1:3]
    with pytest.raises(ConfigError, match="no chat template") as info:
        SFTEncoder(tokenizer, max_length=64).encode(conversation)
    assert "data.chat_template: chatml" in info.value.hint
    chatml = SFTEncoder(tokenizer, max_length=64, chat_template="chatml").encode(conversation)
    assert supervised_runs(tokenizer, chatml) == ["The science of machines that think.<|im_end|>"]
    custom = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '<|eos|>' }}{% endfor %}"
    encoded = SFTEncoder(tokenizer, max_length=64, chat_template=custom).encode(conversation)
    assert supervised_runs(tokenizer, encoded) == ["The science of machines that think.<|eos|>"]
    with pytest.raises(ConfigError, match="neither 'chatml' nor a Jinja"):
        SFTEncoder(tokenizer, max_length=64, chat_template="chatm1").encode(conversation)
    assert SFTEncoder(tokenizer, max_length=64).encode("text rows need no template")["input_ids"]


def test_template_refusing_a_conversation_is_a_row_error(tokenizer):
    template = (
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('must start with user') }}{% endif %}"
        + tokenizer.chat_template
    )
    encoder = SFTEncoder(tokenizer, max_length=64, chat_template=template)
    with pytest.raises(RowError, match="must start with user"):
        encoder.encode([{"role": "assistant", "content": "hi"}])


# --- prepare_sft_data --------------------------------------------------------------------------


def chat_row(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def write_jsonl(path, rows: list) -> str:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def bad_rows_file(tmp_path) -> str:
    rows = [chat_row(f"q{i}", f"a{i}") for i in range(8)]
    rows[2] = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}
    rows[4] = {"messages": [{"role": "user", "content": "q"}, {"role": "robot", "content": "a"}]}
    rows[6] = {"instruction": "no messages key", "output": "x"}
    return write_jsonl(tmp_path / "train.jsonl", rows)


def test_prepare_messages_jsonl(tmp_path, tokenizer):
    spec = write_jsonl(tmp_path / "train.jsonl", [chat_row(f"q{i}", f"answer {i}") for i in range(10)])
    data = prepare_sft_data(DataSection(train=spec, eval_split=0.2), tokenizer, tmp_path / "run")
    assert data.train.column_names == ["input_ids", "labels"]
    assert (len(data.train), len(data.eval)) == (8, 2)
    stats = data.stats
    assert stats["format"] == "messages"
    assert (stats["rows_read"], stats["rows_rejected"], stats["rows_train"], stats["rows_eval"]) == (10, 0, 8, 2)
    assert stats["tokens_train"] == sum(len(ids) for ids in data.train["input_ids"])
    assert 0 < stats["supervised_tokens_train"] < stats["tokens_train"]


def test_bad_rows_fail_with_file_and_line(tmp_path, tokenizer):
    spec = bad_rows_file(tmp_path)
    with pytest.raises(DataError) as info:
        prepare_sft_data(DataSection(train=spec, eval_split=0), tokenizer, tmp_path / "run")
    message = info.value.message
    assert message.startswith("3 malformed row(s)")
    assert f"{spec}:3: content of message 2 (assistant) is empty" in message
    assert f"{spec}:5: message 2 has unknown role 'robot'" in message
    assert f"{spec}:7: missing key 'messages'" in message
    assert "on_error: skip" in info.value.hint


def test_more_than_twenty_bad_rows_are_counted(tmp_path, tokenizer):
    spec = write_jsonl(tmp_path / "train.jsonl", [chat_row("q", "a")] + [{"messages": []}] * 25)
    with pytest.raises(DataError, match=r"25 malformed row\(s\)") as info:
        prepare_sft_data(DataSection(train=spec, eval_split=0), tokenizer, tmp_path / "run")
    assert "... and 5 more" in info.value.message
    assert info.value.message.count(f"{spec}:") == 20


def test_skip_writes_every_rejected_row(tmp_path, tokenizer):
    spec = bad_rows_file(tmp_path)
    cfg = DataSection(train=spec, eval_split=0, on_error="skip")
    data = prepare_sft_data(cfg, tokenizer, tmp_path / "run")
    rejected = [json.loads(line) for line in (tmp_path / "run" / "rejected.jsonl").read_text().splitlines()]
    assert [(r["source"], r["line"]) for r in rejected] == [(spec, 3), (spec, 5), (spec, 7)]
    assert "unknown role 'robot'" in rejected[1]["reason"]
    assert rejected[2]["row"] == {"instruction": "no messages key", "output": "x"}
    assert (data.stats["rows_rejected"], data.stats["rows_train"], data.eval) == (3, 5, None)


def test_answer_beyond_max_length_is_a_rejection_not_silent(tmp_path, tokenizer):
    spec = write_jsonl(tmp_path / "train.jsonl", [chat_row("short", "ok"), chat_row("long " * 50, "ok")])
    cfg = DataSection(train=spec, eval_split=0, max_length=24, on_error="skip")
    data = prepare_sft_data(cfg, tokenizer, tmp_path / "run")
    rejected = json.loads((tmp_path / "run" / "rejected.jsonl").read_text())
    assert rejected["line"] == 2 and "max_length" in rejected["reason"]
    assert data.stats["rows_train"] == 1


def test_truncated_rows_are_counted(tmp_path, tokenizer):
    spec = write_jsonl(tmp_path / "train.jsonl", [chat_row("hi", "hello " * 40), chat_row("hi", "ok")])
    data = prepare_sft_data(DataSection(train=spec, eval_split=0, max_length=24), tokenizer, tmp_path / "run")
    assert data.stats["truncated"] == 1
    assert max(len(ids) for ids in data.train["input_ids"]) == 24


def test_eval_split_is_deterministic_and_disjoint():
    records = [Record("f.jsonl", i, {"text": str(i)}) for i in range(1, 41)]
    train, held = split_eval(records, 0.25, seed=42)
    assert (train, held) == split_eval(records, 0.25, seed=42)
    assert len(held) == 10 and sorted(r.line for r in train + held) == list(range(1, 41))
    assert [r.line for r in held] == sorted(r.line for r in held)
    assert held != split_eval(records, 0.25, seed=7)[1]
    with pytest.raises(DataError, match="cannot hold out"):
        split_eval(records[:1], 0.1, seed=42)


def test_eval_split_through_prepare_is_reproducible(tmp_path, tokenizer):
    spec = write_jsonl(tmp_path / "train.jsonl", [chat_row(f"q{i}", f"a{i}") for i in range(20)])
    cfg = DataSection(train=spec, eval_split=0.25)
    first = prepare_sft_data(cfg, tokenizer, tmp_path / "a", seed=3)
    second = prepare_sft_data(cfg, tokenizer, tmp_path / "b", seed=3)
    assert first.eval["input_ids"] == second.eval["input_ids"]
    assert first.train["input_ids"] == second.train["input_ids"]


def test_validation_file_max_samples_and_alpaca_csv(tmp_path, tokenizer):
    train = tmp_path / "train.csv"
    train.write_text("instruction,input,output\n" + "".join(f"q{i},,a{i}\n" for i in range(6)), encoding="utf-8")
    validation = write_jsonl(tmp_path / "val.jsonl", [{"instruction": "v", "output": "w"}])
    cfg = DataSection(train=str(train), validation=validation, max_samples=4, system_prompt="Be brief.")
    data = prepare_sft_data(cfg, tokenizer, tmp_path / "run")
    assert data.stats["format"] == "alpaca"
    assert (data.stats["rows_read"], len(data.train), len(data.eval)) == (5, 4, 1)
    assert tokenizer.decode(data.train[0]["input_ids"]).startswith("<|im_start|>system\nBe brief.<|im_end|>")


def test_text_format(tmp_path, tokenizer):
    spec = write_jsonl(tmp_path / "train.jsonl", [{"text": "Hello world."}, {"text": "你好。"}])
    data = prepare_sft_data(DataSection(train=spec, eval_split=0), tokenizer, tmp_path / "run")
    assert data.stats["format"] == "text"
    assert data.train[0]["labels"] == data.train[0]["input_ids"]


def test_undetectable_first_row_names_it(tmp_path, tokenizer):
    spec = write_jsonl(tmp_path / "train.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError) as info:
        prepare_sft_data(DataSection(train=spec, eval_split=0), tokenizer, tmp_path / "run")
    assert info.value.where == f"{spec}:1" and "data.format" in info.value.hint
