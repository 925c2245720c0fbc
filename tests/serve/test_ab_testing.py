"""Online A/B: sticky routing by session, the variant on every response, feedback in an append-only SQLite log
that survives a restart, and `dstune compare --ab-log` statistics checked against hand-computed values."""

from __future__ import annotations

import json
import sqlite3

import openai
import pytest
from typer.testing import CliRunner

from dstune.cli import app
from dstune.config.deploy import ServeSection
from dstune.serve.ab import ABRouter, ABStore, Variant
from dstune.serve.app import ServerState
from dstune.serve.engine import GenerationEngine

LIMITS = ServeSection(max_tokens_limit=16, default_max_tokens=4, max_concurrent=2)


def ab_state(log, split, deployable) -> ServerState:
    engine = GenerationEngine(deployable, LIMITS)
    variants = (Variant("A", "base", "runs/base"), Variant("B", "tuned", "runs/tuned"))
    return ServerState(LIMITS, router=ABRouter(ABStore(log), variants, split), ab_engines={"A": engine, "B": engine})


def ask(client, session: str):
    reply = client.chat.completions.with_raw_response.create(
        model="ab", max_tokens=2, messages=[{"role": "user", "content": "Can you help me?"}],
        extra_headers={"X-Session-ID": session})
    body = reply.parse()
    assert reply.headers["x-dstune-variant"] == body.variant
    return body


def test_routing_is_sticky_and_the_log_survives_a_restart(llama_deployable, run_server, http, tmp_path):
    log = tmp_path / "ab.sqlite"
    sessions = [f"user-{i}" for i in range(16)]
    with run_server(ab_state(log, 0.5, llama_deployable)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list()] == ["ab"]
        first = {s: ask(client, s) for s in sessions}
        assert {s: ask(client, s).variant for s in sessions} == {s: r.variant for s, r in first.items()}
        assert {r.variant for r in first.values()} == {"A", "B"}
        assert all(r.model == {"A": "base", "B": "tuned"}[r.variant] for r in first.values())
        for session in sessions[:5]:
            ok = http.post(f"{url}/v1/feedback", json={"response_id": first[session].id, "success": True})
            assert ok.status_code == 200 and ok.json()["recorded"] is True
        unknown = http.post(f"{url}/v1/feedback", json={"response_id": "chatcmpl-nope", "success": True})
        assert unknown.status_code == 404
        assert http.post(f"{url}/v1/feedback", json={"response_id": first[sessions[0]].id}).status_code == 400

    # restart on the same log with a different split: conversations keep their variant, nothing is lost
    with run_server(ab_state(log, 0.1, llama_deployable)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        assert {s: ask(client, s).variant for s in sessions} == {s: r.variant for s, r in first.items()}
        http.post(f"{url}/v1/feedback", json={"response_id": first[sessions[5]].id, "score": 4.5})

    db = sqlite3.connect(log)
    assert db.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 3 * len(sessions)
    assert db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0] == 6
    assert db.execute("SELECT COUNT(DISTINCT variant) FROM responses").fetchone()[0] == 2
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE responses SET variant = 'A'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM feedback")


def write_log(path, conversions: dict[str, tuple[int, int]]) -> None:
    """Conversations per variant: (converted, total). Some have two responses, some a failed outcome first."""
    store = ABStore(path)
    store.set_meta_once("variant_A", "base\truns/base")
    store.set_meta_once("variant_B", "tuned\truns/tuned")
    for variant, (converted, total) in conversions.items():
        for i in range(total):
            session = f"{variant}-{i}"
            store.assign(session, variant)
            ids = [f"{session}-r{k}" for k in range(1 + i % 2)]
            for rid in ids:
                store.log_response(rid, session, variant, "m", "chat", 10, 5, 12.0)
            store.log_feedback(ids[0], False, None)  # an early "no" does not undo a later "yes"
            if i < converted:
                store.log_feedback(ids[-1], True, 5.0)
    store.close()


def test_compare_ab_log_reports_rates_significance_and_sample_size(tmp_path):
    log = tmp_path / "ab.sqlite"
    write_log(log, {"A": (40, 100), "B": (55, 100)})
    result = CliRunner().invoke(app, ["compare", "--ab-log", str(log), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    a, b = report["variants"]
    assert (a["conversions"], a["conversations"], b["conversions"], b["conversations"]) == (40, 100, 55, 100)
    assert a["responses"] == 150 and a["model"] == "base" and b["model"] == "tuned"
    # hand-computed: pooled p = 95/200, se = sqrt(p(1-p)(1/100 + 1/100)), z = 0.15 / se
    assert report["z"] == pytest.approx(2.1239770, abs=1e-6)
    assert report["p_value"] == pytest.approx(0.0336721, abs=1e-6)
    assert report["significant"] is True
    # Wilson 95% intervals (as scipy.stats.binomtest(...).proportion_ci(method="wilson"))
    assert (a["ci_low"], a["ci_high"]) == pytest.approx((0.3094013, 0.4979974), abs=1e-6)
    assert (b["ci_low"], b["ci_high"]) == pytest.approx((0.4524460, 0.6438546), abs=1e-6)
    assert (report["diff_ci_low"], report["diff_ci_high"]) == pytest.approx((0.0131530, 0.2868470), abs=1e-6)
    # n per variant = (z_.975 sqrt(2 p̄ q̄) + z_.8 sqrt(p1 q1 + p2 q2))² / (p1 - p2)² = 172.8 -> 173
    assert report["needed_per_variant"] == 173 and report["additional_needed"] == 2 * (173 - 100)

    table = CliRunner().invoke(app, ["compare", "--ab-log", str(log)])
    assert "significant at α = 0.05" in table.output and "173" in table.output


def test_compare_without_a_log_or_runs_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(app, ["compare", "--ab-log", str(tmp_path / "missing.sqlite")])
    assert result.exit_code != 0 and "A/B log not found" in str(result.exception)
