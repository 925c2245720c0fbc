"""`dstune bench ARTIFACT`: latency p50/p95/p99 and throughput, PyTorch eager vs ONNX fp32 vs ONNX int8.

All backends run in one process on the same inputs, with the same thread count, after warm-up,
interleaved call by call (a busy machine slows every backend alike).
Classifiers: one forward per batch of ``seq_len`` tokens. Causal LMs: the prompt forward
("prefill") and single-token steps on a KV cache ("decode", reported as tokens/s). The ONNX
causal-LM step is exported for batch 1, so larger batches are measured on PyTorch only.

With CUDA, ONNX Runtime's TensorRT and CUDA providers are tried too; which ones were available,
used, or failed is part of the result. The table is printed and saved as ``bench.json`` in the
export folder.
"""

from __future__ import annotations

import copy
import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dstune.config.deploy import BenchSection
from dstune.errors import DstuneError
from dstune.export.bundle import Bundle, find_bundle
from dstune.export.runtime import OnnxCausalLM, cpu_count, load_exported, onnx_session
from dstune.export.source import Deployable, load_deployable, require_transformers_model

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
_LABELS = {"onnx": "onnx-fp32", "onnx-int8": "onnx-int8"}
_DECODE_ROUNDS = 4  # decode runs are split into rounds, interleaved across backends
_FILLER = ("The borrower reported steady revenue, but payments were late twice last quarter. "
           "合同约定乙方应按期交付货物，否则承担违约责任。 ")


@dataclass
class BenchRow:
    backend: str
    phase: str  # forward | prefill | decode
    batch: int
    seq_len: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    sequences_per_s: float
    tokens_per_s: float


@dataclass
class Backend:
    """One way of running the model: ``run(inputs)`` for a forward, ``decode`` for causal-LM steps."""

    name: str
    run: Callable[[dict], Any]
    decode: Callable[[list[int], int], list[float]] | None = None
    max_batch: int | None = None


def bench(artifact: str | Path, settings: BenchSection, log: Callable = print) -> dict[str, Any]:
    """Benchmark every backend available for ``artifact``; write ``bench.json``; return the result."""
    threads = settings.threads or cpu_count()
    torch.set_num_threads(threads)
    bundle, source, notes = _locate(Path(artifact))
    deployable = load_deployable(source, dtype="float32")
    require_transformers_model(deployable, "dstune bench")
    model = _plain(deployable)
    providers = _providers()
    backends = [_eager(deployable, model, "pytorch-eager")]
    if torch.cuda.is_available():
        backends.append(_eager(deployable, copy.deepcopy(model).to("cuda"), "pytorch-eager[cuda]", device="cuda"))
    for name in ("onnx", "onnx-int8"):
        directory = bundle.verified(name) if bundle else None
        if directory is None:
            notes.append(f"{name}: no verified export; run `dstune export {source} --format onnx --quantize int8`")
            continue
        backends += _onnx_backends(_LABELS[name], directory, deployable.task, threads, providers)
    if deployable.task == "causal-lm" and max(settings.batch_sizes) > 1:
        notes.append("the ONNX causal-LM step is exported for batch 1: larger batches are PyTorch only")
    rows = _measure(backends, deployable, settings, log)
    result = {
        "source": str(source),
        "task": deployable.task,
        "threads": threads,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores_usable": cpu_count(),
                    "torch": torch.__version__, "cuda": torch.cuda.is_available()},
        "providers": providers,
        "settings": settings.model_dump(),
        "rows": [asdict(r) for r in rows],
        "notes": notes,
    }
    out = (bundle.root if bundle else Path(".")) / "bench.json"
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    result["path"] = str(out)
    return result


def _locate(artifact: Path) -> tuple[Bundle | None, Path, list[str]]:
    """The export folder (if any) and the PyTorch source of ``artifact``."""
    try:
        bundle = find_bundle(artifact)
    except DstuneError:
        if not artifact.exists():
            raise
        return None, artifact, ["no export folder found: PyTorch only"]
    source = bundle.manifest().get("source")
    if not source or not Path(source).exists():
        raise DstuneError(f"the source model of {bundle.root} ({source}) is gone", where=str(bundle.manifest_path),
                          hint="re-export from the run directory or model folder")
    return bundle, Path(source), []


def _plain(deployable: Deployable):
    """What PyTorch would serve: an adapter merged into its base (float32, eval)."""
    model = deployable.model
    if deployable.loaded.kind == "adapter":
        model = model.merge_and_unload()
    return model.float().eval()


