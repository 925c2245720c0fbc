"""The `dstune` command line: arguments only, the work happens in the workflow modules."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.console import Console

from dstune.errors import DstuneError

app = typer.Typer(
    name="dstune",
    help="Fine-tune DeepSeek (and any Hugging Face) models: data → train → evaluate → ship.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
console = Console(stderr=False)
_state = {"debug": False}


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks for errors.")] = False,
) -> None:
    _state["debug"] = debug


@app.command(
    epilog="Examples:\n\n"
    "  dstune train examples/quickstart.yaml\n\n"
    "  dstune train cfg.yaml --set training.epochs=1 --set method.r=8\n\n"
    "  dstune train runs/demo/config.yaml --resume\n\n"
    "  dstune train cfg.yaml --nproc 4                     (4 processes: DDP, or gloo on CPU)\n\n"
    "  dstune train cfg.yaml --nproc 8 --accelerate-config examples/accelerate/fsdp.yaml\n\n"
    "  accelerate launch --config_file examples/accelerate/ddp.yaml -m dstune train cfg.yaml",
)
def train(
    config: Annotated[Path, typer.Argument(help="Run config (YAML).", show_default=False)],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config key: --set training.epochs=1 (repeatable)."),
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint in output_dir.")] = False,
    nproc: Annotated[
        int, typer.Option("--nproc", min=1, help="Train in N processes on this machine (accelerate launch).")
    ] = 1,
    accelerate_config: Annotated[
        Path | None, typer.Option(help="accelerate config for --nproc (DDP, FSDP, DeepSpeed: examples/accelerate/).")
    ] = None,
) -> None:
    """Load and clean the data, build the model, fine-tune, evaluate and save the run directory."""
    from dstune.config import load_config
    from dstune.models.load import check_method_environment
    from dstune.train.recipe import train as run_training
    from dstune.train.summary import print_summary

    cfg = load_config(config, set_ or [])  # errors in the config show once, before any process starts
    check_method_environment(cfg.method)  # so does a method this machine cannot run (qlora without CUDA)
    if nproc > 1 or accelerate_config is not None:
        from dstune.train.launch import relaunch

        child = ["train", str(config), *[arg for s in set_ or [] for arg in ("--set", s)], *(["--resume"] * resume)]
        raise typer.Exit(relaunch(nproc, child, accelerate_config))
    result = run_training(cfg, resume=resume, log=console.print)
    if result.main_process:
        print_summary(result, console)


data_app = typer.Typer(help="Prepare and inspect data: validate, clean, deduplicate, split, report.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command(
    "prepare",
    epilog="Examples:\n\n"
    "  dstune data prepare examples/data_prepare.yaml\n\n"
    "  dstune data prepare cfg.yaml --set cleaning.dedup.near.threshold=0.9 --force",
)
def data_prepare(
    config: Annotated[Path, typer.Argument(help="Run config or data-only config (YAML).", show_default=False)],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config key: --set cleaning.split.test=0.1 (repeatable)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Prepare again even if nothing changed.")] = False,
) -> None:
    """Validate, clean, deduplicate and split the data of CONFIG; write the splits, a report and a manifest."""
    from dstune.config.prepare import load_prepare_settings
    from dstune.data.prepare import prepare

    prepare(load_prepare_settings(config, set_ or []), force=force, console=console)


@data_app.command(
    "inspect",
    epilog="Examples:\n\n  dstune data inspect data/train.jsonl\n\n"
    "  dstune data inspect cases.csv --task classification --encoding gbk",
)
def data_inspect(
    file: Annotated[str, typer.Argument(help="Data file or Hugging Face dataset name.", show_default=False)],
    task: Annotated[
        str | None, typer.Option(help="sft | classification | token_classification (default: from the keys).")
    ] = None,
    encoding: Annotated[str, typer.Option(help="Text encoding of the file.")] = "utf-8",
    tokenizer: Annotated[str | None, typer.Option(help="Tokenizer (hub id or folder) for token lengths.")] = None,
    out: Annotated[Path | None, typer.Option(help="Report folder (default: <file stem>_report beside it).")] = None,
) -> None:
    """Summarise a data file: malformed rows, duplicates, labels, lengths; write data_report.json/html."""
    from dstune.data.inspect import inspect_file
    from dstune.data.prepare import load_tokenizer

    inspect_file(file, task=task, encoding=encoding, tokenizer=load_tokenizer(tokenizer), out_dir=out, console=console)


@app.command(
    epilog="Examples:\n\n"
    "  dstune plan --model deepseek-v3 --gpus 16 --gpu-mem 141\n\n"
    "  dstune plan --model r1-distill-qwen-7b --method lora --seq-len 4096 --examples 50000\n\n"
    "  dstune plan --model models/SmolLM2-135M-Instruct --device cpu --batch-size 4 --seq-len 128\n\n"
    "  dstune plan --model deepseek-ai/DeepSeek-R1-Distill-Llama-8B --gpus 8 --json",
)
def plan(
    model: Annotated[str, typer.Option(help="Alias, hub id or local model folder (only its config is read).")],
    method: Annotated[str | None, typer.Option(help="full | lora | qlora (default: all three).")] = None,
    seq_len: Annotated[int, typer.Option(min=1, help="Tokens per sequence.")] = 2048,
    batch_size: Annotated[int, typer.Option(min=1, help="Target effective batch (sequences per optimizer step); "
                                                 "--device cpu: the batch size.")] = 32,
    gpus: Annotated[int, typer.Option(min=1, help="GPUs (data-parallel ranks).")] = 1,
    gpu_mem: Annotated[float, typer.Option(min=0.001, help="Memory per GPU, GiB.")] = 80.0,
    lora_r: Annotated[int, typer.Option(min=1, help="LoRA rank.")] = 16,
    tokens: Annotated[int | None, typer.Option(min=1, help="Training tokens per epoch, for the time estimate.")] = None,
    examples: Annotated[int | None, typer.Option(min=1, help="Or: examples per epoch (× --seq-len tokens).")] = None,
    gpu_tflops: Annotated[float, typer.Option(min=0.001, help="Peak dense bf16 TFLOP/s per GPU (H100/H200: 989).")] = 989.0,
    mfu: Annotated[float, typer.Option(min=0.001, max=1.0, help="Model-FLOPs utilisation assumed for the time estimate.")] = 0.35,
    device: Annotated[str, typer.Option(help="gpu | cpu (fp32, one process: what `dstune train` uses here).")] = "gpu",
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Allow the model's own code.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Memory per GPU (weights, gradients, optimizer, activations) and time per epoch for each method and
    strategy (DDP, ZeRO-2, ZeRO-3, FSDP), from the model config alone; recommends a method and batch that fit."""
    from dataclasses import asdict

    from dstune import plan as planner

    methods = planner.METHODS if method is None else (method,)
    if method is not None and method not in planner.METHODS:
        raise DstuneError(f"unknown method {method!r}", where="--method", hint="use full, lora or qlora")
    if device not in ("gpu", "cpu"):
        raise DstuneError(f"unknown device {device!r}", where="--device", hint="use gpu or cpu")
    facts = planner.read_model(model, trust_remote_code=trust_remote_code)
    settings = planner.PlanSettings(seq_len=seq_len, gpus=gpus, gpu_mem_gib=gpu_mem, batch_size=batch_size,
                                    lora_r=lora_r, tokens=tokens, examples=examples, gpu_tflops=gpu_tflops, mfu=mfu)
    if device == "cpu":
        estimates = planner.cpu_plan(facts, settings, methods)
        if json_:
            typer.echo(json.dumps({"model": asdict(facts), "cpu": [{**asdict(e), "total": e.total} for e in estimates]},
                                  indent=2))
            return
        console.print(planner.facts_line(facts), highlight=False)
        console.print(planner.cpu_table(facts, settings, estimates))
        return
    result = planner.make_plan(facts, settings, methods)
    if json_:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    console.print(planner.facts_line(facts), highlight=False)
    console.print(planner.plan_table(result))
    console.print(planner.recommendation_line(result), highlight=False)
    for note in result.notes:
        console.print(f"[dim]{note}[/]", highlight=False)


