"""`dstune eval`: load → predict → score → judge → review sample → heatmaps → write → log to MLflow.

Writes into ``RUN_DIR/eval/`` (or ``--out``): ``metrics.json`` (last, so its presence means the
evaluation finished), ``predictions.jsonl`` (input, reference, prediction, per-example scores),
``review.csv`` / ``review.html`` / ``review_meta.json``, ``plots/*.png`` and ``explain.html``.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dstune.config.evaluation import EvaluationSection, JudgeSettings
from dstune.evaluate.generate import examples_from_records
from dstune.evaluate.judge import Judge, JudgeItem, Verdict
from dstune.evaluate.review import draw_sample, write_review, write_review_html
from dstune.evaluate.score import ModelEvaluation, evaluate_generation, evaluate_labelled
from dstune.evaluate.significance import mean_metric
from dstune.evaluate.target import Target, check_task, load_model, read_eval_records, resolve_target
from dstune.train.rundir import write_json_atomic

_MLFLOW_KEY = re.compile(r"^[A-Za-z0-9_\-. /]+$")


@dataclass
class EvalResult:
    out_dir: Path
    evaluation: ModelEvaluation
    files: list[Path] = field(default_factory=list)
    mlflow_run_id: str | None = None


@dataclass
class Loaded:
    """A target with its weights loaded and its examples read."""

    target: Target
    model: object
    tokenizer: object
    kind: str
    weights: Path | None
    records: list
    origin: str


def load_target(path: str | Path, data: str | None, split: str | None, overrides: list[str]) -> Loaded:
    target = resolve_target(path, overrides)
    records, origin = read_eval_records(target, data, split)  # data problems show before any weights load
    model, tokenizer, kind, weights = load_model(target)
    check_task(kind, target)
    return Loaded(target, model, tokenizer, kind, weights, records, origin)


def evaluate_loaded(loaded: Loaded, settings: EvaluationSection, progress: Callable | None = None) -> ModelEvaluation:
    """Predict and score: generation for causal LMs, labelled metrics for classifiers and taggers."""
    target = loaded.target
    if loaded.kind == "causal-lm":
        examples = examples_from_records(loaded.records, target.config.data.system_prompt if target.config else None)
        return evaluate_generation(loaded.model, loaded.tokenizer, examples, settings, max_length=target.max_length,
                                   progress=progress)
    from dstune.evaluate.labelled import label_space_of

    kind_hint = "token" if loaded.kind == "token-classification" else "sequence"
    fields, head = target.task_fields(), target.task_name
    space = label_space_of(loaded.model, loaded.weights, kind_hint, fields, head)
    return evaluate_labelled(loaded.model, loaded.tokenizer, loaded.records, space, fields, settings,
                             max_length=target.max_length, head=head)


def run_eval(path: str | Path, *, data: str | None = None, split: str | None = None, overrides: list[str] = (),
             out: Path | None = None, judge: bool = True, log: Callable = print) -> EvalResult:
    """The whole `dstune eval` (see the module docstring)."""
    loaded = load_target(path, data, split, list(overrides))
    settings = loaded.target.settings
    log(f"evaluating {loaded.target.path} ({loaded.kind}) on {len(loaded.records)} examples from {loaded.origin}")
    with progress_bar(len(loaded.records), "predicting") as advance:
        evaluation = evaluate_loaded(loaded, settings, advance)
    out_dir = Path(out) if out else loaded.target.default_out_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    result = EvalResult(out_dir, evaluation)
    if judge and settings.judge and evaluation.task == "generation":
        apply_judge(evaluation, settings.judge, log=log)
    result.files += write_plots(evaluation, out_dir)
    if settings.sample > 0:
        sample = draw_sample(evaluation.outcomes, settings.sample, settings.seed)
        csv_path, meta = write_review(evaluation.outcomes, sample, out_dir, _accuracy_name(evaluation))
        result.files += [csv_path, meta, write_review_html(csv_path)]
    if settings.explain > 0:
        result.files += write_explanations(loaded, evaluation, settings.explain, out_dir)
    result.files.insert(0, write_predictions(evaluation, out_dir / "predictions.jsonl"))
    result.files.insert(0, write_metrics(evaluation, loaded, settings, out_dir / "metrics.json"))
    result.mlflow_run_id = log_to_mlflow(loaded.target, evaluation.metrics, result.files)
    return result


@contextlib.contextmanager
def progress_bar(total: int, description: str) -> Iterator[Callable[[int], None]]:
    """A rich progress bar; yields ``advance(n)``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