def _providers() -> dict[str, Any]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    usable = [p for p in GPU_PROVIDERS if p in available] if torch.cuda.is_available() else []
    return {"available": available, "gpu_tried": usable, "gpu_failed": {}}


def _require_provider(exported, provider: str) -> None:
    """Fail unless every session of ``exported`` runs on ``provider``: ONNX Runtime falls back to the CPU with
    only a log line when a provider cannot start (missing CUDA/TensorRT libraries), and a CPU session
    labelled ``[tensorrt]`` would be a false figure."""
    for name, runner in exported.runners.items():
        active = runner.session.get_providers()
        if provider not in active:
            raise RuntimeError(f"ONNX Runtime fell back to {', '.join(active)} for {name}: {provider} did not start")


def _eager(deployable: Deployable, model, name: str, device: str = "cpu") -> Backend:
    @torch.no_grad()
    def run(inputs: dict) -> Any:
        out = model(**{k: v.to(device) for k, v in inputs.items()})
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    decode = None
    if deployable.task == "causal-lm":
        @torch.no_grad()
        def decode(prompt: list[int], steps: int) -> list[float]:
            out = model(input_ids=torch.tensor([prompt], device=device), use_cache=True)
            cache, token, times = out.cache, out.logits[:, -1:].argmax(-1), []
            for _ in range(steps):
                start = time.perf_counter()
                out = model(input_ids=token, cache=cache, use_cache=True)
                token = out.logits[:, -1:].argmax(-1)
                times.append(time.perf_counter() - start)
                cache = out.cache
            return times

    return Backend(name, run, decode)


def _onnx_backends(name: str, directory: Path, task: str, threads: int, providers: dict) -> list[Backend]:
    """The CPU backend of an ONNX export, plus one per GPU provider that loads."""
    backends = [_onnx_backend(name, directory, task, threads, None)]
    for provider in providers["gpu_tried"]:
        label = f"{backends[0].name}[{provider.removesuffix('ExecutionProvider').lower()}]"
        try:
            backends.append(_onnx_backend(label, directory, task, threads, [provider, "CPUExecutionProvider"]))
        except Exception as exc:  # noqa: BLE001  (provider libraries missing, graph unsupported: report, go on)
            providers["gpu_failed"][label] = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
    return backends


def _onnx_backend(label: str, directory: Path, task: str, threads: int, providers: list | None) -> Backend:
    exported = load_exported(directory, threads=threads, providers=providers)
    if providers:
        _require_provider(exported, providers[0])
    if task != "causal-lm":
        return Backend(label, lambda inputs: exported(**inputs))
    lm = OnnxCausalLM(onnx_session(exported))

    def run(inputs: dict) -> Any:
        return lm.step(inputs["input_ids"][0].tolist(), lm.empty_cache(), 0)

    def decode(prompt: list[int], steps: int) -> list[float]:
        logits, cache = lm.step(prompt, lm.empty_cache(), 0)
        past, times = len(prompt), []
        for _ in range(steps):
            start = time.perf_counter()
            logits, cache = lm.step([int(logits[-1].argmax())], cache, past)
            times.append(time.perf_counter() - start)
            past += 1
        return times

    return Backend(label, run, decode, max_batch=1)


