"""Figures of the report drawn from ``history.jsonl``: loss and learning rate, and every evaluation metric."""

from __future__ import annotations

from pathlib import Path

_NOT_CURVES = ("runtime", "samples_per_second", "steps_per_second", "model_preparation_time")


def metric_curve_names(history: list[dict]) -> list[str]:
    """Evaluation metrics logged during training (``eval_*``), losses and timings excluded."""
    names: list[str] = []
    for row in history:
        for key, value in row.items():
            if (key.startswith("eval_") and key != "eval_loss" and not key.startswith(("eval_before_", "eval_after_"))
                    and not key.endswith(_NOT_CURVES) and isinstance(value, int | float) and key not in names):
                names.append(key)
    return names


def plot_training(history: list[dict], out: Path) -> Path | None:
    """Train/eval loss against the step, with the learning rate on a second panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    train = [(r["step"], r["loss"]) for r in history if isinstance(r.get("loss"), int | float)]
    evals = sorted([(r["step"], r["eval_loss"]) for r in history if isinstance(r.get("eval_loss"), int | float)]
                   + [(0, r["eval_before_loss"]) for r in history if "eval_before_loss" in r])
    rates = [(r["step"], r["learning_rate"]) for r in history if "learning_rate" in r]
    if not train and not evals:
        return None
    fig, (ax, lr) = plt.subplots(2, 1, figsize=(7.5, 5), dpi=110, height_ratios=[3, 1], sharex=True)
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue")
    if evals:
        ax.plot(*zip(*evals), label="eval loss", color="tab:orange", marker="o")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    if rates:
        lr.plot(*zip(*rates), color="tab:grey")
    lr.set_ylabel("learning rate")
    lr.set_xlabel("optimiser step")
    lr.xaxis.set_major_locator(MaxNLocator(integer=True))
    lr.grid(alpha=0.3)
    return _save(fig, out)


def plot_metric_curves(history: list[dict], out: Path, limit: int = 9) -> Path | None:
    """One small panel per evaluation metric against the step (at most ``limit``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    names = metric_curve_names(history)[:limit]
    if not names:
        return None
    columns = min(3, len(names))
    rows = (len(names) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.6 * rows), dpi=110, squeeze=False)
    for ax, name in zip(axes.flat, names):
        points = [(r["step"], r[name]) for r in history if isinstance(r.get(name), int | float)]
        ax.plot(*zip(*points), marker="o", color="tab:green")
        ax.set_title(name.removeprefix("eval_"), fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.supxlabel("optimiser step", fontsize=9)
    return _save(fig, out)


def _save(fig, out: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
