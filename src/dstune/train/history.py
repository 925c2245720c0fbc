"""history.jsonl (one JSON object per logged step or evaluation) and the loss plot drawn from it."""

from __future__ import annotations

import json
import math
from pathlib import Path

from transformers import TrainerCallback


class HistoryCallback(TrainerCallback):
    """Append every Trainer log (train loss, lr, eval metrics) to ``history.jsonl`` on the main process."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), **_plain(logs)}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_history(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def truncate_history(path: Path, last_step: int) -> None:
    """Drop entries logged after ``last_step`` (a run resumed from that checkpoint logs them again)."""
    rows = [row for row in read_history(path) if row["step"] <= last_step]
    Path(path).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _plain(logs: dict) -> dict:
    out = {}
    for key, value in logs.items():
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)
        out[key] = value
    return out
