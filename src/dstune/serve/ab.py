"""Online A/B testing: sticky routing of conversations to two variants, outcomes in an append-only SQLite log.

A conversation is identified by the ``X-Session-ID`` header, else the request's ``user`` field,
else it is a conversation of one response. Its first request assigns it to a variant (hash of a
per-log salt and the id, against ``split``); the assignment is stored, so the conversation stays
with its variant for good — across restarts, and even if the split changes. Every response is
logged with its variant; ``POST /v1/feedback`` appends outcomes (success flag and/or score).

The log only grows: triggers refuse UPDATE and DELETE. `dstune compare --ab-log FILE` reads it.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS assignments (
    session TEXT PRIMARY KEY, variant TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY, session TEXT NOT NULL, variant TEXT NOT NULL, model TEXT NOT NULL,
    endpoint TEXT NOT NULL, prompt_tokens INTEGER, completion_tokens INTEGER, latency_ms REAL,
    created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS feedback (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, response_id TEXT NOT NULL REFERENCES responses(id),
    success INTEGER, score REAL, created REAL NOT NULL);
"""
APPEND_ONLY = ("assignments", "responses", "feedback", "meta")
VARIANTS = ("A", "B")


@dataclass(frozen=True)
class Variant:
    name: str  # "A" or "B"
    model: str  # the served model behind it (run or model folder name)
    source: str


class ABStore:
    """The append-only SQLite log (safe to share between the server's threads)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA + "".join(_append_only_triggers(t) for t in APPEND_ONLY))

    def close(self) -> None:
        self.db.close()

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta_once(self, key: str, value: str) -> str:
        """Store ``value`` under ``key`` unless a value is there already; return the stored value."""
        with self.lock:
            self.db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))
        return self.meta(key)

    def assignment(self, session: str) -> str | None:
        row = self.db.execute("SELECT variant FROM assignments WHERE session = ?", (session,)).fetchone()
        return row[0] if row else None

    def assign(self, session: str, variant: str) -> str:
        """Record the session's variant (the first assignment wins) and return it."""
        with self.lock:
            self.db.execute("INSERT OR IGNORE INTO assignments (session, variant, created) VALUES (?, ?, ?)",
                            (session, variant, time.time()))
        return self.assignment(session)

    def log_response(self, response_id: str, session: str, variant: str, model: str, endpoint: str,
                     prompt_tokens: int, completion_tokens: int, latency_ms: float) -> None:
        with self.lock:
            self.db.execute(
                "INSERT INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (response_id, session, variant, model, endpoint, prompt_tokens, completion_tokens, latency_ms,
                 time.time()),
            )

    def log_feedback(self, response_id: str, success: bool | None, score: float | None) -> bool:
        """Append an outcome for a logged response; False when the response id is unknown."""
        with self.lock:
            if self.db.execute("SELECT 1 FROM responses WHERE id = ?", (response_id,)).fetchone() is None:
                return False
            self.db.execute("INSERT INTO feedback (response_id, success, score, created) VALUES (?, ?, ?, ?)",
                            (response_id, None if success is None else int(success), score, time.time()))
        return True


class ABRouter:
    """Sticky assignment of conversations to variant A (share ``split``) or B."""

    def __init__(self, store: ABStore, variants: tuple[Variant, Variant], split: float, model_id: str = "ab"):
        if not 0.0 < split < 1.0:
            raise ValueError("split must be between 0 and 1 (the share of conversations that go to A)")
        self.store, self.split, self.model_id = store, split, model_id
        self.variants = {v.name: v for v in variants}
        self.salt = store.set_meta_once("salt", secrets.token_hex(16))
        for variant in variants:
            store.set_meta_once(f"variant_{variant.name}", f"{variant.model}\t{variant.source}")
        store.set_meta_once("split", str(split))

    def route(self, session: str) -> Variant:
        """The conversation's variant: as assigned before, else by hash against the split (and stored)."""
        known = self.store.assignment(session)
        if known is None:
            known = self.store.assign(session, "A" if self.bucket(session) < self.split else "B")
        return self.variants[known]

    def bucket(self, session: str) -> float:
        """A uniform number in [0, 1) fixed by the log's salt and the session id."""
        digest = hashlib.sha256(f"{self.salt}:{session}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64


def _append_only_triggers(table: str) -> str:
    return "".join(
        f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END;\n"
        for op in ("UPDATE", "DELETE")
    )
