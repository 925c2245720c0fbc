"""Token-level attention heatmaps (`dstune eval --explain N`): where the model looked before answering.

For each example the last layer's attention, averaged over heads, is read from one query position:
the position that predicts the first answer token (causal LMs: the end of the rendered prompt) or
the pooled position of a classifier (its last real token on decoders, ``[CLS]`` on encoders, every
token averaged for mean pooling). Each character of the input text gets the weight of the token
covering it; colours are scaled to the strongest token in the text, and the share of attention
that fell on the text at all (rather than on template tokens or the first "sink" token) is shown.

Attention is a hint about what a model used, not an explanation of why it answered so.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Heatmap:
    title: str
    text: str
    weights: list[float]
    """One weight per character of ``text`` (attention of the token covering it)."""
    share: float
    """Fraction of the query's attention that fell on ``text``."""
    note: str = ""


def causal_heatmap(model, tokenizer, prompt_text: str, span: tuple[int, int], title: str, note: str = "") -> Heatmap:
    """Attention from the last prompt position (where the answer starts) over ``prompt_text[span]``."""
    encoded = tokenizer(prompt_text, add_special_tokens=False, return_offsets_mapping=True)
    attention = _last_layer_attention(model, encoded["input_ids"])
    return _heatmap(attention[-1], encoded["offset_mapping"], prompt_text, span, title, note)


def classifier_heatmap(model, tokenizer, text: str, pooling: str, title: str, note: str = "") -> Heatmap:
    """Attention from the pooled position (``last``, ``cls`` or ``mean``) over the whole text."""
    encoded = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    attention = _last_layer_attention(model, encoded["input_ids"])
    query = {"last": attention[-1], "cls": attention[0]}.get(pooling, attention.mean(axis=0))
    return _heatmap(query, encoded["offset_mapping"], text, (0, len(text)), title, note)


def _last_layer_attention(model, ids: list[int]) -> np.ndarray:
    """(T, T) attention of the last layer, averaged over heads, computed with eager attention."""
    import torch

    model = getattr(model, "backbone", model)  # dstune heads: the attention lives in the shared backbone
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    previous = getattr(base.config, "_attn_implementation", None)
    if previous != "eager":
        base.set_attn_implementation("eager")  # sdpa / flash kernels do not return attention weights
    try:
        device = next(model.parameters()).device
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([ids], device=device), output_attentions=True)
    finally:
        if previous not in (None, "eager"):
            base.set_attn_implementation(previous)
    attentions = getattr(out, "attentions", None)
    if not attentions:
        raise ValueError("the model returned no attention weights")
    return attentions[-1][0].float().mean(0).cpu().numpy()


def _heatmap(query: np.ndarray, offsets, text: str, span: tuple[int, int], title: str, note: str) -> Heatmap:
    start, end = span
    weights = np.zeros(end - start)
    for weight, (first, last) in zip(query, offsets):
        lo, hi = max(first, start), min(last, end)
        if hi > lo:
            weights[lo - start: hi - start] += weight  # byte pieces of one character add up
    inside = sum(w for w, (a, b) in zip(query, offsets) if b > start and a < end)
    return Heatmap(title, text[start:end], [round(float(w), 6) for w in weights],
                   float(inside / max(float(query.sum()), 1e-12)), note)


def render_heatmaps(maps: list[Heatmap]) -> str:
    """An HTML fragment: one block per example, each character shaded by its attention."""
    blocks = []
    for item in maps:
        peak = max(item.weights, default=0.0) or 1.0
        chars = "".join(_shaded(ch, w / peak) for ch, w in zip(item.text, item.weights))
        note = f'<div class="muted">{html.escape(item.note)}</div>' if item.note else ""
        blocks.append(
            f'<div class="heatmap"><div class="heatmap-title">{html.escape(item.title)} '
            f'<span class="muted">({100 * item.share:.0f}% of the attention on this text)</span></div>'
            f'{note}<div class="heatmap-text">{chars}</div></div>'
        )
    legend = ('<p class="muted">Last layer, heads averaged; darker = more attention, scaled to the strongest token '
              'of each text. Attention hints at what the model looked at; it does not prove why it answered.</p>')
    return legend + "\n".join(blocks)


def _shaded(char: str, level: float) -> str:
    if char == "\n":
        return "<br>"
    alpha = round(min(max(level, 0.0), 1.0) * 0.85, 3)
    return f'<span style="background:rgba(220,60,30,{alpha})">{html.escape(char)}</span>'


def save_heatmaps(maps: list[Heatmap], out_dir: Path) -> tuple[Path, Path]:
    """``explain.json`` (data, for the report) and ``explain.html`` (a page of its own)."""
    from dstune.report.html import page

    out_dir.mkdir(parents=True, exist_ok=True)
    data_path, html_path = out_dir / "explain.json", out_dir / "explain.html"
    data_path.write_text(json.dumps([asdict(m) for m in maps], ensure_ascii=False) + "\n", encoding="utf-8")
    html_path.write_text(page("Attention heatmaps", render_heatmaps(maps)), encoding="utf-8")
    return data_path, html_path


def load_heatmaps(path: Path) -> list[Heatmap]:
    return [Heatmap(**row) for row in json.loads(Path(path).read_text(encoding="utf-8"))]
