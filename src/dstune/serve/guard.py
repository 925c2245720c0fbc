"""What every request passes before it reaches a route: API key, body size, and OpenAI-style errors.

``GuardMiddleware`` is plain ASGI, so it runs before FastAPI reads or validates anything: a
request without the right key gets 401, one with a body over the limit 413, whatever its route.
The exception handlers turn validation errors into 400s and anything unexpected into a 500 whose
body says nothing about the code (the traceback goes to the server log only).
"""

from __future__ import annotations

import hmac
import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from dstune.serve.protocol import APIError

log = logging.getLogger("dstune.serve")
PUBLIC_PATHS = ("/health",)


class GuardMiddleware:
    """Checks ``Authorization: Bearer <key>`` (constant-time) and the body size of every /v1 request."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app, self.api_key, self.max_body = app, api_key, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.api_key is not None and not self._authorized(headers.get("authorization", "")):
            return await _send_error(send, APIError(401, "Incorrect or missing API key: send 'Authorization: Bearer "
                                                         "<key>'", code="invalid_api_key"))
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            return await _send_error(send, _too_large(self.max_body))
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                return await _send_error(send, _too_large(self.max_body))
        return await self.app(scope, _replay(body, receive), send)

    def _authorized(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode())


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as OpenAI-style JSON; none carries a traceback."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            return JSONResponse(APIError(400, "the request body is not valid JSON").body(), status_code=400)
        param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        message = f"{param}: {first['msg']}" if param else str(first["msg"])
        return JSONResponse(APIError(400, message, param=param).body(), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        code = "not_found" if exc.status_code == 404 else None
        return JSONResponse(APIError(exc.status_code, str(exc.detail), code=code).body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse(server_error().body(), status_code=500)


def server_error() -> APIError:
    return APIError(500, "internal server error (details are in the server log)", type="server_error")


def _too_large(limit: int) -> APIError:
    return APIError(413, f"request body is larger than {limit} bytes", code="request_too_large")


def _replay(body: bytes, receive):
    """A ``receive`` that returns the already-read body once, then defers to the real one (disconnects)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_error(send, error: APIError) -> None:
    payload = json.dumps(error.body()).encode()
    await send({"type": "http.response.start", "status": error.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
