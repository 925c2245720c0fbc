"""Fixtures for serving tests: models loaded once, and uvicorn servers on a free 127.0.0.1 port."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest

from dstune.testing import save_tiny_hf_classifier


@contextlib.contextmanager
def running(state):
    """Serve ``state`` in a background thread; yield the base URL (http://127.0.0.1:PORT)."""
    import uvicorn

    from dstune.serve.app import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(state), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="session")
def run_server():
    """``with run_server(state) as url:`` serves a ServerState on a free port for the block."""
    return running


@pytest.fixture(scope="session")
def http():
    """The HTTP client library the installed openai package uses (httpx, or httpx2 in openai 3)."""
    try:
        import httpx2 as httpx
    except ImportError:
        import httpx
    return httpx


@pytest.fixture(scope="session")
def llama_deployable(tiny_llama_dir):
    from dstune.export.source import load_deployable

    return load_deployable(tiny_llama_dir)


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory):
    return save_tiny_hf_classifier(tmp_path_factory.mktemp("tiny_classifier"))
