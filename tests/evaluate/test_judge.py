"""LLM-as-judge against a local OpenAI-compatible stub on 127.0.0.1: parsing, retries, garbage, cache, pairwise."""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from dstune.config.evaluation import EvaluationSection, JudgeSettings
from dstune.evaluate.generate import Example
from dstune.evaluate.judge import Judge, JudgeItem
from dstune.evaluate.runner import apply_judge
from dstune.evaluate.score import score_generation


class StubJudge(BaseHTTPRequestHandler):
    """Replies by what the answer says: 'good' scores 4, 'busy' gets one 429 first, 'down' one 503,
    'garbage' is never valid JSON; pairwise always prefers 'ANSWER 1' unless one answer says 'better'."""

    calls: ClassVar[Counter] = Counter()
    failed_once: ClassVar[set] = set()
    lock = threading.Lock()

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.path == "/v1/chat/completions" and body["model"] == "stub-judge"
        user = body["messages"][-1]["content"]
        with self.lock:
            StubJudge.calls[user] += 1
            first_time = user not in StubJudge.failed_once
            StubJudge.failed_once.add(user)
        if "ANSWER 1:" in user:
            return self._reply(self._pairwise(user))
        answer = user.rsplit("ANSWER:\n", 1)[1]
        if answer.startswith("busy") and first_time:
            return self._status(429, {"Retry-After": "0"})
        if answer.startswith("down") and first_time:
            return self._status(503)
        if answer.startswith("garbage"):
            return self._reply("I liked it a lot!")
        return self._reply('Sure. {"score": 4, "reason": "clear enough"}')

    @staticmethod
    def _pairwise(user: str) -> str:
        first = user.split("ANSWER 1:\n", 1)[1].split("\n\nANSWER 2:", 1)[0]
        second = user.split("ANSWER 2:\n", 1)[1]
        if "better" in first or "better" in second:
            return json.dumps({"winner": "1" if "better" in first else "2", "reason": "more complete"})
        return json.dumps({"winner": "1", "reason": "first looks fine"})  # position bias

    def _reply(self, content: str):
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _status(self, code: int, headers: dict | None = None):
        self.send_response(code)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def stub_url():
    StubJudge.calls.clear()
    StubJudge.failed_once.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def _settings(url, tmp_path, **extra):
    return JudgeSettings(base_url=url, model="stub-judge", rubrics=["readability", "correctness"],
                         cache_dir=str(tmp_path / "cache"), backoff_s=0.0, max_concurrent=3, **extra)


def test_scores_retries_garbage_and_cache(stub_url, tmp_path):
    settings = _settings(stub_url, tmp_path)
    items = [JudgeItem("q1", "good answer", "ref"), JudgeItem("q2", "busy answer", "ref"),
             JudgeItem("q3", "down answer", "ref"), JudgeItem("q4", "garbage answer", "ref")]
    judge = Judge(settings, sleep=lambda s: None)
    verdicts = judge.score(items, "readability")
    assert [v.score for v in verdicts] == [4.0, 4.0, 4.0, None]
    assert verdicts[0].reason == "clear enough"
    assert "malformed judge reply" in verdicts[3].error  # recorded, not raised
    garbage_prompt = judge.score_messages(items[3], "readability")[-1]["content"]
    assert StubJudge.calls[garbage_prompt] == 1 + settings.malformed_retries  # retried, then given up
    assert judge.requests_sent == 1 + 2 + 2 + 2  # 429 and 503 each retried once

    again = Judge(settings, sleep=lambda s: None)
    assert [v.score for v in again.score(items[:3], "readability")] == [4.0, 4.0, 4.0]
    assert again.requests_sent == 0 and again.cache_hits == 3  # a re-run costs nothing

    with_reference = again.score_messages(items[0], "correctness")[-1]["content"]
    assert "REFERENCE ANSWER:\nref" in with_reference
    assert "REFERENCE" not in again.score_messages(items[0], "readability")[-1]["content"]


def test_server_that_keeps_failing_is_unscored_after_max_retries(tmp_path):
    settings = _settings("http://127.0.0.1:9/v1", tmp_path, max_retries=2, timeout_s=2.0)  # nothing listens
    judge = Judge(settings, sleep=lambda s: None)
    (verdict,) = judge.score([JudgeItem("q", "a")], "readability")
    assert verdict.score is None and "gave up after 3 tries" in verdict.error


def test_pairwise_controls_position_bias(stub_url, tmp_path):
    judge = Judge(_settings(stub_url, tmp_path), sleep=lambda s: None)
    biased = judge.pairwise("q", "answer one", "answer two")
    assert biased.winner == "inconsistent" and biased.score == 0.5  # 'first wins' in both orders is a tie
    real = judge.pairwise("q", "short", "a better answer")
    assert real.winner == "B" and real.score == 1.0


def test_apply_judge_adds_rows_metrics_and_paired_scores(stub_url, tmp_path):
    examples = [Example(f"d.jsonl:{i}", [{"role": "user", "content": f"q{i}"}], "ref") for i in range(3)]
    evaluation = score_generation(examples, ["good", "<think>x</think>garbage", "busy"], [(1.0, 1)] * 3,
                                  EvaluationSection())
    apply_judge(evaluation, _settings(stub_url, tmp_path), judge=Judge(_settings(stub_url, tmp_path),
                                                                        sleep=lambda s: None), log=lambda *a: None)
    m = evaluation.metrics
    assert m["judge_readability"] == 4.0 and m["judge_readability_unscored"] == 1
    assert evaluation.rows[1]["judge"]["readability"]["score"] is None
    assert evaluation.paired["judge_correctness"].valid.tolist() == [True, False, True]
    sent = [prompt for prompt in StubJudge.calls if "garbage" in prompt]
    assert sent and all("<think>" not in prompt for prompt in sent)  # the judge sees the final answer only


def test_pairwise_judgement_in_compare_counts_wins_and_inconsistent_orders(stub_url, tmp_path):
    from dstune.evaluate.compare import pairwise_judgement

    examples = [Example(f"d.jsonl:{i}", [{"role": "user", "content": f"q{i}"}], "ref") for i in range(4)]
    a = score_generation(examples, ["plain", "plain", "plain", "same"], [(1.0, 1)] * 4, EvaluationSection())
    b = score_generation(examples, ["a better one", "better again", "plain too", "same"], [(1.0, 1)] * 4,
                         EvaluationSection())
    result = pairwise_judgement(Judge(_settings(stub_url, tmp_path), sleep=lambda s: None), a, b, None)
    assert (result["b_wins"], result["a_wins"], result["inconsistent"]) == (2, 0, 2)
    assert result["p_value"] == pytest.approx(0.5)  # 2 of 2 decisive pairs: a sign test cannot say more
    assert b.rows[0]["pairwise"]["winner"] == "B"
