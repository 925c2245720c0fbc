"""SFT throughput: vanilla transformers.Trainer + peft against dstune's train path, same model, data and settings.

    python benchmarks/sft_throughput.py                       # 30 steps per run, every variant once
    python benchmarks/sft_throughput.py --steps 40 --repeats 3 --runs vanilla,dstune

Model SmolLM2-135M-Instruct and English chat rows (examples/data/chatterbot_en.jsonl), both made by
``examples/prepare_quickstart.py``; the first ``--examples`` rows (default 256), LoRA r16 alpha32
dropout 0.1 on the architecture's default targets, batch 8, max_length 256, lr 2e-4 constant, the
same seed and the same random data order in every run. Each run is its own subprocess, so peak RSS
(``VmHWM`` of that process) is per run.

vanilla: ``AutoModelForCausalLM`` fp32 + ``peft.get_peft_model`` + ``Trainer`` with
``DataCollatorForSeq2Seq`` dynamic padding; conversations tokenized the plain way with the chat
template, loss on every assistant turn (content and ``<|im_end|>``), as dstune trains.
dstune-*: :func:`dstune.train.recipe.train` (what ``dstune train`` runs), with the settings in RUNS.

Printed per run: real (non-padding) tokens/s over the timed steps (the first step is warm-up),
padding fraction, peak RSS, the mean loss of the last 5 steps, model-FLOPs utilisation against the
fp32 and bf16 matmul peaks this script measures (square ``torch.matmul``; 4 FLOPs per frozen parameter
per token: forward and input gradient, no weight gradient under LoRA), the ratios to vanilla, and the
loss curves side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct"
DATA = ROOT / "examples" / "data" / "chatterbot_en.jsonl"
BATCH, MAX_LENGTH, LR, SEED = 8, 256, 2e-4, 42
LORA = {"r": 16, "alpha": 32, "dropout": 0.1}
LORA_FLOPS_PER_PARAM = 4
"""Forward (2) + input gradient (2) per frozen parameter and token; frozen weights get no weight gradient,
so the usual 6 of full training would overstate the work (the adapters themselves add ~4% of parameters)."""

# name -> dstune config overrides (None: the vanilla baseline). Each adds one lever to the one before.
RUNS: dict[str, dict | None] = {
    "vanilla": None,
    "dstune-padded": {"training": {"packing": False}},  # length-grouped padding + loss at labelled positions
    "dstune": {},  # defaults: packing (per-example attention) + loss at labelled positions + cheap dropout masks, fp32
    "dstune-bf16w": {"method": {"frozen_dtype": "bfloat16"}},  # frozen weights + their matmuls bf16 (AMX), rest fp32
    "dstune-bf16": {"model": {"dtype": "bfloat16"}},  # whole model bf16 (activations too), LoRA adapters fp32
}


def _peak_rss_kib() -> int:
    """Peak RSS of this process in KiB (VmHWM; ``ru_maxrss`` would carry over the parent's peak across exec)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run (first one is warm-up)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each variant; the median is reported")
    parser.add_argument("--examples", type=int, default=256, help="training rows (first N of the data file)")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {', '.join(RUNS)}")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: torch's)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if not MODEL.is_dir() or not DATA.is_file():
        sys.exit("run `python examples/prepare_quickstart.py` first (makes the model folder and the chat data)")

    peaks = matmul_peaks(args.threads)
    print(f"matmul peak ({args.threads or 'default'} threads): fp32 {peaks['float32']:.0f} GFLOP/s, "
          f"bf16 {peaks['bfloat16']:.0f} GFLOP/s", flush=True)
    results: dict[str, list[dict]] = {}
    for repeat in range(args.repeats):
        for name in args.runs.split(","):
            result = run_child(name, args)
            results.setdefault(name, []).append(result)
            print(f"[{repeat + 1}/{args.repeats}] {name}: {result['real_tokens_per_s']:.0f} real tok/s, "
                  f"peak RSS {result['peak_rss_gb']:.2f} GB, loss {result['final_loss']:.4f}", flush=True)
    report(results, peaks)


def run_child(name: str, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, __file__, "--child", name, "--out", str(out), "--steps", str(args.steps),
                   "--examples", str(args.examples)] + (["--threads", str(args.threads)] if args.threads else [])
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "MPLBACKEND": "Agg"}
        done = subprocess.run(command, env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              check=False)
        if done.returncode:
            sys.exit(f"run {name} failed:\n{done.stderr[-4000:]}")
        return json.loads(out.read_text())


