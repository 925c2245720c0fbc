"""Text generation for `dstune serve` and `dstune chat`: one streaming path on transformers' ``generate``.

Prompts are rendered with the tokenizer's chat template — the one saved with the run, i.e. the
one used in training. Generation runs in a worker thread and streams text through
``TextIteratorStreamer``; a ``threading.Event`` stops it early (client gone, timeout, Ctrl-C).
Stop strings end generation (``stop_strings``) and are cut from the returned text, as OpenAI does.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from dstune.config.deploy import ServeSection
from dstune.export.source import Deployable
from dstune.serve.protocol import APIError


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class Generation:
    """What one generation produced; filled in while it streams."""

    prompt_tokens: int
    completion_tokens: int = 0
    finish_reason: str | None = None
    text_parts: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.text_parts)


class _Cancelled:
    """A stopping criterion that ends generation once ``event`` is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class StopTrimmer:
    """Cuts streamed text at the first stop string, holding back just enough text to see one arrive."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops, self.buffer, self.stopped = stops, "", False
        self.hold = max((len(s) for s in stops), default=1) - 1

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        self.buffer += text
        hits = [i for i in (self.buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            out, self.buffer = self.buffer[: min(hits)], ""
            return out
        cut = max(0, len(self.buffer) - self.hold)
        out, self.buffer = self.buffer[:cut], self.buffer[cut:]
        return out

    def flush(self) -> str:
        out, self.buffer = ("" if self.stopped else self.buffer), ""
        return out


class GenerationEngine:
    """A causal LM with its tokenizer, ready to render chats and stream completions."""

    def __init__(self, deployable: Deployable, settings: ServeSection):
        if deployable.loaded.kind == "adapter":  # same outputs (dstune export verifies it), no LoRA matmuls per token
            deployable.loaded.model = deployable.model.merge_and_unload().eval()
            deployable.loaded.kind = "model"
        self.deployable, self.settings = deployable, settings
        self.model, self.tokenizer = deployable.model, deployable.tokenizer
        self.name = deployable.name
        self.context_length = getattr(self.model.config, "max_position_embeddings", None)

    def render_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the conversation with the generation prompt, through the training chat template."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise APIError(400, f"model {self.name!r} has no chat template; use /v1/completions", param="messages")
        try:
            encoded = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                         return_dict=True)
        except Exception as exc:  # noqa: BLE001  (jinja TemplateError / raise_exception in templates)
            raise APIError(400, f"the chat template rejected the messages: {exc}", param="messages") from None
        return list(encoded["input_ids"])

    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer(text)["input_ids"]

    def check_request(self, prompt_ids: list[int], max_new_tokens: int) -> None:
        """400 for empty prompts, too many tokens asked for, or prompts that do not fit the context."""
        if not prompt_ids:
            raise APIError(400, "the prompt is empty", param="messages")
        if max_new_tokens > self.settings.max_tokens_limit:
            raise APIError(400, f"max_tokens is {max_new_tokens}; this server allows at most "
                                f"{self.settings.max_tokens_limit}", param="max_tokens")
        if self.context_length and len(prompt_ids) + max_new_tokens > self.context_length:
            raise APIError(400, f"this model's context is {self.context_length} tokens; the prompt has "
                                f"{len(prompt_ids)} and max_tokens is {max_new_tokens}",
                           param="messages", code="context_length_exceeded")

    def stream(self, prompt_ids: list[int], params: SamplingParams, cancel: threading.Event,
               result: Generation) -> Iterator[str]:
        """Yield the completion's text as it is generated; ``result`` holds counts and finish reason at the end."""
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        outcome: dict = {}
        worker = threading.Thread(target=self._generate, args=(prompt_ids, params, cancel, streamer, outcome),
                                  daemon=True)
        worker.start()
        trimmer = StopTrimmer(params.stop)
        try:
            for text in streamer:
                piece = trimmer.feed(text)
                if piece:
                    result.text_parts.append(piece)
                    yield piece
                if trimmer.stopped:
                    cancel.set()
            tail = trimmer.flush()
            if tail:
                result.text_parts.append(tail)
                yield tail
        finally:
            cancel.set()  # the consumer stopped early (stop string, client gone): end generate; harmless otherwise
            worker.join()
        if "error" in outcome:
            raise outcome["error"]
        self._finish(result, outcome["ids"], params, trimmer.stopped)

    def complete(self, prompt_ids: list[int], params: SamplingParams, cancel: threading.Event) -> Generation:
        """Generate to the end and return the whole result."""
        result = Generation(prompt_tokens=len(prompt_ids))
        for _ in self.stream(prompt_ids, params, cancel, result):
            pass
        return result

    def _generate(self, prompt_ids, params: SamplingParams, cancel, streamer, outcome: dict) -> None:
        """Worker thread: run ``generate`` into the streamer; store the new ids (or the error) in ``outcome``."""
        from transformers import StoppingCriteriaList

        try:
            if params.seed is not None:
                torch.manual_seed(params.seed)
            ids = torch.tensor([prompt_ids], device=self.model.device)
            extra = {"stop_strings": list(params.stop), "tokenizer": self.tokenizer} if params.stop else {}
            with torch.no_grad():
                output = self.model.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=self._config(params),
                    streamer=streamer, stopping_criteria=StoppingCriteriaList([_Cancelled(cancel)]), **extra,
                )
            outcome["ids"] = output[0, len(prompt_ids):].tolist()
        except Exception as exc:  # noqa: BLE001  (re-raised in the consumer thread)
            outcome["error"] = exc
            streamer.end()

    def _config(self, params: SamplingParams):
        import copy

        config = copy.deepcopy(self.model.generation_config)
        sample = params.temperature > 0
        config.do_sample = sample
        config.temperature = params.temperature if sample else None
        config.top_p = params.top_p if sample else None
        config.top_k = config.top_k if sample else None
        config.max_new_tokens = params.max_new_tokens
        config.max_length = None
        config.min_new_tokens = None
        config.min_length = 0
        if config.pad_token_id is None:
            config.pad_token_id = self.tokenizer.pad_token_id
        return config

    def _finish(self, result: Generation, new_ids: list[int], params: SamplingParams, hit_stop: bool) -> None:
        """Count the completion tokens and name why generation ended (OpenAI's "stop" or "length")."""
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        pad = self.tokenizer.pad_token_id
        result.completion_tokens = len([t for t in new_ids if t != pad or t in eos_ids])
        ended = bool(new_ids) and new_ids[-1] in eos_ids
        result.finish_reason = "stop" if hit_stop or ended or len(new_ids) < params.max_new_tokens else "length"


class Gate:
    """At most ``max_concurrent`` generations at once; up to ``max_queue`` more wait; beyond that, 429."""

    def __init__(self, max_concurrent: int, max_queue: int):
        import asyncio

        self.semaphore = asyncio.Semaphore(max_concurrent)
        self.max_queue, self.waiting = max_queue, 0

    async def __aenter__(self):
        if self.semaphore.locked() and self.waiting >= self.max_queue:
            raise APIError(429, "the server is busy (queue full); retry later", type="rate_limit_error",
                           code="queue_full")
        self.waiting += 1
        try:
            await self.semaphore.acquire()
        finally:
            self.waiting -= 1
        return self

    async def __aexit__(self, *exc) -> None:
        self.semaphore.release()
