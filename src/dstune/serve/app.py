"""The OpenAI-compatible HTTP API (FastAPI): chat and text completions, models, classify, feedback, health.

``create_app(state)`` builds the app for what ``state`` holds — generators (causal LMs),
classifiers, and optionally an A/B router with its log. Generation runs in worker threads; at most
``max_concurrent`` at once, the rest wait in a bounded queue; each request has a deadline
covering queueing and generation. Streams are server-sent events, ending with ``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from dstune.config.deploy import ServeSection
from dstune.serve import protocol as p
from dstune.serve.ab import ABRouter, Variant
from dstune.serve.classify import ClassifierEngine
from dstune.serve.engine import Gate, Generation, GenerationEngine, SamplingParams
from dstune.serve.guard import GuardMiddleware, install_error_handlers, log, server_error

_END = object()


@dataclass
class ServerState:
    """Everything the routes serve: engines by model id, the limits, the key, the A/B router."""

    settings: ServeSection
    generators: dict[str, GenerationEngine] = field(default_factory=dict)
    classifiers: dict[str, ClassifierEngine] = field(default_factory=dict)
    api_key: str | None = None
    router: ABRouter | None = None
    ab_engines: dict[str, GenerationEngine] = field(default_factory=dict)  # variant name -> engine

    def model_ids(self) -> list[str]:
        ids = [self.router.model_id] if self.router else list(self.generators)
        return ids + list(self.classifiers)


@dataclass
class Target:
    """Where one request goes: the engine, and for A/B the variant and conversation."""

    engine: GenerationEngine
    model: str
    variant: Variant | None = None
    session: str | None = None

    def extra(self) -> dict:
        return {"variant": self.variant.name, "session_id": self.session} if self.variant else {}


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="dstune serve", version="1", docs_url=None, redoc_url=None)
    app.add_middleware(GuardMiddleware, api_key=state.api_key, max_body_bytes=state.settings.max_body_bytes)
    install_error_handlers(app)
    gate = Gate(state.settings.max_concurrent, state.settings.max_queue)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "models": state.model_ids(), "ab": state.router is not None}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "dstune"}
                                           for m in state.model_ids()]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: p.ChatCompletionRequest, request: Request):
        target = _target(state, body.model, request, body.user, "chatcmpl")
        prompt = target.engine.render_chat([m.as_template_message() for m in body.messages])
        return await _respond(state, gate, target, prompt, body, "chat")

    @app.post("/v1/completions")
    async def completions(body: p.CompletionRequest, request: Request):
        target = _target(state, body.model, request, body.user, "cmpl")
        prompt = target.engine.encode_text(body.prompt_text())
        return await _respond(state, gate, target, prompt, body, "text")

    @app.post("/v1/classify")
    async def classify(body: p.ClassifyRequest) -> dict:
        engine = _classifier(state, body.model)
        texts = body.texts()
        try:
            async with gate:
                results = await asyncio.wait_for(asyncio.to_thread(engine.classify, texts),
                                                 state.settings.request_timeout_s)
        except asyncio.TimeoutError:
            raise p.APIError(408, "classification timed out", type="timeout_error", code="timeout") from None
        return {"object": "list", "model": engine.name, "task": engine.task, "data": results}

    @app.post("/v1/feedback")
    async def feedback(body: p.FeedbackRequest) -> dict:
        if state.router is None:
            raise p.APIError(404, "A/B testing is not enabled on this server (start it with --ab A B)")
        if not state.router.store.log_feedback(body.response_id, body.success, body.score):
            raise p.APIError(404, f"unknown response id {body.response_id!r}", param="response_id")
        return {"object": "feedback", "response_id": body.response_id, "recorded": True}

    return app


def _target(state: ServerState, model: str, request: Request, user: str | None, prefix: str) -> Target:
    """The engine for ``model``; with A/B, the conversation's variant (sticky by session id or user)."""
    if state.router is not None and model == state.router.model_id:
        session = request.headers.get("x-session-id") or user or p.new_id("conv")
        variant = state.router.route(session)
        return Target(state.ab_engines[variant.name], variant.model, variant, session)
    if model in state.generators:
        return Target(state.generators[model], model)
    kind = "a classifier: use /v1/classify" if model in state.classifiers else "not served here"
    raise p.APIError(404, f"model {model!r} is {kind}; served models: {', '.join(state.model_ids())}",
                     param="model", code="model_not_found")


def _classifier(state: ServerState, model: str | None) -> ClassifierEngine:
    if not state.classifiers:
        raise p.APIError(404, "no classification model is served; start dstune serve with a classifier (a "
                              "*ForSequenceClassification / *ForTokenClassification folder, or a classification, "
                              "token_classification or multitask run)",
                         code="model_not_found")
    if model is None and len(state.classifiers) == 1:
        return next(iter(state.classifiers.values()))
    if model not in state.classifiers:
        raise p.APIError(404, f"classifier {model!r} is not served; served: {', '.join(state.classifiers)}",
                         param="model", code="model_not_found")
    return state.classifiers[model]