# -- one run (in its own process) ------------------------------------------------------------------------------


class StepMeter:
    """Counts real and padded tokens of each training batch and times each step (a collator wrapper + callback)."""

    def __init__(self, collator):
        self.collator = collator
        self.batches: list[tuple[int, int]] = []  # (real tokens, tokens incl. padding), in collation order
        self.step_times: list[float] = []
        self.losses: list[float] = []

    def __call__(self, features):
        batch = self.collator(features)
        total = batch["input_ids"].numel()
        real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else total
        self.batches.append((real, total))
        return batch

    def callback(self):
        from transformers import TrainerCallback

        meter = self

        class Timer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                self.started = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                meter.step_times.append(time.perf_counter() - self.started)

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    meter.losses.append(float(logs["loss"]))

        return Timer()

    def summary(self) -> dict:
        steps = len(self.step_times)
        real = sum(r for r, _ in self.batches[1:steps])
        total = sum(t for _, t in self.batches[1:steps])
        seconds = sum(self.step_times[1:])
        return {
            "steps": steps,
            "real_tokens_per_s": real / seconds,
            "padding_fraction": 1 - real / total,
            "seconds_per_step": seconds / max(1, steps - 1),
            "losses": self.losses,
            "final_loss": sum(self.losses[-5:]) / len(self.losses[-5:]),
        }


def child(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()[: args.examples]]
    overrides = RUNS[args.child]
    started = time.perf_counter()
    meter, model = vanilla(rows, args.steps) if overrides is None else dstune(overrides, args.steps, args.examples)
    result = {
        **meter.summary(),
        "name": args.child,
        "params": sum(p.numel() for name, p in model.named_parameters() if "lora_" not in name),
        "wall_s": time.perf_counter() - started,
        "peak_rss_gb": _peak_rss_kib() / 1024**2,
    }
    Path(args.out).write_text(json.dumps(result))


def training_defaults() -> dict:
    return {"per_device_train_batch_size": BATCH, "learning_rate": LR, "lr_scheduler_type": "constant",
            "warmup_steps": 0, "weight_decay": 0.0, "max_grad_norm": 1.0, "seed": SEED, "data_seed": SEED,
            "logging_steps": 1, "save_strategy": "no", "eval_strategy": "no", "report_to": [],
            "dataloader_num_workers": 0, "disable_tqdm": True}


def vanilla(rows: list[dict], steps: int):
    """The plain recipe: fp32 model, peft LoRA, Trainer, DataCollatorForSeq2Seq dynamic padding."""
    import datasets
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from dstune.models.registry import default_lora_targets

    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    encoded = [plain_encode(tokenizer, row["messages"]) for row in rows]
    train = datasets.Dataset.from_list(encoded)
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    targets = default_lora_targets(model.config.model_type)
    model = get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                             target_modules=targets, task_type="CAUSAL_LM"))
    meter = StepMeter(DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100, return_tensors="pt"))
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model=model, args=TrainingArguments(output_dir=out, max_steps=steps, **training_defaults()),
                          train_dataset=train, data_collator=meter, callbacks=[meter.callback()])
        trainer.train()
    return meter, model


def plain_encode(tokenizer, messages: list[dict]) -> dict:
    """Chat-template ids; labels on each assistant turn's tokens up to its ``<|im_end|>`` (prefix differences)."""
    ids = render_ids(tokenizer, messages)
    labels = [-100] * len(ids)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(render_ids(tokenizer, messages[:i], generation_prompt=True))
        stop = len(render_ids(tokenizer, messages[: i + 1]))
        while stop > start and ids[stop - 1] != end:  # the template's newline after <|im_end|> is not a target
            stop -= 1
        labels[start:stop] = ids[start:stop]
    return {"input_ids": ids[:MAX_LENGTH], "labels": labels[:MAX_LENGTH]}


