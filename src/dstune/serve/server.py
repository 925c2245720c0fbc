"""Start `dstune serve`: load the models, build the app, run uvicorn — or print the vLLM command instead.

dstune's server is for development, demos, A/B tests and modest traffic: it runs one generation
per slot with plain ``generate``. For production throughput (continuous batching, paged KV cache),
serve the verified merged export — or the base model with the LoRA adapter — with vLLM;
``dstune serve RUN --vllm`` prints the command for a run.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dstune.config.deploy import ServeSection
from dstune.errors import DstuneError
from dstune.export.source import deploy_settings, load_deployable
from dstune.serve.ab import ABRouter, ABStore, Variant
from dstune.serve.app import ServerState, create_app
from dstune.serve.classify import ClassifierEngine
from dstune.serve.engine import GenerationEngine


def serve_settings(source: Path | None, overrides: dict[str, Any]) -> ServeSection:
    """The run's ``deploy.serve`` section (defaults for plain models) with the command-line overrides."""
    base = deploy_settings(source).serve if source is not None else ServeSection()
    values = {**base.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
    return ServeSection.model_validate(values)


def resolve_api_key(cli_key: str | None, settings: ServeSection) -> str | None:
    """``--api-key``, else the environment variable named in ``deploy.serve.api_key_env``; None: no auth."""
    key = cli_key or os.environ.get(settings.api_key_env) or None
    if key is not None and len(key) < 8:
        raise DstuneError("the API key is shorter than 8 characters", where="--api-key",
                          hint="use a long random key, e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`")
    return key


def build_state(source: Path | None, settings: ServeSection, *, api_key: str | None = None,
                model_name: str | None = None, ab: tuple[Path, Path] | None = None, split: float = 0.5,
                ab_log: Path = Path("ab_log.sqlite"), log: Callable = print) -> ServerState:
    """Load the served model (or both A/B variants) and return the server's state."""
    state = ServerState(settings, api_key=api_key)
    if ab is not None:
        engines = [_generator(path, settings, log) for path in ab]
        variants = tuple(Variant(name, engine.name, str(path)) for name, engine, path in zip("AB", engines, ab))
        state.router = ABRouter(ABStore(ab_log), variants, split, model_id=model_name or "ab")
        state.ab_engines = dict(zip("AB", engines))
        log(f"A/B: {variants[0].model} (A, {split:.0%}) vs {variants[1].model} (B); log: {ab_log}")
    if source is not None:
        deployable = load_deployable(source)
        name = model_name or deployable.name
        log(f"loaded {deployable.task} model {name!r} from {source}")
        if deployable.task == "causal-lm":
            state.generators[name] = GenerationEngine(deployable, settings)
        else:
            state.classifiers[name] = ClassifierEngine(deployable)
    if not state.model_ids():
        raise DstuneError("nothing to serve", hint="pass a run directory or model, or --ab RUN_A RUN_B")
    return state


def run_server(state: ServerState, log: Callable = print) -> None:
    """Serve ``state`` with uvicorn until interrupted."""
    import uvicorn

    s = state.settings
    log(f"serving {', '.join(state.model_ids())} on http://{s.host}:{s.port}/v1 "
        f"(API key {'required' if state.api_key else 'not required'}; max {s.max_concurrent} concurrent, "
        f"queue {s.max_queue}, max_tokens ≤ {s.max_tokens_limit})")
    uvicorn.run(create_app(state), host=s.host, port=s.port, log_level="info", timeout_keep_alive=5)


def _generator(path: Path, settings: ServeSection, log: Callable) -> GenerationEngine:
    deployable = load_deployable(path)
    if deployable.task != "causal-lm":
        raise DstuneError(f"{path} is a {deployable.task} model; A/B testing needs chat models", where="--ab")
    log(f"loaded {deployable.name!r} from {path}")
    return GenerationEngine(deployable, settings)


def vllm_command(source: Path) -> str:
    """The vLLM command that serves ``source`` with the same chat template (merged export preferred)."""
    from dstune.export.bundle import Bundle, default_root

    source = Path(source)
    merged = Bundle(default_root(source, None)).verified("merged")
    if merged is not None:
        return f"vllm serve {shlex.quote(str(merged))} --served-model-name {shlex.quote(source.name)}"
    adapter = source / "adapter"
    if not adapter.is_dir():
        weights = source / "model" if (source / "model").is_dir() else source
        return f"vllm serve {shlex.quote(str(weights))}"
    from dstune.models.inference import load_run_config

    config = load_run_config(source)
    adapter_config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    if adapter_config.get("target_parameters"):
        raise DstuneError(
            "this adapter wraps parameters (MoE experts / DeepSeek MLPs via peft's target_parameters), which vLLM's "
            "LoRA does not load", hint=f"export the merged model first: dstune export {source} --format merged")
    parts = ["vllm serve", shlex.quote(config.model.name), "--enable-lora",
             f"--lora-modules {shlex.quote(source.name)}={shlex.quote(str(adapter))}",
             f"--max-lora-rank {adapter_config.get('r', 16)}"]
    if (adapter / "chat_template.jinja").is_file():
        parts.append(f"--chat-template {shlex.quote(str(adapter / 'chat_template.jinja'))}")
    return " ".join(parts)
