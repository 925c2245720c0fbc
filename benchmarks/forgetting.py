"""Catastrophic forgetting, measured: SmolLM2-135M-Instruct fine-tuned on task A, then on task B, four ways.

* Task A: English conversations from `chatterbot-corpus` (categories ai, computers, science,
  psychology, literature, emotion, ...) — real chat data shipped in a PyPI package.
* Task B: the Chinese conversations of the same corpus (every category).
* Model: SmolLM2-135M-Instruct (models/SmolLM2-135M-Instruct, made by examples/prepare_quickstart.py).

Stage A trains a LoRA adapter on task A with `dstune train` and merges it into the weights (the
starting model of task B; cached in the output folder). Stage B then trains a fresh LoRA adapter on
task B from that model four times, identical except for `continual`:

    plain    no protection
    ewc      continual.ewc (Fisher of task A's data at the stage-B starting point)
    distill  continual.distill with teacher: base (the stage-A model: adapters disabled, no second copy)
    replay   continual.replay of task-A training rows

Every run evaluates task A's held-out set through `continual.retain_eval`, so the table's numbers come
straight from each run's metrics.json: task-B eval loss (lower is better), task-A loss before and
after, and the forgetting (task-A loss after minus before; lower is better).

    .venv/bin/python benchmarks/forgetting.py                      # the defaults used for the note
    .venv/bin/python benchmarks/forgetting.py --steps-b 8 --quick  # a faster smoke run

CPU time: LoRA sits on the last `--lora-layers` decoder layers only, so the backward pass stops
there; sequences are short chat turns with a one-word system prompt. Results go to
<out>/results.json and <out>/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import yaml

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct"
TASK_A_CATEGORIES = ["ai", "computers", "science", "psychology", "literature", "emotion", "food", "money",
                     "movies", "sports", "history", "humor", "greetings", "conversations", "botprofile"]
SYSTEM_PROMPT = "Chat."
VARIANTS = ("plain", "ewc", "distill", "replay")


def corpus_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None:
        sys.exit("chatterbot-corpus is missing: pip install --no-deps chatterbot-corpus")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def first_exchanges(language: str, categories: list[str] | None) -> list[dict]:
    """One user/assistant exchange (the first two turns) per conversation, as `messages` rows."""
    rows = []
    for path in sorted((corpus_dir() / language).glob("*.yml")):
        if categories is not None and path.stem not in categories:
            continue
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for turns in doc.get("conversations") or []:
            turns = [str(t).strip() for t in turns if str(t).strip()]
            if len(turns) >= 2 and len(turns[0]) + len(turns[1]) <= 160:
                rows.append({"messages": [{"role": "user", "content": turns[0]},
                                          {"role": "assistant", "content": turns[1]}]})
    return rows


def write_splits(rows: list[dict], folder: Path, n_train: int, n_val: int, seed: int) -> dict[str, str]:
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    if len(rows) < n_train + n_val:
        sys.exit(f"only {len(rows)} rows for {folder.name}; lower --train/--val")
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, part in (("train", rows[:n_train]), ("val", rows[n_train : n_train + n_val])):
        paths[name] = str(folder / f"{name}.jsonl")
        Path(paths[name]).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part), "utf-8")
    return paths


def lora_targets(model: Path, layers: int) -> list[str]:
    """q/v/o/down projections of the last ``layers`` decoder layers (the backward pass stops below them)."""
    total = json.loads((model / "config.json").read_text())["num_hidden_layers"]
    names = ["self_attn.q_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.down_proj"]
    return [f"layers.{i}.{name}" for i in range(max(0, total - layers), total) for name in names]


def run_config(args, model: Path, train: str, val: str, out: Path, steps: int, continual: dict | None) -> dict:
    evals = max(1, steps // 2)
    return {
        "model": {"name": str(model)},
        "data": {"train": train, "validation": val, "max_length": args.max_length, "format": "messages",
                 "system_prompt": SYSTEM_PROMPT, "on_error": "skip"},
        "method": {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "targets": lora_targets(model, args.lora_layers)},
        "training": {"max_steps": steps, "batch_size": args.batch_size, "learning_rate": args.lr,
                     "warmup_ratio": 0.0, "lr_scheduler": "constant", "eval_strategy": "steps",
                     "eval_steps": evals, "logging_steps": 1, "early_stopping_patience": None,
                     "save_total_limit": 1, "seed": args.seed},
        "continual": continual,
        "tracking": {"mlflow": {"enabled": False}},
        "output_dir": str(out),
    }


def train_run(raw: dict) -> dict:
    from dstune.config import validate_config
    from dstune.train.recipe import train

    out = Path(raw["output_dir"])
    if out.exists():
        shutil.rmtree(out)
    started = time.time()
    result = train(validate_config(raw), log=lambda *a: print(*[x for x in a if isinstance(x, str)], flush=True))
    print(f"  {out.name}: {time.time() - started:.0f} s", flush=True)
    return result.metrics


def stage_a(args, data_a: dict[str, str]) -> Path:
    """Fine-tune on task A and merge the adapter: the model stage B starts from (reused when present)."""
    merged = args.out / "model_a"
    if (merged / "config.json").is_file():
        print(f"stage A: reusing {merged}")
        return merged
    raw = run_config(args, args.model, data_a["train"], data_a["val"], args.out / "runs" / "a", args.steps_a, None)
    metrics = train_run(raw)
    print(f"stage A: task-A eval loss {metrics['eval_loss_before']:.3f} -> {metrics['eval_loss_after']:.3f}")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(args.model)
    model = PeftModel.from_pretrained(base, args.out / "runs" / "a" / "adapter").merge_and_unload()
    model.save_pretrained(merged)
    AutoTokenizer.from_pretrained(args.out / "runs" / "a" / "adapter").save_pretrained(merged)
    return merged


def continual_section(variant: str, args, data_a: dict[str, str]) -> dict:
    section: dict = {"retain_eval": {"task_a": data_a["val"]}, "retain_max_samples": args.val}
    if variant == "ewc":
        section["ewc"] = {"lambda": args.ewc_lambda, "fisher_data": data_a["train"], "fisher_samples": args.fisher}
    elif variant == "distill":
        section["distill"] = {"teacher": "base", "alpha": args.kd_alpha, "temperature": args.kd_temperature}
    elif variant == "replay":
        section["replay"] = {"data": data_a["train"], "ratio": args.replay_ratio}
    return section


def summarise(variant: str, m: dict) -> dict:
    return {
        "variant": variant,
        "task_b_loss_before": m["eval_loss_before"],
        "task_b_loss_after": m["eval_loss_after"],
        "task_a_loss_before": m["retain_task_a_loss_before"],
        "task_a_loss_after": m["retain_task_a_loss_after"],
        "forgetting": m["forgetting_task_a"],
        "wall_time_s": m["wall_time_s"],
    }


def table(rows: list[dict]) -> str:
    plain = next((r for r in rows if r["variant"] == "plain"), None)
    header = ("| variant | task-B eval loss (before → after) | task-A loss (before → after) | forgetting | "
              "forgetting vs plain | wall s |")
    lines = [header, "|---|---|---|---|---|---|"]
    for r in rows:
        relative = f"{100 * r['forgetting'] / plain['forgetting']:.0f}%" if plain and plain["forgetting"] > 0 else "-"
        lines.append(
            f"| {r['variant']} | {r['task_b_loss_before']:.3f} → {r['task_b_loss_after']:.3f} | "
            f"{r['task_a_loss_before']:.3f} → {r['task_a_loss_after']:.3f} | {r['forgetting']:+.3f} | "
            f"{relative} | {r['wall_time_s']:.0f} |"
        )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_forgetting")
    p.add_argument("--model", type=Path, default=MODEL, help="a Hugging Face causal-LM folder")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--train", type=int, default=32, help="training rows per task")
    p.add_argument("--val", type=int, default=12, help="held-out rows per task (task-B eval, task-A retain)")
    p.add_argument("--steps-a", type=int, default=10)
    p.add_argument("--steps-b", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-length", type=int, default=48)
    p.add_argument("--lora-layers", type=int, default=8, help="LoRA on the last N decoder layers")
    p.add_argument("--ewc-lambda", type=float, default=5e4)
    p.add_argument("--fisher", type=int, default=16, help="task-A examples for the Fisher")
    p.add_argument("--kd-alpha", type=float, default=0.5)
    p.add_argument("--kd-temperature", type=float, default=1.0)
    p.add_argument("--replay-ratio", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads; 1 is fastest on a shared machine (more threads oversubscribe it)")
    p.add_argument("--quick", action="store_true", help="smaller sets (24 train / 8 val rows)")
    args = p.parse_args()
    if args.quick:
        args.train, args.val = 16, 8
    return args


def main() -> None:
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if not (args.model / "config.json").is_file():
        sys.exit(f"{args.model} is missing: run examples/prepare_quickstart.py first")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    data_a = write_splits(first_exchanges("english", TASK_A_CATEGORIES), args.out / "data" / "a", args.train,
                          args.val, args.seed)
    data_b = write_splits(first_exchanges("chinese", None), args.out / "data" / "b", args.train, args.val,
                          args.seed)
    model_a = stage_a(args, data_a)
    rows = []
    for variant in args.variants:
        print(f"stage B: {variant}", flush=True)
        raw = run_config(args, model_a, data_b["train"], data_b["val"], args.out / "runs" / f"b_{variant}",
                         args.steps_b, continual_section(variant, args, data_a))
        rows.append(summarise(variant, train_run(raw)))
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    (args.out / "results.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n")
    text = table(rows)
    (args.out / "results.md").write_text(text + "\n")
    print(text)
    print(f"total wall time {time.time() - started:.0f} s; results in {args.out}")


if __name__ == "__main__":
    main()