def render_ids(tokenizer, messages: list[dict], generation_prompt: bool = False) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def dstune(overrides: dict, steps: int, examples: int):
    """dstune's train path (``dstune train``) with a meter around the Trainer it builds."""
    from dstune.config import validate_config
    from dstune.train import recipe

    meter: StepMeter | None = None
    build = recipe._build_trainer

    def build_with_meter(*args, **kwargs):
        nonlocal meter
        trainer = build(*args, **kwargs)
        meter = StepMeter(trainer.data_collator)
        trainer.data_collator = meter
        trainer.add_callback(meter.callback())
        return trainer

    recipe._build_trainer = build_with_meter
    with tempfile.TemporaryDirectory() as out:
        raw = {
            "model": {"name": str(MODEL), **overrides.get("model", {})},
            "data": {"train": str(DATA), "format": "messages", "max_samples": examples, "max_length": MAX_LENGTH,
                     "eval_split": 0},
            "method": {"type": "lora", **LORA, **overrides.get("method", {})},
            "training": {"max_steps": steps, "batch_size": BATCH, "learning_rate": LR, "lr_scheduler": "constant",
                         "warmup_ratio": 0.0, "eval_strategy": "no", "save_strategy": "no", "logging_steps": 1,
                         "early_stopping_patience": None, "seed": SEED, **overrides.get("training", {})},
            "tracking": {"mlflow": {"enabled": False}},
            "output_dir": str(Path(out) / "run"),
        }
        result = recipe.train(validate_config(raw), log=lambda *a: None)
    return meter, result.model


# -- the parent: peaks and the table ----------------------------------------------------------------------------


def matmul_peaks(threads: int | None) -> dict[str, float]:
    """Best GFLOP/s of a square ``torch.matmul`` per dtype: 2048x2048, or smaller where a dtype is slow here.

    Without native bf16 (AVX512-BF16 / AMX) a bf16 matmul is emulated and can be ~100x slower than fp32,
    so the size is picked from a 256x256 probe to keep each product around 0.2 s.
    """
    import torch

    if threads:
        torch.set_num_threads(threads)
    peaks = {}
    for dtype in (torch.float32, torch.bfloat16):
        probe = torch.randn(256, 256, dtype=dtype)
        started = time.perf_counter()
        probe @ probe
        seconds = max(time.perf_counter() - started, 1e-6)
        n = 2048
        while n > 256 and seconds * (n / 256) ** 3 > 0.2:
            n //= 2
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - started)
        peaks[str(dtype).removeprefix("torch.")] = 2 * n**3 / best / 1e9
    return peaks


def median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def report(results: dict[str, list[dict]], peaks: dict[str, float]) -> None:
    rows = {name: {key: median([r[key] for r in runs]) for key in
                   ("real_tokens_per_s", "padding_fraction", "peak_rss_gb", "final_loss", "seconds_per_step")}
            for name, runs in results.items()}
    base = rows.get("vanilla")
    params = next(iter(results.values()))[0]["params"]
    print(f"\n{'run':<16}{'real tok/s':>11}{'padding':>9}{'peak RSS':>10}{'loss(last5)':>12}{'MFU fp32':>10}"
          f"{'MFU bf16':>10}{'x tok/s':>9}{'x RSS':>7}")
    for name, row in rows.items():
        flops = LORA_FLOPS_PER_PARAM * params * row["real_tokens_per_s"] / 1e9
        ratio = (f"{row['real_tokens_per_s'] / base['real_tokens_per_s']:>9.2f}{row['peak_rss_gb'] / base['peak_rss_gb']:>7.2f}"
                 if base else "")
        print(f"{name:<16}{row['real_tokens_per_s']:>11.0f}{row['padding_fraction']:>9.1%}"
              f"{row['peak_rss_gb']:>8.2f}GB{row['final_loss']:>12.4f}{flops / peaks['float32']:>10.1%}"
              f"{flops / peaks['bfloat16']:>10.1%}{ratio}")
    print("\nloss curves (first repeat; same rows, same order, same seed):")
    curves = {name: runs[0]["losses"] for name, runs in results.items()}
    width = max(len(c) for c in curves.values())
    print("step " + "".join(f"{name:>16}" for name in curves))
    for step in range(width):
        if step < 5 or step % 5 == 4 or step == width - 1:
            print(f"{step + 1:>4} " + "".join(f"{c[step]:>16.4f}" if step < len(c) else " " * 16 for c in curves.values()))
    print(f"\n{params / 1e6:.1f}M parameters; {len(next(iter(results.values())))} repeat(s), medians shown")


if __name__ == "__main__":
    main()