# --- measure it: eval, report, compare RUN_A RUN_B (dstune.evaluate, dstune.report) ---------------


@app.command(
    "eval",
    epilog="Examples:\n\n"
    "  dstune eval runs/demo                      (the run's test split)\n\n"
    "  dstune eval runs/demo --data data/test.jsonl --sample 200 --explain 5\n\n"
    "  dstune eval deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B --data data/test.jsonl --out eval/base\n\n"
    "  dstune eval runs/demo --set generation.max_new_tokens=64 --set think=strip\n\n"
    "  dstune eval runs/demo --import-review runs/demo/eval/review.csv",
)
def eval_(
    source: Annotated[str, typer.Argument(help="Run directory, model folder or hub id.", show_default=False)],
    data: Annotated[str | None, typer.Option(help="Examples to evaluate (default: the run's --split).")] = None,
    split: Annotated[str | None, typer.Option(help="test | validation | train (default: evaluation.split).")] = None,
    sample: Annotated[int | None, typer.Option(help="Errors and near misses drawn into eval/review.csv.")] = None,
    explain: Annotated[int | None, typer.Option(help="Attention heatmaps for the first N examples.")] = None,
    import_review: Annotated[
        Path | None, typer.Option("--import-review", help="Read a filled review.csv back and re-estimate accuracy.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override an evaluation key: --set generation.temperature=0.7 (repeatable)."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: RUN_DIR/eval or ./eval/<model>).")] = None,
    no_judge: Annotated[bool, typer.Option("--no-judge", help="Skip the LLM judge even if configured.")] = False,
) -> None:
    """Score a model: metrics, predictions, an error-analysis sample, optional LLM judge and attention heatmaps."""
    from dstune.evaluate.runner import import_review as read_back
    from dstune.evaluate.runner import run_eval
    from dstune.evaluate.summary import print_eval, print_review

    if import_review is not None:
        print_review(read_back(import_review, log=console.print), import_review, console)
        return
    overrides = [*(set_ or []), *([f"sample={sample}"] if sample is not None else []),
                 *([f"explain={explain}"] if explain is not None else [])]
    result = run_eval(source, data=data, split=split, overrides=overrides, out=out, judge=not no_judge,
                      log=console.print)
    print_eval(result, console)


@app.command(epilog="Examples:\n\n  dstune report runs/demo\n\n  dstune report runs/demo --out share/demo.html")
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run directory.", show_default=False)],
    out: Annotated[Path | None, typer.Option(help="HTML file (default: RUN_DIR/report.html).")] = None,
) -> None:
    """One self-contained HTML page: config, data, curves, metrics, confusion, calibration, errors, comparisons."""
    from dstune.report.build import build_report

    console.print(f"report: {build_report(run_dir, out)}")


