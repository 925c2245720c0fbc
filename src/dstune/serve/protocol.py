"""The OpenAI-compatible wire format: request models, response builders and OpenAI-style errors.

Requests are validated with pydantic (unknown OpenAI parameters are accepted and ignored, as most
OpenAI-compatible servers do); every error leaves the server as
``{"error": {"message", "type", "param", "code"}}`` with a 4xx status — or a 500 that carries no
traceback.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class APIError(Exception):
    """An error the client gets as OpenAI-style JSON with ``status``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def as_template_message(self) -> dict[str, str]:
        """The message as the chat template expects it: text content only ("developer" is a system message)."""
        if isinstance(self.content, list):
            if any(part.type != "text" for part in self.content):
                raise APIError(400, "only text content parts are supported", param="messages")
            text = "".join(part.text or "" for part in self.content)
        else:
            text = self.content or ""
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class _Sampling(_Request):
    model: str
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stream: bool = False
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None

    @model_validator(mode="after")
    def _one_choice(self):
        if self.n != 1:
            raise ValueError("only n=1 is supported")
        return self

    def stop_list(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s][:4]


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stream_options: dict[str, Any] | None = None

    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for /v1/completions
    stream_options: dict[str, Any] | None = None

    def prompt_text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise APIError(400, "send one prompt per request", param="prompt")
        return self.prompt[0]

    def requested_tokens(self) -> int | None:
        return self.max_tokens


class ClassifyRequest(_Request):
    model: str | None = None
    input: str | list[str] = Field(description="A text or up to 64 texts.")

    def texts(self) -> list[str]:
        texts = [self.input] if isinstance(self.input, str) else self.input
        if not texts or len(texts) > 64:
            raise APIError(400, "input must hold 1 to 64 texts", param="input")
        return texts


class FeedbackRequest(_Request):
    response_id: str = Field(min_length=1)
    success: bool | None = None
    score: float | None = None

    @model_validator(mode="after")
    def _some_outcome(self):
        if self.success is None and self.score is None:
            raise ValueError("give success (true/false) or a score")
        return self


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_response(response_id: str, model: str, text: str, finish_reason: str, use: dict, extra: dict) -> dict:
    return {
        "id": response_id, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason,
                     "logprobs": None}],
        "usage": use, **extra,
    }


def chat_chunk(response_id: str, model: str, delta: dict, finish_reason: str | None, extra: dict,
               use: dict | None = None) -> dict:
    chunk = {
        "id": response_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}], **extra,
    }
    if use is not None:
        chunk["usage"] = use
    return chunk


def completion_response(response_id: str, model: str, text: str, finish_reason: str | None, use: dict | None,
                        extra: dict, chunk: bool = False) -> dict:
    body = {
        "id": response_id, "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}], **extra,
    }
    if use is not None or not chunk:
        body["usage"] = use
    return body