async def _respond(state: ServerState, gate: Gate, target: Target, prompt: list[int], body, kind: str):
    """Check the request, wait for a generation slot, then stream (SSE) or return the whole completion."""
    max_tokens = body.requested_tokens() or state.settings.default_max_tokens
    target.engine.check_request(prompt, max_tokens)
    params = SamplingParams(max_tokens, body.temperature, body.top_p, tuple(body.stop_list()), body.seed)
    response_id = p.new_id("chatcmpl" if kind == "chat" else "cmpl")
    deadline = asyncio.get_running_loop().time() + state.settings.request_timeout_s
    await _enter(gate, deadline)
    run = _Run(state, target, prompt, params, deadline, response_id, kind)
    headers = {"x-dstune-variant": target.variant.name} if target.variant else {}
    if body.stream:
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        return StreamingResponse(_sse(run, gate, include_usage), media_type="text/event-stream", headers=headers)
    try:
        async for _ in run.pieces():
            pass
    finally:
        await gate.__aexit__()
    return JSONResponse(run.final_body(), headers=headers)


class _Run:
    """One generation: its text pieces from the worker thread, with the deadline, then the logged result."""

    def __init__(self, state, target: Target, prompt, params: SamplingParams, deadline: float, response_id: str,
                 kind: str):
        self.state, self.target, self.prompt, self.params = state, target, prompt, params
        self.deadline, self.id, self.kind = deadline, response_id, kind
        self.cancel = threading.Event()
        self.result = Generation(prompt_tokens=len(prompt))
        self.started = time.perf_counter()

    async def pieces(self) -> AsyncIterator[str]:
        """The completion's text as it arrives; 408 past the deadline; the generation stops when this stops."""
        loop = asyncio.get_running_loop()
        stream = self.target.engine.stream(self.prompt, self.params, self.cancel, self.result)
        try:
            while True:
                future = asyncio.ensure_future(asyncio.to_thread(next, stream, _END))
                try:
                    piece = await asyncio.wait_for(asyncio.shield(future), max(0.0, self.deadline - loop.time()))
                except asyncio.TimeoutError:
                    self.cancel.set()
                    await future
                    raise p.APIError(408, f"the request took longer than {self.state.settings.request_timeout_s:g} s",
                                     type="timeout_error", code="timeout") from None
                if piece is _END:
                    break
                yield piece
        except p.APIError:
            raise
        except Exception:  # noqa: BLE001  (any failure inside generate becomes a clean 500)
            log.exception("generation failed")
            raise server_error() from None
        finally:
            self.cancel.set()
            await asyncio.to_thread(stream.close)
        self._log()

    def _log(self) -> None:
        if self.target.variant is None:
            return
        self.state.router.store.log_response(
            self.id, self.target.session, self.target.variant.name, self.target.model,
            self.kind, self.result.prompt_tokens, self.result.completion_tokens,
            (time.perf_counter() - self.started) * 1000.0)

    def usage(self) -> dict:
        return p.usage(self.result.prompt_tokens, self.result.completion_tokens)

    def final_body(self) -> dict:
        r, t = self.result, self.target
        if self.kind == "chat":
            return p.chat_response(self.id, t.model, r.text, r.finish_reason, self.usage(), t.extra())
        return p.completion_response(self.id, t.model, r.text, r.finish_reason, self.usage(), t.extra())

    def chunk(self, text: str | None, finish: str | None, first: bool = False) -> dict:
        t = self.target
        if self.kind == "chat":
            delta = ({"role": "assistant", "content": ""} if first else {}) | ({"content": text} if text else {})
            return p.chat_chunk(self.id, t.model, delta, finish, t.extra())
        return p.completion_response(self.id, t.model, text or "", finish, None, t.extra(), chunk=True)


async def _sse(run: _Run, gate: Gate, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events of a run; an error after the headers went out is sent as an error event."""
    try:
        if run.kind == "chat":
            yield _event(run.chunk(None, None, first=True))
        async for piece in run.pieces():
            yield _event(run.chunk(piece, None))
        yield _event(run.chunk(None, run.result.finish_reason))
        if include_usage:
            yield _event({**run.chunk(None, None), "choices": [], "usage": run.usage()})
        yield "data: [DONE]\n\n"
    except p.APIError as exc:
        yield _event(exc.body())
        yield "data: [DONE]\n\n"
    finally:
        await gate.__aexit__()


async def _enter(gate: Gate, deadline: float) -> None:
    """Take a generation slot, or fail with 408 if none frees up before the deadline (429 if the queue is full)."""
    try:
        await asyncio.wait_for(gate.__aenter__(), max(0.0, deadline - asyncio.get_running_loop().time()))
    except asyncio.TimeoutError:
        raise p.APIError(408, "timed out waiting for a free generation slot", type="timeout_error",
                         code="timeout") from None


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
