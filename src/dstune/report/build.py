"""`dstune report RUN_DIR`: one self-contained ``report.html`` with everything known about a run.

Sections, in the order a reader asks: summary → configuration → data → training curves → final
metrics → evaluation → confusion matrix → calibration → error analysis → comparisons → attention.
A section with nothing to show says which command produces it, so an empty report is still a guide.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from dstune.errors import DstuneError
from dstune.report import html as h

SECTIONS = [("summary", "Summary"), ("config", "Configuration"), ("data", "Data"), ("curves", "Training curves"),
            ("final", "Final metrics"), ("evaluation", "Evaluation"), ("confusion", "Confusion matrix"),
            ("calibration", "Calibration"), ("errors", "Error analysis"), ("comparisons", "Comparisons"),
            ("attention", "Attention")]
_HEADLINES = ("exact_match", "bleu", "chrf", "rougeL", "perplexity", "accuracy", "macro_f1", "f1", "roc_auc", "ece")
_REVIEW_ROWS = 40


class RunFiles:
    """Read-only view of what a run directory holds (missing files read as empty)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.eval = self.root / "eval"

    def json(self, relative: str) -> dict:
        path = self.root / relative
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def text(self, relative: str) -> str:
        path = self.root / relative
        return path.read_text(encoding="utf-8") if path.is_file() else ""

    def history(self) -> list[dict]:
        from dstune.train.history import read_history

        return read_history(self.root / "history.jsonl")

    def predictions(self) -> list[dict]:
        text = self.text("eval/predictions.jsonl")
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def build_report(run_dir: str | Path, out: Path | None = None) -> Path:
    """Write ``report.html`` (or ``out``) for ``run_dir`` and return its path."""
    run = RunFiles(Path(run_dir))
    if not (run.root / "config.yaml").is_file():
        raise DstuneError(f"{run.root} is not a dstune run directory (no config.yaml)",
                          hint="pass the output_dir of a `dstune train` run")
    with tempfile.TemporaryDirectory() as scratch:
        bodies = {
            "summary": summary(run), "config": configuration(run), "data": data(run),
            "curves": curves(run, Path(scratch)), "final": final_metrics(run), "evaluation": evaluation(run),
            "confusion": confusion(run), "calibration": calibration(run), "errors": errors(run),
            "comparisons": comparisons(run), "attention": attention(run),
        }
    body = h.toc(SECTIONS) + "\n".join(h.section(anchor, title, bodies[anchor]) for anchor, title in SECTIONS)
    out = Path(out) if out else run.root / "report.html"
    out.write_text(h.page(f"dstune report: {run.root.name}", body, str(run.root.resolve())), encoding="utf-8")
    return out


def _missing(what: str, command: str) -> str:
    return h.note(f"No {what} yet: run `{command}`.")


def summary(run: RunFiles) -> str:
    import yaml

    config = yaml.safe_load(run.text("config.yaml")) or {}
    metrics, scored = run.json("metrics.json"), run.json("eval/metrics.json").get("metrics", {})
    facts = [("model", config.get("model", {}).get("name")), ("task", config.get("task", {}).get("type")),
             ("method", config.get("method", {}).get("type")), ("steps", metrics.get("global_step")),
             ("wall time (s)", metrics.get("wall_time_s"))]
    losses = [(f"{split} loss {when}", metrics[f"{split}_loss_{when}"]) for split in ("train", "eval")
              for when in ("before", "after") if f"{split}_loss_{when}" in metrics]
    headline = [(f"eval {name}", scored[name]) for name in _HEADLINES if isinstance(scored.get(name), int | float)]
    state = "" if metrics else h.note("metrics.json is missing: the run did not finish.")
    return state + h.cards([(k, v) for k, v in facts if v is not None] + losses + headline)


def configuration(run: RunFiles) -> str:
    return ('<p class="muted">The resolved config.yaml: every default filled in, exactly what the run used.</p>'
            f"<pre>{h.esc(run.text('config.yaml'))}</pre>")


