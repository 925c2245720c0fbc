"""Plots of evaluation results: the confusion matrix (``plots/confusion_matrix.png``)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

_CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "SimHei",
              "Microsoft YaHei", "PingFang SC", "Source Han Sans SC", "AR PL UMing CN")


def plot_confusion(
    matrix: np.ndarray, rows: list[str], columns: list[str], title: str, out: Path, xlabel: str = "predicted"
) -> Path:
    """A heat map with the counts written in the cells; rows are true labels, columns predicted ones.

    Labels that the available fonts cannot draw (Chinese without a CJK font) are shown by index.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, columns = _drawable(rows), _drawable(columns)
    size = max(4.0, 0.45 * max(len(rows), len(columns)) + 2.5)
    fig, ax = plt.subplots(figsize=(size, size * 0.85), dpi=120)
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(len(columns)), labels=columns, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), labels=rows)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("true")
    ax.set_title(title)
    if matrix.size <= 900:
        limit = matrix.max() / 2 if matrix.size else 0
        for (r, c), value in np.ndenumerate(matrix):
            ax.text(c, r, str(int(value)), ha="center", va="center", fontsize=7,
                    color="white" if value > limit else "black")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # missing-glyph warnings
        fig.savefig(out)
    plt.close(fig)
    return out


def _drawable(names: list[str]) -> list[str]:
    """The names, or ``#index`` for names with characters outside Latin-1 when no CJK font is installed."""
    if all(name.isascii() or all(ord(ch) < 256 for ch in name) for name in names) or _use_cjk_font():
        return names
    return [name if name.isascii() else f"#{i}" for i, name in enumerate(names)]


def _use_cjk_font() -> bool:
    import matplotlib
    from matplotlib import font_manager

    installed = {font.name for font in font_manager.fontManager.ttflist}
    found = [name for name in _CJK_FONTS if name in installed]
    if found:
        matplotlib.rcParams["font.sans-serif"] = [*found, *matplotlib.rcParams["font.sans-serif"]]
    return bool(found)