# --- ship it: export, bench, serve, chat, compare --ab-log (dstune.export, dstune.serve) -----------


@app.command(
    epilog="Examples:\n\n"
    "  dstune export runs/demo --format merged\n\n"
    "  dstune export runs/demo --format onnx --quantize int8\n\n"
    "  dstune export models/my-classifier --format onnx --quantize int8 --output exports/clf",
)
def export(
    source: Annotated[Path, typer.Argument(help="Run directory or model folder.", show_default=False)],
    format_: Annotated[str, typer.Option("--format", "-f", help="merged | onnx")] = "merged",
    quantize: Annotated[str | None, typer.Option("--quantize", help="int8: also an ONNX Runtime int8 copy.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Export folder (default: RUN/export).")] = None,
    merge_dtype: Annotated[str | None, typer.Option(help="base | float32: dtype the LoRA is merged in.")] = None,
    save_dtype: Annotated[str | None, typer.Option(help="base | float32: dtype of the merged weights.")] = None,
    verify_samples: Annotated[int | None, typer.Option(help="Inputs used to verify the artifact.")] = None,
) -> None:
    """Write deployable artifacts (merged safetensors, ONNX, int8), each verified against the PyTorch model."""
    from dstune.export import export as run_export

    overrides = {"merge_dtype": merge_dtype, "save_dtype": save_dtype, "verify_samples": verify_samples}
    bundle, _ = run_export(source, format_, quantize=quantize, output=output, overrides=overrides, log=console.print)
    console.print(f"[green]verified[/] artifacts in {bundle.root} (figures: */verification.json)")