def data(run: RunFiles) -> str:
    metrics = run.json("metrics.json")
    rows = [(key.removeprefix("data_").replace("_", " "), value) for key, value in metrics.items()
            if key.startswith("data_") and isinstance(value, int | float)]
    parts = ["<h3>Training data</h3>",
             h.key_values(rows, "statistic") if rows else _missing("data statistics", "dstune train")]
    rejected = run.text("rejected.jsonl").count("\n")
    if rejected:
        parts.append(h.note(f"{rejected} rows were rejected; see rejected.jsonl for each row and its reason."))
    scored = run.json("eval/metrics.json")
    predictions = run.predictions()
    if scored:
        parts += ["<h3>Evaluation data</h3>", h.key_values(_eval_data_rows(scored, predictions), "statistic")]
    return "".join(parts)


def _eval_data_rows(scored: dict, predictions: list[dict]) -> list[tuple[str, object]]:
    rows = [("source", scored.get("data")), ("examples", scored.get("metrics", {}).get("examples"))]
    lengths = [len(p["reference"]) for p in predictions]
    if lengths and scored.get("task") == "generation":
        rows += [("reference length (chars), median", statistics.median(lengths)), ("longest reference", max(lengths))]
    elif predictions:
        counts: dict[str, int] = {}
        for p in predictions:
            counts[p["reference"]] = counts.get(p["reference"], 0) + 1
        rows += [(f"label: {name}", n) for name, n in sorted(counts.items(), key=lambda kv: -kv[1])[:15]]
    return rows


def curves(run: RunFiles, scratch: Path) -> str:
    from dstune.report.plots import plot_metric_curves, plot_training

    history = run.history()
    figures = [p for p in (plot_training(history, scratch / "loss.png"),
                           plot_metric_curves(history, scratch / "metrics.png")) if p is not None]
    others = sorted(p for p in (run.root / "plots").glob("*.png")
                    if p.name != "loss.png" and not p.name.startswith("confusion_matrix"))
    if not figures and not others:
        return _missing("training history", "dstune train")
    images = [h.image(p, p.stem) for p in figures + others]
    return f'<div class="plots">{"".join(images)}</div>'


def final_metrics(run: RunFiles) -> str:
    metrics = run.json("metrics.json")
    rows = [(k, v) for k, v in metrics.items() if isinstance(v, int | float | str) and not k.startswith("data_")]
    return h.key_values(rows) if rows else _missing("final metrics", "dstune train")


def evaluation(run: RunFiles) -> str:
    scored = run.json("eval/metrics.json")
    if not scored:
        return _missing("evaluation", f"dstune eval {run.root}")
    metrics = scored["metrics"]
    numbers = [(k, v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)]
    notes = []
    if scored.get("task") == "generation":
        notes.append(f"BLEU tokenizer: {metrics.get('bleu_tokenize')} (sacrebleu); ROUGE units: "
                     f"{metrics.get('rouge_units')}; think blocks: {metrics.get('think')}. perplexity is that of the "
                     "reference answers given their prompts; think_* metrics compare the model's <think> block with "
                     "the reference's, on the examples whose reference has one.")
    if "reviewer_adjusted_accuracy" in metrics:
        notes.append("reviewer_adjusted_accuracy re-estimates accuracy from the reviewers' verdicts (error analysis).")
    return (f'<p class="muted">Task: {h.esc(scored.get("task"))}; data: {h.esc(scored.get("data"))}.</p>'
            + "".join(h.note(n) for n in notes) + h.key_values(numbers))


def confusion(run: RunFiles) -> str:
    found = sorted((run.eval / "plots").glob("confusion_matrix*.png")) or sorted(
        (run.root / "plots").glob("confusion_matrix*.png"))
    if not found:
        task = run.json("eval/metrics.json").get("task")
        if task == "generation":
            return h.note("Not applicable: this is a generation (SFT) run; see Evaluation and Error analysis.")
        return _missing("confusion matrix", f"dstune eval {run.root}")
    source = "evaluation data" if found[0].parent == run.eval / "plots" else "validation data (training run)"
    return (f'<p class="muted">On the {source}. Rows: true label; columns: predicted.</p>'
            + "".join(h.image(p, p.stem) for p in found) + _label_key(run))


def _label_key(run: RunFiles) -> str:
    """Plots and metric names show non-Latin labels by index (#0, precision_0): say which label each is."""
    labels = run.json("eval/metrics.json").get("confusion", {}).get("rows", [])
    if all(name.isascii() for name in labels):
        return ""
    rows = [[f"#{i}", name] for i, name in enumerate(labels) if not name.isascii()]
    return ('<p class="muted">Labels outside Latin script appear by index in plots and metric names:</p>'
            + h.table(["index", "label"], rows))


