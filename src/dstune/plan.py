"""`dstune plan`: how much memory and time fine-tuning a model takes, per method and per GPU, before any download.

Everything here is arithmetic on the model's config: the weights are never read. Parameters are
counted exactly by building the model on PyTorch's ``meta`` device (shapes, no storage); memory then
follows from bytes per parameter and a per-token activation model; time from training FLOPs.

Memory per GPU, in bytes (P parameters, T trainable, N GPUs, mixed precision = bf16 weights and
gradients with fp32 master weights and AdamW moments, the DeepSpeed/FSDP convention):

=========  ==========================  ==========================  ==========================
strategy   weights                     gradients                   optimizer (master + m + v)
=========  ==========================  ==========================  ==========================
ddp        2P                          2T                          12T
zero2      2P                          2T / N                      12T / N
zero3      2P / N (+ 2 layers' worth)  2T / N                      12T / N
fsdp       same as zero3 (FULL_SHARD)
=========  ==========================  ==========================  ==========================

So a full fine-tune costs 16 bytes per parameter without sharding (7B: 112 GB) and 16P/N with
ZeRO-3. LoRA freezes P and trains T = r × Σ(in + out) over the target layers; QLoRA stores the
quantised Linear weights in 4-bit NF4 (0.5 byte + double-quantised scales ≈ 0.516 byte/param).
On CPU (``device="cpu"``) everything is fp32: 4 bytes of weights, 4 of gradients and 8 of AdamW
moments per trained parameter, plus the runtime's own resident memory (``CPU_BASELINE_BYTES``).

Activations follow Korthikanti et al. (2022), "Reducing Activation Recomputation in Large Transformer
Models": per token and layer a transformer saves a few multiples of the hidden size for the norms,
attention inputs/outputs and MLP. The coefficients below are the tensors PyTorch autograd actually
saves for the Hugging Face Llama/Qwen and DeepSeek-V2/V3 layers with SDPA attention (no s×s score
matrix: flash/memory-efficient kernels), counted with ``torch.autograd.graph.saved_tensors_hooks``
(values per token per layer, h hidden, i MLP width, q/kv projection widths):

* attention (MHA/GQA): 4h (norms, residual) + 4q + 2kv
* attention (MLA, DeepSeek-V2/V3): 4h + 3·q_rank + 3·kv_rank + rope + 3·a·d_qk + a·(d_nope + d_v) + 3·a·d_v
* MLP: 4i (gate, up, activation, product); MoE: top_k·(4i_e + 2h) routed + 4·shared·i_e + 4·experts (router)
* LoRA: 2h fewer (frozen norm weights) + r per target; LoRA dropout keeps a masked copy of each target's
  input: +1.46 × Σ in_features (measured)
* the LM head: V + 3h saved (log-softmax), and ``HEAD_TRANSIENT`` × V more while the loss backward runs
* gradient checkpointing keeps only each layer's input (h) plus one layer recomputed during backward.

Time per epoch: training FLOPs = (6 full, 4 LoRA: no weight gradients for frozen weights; +2 with
gradient checkpointing) × active non-embedding parameters × tokens, plus attention 6·L·s·d_attn per
token (causal), divided by GPUs × peak FLOP/s × MFU.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from dstune.errors import ModelError

GIB = 2**30
METHODS = ("full", "lora", "qlora")
"""In order of expected quality: the recommendation takes the first one that fits."""
STRATEGIES = ("ddp", "zero2", "zero3", "fsdp")
"""In order of simplicity/communication cost: the recommendation takes the first one that fits."""

CPU_BASELINE_BYTES = 540 * 2**20
QLORA_MFU_FACTOR = 0.7
"""QLoRA dequantises its 4-bit weights before every matmul: ~30% lower MFU than LoRA."""
"""Resident memory of a Python process that has imported torch, transformers, peft, datasets and dstune
before it loads a model (measured: 512-540 MiB on Linux x86-64, torch 2.x CPU)."""
HEAD_TRANSIENT = 3.0
"""Extra b·s·V values alive while the loss backward runs (logits, their gradient, log-softmax gradient)."""
LORA_DROPOUT_COPY = 1.46
"""Values kept per target input feature when LoRA dropout > 0 (dropout output + mask; measured on SmolLM2)."""
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit values, an 8-bit scale per 64, an fp32 scale per 256 blocks
GRAD_CHECKPOINT_FLOPS = 2  # extra forward per parameter per token


@dataclass(frozen=True)
class ModelFacts:
    """What the plan needs to know about a model, read from its config (no weights)."""

    name: str
    source: str  # where the config came from
    model_type: str
    total_params: int
    active_params: int  # used per token: total minus the routed experts a token does not visit
    embedding_params: int  # input embedding table (no FLOPs: a lookup)
    quantizable_params: int  # Linear / expert weights that QLoRA stores in 4-bit (lm_head excluded)
    lora_params_per_rank: int  # Σ (in + out) over the default LoRA targets: LoRA params = r × this
    lora_targets_per_layer: float
    lora_input_features_per_layer: float  # Σ in_features of the targets (what LoRA dropout copies)
    largest_layer_params: int
    hidden_size: int
    num_layers: int
    vocab_size: int
    layer_activation_values: float  # values autograd saves per token per layer (full fine-tune, mean over layers)
    attention_width: int  # a · d (query width): attention FLOPs per token per layer ∝ s · this
    routed_expert_params: int = 0
    n_routed_experts: int = 0
    experts_per_token: int = 0

    @property
    def is_moe(self) -> bool:
        return self.n_routed_experts > 0

    def lora_params(self, r: int) -> int:
        return r * self.lora_params_per_rank


@dataclass(frozen=True)
class PlanSettings:
    """The training setup the plan is for."""

    seq_len: int = 2048
    gpus: int = 1
    gpu_mem_gib: float = 80.0
    batch_size: int = 32  # target effective (global) batch, sequences per optimiser step
    lora_r: int = 16
    lora_dropout: float = 0.1
    gradient_checkpointing: bool = False
    tokens: int | None = None  # per epoch (else examples × seq_len)
    examples: int | None = None
    gpu_tflops: float = 989.0  # H100/H200 SXM dense bf16
    mfu: float = 0.35
    headroom: float = 0.9  # share of the GPU memory the plan may fill (CUDA context, fragmentation)


@dataclass(frozen=True)
class Estimate:
    """Memory of one method under one strategy at one micro-batch, per device, in bytes."""

    method: str
    strategy: str
    micro_batch: int
    gradient_checkpointing: bool
    weights: int
    gradients: int
    optimizer: int
    activations: int
    baseline: int = 0  # runtime memory outside the model (CPU only)

    @property
    def total(self) -> int:
        return self.baseline + self.weights + self.gradients + self.optimizer + self.activations


@dataclass
class Plan:
    """Estimates for every method × strategy, the recommendation and the time per epoch."""

    facts: ModelFacts
    settings: PlanSettings
    rows: list[dict[str, Any]] = field(default_factory=list)
    recommendation: dict[str, Any] | None = None
    cheapest: dict[str, Any] | None = None
    """The fitting setup with the least GPU time per epoch (LoRA before QLoRA before full, usually)."""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"model": asdict(self.facts), "settings": asdict(self.settings), "rows": self.rows,
                "recommendation": self.recommendation, "cheapest": self.cheapest, "notes": self.notes}


# --- model facts -------------------------------------------------------------------------------


def read_model(name: str, trust_remote_code: bool = False) -> ModelFacts:
    """Facts about ``name`` (alias, hub id or local folder), from its config alone."""
    config, source = load_config(name, trust_remote_code)
    return facts_from_config(config, name=name, source=source)


def load_config(name: str, trust_remote_code: bool = False):
    """The transformers config of ``name``: a local folder, the Hugging Face cache/hub, or dstune's copy."""
    from transformers import AutoConfig

    from dstune.models.known_configs import known_config
    from dstune.models.load import looks_local
    from dstune.models.registry import resolve_alias

    hub_id = resolve_alias(name)
    path = Path(hub_id).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} has no config.json", where="--model",
                             hint="point --model at a Hugging Face model folder, a hub id or an alias")
        return AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code), f"{path}/config.json"
    if looks_local(hub_id):
        raise ModelError(f"model folder not found: {hub_id}", where="--model",
                         hint="point --model at a Hugging Face model folder, a hub id or an alias")
    shipped = known_config(hub_id)
    try:  # the registry's models have their config shipped: no hub round trip (and its retries) for them
        online = shipped is None
        config = AutoConfig.from_pretrained(hub_id, trust_remote_code=trust_remote_code, local_files_only=not online)
        return config, f"{hub_id} (Hugging Face)"
    except (OSError, ValueError) as exc:
        if shipped is not None:
            return shipped, f"{hub_id} (config facts shipped with dstune)"
        if isinstance(exc, ValueError) and "trust_remote_code" in str(exc):
            raise ModelError(f"{hub_id} ships its own modelling code", where="--model",
                             hint="add --trust-remote-code if you trust this checkpoint") from None
        raise ModelError(
            f"no config for {name!r}: not a local folder, not in the Hugging Face cache, and the hub is not reachable",
            where="--model",
            hint=f"use an alias (`dstune plan --model deepseek-v3`; see dstune.models.registry), a local model "
            f"folder, or download the config where the hub is reachable (`hf download {hub_id} config.json`)",
        ) from None


