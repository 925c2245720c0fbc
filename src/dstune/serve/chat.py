"""`dstune chat RUN_DIR`: a multi-turn conversation in the terminal, streamed token by token.

The prompt is rendered with the run's chat template (the one it trained with), through the same
engine as `dstune serve`. Commands: ``/reset`` forgets the conversation, ``/system TEXT`` sets the
system prompt (and starts over), ``/exit`` (or Ctrl-D) quits; Ctrl-C stops the current answer.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from dstune.config.deploy import ServeSection
from dstune.serve.engine import Generation, GenerationEngine, SamplingParams
from dstune.serve.protocol import APIError

HELP = "commands: /reset  /system TEXT  /exit   (Ctrl-C stops an answer, Ctrl-D quits)"


@dataclass
class Conversation:
    """The messages so far, and the system prompt that starts them."""

    system: str | None = None
    turns: list[dict[str, str]] = field(default_factory=list)

    def messages(self) -> list[dict[str, str]]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.turns

    def reset(self) -> None:
        self.turns = []


def chat_loop(engine: GenerationEngine, params: SamplingParams, *, system: str | None = None,
              read: Callable[[str], str] = input, out: TextIO = sys.stdout) -> None:
    """Read user lines and stream the model's answers until /exit or end of input."""
    conversation = Conversation(system)
    out.write(f"chatting with {engine.name} — {HELP}\n")
    out.flush()
    while True:
        try:
            line = read("you> ").strip()
        except EOFError:
            out.write("\n")
            return
        except KeyboardInterrupt:
            out.write("\n")
            continue
        if not line:
            continue
        if line.startswith("/"):
            if not _command(line, conversation, out):
                return
            continue
        conversation.turns.append({"role": "user", "content": line})
        answer = _answer(engine, conversation, params, out)
        if answer is None:
            conversation.turns.pop()  # the turn failed: forget it
        else:
            conversation.turns.append({"role": "assistant", "content": answer})


def _command(line: str, conversation: Conversation, out: TextIO) -> bool:
    """Run a /command; False means quit."""
    name, _, arg = line.partition(" ")
    if name in ("/exit", "/quit"):
        return False
    if name == "/reset":
        conversation.reset()
        out.write("(conversation cleared)\n")
    elif name == "/system":
        conversation.system = arg.strip() or None
        conversation.reset()
        out.write(f"(system prompt {'set' if conversation.system else 'removed'}; conversation cleared)\n")
    else:
        out.write(f"unknown command {name}; {HELP}\n")
    out.flush()
    return True


def _answer(engine: GenerationEngine, conversation: Conversation, params: SamplingParams,
            out: TextIO) -> str | None:
    """Stream one answer to ``out``; return its text (None if the prompt was refused)."""
    try:
        prompt = engine.render_chat(conversation.messages())
        engine.check_request(prompt, params.max_new_tokens)
    except APIError as exc:
        out.write(f"error: {exc.message}\n")
        return None
    result, cancel = Generation(prompt_tokens=len(prompt)), threading.Event()
    out.write("assistant> ")
    out.flush()
    stream = engine.stream(prompt, params, cancel, result)
    try:
        for piece in stream:
            out.write(piece)
            out.flush()
    except KeyboardInterrupt:
        cancel.set()
        stream.close()
        out.write(" [stopped]")
    out.write("\n")
    out.flush()
    return result.text


def run_chat(source, *, system: str | None = None, max_tokens: int = 512, temperature: float = 0.7,
             top_p: float = 0.95) -> None:
    """Load ``source`` (run directory or model) and chat with it in this terminal."""
    from dstune.errors import DstuneError
    from dstune.export.source import load_deployable

    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    deployable = load_deployable(source)
    if deployable.task != "causal-lm":
        raise DstuneError(f"{source} is a {deployable.task} model; chat needs a causal LM",
                          hint="serve classifiers with `dstune serve` and POST /v1/classify")
    settings = ServeSection(max_tokens_limit=max(max_tokens, 1))
    engine = GenerationEngine(deployable, settings)
    chat_loop(engine, SamplingParams(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p),
              system=system)
