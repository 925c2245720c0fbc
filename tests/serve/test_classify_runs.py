"""`dstune serve RUN_DIR` on a LoRA classification run: /v1/classify answers with the labels the run's predictor
(what `dstune eval` uses) predicts, under the run directory's name."""

from __future__ import annotations

from dstune.config.deploy import ServeSection
from dstune.models.predict import load_predictor
from dstune.serve.server import build_state

TEXTS = ["hello how are you today", "artificial intelligence answer", "甲方 付款 按时 签订"]


def test_classify_on_a_lora_run_returns_the_runs_predicted_labels(lora_classifier_run, run_server, http):
    state = build_state(lora_classifier_run, ServeSection(), log=lambda *a: None)
    with run_server(state) as url:
        models = http.get(f"{url}/v1/models").json()
        response = http.post(f"{url}/v1/classify", json={"model": "run", "input": TEXTS})
    assert [m["id"] for m in models["data"]] == ["run"]
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["task"] == "sequence-classification" and body["model"] == "run"
    expected = [p["classification"] for p in load_predictor(lora_classifier_run).predict_batch(TEXTS)]
    assert [d["label"] for d in body["data"]] == [e["label"] for e in expected]
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(set(d["scores"]) == {"ai", "contract", "greet"} and abs(sum(d["scores"].values()) - 1) < 1e-4
               for d in body["data"])
