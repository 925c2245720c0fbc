"""The short report printed at the end of `dstune train`."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from dstune.train.recipe import TrainResult


def print_summary(result: TrainResult, console: Console) -> None:
    m = result.metrics
    table = Table(title="dstune train: summary", show_header=True, header_style="bold")
    table.add_column("loss")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_column("change", justify="right")
    retained = [key[len("forgetting_"):] for key in m if key.startswith("forgetting_")]
    rows = [(f"{split} loss", f"{split}_loss") for split in ("train", "eval")]
    rows += [(f"retain {name} loss", f"retain_{name}_loss") for name in retained]  # continual.retain_eval
    for label, key in rows:
        before, after = m.get(f"{key}_before"), m.get(f"{key}_after")
        if before is None or after is None:
            continue
        change = (after - before) / before * 100 if before else 0.0
        colour = "green" if after < before else "red"
        table.add_row(label, f"{before:.4f}", f"{after:.4f}", f"[{colour}]{change:+.1f}%[/]")
    console.print(table)
    if retained:
        console.print("forgetting (retain loss after - before): "
                      + ", ".join(f"{name} {m[f'forgetting_{name}']:+.4f}" for name in retained))
    report = result.adapter_report
    console.print(
        f"trainable parameters: {report['trainable_params']:,} of {report['total_params']:,} "
        f"({100 * report['trainable_params'] / max(report['total_params'], 1):.2f}%)"
    )
    console.print(f"steps: {m.get('global_step')}  wall time: {m.get('wall_time_s')} s")
    root = result.run.root
    console.print(f"weights:  {result.weights_dir}")
    console.print(f"metrics:  {root / 'metrics.json'}   history: {root / 'history.jsonl'}")
    for plot in result.plots:
        console.print(f"plot:     {plot}")
    if result.mlflow_ui:
        console.print(f"MLflow:   {result.mlflow_ui}   (then open http://127.0.0.1:5000)")
