"""`dstune compare A B --data FILE`: the same examples through both models, and whether B really differs.

Both models get the same settings (B's run config, else A's, else the defaults, plus ``--set``).
For every metric: A, B, B − A, a paired-bootstrap confidence interval of B − A, a p-value
(McNemar's exact test for accuracy/exact match; a paired permutation test for F1, BLEU, chrF,
ROUGE, perplexity and judge scores) and per-example win/tie/loss counts. With a judge configured,
each model is also scored per rubric, and (``judge.pairwise``) the two answers are compared
head-to-head in both orders. A is the baseline: before-vs-after fine-tuning is
``dstune compare BASE_MODEL RUN_DIR``.
"""

from __future__ import annotations

import gc
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dstune.config.evaluation import EvaluationSection
from dstune.errors import DataError
from dstune.evaluate.judge import Judge, Verdict
from dstune.evaluate.runner import Loaded, apply_judge, evaluate_loaded, load_target, progress_bar
from dstune.evaluate.score import ModelEvaluation
from dstune.evaluate.significance import PairedResult, compare_metric
from dstune.evaluate.target import resolve_target
from dstune.train.rundir import write_json_atomic


@dataclass
class Comparison:
    name_a: str
    name_b: str
    data: str
    examples: int
    results: list[PairedResult]
    pairwise: dict | None = None
    files: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"a": self.name_a, "b": self.name_b, "data": self.data, "examples": self.examples,
                "metrics": [r.to_dict() for r in self.results], "pairwise_judge": self.pairwise}


def run_compare(path_a: str, path_b: str, *, data: str | None = None, split: str | None = None,
                overrides: list[str] = (), out: Path | None = None, judge: bool = True,
                log: Callable = print) -> Comparison:
    """Evaluate A, then B (one model in memory at a time), then test every shared metric."""
    settings = shared_settings(path_a, path_b, list(overrides))
    evaluations, origins = [], []
    for path in (path_a, path_b):
        loaded = load_target(path, data, split, list(overrides))
        log(f"{'AB'[len(evaluations)]}: {path} ({loaded.kind}) on {len(loaded.records)} examples from {loaded.origin}")
        with progress_bar(len(loaded.records), f"predicting ({'AB'[len(evaluations)]})") as advance:
            evaluations.append(evaluate_loaded(loaded, settings, advance))
        origins.append(loaded.origin)
        _release(loaded)
    a, b = evaluations
    _check_same_examples(a, b, origins)
    pairwise = None
    if judge and settings.judge and a.task == "generation":
        shared = Judge(settings.judge)
        apply_judge(a, settings.judge, shared, log)
        apply_judge(b, settings.judge, shared, log)
        if settings.judge.pairwise:
            pairwise = pairwise_judgement(shared, a, b, settings.judge.max_examples)
    results = [compare_metric(a.paired[name], b.paired[name], resamples=settings.bootstrap, alpha=settings.alpha,
                              seed=settings.seed) for name in a.paired if name in b.paired]
    comparison = Comparison(_label(path_a), _label(path_b), origins[1], len(a.rows), results, pairwise)
    comparison.files = write_comparison(comparison, a, b, Path(out) if out else default_out(path_a, path_b))
    return comparison


def shared_settings(path_a: str, path_b: str, overrides: list[str]) -> EvaluationSection:
    """One set of evaluation settings for both models: B's run config wins, then A's, then the defaults."""
    b = resolve_target(path_b, overrides)
    return b.settings if b.is_run else resolve_target(path_a, overrides).settings


def _release(loaded: Loaded) -> None:
    loaded.model = None
    gc.collect()


def _check_same_examples(a: ModelEvaluation, b: ModelEvaluation, origins: list[str]) -> None:
    same = len(a.rows) == len(b.rows) and all(x["reference"] == y["reference"] for x, y in zip(a.rows, b.rows))
    if a.task != b.task or not same:
        raise DataError(
            f"A and B were not evaluated on the same examples ({a.task}: {len(a.rows)} from {origins[0]}; "
            f"{b.task}: {len(b.rows)} from {origins[1]})",
            hint="pass the same file to both with --data FILE (and compare models of the same task)",
        )