def calibration(run: RunFiles) -> str:
    scored = run.json("eval/metrics.json")
    block = scored.get("calibration")
    if not block:
        if scored.get("task") == "generation":
            return h.note("Not applicable: calibration is measured on classifier probabilities.")
        return _missing("calibration", f"dstune eval {run.root}")
    parts = [h.cards([("expected calibration error", block["ece"]), ("largest bin gap", block["max_gap"])])]
    plot = run.eval / "plots" / "reliability.png"
    if plot.is_file():
        parts.append(h.image(plot, "reliability diagram"))
    thresholds = scored.get("thresholds")
    if thresholds:
        parts.append("<h3>Per-class thresholds (best F1 on the evaluated data; apply them to new data)</h3>")
        parts.append(h.table(["class", "threshold"], [[k, v] for k, v in thresholds.items()]))
    return "".join(parts)


def errors(run: RunFiles) -> str:
    from dstune.evaluate.review import review_table_html

    csv_path = run.eval / "review.csv"
    if not csv_path.is_file():
        return _missing("error-analysis sample", f"dstune eval {run.root} --sample 500")
    parts = []
    results = run.json("eval/review_results.json")
    if results:
        cards = [("reviewed", results["reviewed"]), ("accepted by reviewers", results["accepted"])]
        if "reviewer_adjusted_accuracy" in results:
            cards += [("automatic accuracy", results["auto_accuracy"]),
                      ("reviewer-adjusted accuracy", results["reviewer_adjusted_accuracy"])]
        parts.append(h.cards(cards))
        if "reviewer_adjusted_accuracy" in results:
            parts.append('<p class="muted">Reviewer-adjusted accuracy applies each reviewed stratum\'s accepted '
                         "share to every example of that stratum; strata nobody reviewed keep their automatic "
                         f"verdict ({results['metric']}).</p>")
        if results["error_categories"]:
            parts.append(h.table(["error category", "count"], [[k, v] for k, v in results["error_categories"].items()]))
    else:
        parts.append(h.note("Not reviewed yet: fill reviewer_verdict and error_category in eval/review.csv, then "
                            f"run `dstune eval {run.root} --import-review {csv_path}`."))
    parts.append('<p class="muted">A stratified sample of errors and near misses. auto_score: sentence chrF '
                 "(generation) or the top-2 probability margin (classification).</p>")
    return "".join(parts) + review_table_html(csv_path, _REVIEW_ROWS)


def comparisons(run: RunFiles) -> str:
    files = sorted(run.eval.glob("compare_*.json"))
    if not files:
        return _missing("comparison", f"dstune compare BASE_MODEL {run.root} --data FILE")
    parts = []
    for path in files:
        c = json.loads(path.read_text(encoding="utf-8"))
        parts.append(f"<h3>A = {h.esc(c['a'])} vs B = {h.esc(c['b'])} "
                     f'<span class="muted">({c["examples"]} examples from {h.esc(c["data"])})</span></h3>')
        rows = [[m["metric"], m["a"], m["b"], m["diff"], f"[{m['ci_low']:+.3g}, {m['ci_high']:+.3g}]", m["p_value"],
                 m["test"], f"{m['wins']}/{m['ties']}/{m['losses']}", m["verdict"]] for m in c["metrics"]]
        parts.append(h.table(["metric", "A", "B", "B − A", "95% CI", "p", "test", "B win/tie/loss", "verdict"], rows,
                             text_columns=[8], css_class="wide"))
        if c.get("pairwise_judge"):
            p = c["pairwise_judge"]
            parts.append(h.note(f"Pairwise judge: B wins {p['b_wins']}, A wins {p['a_wins']}, ties {p['ties']}, "
                                f"orders disagreed {p['inconsistent']}; p = {p['p_value']:.3g} ({p['test']})."))
    return "".join(parts)


def attention(run: RunFiles) -> str:
    from dstune.evaluate.explain import load_heatmaps, render_heatmaps

    path = run.eval / "explain.json"
    if not path.is_file():
        return _missing("attention heatmaps", f"dstune eval {run.root} --explain 5")
    return render_heatmaps(load_heatmaps(path))
