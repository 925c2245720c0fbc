"""Detecting SFT row formats and converting them to chat messages."""

from __future__ import annotations

import re

import pytest

from dstune.data.formats import RowError, detect_format, to_messages


@pytest.mark.parametrize(
    ("row", "fmt"),
    [
        ({"messages": []}, "messages"),
        ({"instruction": "i", "input": "", "output": "o"}, "alpaca"),
        ({"conversations": []}, "sharegpt"),
        ({"text": "t"}, "text"),
        ({"messages": [], "text": "t"}, "messages"),
    ],
)
def test_detect_format(row, fmt):
    assert detect_format(row) == fmt


def test_detect_format_names_found_and_expected_keys():
    with pytest.raises(RowError) as info:
        detect_format({"question": "q", "answer": "a"})
    reason = str(info.value)
    assert "'answer'" in reason and "'question'" in reason
    for expected in ("messages", "instruction", "conversations", "text"):
        assert expected in reason


def test_messages_pass_through_and_system_prompt_is_added_only_when_missing():
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    assert to_messages(row, "messages") == row["messages"]
    with_prompt = to_messages(row, "messages", system_prompt="Be brief.")
    assert with_prompt[0] == {"role": "system", "content": "Be brief."} and with_prompt[1:] == row["messages"]
    own = {"messages": [{"role": "system", "content": "Mine."}, *row["messages"]]}
    assert to_messages(own, "messages", system_prompt="Be brief.") == own["messages"]


def test_tool_role_is_allowed():
    row = {
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "tool", "content": "sunny"},
            {"role": "assistant", "content": "It is sunny."},
        ]
    }
    assert [m["role"] for m in to_messages(row, "messages")] == ["user", "tool", "assistant"]


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        ([{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}], "unknown role 'bot'"),
        (
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}],
            "content of message 2 (assistant) is empty",
        ),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}], "is missing"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": ["x"]}], "must be a string"),
        ([{"role": "user", "content": "hi"}], "no assistant message"),
        ([{"content": "hi"}], "message 1 must be an object with 'role'"),
        ([], "non-empty list"),
    ],
)
def test_bad_messages(messages, reason):
    with pytest.raises(RowError, match=re.escape(reason)):
        to_messages({"messages": messages}, "messages")


def test_alpaca_joins_instruction_and_input():
    row = {"instruction": "Translate.", "input": "你好", "output": "Hello", "system": "You translate."}
    assert to_messages(row, "alpaca") == [
        {"role": "system", "content": "You translate."},
        {"role": "user", "content": "Translate.\n\n你好"},
        {"role": "assistant", "content": "Hello"},
    ]
    assert to_messages({"instruction": "Say hi.", "input": "", "output": "hi"}, "alpaca")[0] == {
        "role": "user",
        "content": "Say hi.",
    }


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"instruction": "i"}, "missing key 'output'"),
        ({"instruction": "i", "output": "  "}, "'output' is empty"),
        ({"instruction": "i", "input": 3, "output": "o"}, "'input' must be a string"),
    ],
)
def test_bad_alpaca(row, reason):
    with pytest.raises(RowError, match=re.escape(reason)):
        to_messages(row, "alpaca")


def test_sharegpt_maps_speakers():
    row = {
        "conversations": [
            {"from": "system", "value": "s"},
            {"from": "human", "value": "q"},
            {"from": "gpt", "value": "a"},
        ]
    }
    assert to_messages(row, "sharegpt") == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]


def test_sharegpt_unknown_speaker():
    row = {"conversations": [{"from": "human", "value": "q"}, {"from": "bing", "value": "a"}]}
    with pytest.raises(RowError, match="turn 2 has unknown speaker 'bing'"):
        to_messages(row, "sharegpt")


def test_text_rows():
    assert to_messages({"text": "Once upon a time."}, "text", system_prompt="ignored") == "Once upon a time."
    with pytest.raises(RowError, match="'text' is empty"):
        to_messages({"text": ""}, "text")
    with pytest.raises(RowError, match="missing key 'text'"):
        to_messages({"body": "x"}, "text")
