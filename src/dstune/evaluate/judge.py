"""LLM-as-judge over any OpenAI-compatible chat endpoint (DeepSeek's API, a local `dstune serve`, ...).

Each answer is scored per rubric as ``{"score": n, "reason": "..."}``. Requests run concurrently
up to ``max_concurrent``; 429, 5xx and connection errors are retried with exponential backoff
(``Retry-After`` wins); a reply without a usable score is asked again ``malformed_retries`` times
and then recorded as unscored with its reason, so one bad reply never stops an evaluation. Scored
replies are cached on disk by (prompt, model, rubric): a re-run costs nothing. Pairwise judging
asks in both orders and only counts a win that survives the swap (position-bias control).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from dstune.config.evaluation import JudgeSettings

_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)
_RETRY_AFTER_CAP_S = 60.0


@dataclass(frozen=True)
class Verdict:
    """One judgement: a score (or pairwise winner), the judge's reason, or why it is unscored."""

    score: float | None
    reason: str = ""
    error: str | None = None
    winner: str | None = None  # pairwise: "1", "2" or "tie"

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class JudgeItem:
    question: str
    answer: str
    reference: str | None = None


class RetryableError(Exception):
    """429, 5xx or a connection problem: worth another try after a pause."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class Judge:
    """A judge endpoint with retries, a disk cache and a request counter (``requests_sent``)."""

    def __init__(self, settings: JudgeSettings, cache_dir: Path | None = None, sleep: Callable = time.sleep):
        self.settings = settings
        self.cache_dir = Path(cache_dir or settings.cache_dir or Path.home() / ".cache" / "dstune" / "judge")
        self.sleep = sleep
        self.requests_sent = 0
        self.cache_hits = 0
        self._count = threading.Lock()

    # --- scoring ------------------------------------------------------------------------------

    def score(self, items: list[JudgeItem], rubric: str, progress: Callable[[int], None] | None = None) -> list[Verdict]:
        """Scores of ``items`` on ``rubric``, in order, computed concurrently."""
        def one(item: JudgeItem) -> Verdict:
            verdict = self.ask(self.score_messages(item, rubric), rubric, _parse_score(self.settings.scale))
            if progress:
                progress(1)
            return verdict

        with ThreadPoolExecutor(max_workers=self.settings.max_concurrent) as pool:
            return list(pool.map(one, items))

    def pairwise(self, question: str, answer_a: str, answer_b: str, reference: str | None = None) -> Verdict:
        """Which of A and B is better, asked in both orders; a disagreement between the orders is a tie."""
        first = self.ask(self.pair_messages(question, answer_a, answer_b, reference), "pairwise", _parse_winner)
        second = self.ask(self.pair_messages(question, answer_b, answer_a, reference), "pairwise", _parse_winner)
        if not (first.ok and second.ok):
            return Verdict(None, error=first.error or second.error)
        as_a_b = {"1": "A", "2": "B", "tie": "tie"}[first.winner]
        as_b_a = {"1": "B", "2": "A", "tie": "tie"}[second.winner]
        winner = as_a_b if as_a_b == as_b_a else "tie"
        consistent = as_a_b == as_b_a
        reason = first.reason if consistent else f"orders disagree (A first: {as_a_b}; B first: {as_b_a})"
        return Verdict({"A": 0.0, "tie": 0.5, "B": 1.0}[winner], reason, winner=winner if consistent else "inconsistent")

    def pairwise_many(self, items: list[tuple[str, str, str, str | None]]) -> list[Verdict]:
        with ThreadPoolExecutor(max_workers=max(1, self.settings.max_concurrent // 2)) as pool:
            return list(pool.map(lambda args: self.pairwise(*args), items))

    # --- prompts ------------------------------------------------------------------------------

    def score_messages(self, item: JudgeItem, rubric: str) -> list[dict]:
        text = self.settings.rubric_text(rubric)
        system = (f"You are a strict, consistent evaluator. Judge the ANSWER on one criterion only.\n"
                  f"Criterion ({rubric}): {text}\n"
                  f'Reply with only a JSON object: {{"score": <integer from 1 to {self.settings.scale}>, '
                  f'"reason": "<one short sentence>"}}')
        parts = [f"QUESTION:\n{item.question}"]
        if item.reference is not None and "reference" in text.lower():
            parts.append(f"REFERENCE ANSWER:\n{item.reference}")
        parts.append(f"ANSWER:\n{item.answer}")
        return [{"role": "system", "content": system}, {"role": "user", "content": "\n\n".join(parts)}]

    def pair_messages(self, question: str, first: str, second: str, reference: str | None) -> list[dict]:
        criteria = "; ".join(f"{name}: {self.settings.rubric_text(name)}" for name in self.settings.rubrics)
        system = ("You compare two answers to the same question. Judge only quality, never position or length.\n"
                  f"Criteria: {criteria}\n"
                  'Reply with only a JSON object: {"winner": "1" | "2" | "tie", "reason": "<one short sentence>"}')
        parts = [f"QUESTION:\n{question}"]
        if reference is not None:
            parts.append(f"REFERENCE ANSWER:\n{reference}")
        parts += [f"ANSWER 1:\n{first}", f"ANSWER 2:\n{second}"]
        return [{"role": "system", "content": system}, {"role": "user", "content": "\n\n".join(parts)}]

    # --- one cached, retried judgement --------------------------------------------------------

    def ask(self, messages: list[dict], rubric: str, parse: Callable[[str], Verdict]) -> Verdict:
        """The cached verdict, or a fresh one: HTTP retries inside, malformed replies asked again, never raises."""
        key = self.cache_key(messages, rubric)
        cached = self._read_cache(key)
        if cached is not None:
            with self._count:
                self.cache_hits += 1
            return cached
        verdict = Verdict(None, error="no reply")
        for _ in range(self.settings.malformed_retries + 1):
            try:
                reply = self.complete(messages)
            except (RetryableError, urllib.error.HTTPError, ValueError) as exc:
                return Verdict(None, error=f"request failed: {exc}")
            verdict = parse(reply)
            if verdict.ok:
                self._write_cache(key, verdict)
                return verdict
        return verdict

    def cache_key(self, messages: list[dict], rubric: str) -> str:
        text = json.dumps({"messages": messages, "model": self.settings.model, "rubric": rubric}, ensure_ascii=False,
                          sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def _read_cache(self, key: str) -> Verdict | None:
        path = self.cache_dir / key[:2] / f"{key}.json"
        try:
            return Verdict(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None

    def _write_cache(self, key: str, verdict: Verdict) -> None:
        path = self.cache_dir / key[:2] / f"{key}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(verdict), ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)

    # --- HTTP ---------------------------------------------------------------------------------

    def complete(self, messages: list[dict]) -> str:
        """The reply text of one chat completion, retrying 429/5xx/connection errors with backoff."""
        delay = self.settings.backoff_s
        for attempt in range(self.settings.max_retries + 1):
            try:
                return self._post(messages)
            except RetryableError as exc:
                if attempt == self.settings.max_retries:
                    raise RetryableError(f"{exc} (gave up after {attempt + 1} tries)") from None
                self.sleep(min(exc.retry_after, _RETRY_AFTER_CAP_S) if exc.retry_after is not None else delay)
                delay *= 2
        raise AssertionError("unreachable")

    def _post(self, messages: list[dict]) -> str:
        body = {"model": self.settings.model, "messages": messages, "temperature": 0.0, "max_tokens": 512}
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.settings.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        url = self.settings.base_url.rstrip("/") + "/chat/completions"
        request = urllib.request.Request(url, json.dumps(body).encode("utf-8"), headers, method="POST")
        with self._count:
            self.requests_sent += 1
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout_s) as response:
                raw = response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            if exc.code == 429 or exc.code >= 500:
                raise RetryableError(f"HTTP {exc.code}", _retry_after(exc.headers.get("Retry-After"))) from None
            raise ValueError(f"HTTP {exc.code} from {url}: {exc.read()[:200].decode('utf-8', 'replace')}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise RetryableError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None
        try:
            return str(json.loads(raw)["choices"][0]["message"]["content"] or "")
        except (ValueError, KeyError, IndexError, TypeError):
            return raw[:200]  # not a chat completion: handled as a malformed reply


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _json_object(reply: str) -> dict | None:
    match = _JSON_OBJECT.search(reply)
    if match is None:
        return None
    try:
        value = json.loads(match.group(0))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _parse_score(scale: int) -> Callable[[str], Verdict]:
    def parse(reply: str) -> Verdict:
        data = _json_object(reply) or {}
        score = data.get("score")
        if isinstance(score, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*", score):
            score = float(score)
        if isinstance(score, bool) or not isinstance(score, int | float) or not 1 <= score <= scale:
            return Verdict(None, error=f"malformed judge reply (no score 1-{scale}): {reply[:200]!r}")
        return Verdict(float(score), str(data.get("reason", "")))

    return parse


def _parse_winner(reply: str) -> Verdict:
    data = _json_object(reply) or {}
    winner = str(data.get("winner", "")).strip().lower()
    if winner not in ("1", "2", "tie"):
        return Verdict(None, error=f"malformed judge reply (no winner 1/2/tie): {reply[:200]!r}")
    return Verdict(None, str(data.get("reason", "")), winner=winner)