@app.command(
    epilog="Examples:\n\n"
    "  dstune bench runs/demo                      (uses runs/demo/export)\n\n"
    "  dstune bench exports/clf --batch-sizes 1,8 --seq-lens 128 --iterations 100",
)
def bench(
    artifact: Annotated[Path, typer.Argument(help="Export folder, run directory or model.", show_default=False)],
    batch_sizes: Annotated[str | None, typer.Option(help="Comma-separated batch sizes (default: config).")] = None,
    seq_lens: Annotated[str | None, typer.Option(help="Comma-separated input lengths in tokens.")] = None,
    iterations: Annotated[int | None, typer.Option(help="Timed runs per shape.")] = None,
    warmup: Annotated[int | None, typer.Option(help="Untimed warm-up runs per shape.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for every backend.")] = None,
) -> None:
    """Latency p50/p95/p99 and throughput: PyTorch eager vs ONNX fp32 vs ONNX int8, side by side."""
    from dstune.export.bench import bench as run_bench
    from dstune.export.bench import bench_settings, bench_table, int_list, provider_summary

    settings = bench_settings(artifact, {"batch_sizes": int_list(batch_sizes), "seq_lens": int_list(seq_lens),
                                         "iterations": iterations, "warmup": warmup, "threads": threads})
    result = run_bench(artifact, settings, log=console.print)
    console.print(bench_table(result))
    console.print(provider_summary(result))
    for note in result["notes"]:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"saved {result['path']}")


@app.command(
    epilog="Examples:\n\n"
    "  dstune serve runs/demo --port 8000 --api-key $KEY\n\n"
    "  dstune serve --ab runs/base runs/tuned --split 0.5 --ab-log ab.sqlite\n\n"
    "  dstune serve runs/demo --vllm               (print the vLLM command for production serving)",
)
def serve(
    source: Annotated[Path | None, typer.Argument(help="Run directory or model.", show_default=False)] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    host: Annotated[str | None, typer.Option(help="Interface (default 127.0.0.1).")] = None,
    api_key: Annotated[str | None, typer.Option(help="Require this key (else $DSTUNE_API_KEY; unset: no auth).")] = None,
    model_name: Annotated[str | None, typer.Option(help="Model id clients send (default: folder name).")] = None,
    ab: Annotated[tuple[Path, Path] | None, typer.Option(help="Online A/B test of two runs: --ab RUN_A RUN_B.")] = None,
    split: Annotated[float, typer.Option(help="Share of conversations routed to A.")] = 0.5,
    ab_log: Annotated[Path, typer.Option(help="Append-only SQLite log of the A/B test.")] = Path("ab_log.sqlite"),
    max_tokens_limit: Annotated[int | None, typer.Option(help="Largest max_tokens accepted.")] = None,
    max_concurrent: Annotated[int | None, typer.Option(help="Generations at once (more wait in a queue).")] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds per request, queueing included.")] = None,
    vllm: Annotated[bool, typer.Option("--vllm", help="Print the vLLM command for this run and exit.")] = False,
) -> None:
    """OpenAI-compatible HTTP API: /v1/chat/completions, /v1/completions, /v1/models, /v1/classify, /health."""
    from dstune.serve.server import build_state, resolve_api_key, run_server, serve_settings, vllm_command

    if vllm:
        if source is None:
            raise DstuneError("--vllm needs a run directory or model")
        console.print(vllm_command(source), highlight=False, soft_wrap=True)
        return
    settings = serve_settings(source or (ab[0] if ab else None), {
        "port": port, "host": host, "max_tokens_limit": max_tokens_limit, "max_concurrent": max_concurrent,
        "request_timeout_s": timeout})
    state = build_state(source, settings, api_key=resolve_api_key(api_key, settings), model_name=model_name,
                        ab=ab, split=split, ab_log=ab_log, log=console.print)
    run_server(state, log=console.print)


