"""The model card (README.md) written beside exported weights: where they came from and how well they do.

A Hugging Face model card: YAML front matter (base_model, library, tags) and a short body with the
training data, the run's config, its final metrics, the export verification and how to load or
serve the model (transformers, vLLM) — readable without dstune.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml


def write_model_card(directory: Path, *, name: str, source: Path, task: str, base_model: str | None,
                     verification: dict[str, Any] | None, artifact: str) -> Path:
    """Write ``directory/README.md`` for the artifact exported from ``source`` (a run directory or a model)."""
    run = _run_facts(source)
    front = {
        "library_name": "transformers",
        "pipeline_tag": {"causal-lm": "text-generation", "sequence-classification": "text-classification",
                         "token-classification": "token-classification"}[task],
        "tags": ["dstune", artifact] + ([run["method"]] if run.get("method") else []),
    }
    if base_model:
        front["base_model"] = base_model
    sections = [
        f"---\n{yaml.safe_dump(front, sort_keys=False, allow_unicode=True)}---\n",
        f"# {name}\n\nExported by `dstune export` ({artifact}) from `{source}`.\n",
        _training_section(run),
        _metrics_section(run.get("metrics")),
        _verification_section(verification),
        _usage_section(task, artifact),
        _config_section(run.get("config_text")),
    ]
    path = directory / "README.md"
    path.write_text("\n".join(s for s in sections if s), encoding="utf-8")
    return path


def _run_facts(source: Path) -> dict[str, Any]:
    """Base model, data, method and metrics of a run directory (empty for a plain model)."""
    config_file, metrics_file = source / "config.yaml", source / "metrics.json"
    if not config_file.is_file():
        return {}
    text = config_file.read_text(encoding="utf-8")
    config = yaml.safe_load(text) or {}
    data, method, training = config.get("data", {}), config.get("method", {}), config.get("training", {})
    return {
        "config_text": text,
        "base_model": config.get("model", {}).get("name"),
        "task": config.get("task", {}).get("type"),
        "train": data.get("train"),
        "validation": data.get("validation"),
        "method": method.get("type"),
        "method_facts": {k: method.get(k) for k in ("r", "alpha", "dropout", "targets") if k in method},
        "training_facts": {k: training.get(k) for k in ("epochs", "max_steps", "learning_rate", "batch_size")},
        "metrics": json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.is_file() else None,
    }


def _training_section(run: dict[str, Any]) -> str:
    if not run:
        return ""
    lines = ["## Training", "", f"- base model: `{run['base_model']}`", f"- task: {run['task']}",
             f"- training data: `{run['train']}`"]
    if run.get("validation"):
        lines.append(f"- validation data: `{run['validation']}`")
    facts = ", ".join(f"{k}={v}" for k, v in run["method_facts"].items())
    lines.append(f"- method: {run['method']}" + (f" ({facts})" if facts else ""))
    lines.append("- training: " + ", ".join(f"{k}={v}" for k, v in run["training_facts"].items() if v is not None))
    return "\n".join(lines) + "\n"


def _metrics_section(metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return ""
    rows = [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
            for k, v in metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)]
    return "## Final metrics\n\n| metric | value |\n| --- | --- |\n" + "\n".join(rows) + "\n"


def _verification_section(verification: dict[str, Any] | None) -> str:
    if not verification:
        return ""
    figures = ", ".join(f"{k} = {v:.3g}" if isinstance(v, float) else f"{k} = {v}"
                        for k, v in verification["figures"].items())
    status = "passed" if verification["passed"] else "FAILED"
    return f"## Export verification\n\n{verification['check']}: **{status}** ({figures}).\n"


def _usage_section(task: str, artifact: str) -> str:
    if artifact != "merged":
        return ""
    if task == "causal-lm":
        return (
            "## Use\n\n```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
            "tok = AutoTokenizer.from_pretrained(PATH)\nmodel = AutoModelForCausalLM.from_pretrained(PATH)\n"
            "ids = tok.apply_chat_template([{\"role\": \"user\", \"content\": \"Hi\"}], add_generation_prompt=True,"
            " return_tensors=\"pt\")\nprint(tok.decode(model.generate(ids, max_new_tokens=64)[0]))\n```\n\n"
            "Production serving (continuous batching, OpenAI-compatible): `vllm serve PATH`. "
            "The chat template used in training is saved with the tokenizer, so vLLM renders prompts the same way.\n"
        )
    return "## Use\n\n```python\nfrom transformers import pipeline\nclf = pipeline(\"" + (
        "text-classification" if task == "sequence-classification" else "token-classification"
    ) + "\", model=PATH)\n```\n"


def _config_section(config_text: str | None) -> str:
    if not config_text:
        return ""
    return f"## Run config\n\n<details><summary>config.yaml</summary>\n\n```yaml\n{config_text}```\n</details>\n"
