"""Measure the peak memory of a short real training run on this CPU, next to `dstune plan`'s prediction.

Each case runs in its own subprocess (peak RSS, ``VmHWM``, is per process): the model is loaded the
way ``dstune train`` loads it (``dstune.models.load``), the method is applied by ``dstune.models.adapters``
(LoRA: the architecture's default targets, r=16, dropout 0.1), and the Hugging Face Trainer runs a few
AdamW steps on fixed-length random token rows (no evaluation, no checkpoints). The process records its
RSS right after the imports (the runtime baseline) and its peak at the end.

    python benchmarks/plan_memory.py                       # tiny Llama + SmolLM2-135M, full and LoRA
    python benchmarks/plan_memory.py --model models/SmolLM2-135M-Instruct --method full --batch-size 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = ROOT / "models" / "SmolLM2-135M-Instruct"


def _peak_rss() -> int:
    """Peak RSS of this process (VmHWM): ``ru_maxrss`` would carry over the parent's peak across fork + exec."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024


def run_case(model: str, method: str, batch_size: int, seq_len: int, steps: int, gradient_checkpointing: bool) -> dict:
    """The training run itself (call in a fresh process): peak RSS after imports and at the end, in bytes."""
    import torch
    import transformers  # noqa: F401
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from dstune.config.schema import MethodSection, ModelSection
    from dstune.models.adapters import apply_method
    from dstune.models.load import load_causal_lm

    torch.set_num_threads(int(os.environ.get("PLAN_MEMORY_THREADS", "1")))
    baseline = _peak_rss()
    method_cfg = MethodSection(type=method)
    lm = load_causal_lm(ModelSection(name=model, dtype="float32"), method_cfg)
    lm, _ = apply_method(lm, method_cfg)
    vocab = lm.config.get_text_config().vocab_size
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (batch_size * steps, seq_len), generator=generator).tolist()
    data = Dataset.from_dict({"input_ids": ids, "labels": ids})
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=1e-5,
            save_strategy="no", eval_strategy="no", report_to=[], logging_steps=steps, use_cpu=True,
            dataloader_num_workers=0, disable_tqdm=True,
            **({"gradient_checkpointing": True} if gradient_checkpointing else {}),
        )
        Trainer(model=lm, args=args, train_dataset=data).train()
    return {"baseline_bytes": baseline, "peak_bytes": _peak_rss()}


def measure(model: str | Path, method: str, batch_size: int, seq_len: int, steps: int = 3,
            gradient_checkpointing: bool = False) -> dict:
    """Run :func:`run_case` in a subprocess and return its measurements."""
    cmd = [sys.executable, __file__, "--child", "--model", str(model), "--method", method,
           "--batch-size", str(batch_size), "--seq-len", str(seq_len), "--steps", str(steps)]
    if gradient_checkpointing:
        cmd.append("--gradient-checkpointing")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"measurement failed ({' '.join(cmd)}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(model: str | Path, method: str, batch_size: int, seq_len: int, steps: int = 3,
            gradient_checkpointing: bool = False) -> dict:
    """Predicted (``dstune.plan``, CPU fp32) and measured peak memory for one case, in bytes."""
    from dstune.plan import PlanSettings, cpu_estimate, read_model

    facts = read_model(str(model))
    settings = PlanSettings(seq_len=seq_len, gradient_checkpointing=gradient_checkpointing)
    predicted = cpu_estimate(facts, method, batch_size, settings)
    measured = measure(model, method, batch_size, seq_len, steps, gradient_checkpointing)
    return {
        "model": Path(str(model)).name, "method": method, "batch_size": batch_size, "seq_len": seq_len,
        "gradient_checkpointing": gradient_checkpointing,
        "predicted_total": predicted.total, "measured_total": measured["peak_bytes"],
        "predicted_increment": predicted.total - predicted.baseline,
        "measured_increment": measured["peak_bytes"] - measured["baseline_bytes"],
        "measured_baseline": measured["baseline_bytes"], "predicted_baseline": predicted.baseline,
    }


def comparison_table(rows: list[dict]) -> str:
    """A plain-text table: total and increment above the runtime baseline, predicted vs measured (MiB)."""
    mib = 2**20
    header = (f"{'model':<24}{'method':<6}{'b×s':>8}{'gc':>4} | {'pred MiB':>9}{'meas MiB':>9}{'err':>7} | "
              f"{'pred Δ':>8}{'meas Δ':>8}{'err Δ':>7}")
    lines = [header]
    for r in rows:
        err = r["predicted_total"] / r["measured_total"] - 1
        err_inc = r["predicted_increment"] / r["measured_increment"] - 1 if r["measured_increment"] > 0 else float("nan")
        lines.append(
            f"{r['model']:<24}{r['method']:<6}{str(r['batch_size']) + '×' + str(r['seq_len']):>8}"
            f"{'y' if r['gradient_checkpointing'] else 'n':>4} | {r['predicted_total'] / mib:>9.0f}"
            f"{r['measured_total'] / mib:>9.0f}{err:>+7.0%} | {r['predicted_increment'] / mib:>8.0f}"
            f"{r['measured_increment'] / mib:>8.0f}{err_inc:>+7.0%}"
        )
    return "\n".join(lines)


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model")
    parser.add_argument("--method", choices=["full", "lora"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(args.model, args.method, args.batch_size, args.seq_len, args.steps,
                                  args.gradient_checkpointing)))
        return
    if args.model:
        cases = [(args.model, m, args.batch_size, args.gradient_checkpointing)
                 for m in ([args.method] if args.method else ["full", "lora"])]
    else:
        from dstune.testing import save_tiny_causal_lm

        tiny = save_tiny_causal_lm(Path(tempfile.mkdtemp()) / "tiny-llama", arch="llama")
        cases = [(tiny, "full", 4, False), (tiny, "lora", 4, False)]
        cases += [(SMOLLM2, m, 4, gc) for m in ("full", "lora") for gc in (False, True)]
    rows = [compare(model, method, b, args.seq_len, args.steps, gc) for model, method, b, gc in cases]
    print(comparison_table(rows))


if __name__ == "__main__":
    _main()