def pairwise_judgement(judge: Judge, a: ModelEvaluation, b: ModelEvaluation, limit: int | None) -> dict:
    """Head-to-head preferences asked in both orders, with a sign test on the decisive ones."""
    from scipy.stats import binomtest

    from dstune.evaluate.runner import judge_items

    items = list(zip(judge_items(a, limit), judge_items(b, limit)))
    with progress_bar(len(items), "judge: A vs B"):
        verdicts: list[Verdict] = judge.pairwise_many([(x.question, x.answer, y.answer, x.reference) for x, y in items])
    outcome = Counter(v.winner if v.ok else "unscored" for v in verdicts)
    decisive = outcome["A"] + outcome["B"]
    p_value = float(binomtest(outcome["B"], decisive, 0.5).pvalue) if decisive else 1.0
    for row, verdict in zip(b.rows, verdicts):
        row["pairwise"] = {"winner": verdict.winner, "reason": verdict.reason} if verdict.ok else {"error": verdict.error}
    return {"b_wins": outcome["B"], "a_wins": outcome["A"], "ties": outcome["tie"],
            "inconsistent": outcome["inconsistent"], "unscored": outcome["unscored"], "p_value": p_value,
            "test": "sign test on decisive pairs (each pair judged in both orders; disagreeing orders = tie)"}


def default_out(path_a: str, path_b: str) -> Path:
    """``B/eval/compare_<A>.json`` for a run B (then A), else ``compare_<A>_vs_<B>.json`` here."""
    for run, other in ((path_b, path_a), (path_a, path_b)):
        if (Path(run) / "config.yaml").is_file():
            return Path(run) / "eval" / f"compare_{_label(other)}.json"
    return Path(f"compare_{_label(path_a)}_vs_{_label(path_b)}.json")


def _label(path: str) -> str:
    return Path(str(path).rstrip("/")).name.removesuffix(".gguf") or str(path)


def write_comparison(comparison: Comparison, a: ModelEvaluation, b: ModelEvaluation, out: Path) -> list[Path]:
    """The comparison JSON and, beside it, both predictions per example side by side (``.jsonl``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, json.loads(json.dumps(comparison.to_dict(), default=float)))
    sides = out.with_suffix(".jsonl")
    with open(sides, "w", encoding="utf-8") as stream:
        for x, y in zip(a.rows, b.rows):
            row = {"id": x["id"], "input": x["input"], "reference": x["reference"], "prediction_a": x["prediction"],
                   "prediction_b": y["prediction"], "scores_a": x["scores"], "scores_b": y["scores"],
                   **({"pairwise": y["pairwise"]} if "pairwise" in y else {})}
            stream.write(json.dumps(row, ensure_ascii=False, default=float) + "\n")
    return [out, sides]


def print_comparison(comparison: Comparison, console) -> None:
    """A table per metric and one plain sentence each."""
    from rich.table import Table

    table = Table(title=f"A = {comparison.name_a}   B = {comparison.name_b}   ({comparison.examples} examples)",
                  header_style="bold")
    for column in ("metric", "A", "B", "B − A", "95% CI", "p", "test", "B win/tie/loss"):
        table.add_column(column, justify="left" if column in ("metric", "test") else "right")
    for r in comparison.results:
        colour = ("green" if (r.diff > 0) == r.higher_is_better else "red") if r.significant else "dim"
        table.add_row(r.metric, f"{r.a:.4g}", f"{r.b:.4g}", f"[{colour}]{r.diff:+.4g}[/]",
                      f"[{r.ci_low:+.3g}, {r.ci_high:+.3g}]", f"{r.p_value:.3g}", r.test, f"{r.wins}/{r.ties}/{r.losses}")
    console.print(table)
    for r in comparison.results:
        console.print(f"  {r.metric}: {r.verdict()}", highlight=False)
    if comparison.pairwise:
        p = comparison.pairwise
        console.print(f"  pairwise judge: B wins {p['b_wins']}, A wins {p['a_wins']}, ties {p['ties']} "
                      f"(orders disagreed on {p['inconsistent']}), p = {p['p_value']:.3g}", highlight=False)
    for path in comparison.files:
        console.print(f"written: {path}")