def import_review(csv_path: Path, log: Callable = print) -> dict:
    """`dstune eval --import-review`: verdict counts, error categories and reviewer-adjusted accuracy."""
    from dstune.evaluate.review import load_meta, read_review, summarize_review

    csv_path = Path(csv_path)
    summary = summarize_review(read_review(csv_path), load_meta(csv_path))
    if summary["reviewed"] == 0:
        log("[yellow]note:[/] no row has a reviewer_verdict yet; fill the column and import again")
    write_json_atomic(csv_path.with_name("review_results.json"), summary)
    metrics_path = csv_path.with_name("metrics.json")
    if metrics_path.is_file() and "reviewer_adjusted_accuracy" in summary:
        body = json.loads(metrics_path.read_text(encoding="utf-8"))
        body["metrics"]["reviewer_adjusted_accuracy"] = summary["reviewer_adjusted_accuracy"]
        body["review"] = summary
        write_json_atomic(metrics_path, body)
    return summary


# --- judge -----------------------------------------------------------------------------------

def judge_items(evaluation: ModelEvaluation, limit: int | None) -> list[JudgeItem]:
    """What the judge sees: the question, the final answer (think block removed) and the reference."""
    from dstune.evaluate.text_metrics import split_think

    rows = evaluation.rows[:limit] if limit else evaluation.rows
    return [JudgeItem(row["input"], split_think(row["prediction"])[1], row["reference"]) for row in rows]


def apply_judge(evaluation: ModelEvaluation, settings: JudgeSettings, judge: Judge | None = None,
                log: Callable = print) -> Judge:
    """Score every answer on every rubric; attach the verdicts to the rows, metrics and paired statistics."""
    judge = judge or Judge(settings)
    items = judge_items(evaluation, settings.max_examples)
    for rubric in settings.rubrics:
        with progress_bar(len(items), f"judge: {rubric}") as advance:
            verdicts = judge.score(items, rubric, advance)
        attach_verdicts(evaluation, rubric, verdicts)
        unscored = evaluation.metrics[f"judge_{rubric}_unscored"]
        if unscored:
            log(f"[yellow]judge:[/] {unscored} of {len(items)} answers unscored on {rubric} "
                f"(reasons in predictions.jsonl); first: {next(v.error for v in verdicts if not v.ok)}")
    evaluation.metrics.update(judge_model=settings.model, judge_requests=judge.requests_sent,
                              judge_cache_hits=judge.cache_hits)
    return judge


def attach_verdicts(evaluation: ModelEvaluation, rubric: str, verdicts: list[Verdict]) -> None:
    n = len(evaluation.rows)
    scores = [v.score if v.ok else float("nan") for v in verdicts] + [float("nan")] * (n - len(verdicts))
    for row, verdict in zip(evaluation.rows, verdicts):
        row.setdefault("judge", {})[rubric] = (
            {"score": verdict.score, "reason": verdict.reason} if verdict.ok else {"score": None, "error": verdict.error})
    metric = mean_metric(f"judge_{rubric}", scores)
    evaluation.paired[metric.name] = metric
    evaluation.metrics[metric.name] = metric.value
    evaluation.metrics[f"{metric.name}_unscored"] = sum(not v.ok for v in verdicts)


# --- outputs ---------------------------------------------------------------------------------