@app.command(epilog="Examples:\n\n  dstune chat runs/demo\n\n  dstune chat runs/demo --system 'Answer in Chinese.'")
def chat(
    source: Annotated[Path, typer.Argument(help="Run directory or model.", show_default=False)],
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Longest answer in tokens.")] = 512,
    temperature: Annotated[float, typer.Option(help="0 for greedy decoding.")] = 0.7,
) -> None:
    """Multi-turn chat in the terminal with the run's chat template; /reset, /system TEXT, /exit."""
    from dstune.serve.chat import run_chat

    run_chat(source, system=system, max_tokens=max_tokens, temperature=temperature)


@app.command(
    epilog="Examples:\n\n  dstune compare --ab-log ab_log.sqlite\n\n  dstune compare --ab-log ab_log.sqlite --json\n\n"
    "  dstune compare deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B runs/demo --data data/test.jsonl\n\n"
    "  dstune compare runs/lora-r8 runs/lora-r16 --data data/test.jsonl --set bootstrap=5000 --no-judge",
)
def compare(
    run_a: Annotated[Path | None, typer.Argument(help="Offline mode: first run.", show_default=False)] = None,
    run_b: Annotated[Path | None, typer.Argument(help="Offline mode: second run.", show_default=False)] = None,
    data: Annotated[Path | None, typer.Option(help="Offline mode: data both runs are evaluated on.")] = None,
    ab_log: Annotated[Path | None, typer.Option(help="Online mode: the SQLite log of `dstune serve --ab`.")] = None,
    alpha: Annotated[float, typer.Option(help="Significance level.")] = 0.05,
    power: Annotated[float, typer.Option(help="Power for the sample-size estimate.")] = 0.8,
    json_: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    split: Annotated[str | None, typer.Option(help="Offline mode without --data: a split of the runs.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Offline mode: override an evaluation key (repeatable).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Offline mode: result JSON (default: RUN_B/eval/compare_A.json).")] = None,
    no_judge: Annotated[bool, typer.Option("--no-judge", help="Offline mode: skip the LLM judge.")] = False,
) -> None:
    """Compare two models: offline on the same data, or online from an A/B log (conversion, significance)."""
    if ab_log is not None:
        from dstune.serve.ab_report import ab_report, render_report

        report = ab_report(ab_log, alpha=alpha, power=power)
        if json_:
            typer.echo(json.dumps(report.to_dict(), indent=2))
        else:
            console.print(render_report(report))
        return
    if run_a is None or run_b is None:
        raise DstuneError("compare needs two models (RUN_A RUN_B --data FILE) or --ab-log FILE",
                          hint="e.g. dstune compare BASE_MODEL runs/demo --data data/test.jsonl")
    from dstune.evaluate.compare import print_comparison, run_compare

    overrides = [*(set_ or []), *([f"alpha={alpha}"] if alpha != 0.05 else [])]
    result = run_compare(str(run_a), str(run_b), data=str(data) if data else None, split=split, overrides=overrides,
                         out=out, judge=not no_judge, log=(lambda *a, **k: None) if json_ else console.print)
    if json_:
        typer.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False, default=float))
    else:
        print_comparison(result, console)


# typer >= 0.2x raises the exceptions of its vendored click, older typer plain click's: catch both
_EXIT = tuple({click.exceptions.Exit, typer.Exit})
_ABORT = tuple({click.exceptions.Abort, typer.Abort})
_USAGE = tuple({click.ClickException, *(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")})


def main() -> None:
    """Console-script entry point: user errors become one clear message and a non-zero exit code."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app(standalone_mode=False)
    except DstuneError as exc:
        if _state["debug"]:
            raise
        console.print(f"[bold red]error[/] {exc.render()}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except _EXIT as exc:
        sys.exit(exc.exit_code)
    except _ABORT:
        console.print("aborted")
        sys.exit(130)
    except _USAGE as exc:  # a wrong or missing argument: click's usage message, no traceback
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        console.print("interrupted: the last saved checkpoint can be resumed with --resume")
        sys.exit(130)
