"""`dstune serve` through the official `openai` client: chat (streaming and not), completions, models,
API key, limits, concurrency, and errors that are always OpenAI-style JSON."""

from __future__ import annotations

import asyncio
import concurrent.futures

import openai
import pytest
import torch

from dstune.config.deploy import ServeSection
from dstune.serve.app import ServerState
from dstune.serve.engine import Gate, GenerationEngine
from dstune.serve.protocol import APIError

API_KEY = "test-key-0123456789"
LIMITS = ServeSection(max_tokens_limit=32, default_max_tokens=8, max_body_bytes=20_000, max_concurrent=2,
                      max_queue=16, request_timeout_s=60)
MESSAGES = [{"role": "system", "content": "You are concise."}, {"role": "user", "content": "What is AI?"}]


@pytest.fixture(scope="module")
def server(llama_deployable, run_server):
    state = ServerState(LIMITS, generators={"tiny": GenerationEngine(llama_deployable, LIMITS)}, api_key=API_KEY)
    with run_server(state) as url:
        yield url


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0, timeout=60)


def test_models_and_health(client, server, http):
    assert [m.id for m in client.models.list()] == ["tiny"]
    health = http.get(f"{server}/health")  # no key needed
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_chat_uses_the_training_template_and_streaming_gives_the_same_text(client, llama_deployable):
    reply = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, temperature=0)
    tokenizer, model = llama_deployable.tokenizer, llama_deployable.model
    prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=True)["input_ids"]
    with torch.no_grad():
        new = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)[0, len(prompt):]
    assert reply.choices[0].message.content == tokenizer.decode(new, skip_special_tokens=True)
    assert reply.usage.prompt_tokens == len(prompt) and reply.usage.completion_tokens == len(new)
    assert reply.choices[0].finish_reason in ("stop", "length") and reply.id.startswith("chatcmpl-")

    chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == reply.choices[0].finish_reason


def test_text_completions(client):
    done = client.completions.create(model="tiny", prompt="Hello, how are", max_tokens=5, temperature=0)
    assert done.object == "text_completion" and done.usage.completion_tokens <= 5
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny", prompt="Hello, how are", max_tokens=5, temperature=0, stream=True))
    assert streamed == done.choices[0].text


def test_missing_or_wrong_api_key_is_401(server, http):
    for key in ("wrong-key-0000000000", None):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        response = http.post(f"{server}/v1/chat/completions", headers=headers,
                              json={"model": "tiny", "messages": MESSAGES})
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong-key-0000000000", max_retries=0).models.list()


def test_limits_and_invalid_requests_are_openai_errors(client, server, http):
    with pytest.raises(openai.APIStatusError) as too_big:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x" * 30_000}])
    assert too_big.value.status_code == 413
    with pytest.raises(openai.BadRequestError) as too_many:
        client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=33)
    assert too_many.value.body["param"] == "max_tokens"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=MESSAGES)
    auth = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    for body in (b"{not json", b'{"model": "tiny", "messages": []}', b'{"model": "tiny"}',
                 b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": 2}',
                 b'{"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]}',
                 b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": -1}'):
        response = http.post(f"{server}/v1/chat/completions", content=body, headers=auth)
        assert response.status_code == 400, body
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        assert "Traceback" not in response.text


def test_ten_concurrent_requests_are_all_answered(client):
    def ask(i: int) -> str:
        reply = client.chat.completions.create(model="tiny", max_tokens=8,
                                               messages=[{"role": "user", "content": f"Question {i}?"}])
        return reply.choices[0].message.content

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(ask, range(10)))
    assert len(answers) == 10 and all(isinstance(a, str) for a in answers)


def test_requests_past_the_timeout_get_408(llama_deployable, run_server, http):
    limits = LIMITS.model_copy(update={"request_timeout_s": 0.001})
    state = ServerState(limits, generators={"tiny": GenerationEngine(llama_deployable, limits)})
    with run_server(state) as url:
        response = http.post(f"{url}/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES,
                                                                  "max_tokens": 32})
    assert response.status_code == 408 and response.json()["error"]["code"] == "timeout"


def test_the_queue_is_bounded():
    async def scenario():
        gate = Gate(max_concurrent=1, max_queue=1)
        await gate.__aenter__()  # one running
        waiting = asyncio.ensure_future(gate.__aenter__())  # one queued
        await asyncio.sleep(0)
        with pytest.raises(APIError) as full:
            await gate.__aenter__()
        await gate.__aexit__()
        await waiting
        await gate.__aexit__()
        return full.value.status

    assert asyncio.run(scenario()) == 429


def test_classify_serves_a_plain_hf_classifier(tiny_classifier_dir, run_server, http):
    from transformers import pipeline

    from dstune.export.source import load_deployable
    from dstune.serve.classify import ClassifierEngine

    engine = ClassifierEngine(load_deployable(tiny_classifier_dir))
    with run_server(ServerState(LIMITS, classifiers={"clf": engine})) as url:
        response = http.post(f"{url}/v1/classify", json={"input": ["hello how are you", "合同 甲方 付款"]})
        chat = http.post(f"{url}/v1/chat/completions", json={"model": "clf", "messages": MESSAGES})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    expected = pipeline("text-classification", model=str(tiny_classifier_dir))(["hello how are you", "合同 甲方 付款"])
    assert [d["label"] for d in data] == [e["label"] for e in expected]
    assert all(abs(sum(d["scores"].values()) - 1) < 1e-4 for d in data)
    assert chat.status_code == 404 and "/v1/classify" in chat.json()["error"]["message"]