def write_predictions(evaluation: ModelEvaluation, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as stream:
        stream.writelines(json.dumps(row, ensure_ascii=False, default=float) + "\n" for row in evaluation.rows)
    tmp.replace(path)
    return path


def write_metrics(evaluation: ModelEvaluation, loaded: Loaded, settings: EvaluationSection, path: Path) -> Path:
    body = {
        "task": evaluation.task,
        "model": str(loaded.target.path),
        "data": loaded.origin,
        "metrics": evaluation.metrics,
        **{k: v for k, v in evaluation.details.items() if k != "text_scores"},
        "settings": settings.model_dump(mode="json"),
    }
    write_json_atomic(path, json.loads(json.dumps(body, default=float)))
    return path


def write_plots(evaluation: ModelEvaluation, out_dir: Path) -> list[Path]:
    """Confusion matrix and reliability diagram of labelled tasks (none for generation)."""
    import numpy as np

    from dstune.evaluate.calibration import plot_reliability
    from dstune.evaluate.plots import plot_confusion

    files = []
    if "confusion" in evaluation.details:
        c = evaluation.details["confusion"]
        xlabel = "outcome" if c["columns"] == ["TP", "FP", "FN", "TN"] else "predicted"
        files.append(plot_confusion(np.array(c["matrix"]), c["rows"], c["columns"], "Confusion matrix",
                                    out_dir / "plots" / "confusion_matrix.png", xlabel))
    if "calibration" in evaluation.details:
        files.append(plot_reliability(evaluation.details["calibration"], out_dir / "plots" / "reliability.png"))
    return files


def write_explanations(loaded: Loaded, evaluation: ModelEvaluation, count: int, out_dir: Path) -> list[Path]:
    """Attention heatmaps of the first ``count`` examples."""
    from dstune.evaluate.explain import causal_heatmap, classifier_heatmap, save_heatmaps
    from dstune.evaluate.generate import render_prompts

    maps = []
    for row in evaluation.rows[:count]:
        title = f"#{row['id']} {row['source']}"
        note = f"reference: {row['reference'][:60]} · prediction: {row['prediction'][:60]}"
        if loaded.kind == "causal-lm":
            prompt = render_prompts(loaded.tokenizer, [examples_from_records([loaded.records[row["id"]]])[0].prompt])[0]
            start = prompt.rfind(row["input"]) if row["input"] else -1
            span = (start, start + len(row["input"])) if start >= 0 else (0, len(prompt))
            maps.append(causal_heatmap(loaded.model, loaded.tokenizer, prompt, span, title, note))
        else:
            maps.append(classifier_heatmap(loaded.model, loaded.tokenizer, row["input"], _pooling(loaded), title, note))
    return list(save_heatmaps(maps, out_dir))


def _pooling(loaded: Loaded) -> str:
    from dstune.models.heads import read_head_cards
    from dstune.models.task_model import is_encoder

    _, specs = read_head_cards(loaded.weights) if loaded.weights else ({}, [])
    specs = [spec for spec in specs if loaded.target.task_name in (None, spec.name)]
    if specs:
        return specs[0].pooling
    return "cls" if is_encoder(getattr(loaded.model.config, "model_type", "")) else "last"


def _accuracy_name(evaluation: ModelEvaluation) -> str:
    return "exact_match" if evaluation.task == "generation" else "accuracy"


def log_to_mlflow(target: Target, metrics: dict, files: list[Path]) -> str | None:
    """Add ``eval/<metric>`` and the eval files to the run's own MLflow run (found by its run name)."""
    if not target.is_run or not target.config.tracking.mlflow.enabled:
        return None
    import time

    import mlflow
    from mlflow.entities import Metric as MlflowMetric

    from dstune.train.tracking import default_tracking_uri

    tracking = target.config.tracking.mlflow
    client = mlflow.MlflowClient(tracking_uri=tracking.tracking_uri or default_tracking_uri(Path(target.path)))
    experiment = client.get_experiment_by_name(tracking.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(tracking.experiment)
    name = tracking.run_name or Path(target.path).resolve().name
    found = client.search_runs([experiment_id], filter_string=f"tags.mlflow.runName = '{name}'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    run_id = found[0].info.run_id if found else client.create_run(experiment_id, run_name=name).info.run_id
    now = int(time.time() * 1000)
    numbers = [MlflowMetric(f"eval/{k}", float(v), now, 0) for k, v in metrics.items()
               if isinstance(v, int | float) and not isinstance(v, bool) and _MLFLOW_KEY.match(k) and math.isfinite(v)]
    client.log_batch(run_id, metrics=numbers)
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path="eval")
    if not found:
        client.set_terminated(run_id)
    return run_id
