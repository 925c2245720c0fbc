"""`dstune chat`: a two-turn conversation through a pseudo-terminal, and the conversation state behind it."""

from __future__ import annotations

import io
import os
import sys

import pexpect

from dstune.config.deploy import ServeSection
from dstune.serve.chat import chat_loop
from dstune.serve.engine import GenerationEngine, SamplingParams


def test_two_turn_chat_in_a_pseudo_terminal(tiny_llama_dir):
    child = pexpect.spawn(sys.executable, ["-m", "dstune", "chat", str(tiny_llama_dir), "--temperature", "0",
                                           "--max-tokens", "6"], encoding="utf-8", timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                               "TERM": "dumb"})
    try:
        child.expect("chatting with")
        child.expect("you> ")
        child.sendline("What is AI?")
        child.expect("assistant> ")
        child.expect("you> ")
        child.sendline("/system Answer in Chinese.")
        child.expect("system prompt set")
        child.sendline("你好吗？")
        child.expect("assistant> ")
        child.expect("you> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before


def test_history_reset_and_system_prompt(llama_deployable, monkeypatch):
    engine = GenerationEngine(llama_deployable, ServeSection())
    seen = []
    render = engine.render_chat
    monkeypatch.setattr(engine, "render_chat", lambda messages: seen.append(list(messages)) or render(messages))
    lines = iter(["Hello", "What is AI?", "/reset", "Hi again", "/system Be brief.", "Hi", "/bogus", "/exit"])
    out = io.StringIO()
    chat_loop(engine, SamplingParams(max_new_tokens=3, temperature=0), read=lambda prompt: next(lines), out=out)
    assert [m["role"] for m in seen[1]] == ["user", "assistant", "user"]  # the second turn sees the first
    assert seen[1][0]["content"] == "Hello"
    assert seen[2] == [{"role": "user", "content": "Hi again"}]  # /reset forgot the conversation
    assert seen[3] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert "unknown command /bogus" in out.getvalue()