def facts_from_config(config, name: str, source: str = "") -> ModelFacts:
    """Count parameters on the meta device and derive activation widths from the config."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    counts = _meta_counts(config)
    h, layers, vocab = text.hidden_size, text.num_hidden_layers, text.vocab_size
    n_routed = int(getattr(text, "n_routed_experts", None) or getattr(text, "num_experts", None) or 0)
    top_k = int(getattr(text, "num_experts_per_tok", None) or 0) if n_routed else 0
    routed = counts["routed"]
    active = counts["total"] - round(routed * (1 - top_k / n_routed)) if n_routed else counts["total"]
    return ModelFacts(
        name=name, source=source, model_type=text.model_type, total_params=counts["total"], active_params=active,
        embedding_params=counts["embedding"], quantizable_params=counts["quantizable"],
        lora_params_per_rank=counts["lora_per_rank"], lora_targets_per_layer=counts["lora_targets"] / layers,
        lora_input_features_per_layer=counts["lora_inputs"] / layers,
        largest_layer_params=counts["largest_layer"], hidden_size=h, num_layers=layers, vocab_size=vocab,
        layer_activation_values=_layer_activation_values(text), attention_width=_attention_width(text),
        routed_expert_params=routed, n_routed_experts=n_routed, experts_per_token=top_k,
    )


def _meta_counts(config) -> dict[str, int]:
    """Exact parameter counts of a model built on the meta device.

    A deep model is built with only its first distinct layers (the dense ones of an MoE, then one more)
    and the last layer's counts are repeated for the rest, which is exact when the later layers are
    identical (checked: the last two built layers must match) and keeps DeepSeek-V3 under a second.
    """
    import copy

    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = text.num_hidden_layers
    built = min(layers, int(getattr(text, "first_k_dense_replace", 0) or 0) + 2)
    small = copy.deepcopy(config)
    small_text = small.get_text_config() if hasattr(small, "get_text_config") else small
    small_text.num_hidden_layers = built
    if getattr(small_text, "layer_types", None):
        small_text.layer_types = small_text.layer_types[:built]
    counts, per_layer = _count(small)
    if built < layers:
        if per_layer[-1] != per_layer[-2]:  # irregular layers: count the whole model
            counts, per_layer = _count(config)
        else:
            extra = layers - built
            for key in counts:
                if key in per_layer[-1]:
                    counts[key] += extra * per_layer[-1][key]
    counts["largest_layer"] = max(layer["total"] for layer in per_layer)
    return counts


def _count(config) -> tuple[dict[str, int], list[dict[str, int]]]:
    import torch
    from torch import nn
    from transformers import AutoModelForCausalLM

    from dstune.models.adapters import EXPERTS, find_decoder_layers
    from dstune.models.registry import default_lora_targets

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    output = model.get_output_embeddings()
    output_weight = output.weight if output is not None else None
    targets = default_lora_targets(model.config.model_type)

    def is_target(name: str, module: nn.Module) -> bool:
        if not isinstance(module, nn.Linear) or module is output or EXPERTS in name.split("."):
            return False
        leaf = name.rsplit(".", 1)[-1]
        return targets == "all-linear" or leaf in targets

    def tally(root: nn.Module) -> dict[str, int]:
        seen: set[int] = set()
        out = dict.fromkeys(("total", "routed", "quantizable", "lora_per_rank", "lora_targets", "lora_inputs"), 0)
        for pname, param in root.named_parameters(remove_duplicate=True):
            if id(param) in seen:
                continue
            seen.add(id(param))
            out["total"] += param.numel()
            if EXPERTS in pname.split("."):
                out["routed"] += param.numel()
            if (param.dim() >= 2 and param is not output_weight and "embed" not in pname):
                out["quantizable"] += param.numel()
        for mname, module in root.named_modules():
            if is_target(mname, module):
                out["lora_per_rank"] += module.in_features + module.out_features
                out["lora_targets"] += 1
                out["lora_inputs"] += module.in_features
        return out

    counts = tally(model)
    counts["embedding"] = model.get_input_embeddings().weight.numel()
    per_layer = [tally(layer) for layer in find_decoder_layers(model)]
    return counts, per_layer


def _attention_width(text) -> int:
    heads = text.num_attention_heads
    head_dim = getattr(text, "qk_head_dim", None) or getattr(text, "head_dim", None) or text.hidden_size // heads
    return heads * head_dim


def _layer_activation_values(text) -> float:
    """Values autograd saves per token per decoder layer (full fine-tune, no checkpointing), mean over layers."""
    h = text.hidden_size
    heads = text.num_attention_heads
    if getattr(text, "kv_lora_rank", None):  # multi-head latent attention (DeepSeek-V2/V3)
        q_rank = getattr(text, "q_lora_rank", None) or 0
        qk = text.qk_nope_head_dim + text.qk_rope_head_dim
        attention = (3 * q_rank + 3 * text.kv_lora_rank + text.qk_rope_head_dim + 3 * heads * qk
                     + heads * (text.qk_nope_head_dim + text.v_head_dim) + 3 * heads * text.v_head_dim)
    else:
        head_dim = getattr(text, "head_dim", None) or h // heads
        kv_heads = getattr(text, "num_key_value_heads", None) or heads
        attention = 4 * heads * head_dim + 2 * kv_heads * head_dim
    dense_mlp = 4 * text.intermediate_size
    n_routed = getattr(text, "n_routed_experts", None) or getattr(text, "num_experts", None) or 0
    if not n_routed:
        return 4 * h + attention + dense_mlp
    expert = getattr(text, "moe_intermediate_size", None) or text.intermediate_size
    shared = getattr(text, "n_shared_experts", None) or 0
    top_k = text.num_experts_per_tok
    moe_mlp = top_k * (4 * expert + 2 * h) + 4 * shared * expert + 4 * n_routed
    dense_layers = min(int(getattr(text, "first_k_dense_replace", 0) or 0), text.num_hidden_layers)
    mlp = (dense_layers * dense_mlp + (text.num_hidden_layers - dense_layers) * moe_mlp) / text.num_hidden_layers
    return 4 * h + attention + mlp


# --- memory ------------------------------------------------------------------------------------

GPU_RUNTIME_BYTES = 1 * GIB
"""CUDA context, cuBLAS workspace and communication buffers per GPU."""
CPU_LORA_HEAP_VALUES = 15.2
"""LoRA on CPU: resident memory above what autograd holds, in fp32 values per token per layer per hidden unit.
glibc's heap keeps the many mid-sized LoRA tensors (dropout copies, rank-r products) it has freed; measured on
SmolLM2-135M (batch 4 and 8, with and without checkpointing: 1.0 MiB per token). With
``MALLOC_MMAP_THRESHOLD_=65536`` it disappears (and the LoRA prediction without it is within 2%)."""


def activation_bytes(facts: ModelFacts, method: str, micro_batch: int, settings: PlanSettings,
                     bytes_per_value: int) -> int:
    """Activations held at the start of backward for ``micro_batch`` sequences of ``settings.seq_len`` tokens."""
    h = facts.hidden_size
    per_layer = facts.layer_activation_values
    if method != "full":
        per_layer += -2 * h + settings.lora_r * facts.lora_targets_per_layer
        if settings.lora_dropout > 0:
            per_layer += LORA_DROPOUT_COPY * facts.lora_input_features_per_layer
    if settings.gradient_checkpointing:
        layers = facts.num_layers * h + per_layer  # every layer's input, plus one layer recomputed
    else:
        layers = facts.num_layers * per_layer
    head = (1 + HEAD_TRANSIENT) * facts.vocab_size + 3 * h  # the loss runs in fp32
    tokens = micro_batch * settings.seq_len
    return round(tokens * (layers * bytes_per_value + head * 4))


def gpu_estimate(facts: ModelFacts, method: str, strategy: str, micro_batch: int, settings: PlanSettings) -> Estimate:
    """Per-GPU memory under ``strategy`` (single | ddp | zero2 | zero3 | fsdp), mixed precision (bf16 + fp32 states)."""
    n = max(settings.gpus, 1) if strategy != "single" else 1
    total, trained = facts.total_params, facts.lora_params(settings.lora_r)
    if method == "full":
        weights, grads, optim = 2 * total, 2 * total, 12 * total
    else:
        frozen = 2 * total if method == "lora" else (
            NF4_BYTES * facts.quantizable_params + 4 * (total - facts.quantizable_params))  # peft: the rest in fp32
        weights, grads, optim = frozen + 4 * trained, 4 * trained, 8 * trained
    if strategy in ("zero2", "zero3", "fsdp"):
        grads, optim = grads / n, optim / n
    if strategy in ("zero3", "fsdp"):
        weights = weights / n + 2 * 2 * facts.largest_layer_params  # the gathered layer and the prefetched one
    acts = activation_bytes(facts, method, micro_batch, settings, bytes_per_value=2)
    return Estimate(method, strategy, micro_batch, settings.gradient_checkpointing, round(weights), round(grads),
                    round(optim), acts, baseline=GPU_RUNTIME_BYTES)


def cpu_estimate(facts: ModelFacts, method: str, micro_batch: int, settings: PlanSettings) -> Estimate:
    """Peak resident memory of ``dstune train`` on CPU: fp32 weights, gradients and AdamW moments, and the runtime."""
    if method == "qlora":
        raise ValueError("qlora needs a CUDA GPU")
    total, trained = facts.total_params, facts.lora_params(settings.lora_r)
    trainable = total if method == "full" else trained
    acts = activation_bytes(facts, method, micro_batch, settings, bytes_per_value=4)
    heap = 0 if method == "full" else 4 * CPU_LORA_HEAP_VALUES * facts.hidden_size * facts.num_layers * (
        micro_batch * settings.seq_len)
    return Estimate(method, "cpu", micro_batch, settings.gradient_checkpointing,
                    weights=4 * (total + (trained if method != "full" else 0)), gradients=4 * trainable,
                    optimizer=8 * trainable, activations=acts + round(heap), baseline=CPU_BASELINE_BYTES)


# --- time --------------------------------------------------------------------------------------


def training_flops_per_token(facts: ModelFacts, method: str, settings: PlanSettings) -> float:
    """Forward + backward FLOPs per token: (6 full | 4 LoRA, +2 with checkpointing) × active params + attention."""
    dense = facts.active_params - facts.embedding_params
    factor = (6 if method == "full" else 4) + (GRAD_CHECKPOINT_FLOPS if settings.gradient_checkpointing else 0)
    attention = 6 * facts.num_layers * settings.seq_len * facts.attention_width  # causal: half of 12·L·s·d
    return factor * dense + attention


def epoch_tokens(settings: PlanSettings) -> int | None:
    if settings.tokens:
        return settings.tokens
    return settings.examples * settings.seq_len if settings.examples else None


def epoch_seconds(facts: ModelFacts, method: str, settings: PlanSettings) -> float | None:
    """Seconds per epoch on ``settings.gpus`` GPUs at ``settings.mfu`` of ``settings.gpu_tflops``."""
    tokens = epoch_tokens(settings)
    if tokens is None:
        return None
    flops = training_flops_per_token(facts, method, settings) * tokens
    mfu = settings.mfu * (QLORA_MFU_FACTOR if method == "qlora" else 1.0)
    return flops / (settings.gpus * settings.gpu_tflops * 1e12 * mfu)


# --- the plan ----------------------------------------------------------------------------------


def make_plan(facts: ModelFacts, settings: PlanSettings, methods: tuple[str, ...] = METHODS) -> Plan:
    """Every method × strategy (with and without gradient checkpointing) and the recommendation.

    The recommendation is the best-quality method that fits (full, else LoRA, else QLoRA — what
    LLaMA-Factory users do), then the cheapest way to run it: the simplest strategy (DDP before
    ZeRO-2 before ZeRO-3/FSDP), no gradient checkpointing if possible (it costs ~33% more compute),
    and the largest micro-batch (a power of two, at most the target batch per GPU) that fits;
    gradient accumulation makes up the rest of the effective batch. ``plan.cheapest`` is the fitting
    setup with the least GPU time per epoch, for a user who would trade quality for cost.
    """
    plan = Plan(facts, settings)
    budget = settings.gpu_mem_gib * GIB * settings.headroom
    strategies = ("single",) if settings.gpus == 1 else STRATEGIES
    per_gpu_target = max(1, math.ceil(settings.batch_size / settings.gpus))
    for method in methods:
        for strategy in strategies:
            row: dict[str, Any] = {"method": method, "strategy": strategy}
            for gc in (False, True):
                setup = replace(settings, gradient_checkpointing=gc)
                at_one = gpu_estimate(facts, method, strategy, 1, setup)
                best = _largest_micro_batch(facts, method, strategy, setup, budget, per_gpu_target)
                key = "gc" if gc else "no_gc"
                row[key] = {**asdict(at_one), "total": at_one.total, "max_micro_batch": best}
            row["epoch_seconds"] = epoch_seconds(facts, method, settings)
            plan.rows.append(row)
    candidates = _fitting_setups(plan)
    plan.recommendation = candidates[0] if candidates else None
    plan.cheapest = min(candidates, key=lambda c: c["relative_cost"]) if candidates else None
    if facts.is_moe:
        plan.notes.append(
            f"MoE: {facts.total_params / 1e9:.1f}B parameters are held in memory, {facts.active_params / 1e9:.1f}B "
            f"are used per token ({facts.experts_per_token} of {facts.n_routed_experts} routed experts): "
            "memory follows the total, compute the active count")
    plan.notes.append(
        f"assumptions: bf16 weights with fp32 AdamW states (16 bytes/param trained), {settings.headroom:.0%} of "
        f"{settings.gpu_mem_gib:g} GiB usable, {GPU_RUNTIME_BYTES // GIB} GiB CUDA runtime per GPU, SDPA/flash "
        f"attention; time at {settings.mfu:.0%} MFU of {settings.gpu_tflops:g} TFLOP/s per GPU")
    return plan


def _largest_micro_batch(facts, method, strategy, settings, budget, limit) -> int:
    best, micro = 0, 1
    while micro <= limit and gpu_estimate(facts, method, strategy, micro, settings).total <= budget:
        best, micro = micro, micro * 2
    return best


def _fitting_setups(plan: Plan) -> list[dict[str, Any]]:
    """Every setup that fits, best first: method by quality, no checkpointing before checkpointing, then strategy.

    Each carries ``relative_cost``: GPU time per token, up to a constant (FLOPs over the method's MFU factor),
    so it ranks setups even when the epoch size is unknown.
    """
    settings = plan.settings
    setups = []
    for method in dict.fromkeys(row["method"] for row in plan.rows):
        for gc in (False, True):
            for row in (r for r in plan.rows if r["method"] == method):
                micro = row["gc" if gc else "no_gc"]["max_micro_batch"]
                if not micro:
                    continue
                accumulation = max(1, math.ceil(settings.batch_size / (micro * settings.gpus)))
                setup = replace(settings, gradient_checkpointing=gc)
                estimate = gpu_estimate(plan.facts, method, row["strategy"], micro, setup)
                efficiency = QLORA_MFU_FACTOR if method == "qlora" else 1.0
                cost = training_flops_per_token(plan.facts, method, setup) / efficiency
                setups.append({"method": method, "strategy": row["strategy"], "gradient_checkpointing": gc,
                               "micro_batch": micro, "gradient_accumulation_steps": accumulation,
                               "effective_batch": micro * accumulation * settings.gpus,
                               "per_gpu_bytes": estimate.total, "epoch_seconds": epoch_seconds(plan.facts, method, setup),
                               "relative_cost": cost})
    return setups


# --- output ------------------------------------------------------------------------------------


def cpu_plan(facts: ModelFacts, settings: PlanSettings, methods: tuple[str, ...] = ("full", "lora")) -> list[Estimate]:
    """CPU estimates (fp32, one process) at micro-batch ``settings.batch_size``, with and without checkpointing."""
    return [cpu_estimate(facts, method, settings.batch_size, replace(settings, gradient_checkpointing=gc))
            for method in methods if method != "qlora" for gc in (False, True)]


def _gib(value: float) -> str:
    return f"{value / GIB:,.1f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 3600:,.1f} h" if seconds >= 3600 else f"{seconds / 60:,.1f} min"


def facts_line(facts: ModelFacts) -> str:
    active = f", {facts.active_params / 1e9:.2f}B active per token" if facts.is_moe else ""
    return (f"{facts.name}: {facts.total_params / 1e9:.3f}B parameters{active}; {facts.num_layers} layers, hidden "
            f"{facts.hidden_size}, vocab {facts.vocab_size:,}; LoRA r=16 on the default targets: "
            f"{facts.lora_params(16) / 1e6:.1f}M (config: {facts.source})")


def plan_table(plan: Plan):
    """A rich table: one row per method × strategy, per-GPU GiB, and the largest micro-batch that fits."""
    from rich.table import Table

    s = plan.settings
    table = Table(title=f"per-GPU memory (GiB), seq-len {s.seq_len}, micro-batch 1, {s.gpus} × {s.gpu_mem_gib:g} GiB")
    for name in ("method", "strategy", "weights", "grads", "optim", "acts", "acts (ckpt)", "total", "total (ckpt)",
                 "max micro-batch", "epoch"):
        table.add_column(name, justify="left" if name in ("method", "strategy") else "right")
    for row in plan.rows:
        plain, ckpt = row["no_gc"], row["gc"]
        table.add_row(row["method"], row["strategy"], _gib(plain["weights"]), _gib(plain["gradients"]),
                      _gib(plain["optimizer"]), _gib(plain["activations"]), _gib(ckpt["activations"]),
                      _gib(plain["total"]), _gib(ckpt["total"]),
                      f"{plain['max_micro_batch'] or '-'} / {ckpt['max_micro_batch'] or '-'} (ckpt)",
                      _duration(row["epoch_seconds"]))
    return table


def recommendation_line(plan: Plan) -> str:
    rec = plan.recommendation
    if rec is None:
        return (f"[red]nothing fits[/] in {plan.settings.gpus} × {plan.settings.gpu_mem_gib:g} GiB at seq-len "
                f"{plan.settings.seq_len}: add GPUs (--gpus), shorten --seq-len, or use a smaller model")
    line = f"[bold green]recommended:[/] {_setup_text(plan, rec)}"
    cheap = plan.cheapest
    if cheap is not None and (cheap["method"], cheap["strategy"], cheap["gradient_checkpointing"]) != (
            rec["method"], rec["strategy"], rec["gradient_checkpointing"]):
        ratio = cheap["relative_cost"] / rec["relative_cost"]
        line += f"\n[bold]cheapest that fits:[/] {_setup_text(plan, cheap)} ({ratio:.0%} of the recommended GPU time)"
    return line


def _setup_text(plan: Plan, setup: dict[str, Any]) -> str:
    ckpt = " with gradient checkpointing" if setup["gradient_checkpointing"] else ""
    return (f"{setup['method']} with {setup['strategy']}{ckpt}, micro-batch {setup['micro_batch']} × accumulation "
            f"{setup['gradient_accumulation_steps']} × {plan.settings.gpus} GPU(s) = effective batch "
            f"{setup['effective_batch']}; {_gib(setup['per_gpu_bytes'])} GiB per GPU; "
            f"epoch {_duration(setup['epoch_seconds'])}")


def cpu_table(facts: ModelFacts, settings: PlanSettings, estimates: list[Estimate]):
    from rich.table import Table

    table = Table(title=f"CPU (fp32) peak resident memory (GiB), batch {settings.batch_size} × seq-len "
                        f"{settings.seq_len}")
    for name in ("method", "checkpointing", "runtime", "weights", "grads", "optim", "acts", "total"):
        table.add_column(name, justify="left" if name == "method" else "right")
    for e in estimates:
        table.add_row(e.method, "yes" if e.gradient_checkpointing else "no", _gib(e.baseline), _gib(e.weights),
                      _gib(e.gradients), _gib(e.optimizer), _gib(e.activations), _gib(e.total))
    return table