def _measure(backends: list[Backend], deployable: Deployable, settings: BenchSection,
             log: Callable) -> list[BenchRow]:
    """Time every backend on every shape, interleaved call by call, so that load from other processes on the
    machine falls on all backends alike instead of on whichever happened to run at the time."""
    rows = []
    phase = "prefill" if deployable.task == "causal-lm" else "forward"
    for seq_len in settings.seq_lens:
        for batch in settings.batch_sizes:
            active = [b for b in backends if b.max_batch is None or batch <= b.max_batch]
            log(f"measuring batch {batch} × {seq_len} tokens on {', '.join(b.name for b in active)} …")
            inputs = _inputs(deployable.tokenizer, batch, seq_len)
            times = _interleaved([(b.name, lambda b=b, x=inputs: b.run(x)) for b in active], settings)
            rows += [_row(name, phase, batch, seq_len, seconds) for name, seconds in times.items()]
        decoders = [b for b in backends if b.decode is not None]
        if decoders:
            prompt = _inputs(deployable.tokenizer, 1, seq_len)["input_ids"][0].tolist()
            steps = {b.name: [] for b in decoders}
            for b in decoders:
                b.decode(prompt, min(4, settings.decode_tokens))  # warm-up
            for _ in range(_DECODE_ROUNDS):
                for b in decoders:
                    steps[b.name] += b.decode(prompt, max(1, settings.decode_tokens // _DECODE_ROUNDS))
            rows += [_row(name, "decode", 1, seq_len, seconds) for name, seconds in steps.items()]
    order = [b.name for b in backends]
    return sorted(rows, key=lambda r: (order.index(r.backend), r.phase != phase, r.seq_len, r.batch))


def _interleaved(calls: list[tuple[str, Callable[[], Any]]], settings: BenchSection) -> dict[str, list[float]]:
    """Warm each call up, then time them round-robin ``settings.iterations`` times."""
    for _, call in calls:
        for _ in range(settings.warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name, _ in calls}
    for _ in range(settings.iterations):
        for name, call in calls:
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


def _inputs(tokenizer, batch: int, seq_len: int) -> dict[str, torch.Tensor]:
    """``batch`` rows of exactly ``seq_len`` real tokens (no padding)."""
    text = _FILLER * (seq_len // 8 + 2)
    encoded = tokenizer([text] * batch, truncation=True, max_length=seq_len, return_tensors="pt")
    if encoded["input_ids"].shape[1] < seq_len:
        raise DstuneError(f"could not build {seq_len}-token inputs with this tokenizer")
    return dict(encoded)


def _row(backend: str, phase: str, batch: int, seq_len: int, seconds: list[float]) -> BenchRow:
    ms = np.asarray(seconds) * 1000.0
    mean = float(ms.mean())
    per_call_tokens = batch if phase == "decode" else batch * seq_len
    return BenchRow(
        backend=backend, phase=phase, batch=batch, seq_len=seq_len,
        p50_ms=float(np.percentile(ms, 50)), p95_ms=float(np.percentile(ms, 95)),
        p99_ms=float(np.percentile(ms, 99)), mean_ms=mean,
        sequences_per_s=batch * 1000.0 / mean if phase != "decode" else 0.0,
        tokens_per_s=per_call_tokens * 1000.0 / mean,
    )


def bench_table(result: dict[str, Any]):
    """A rich table of the result, one row per backend × phase × shape (latencies in ms)."""
    from rich import box
    from rich.table import Table

    table = Table(title=f"dstune bench — {result['task']}, {result['threads']} threads (latency in ms)",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for column in ("backend", "phase", "batch", "len", "p50", "p95", "p99", "seq/s", "tok/s"):
        table.add_column(column, justify="left" if column in ("backend", "phase") else "right", no_wrap=True)
    for r in result["rows"]:
        table.add_row(r["backend"], r["phase"], str(r["batch"]), str(r["seq_len"]), f"{r['p50_ms']:.2f}",
                      f"{r['p95_ms']:.2f}", f"{r['p99_ms']:.2f}",
                      f"{r['sequences_per_s']:.1f}" if r["sequences_per_s"] else "-", f"{r['tokens_per_s']:.0f}")
    return table


def provider_summary(result: dict[str, Any]) -> str:
    """One line: which ONNX Runtime providers this machine has, which GPU ones were tried and which failed."""
    p = result["providers"]
    text = f"ONNX Runtime providers available: {', '.join(p['available'])}"
    if not result["machine"]["cuda"]:
        return text + " (no CUDA device: TensorRT/CUDA not tried)"
    failed = "; ".join(f"{k}: {v}" for k, v in p["gpu_failed"].items())
    return text + f"; GPU providers tried: {', '.join(p['gpu_tried']) or 'none'}" + (f"; failed: {failed}" if failed else "")



def bench_settings(artifact: str | Path, overrides: dict[str, Any]) -> BenchSection:
    """The source run's ``deploy.bench`` (defaults for plain models) with command-line overrides applied."""
    from dstune.export.source import deploy_settings

    try:
        bundle = find_bundle(Path(artifact))
        source = Path(bundle.manifest().get("source", artifact))
    except DstuneError:
        source = Path(artifact)
    base = deploy_settings(source).bench if source.exists() else BenchSection()
    values = {**base.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
    return BenchSection.model_validate(values)


def int_list(text: str | None) -> list[int] | None:
    """``"1,8,32"`` → ``[1, 8, 32]`` (None stays None)."""
    if text is None:
        return None
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise DstuneError(f"expected comma-separated integers, got {text!r}", hint="e.g. --batch-sizes 1,8") from None
