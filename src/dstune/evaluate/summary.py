"""What `dstune eval` prints: headline metrics, what was written, and the review summary."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from dstune.evaluate.runner import EvalResult

_ORDER = ("exact_match", "bleu", "chrf", "rouge1", "rouge2", "rougeL", "perplexity", "accuracy", "macro_f1",
          "micro_f1", "f1", "precision", "recall", "token_accuracy", "roc_auc", "ece", "think_rate")


def print_eval(result: EvalResult, console: Console) -> None:
    """Headline metrics as a table (judge scores included), then the files and the MLflow run."""
    metrics = result.evaluation.metrics
    title = f"dstune eval: {result.evaluation.task} ({metrics.get('examples')} examples)"
    table = Table(title=title, header_style="bold", min_width=len(title) + 4)
    table.add_column("metric")
    table.add_column("value", justify="right")
    names = [n for n in _ORDER if n in metrics] + sorted(
        n for n in metrics if n.startswith("judge_") and not n.endswith(("_unscored", "_model", "_requests", "_hits")))
    for name in names:
        value = metrics[name]
        table.add_row(name, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)
    if result.evaluation.task == "generation":
        console.print(f"BLEU tokenizer: {metrics['bleu_tokenize']}   ROUGE units: {metrics['rouge_units']}   "
                      f"think blocks: {metrics['think']}", highlight=False)
    for path in result.files:
        console.print(f"written:  {path}")
    if result.mlflow_run_id:
        console.print(f"MLflow:   eval/* metrics and files added to run {result.mlflow_run_id}")


def print_review(summary: dict, path: Path, console: Console) -> None:
    """Reviewed counts, error categories and the reviewer-adjusted accuracy."""
    console.print(f"review: {summary['reviewed']} of {summary['rows']} rows reviewed "
                  f"({summary['accepted']} accepted, {summary['rejected']} rejected)")
    if summary["error_categories"]:
        table = Table(title="error categories", header_style="bold")
        table.add_column("category")
        table.add_column("count", justify="right")
        for name, count in summary["error_categories"].items():
            table.add_row(name, str(count))
        console.print(table)
    if "reviewer_adjusted_accuracy" in summary:
        console.print(f"{summary['metric']}: automatic {summary['auto_accuracy']:.4f} → reviewer-adjusted "
                      f"{summary['reviewer_adjusted_accuracy']:.4f} (over {summary['population']} examples)")
        if summary["unreviewed_strata"]:
            console.print(f"[yellow]note:[/] strata without reviewed rows keep their automatic verdict: "
                          f"{', '.join(summary['unreviewed_strata'])}")
    else:
        console.print("[yellow]note:[/] review_meta.json is not beside the CSV, so accuracy cannot be re-estimated")
    console.print(f"written:  {Path(path).with_name('review_results.json')}")
