"""The DeepSeek checkpoints dstune knows by a short alias, and each architecture's default LoRA targets.

This is data, not logic: any other Hugging Face causal LM works too, by hub id or local path.
Parameter counts are in billions, as the Hub reports them (embeddings included; V3/R1 without
the multi-token-prediction layer). ``has_chat_template`` is true for chat/instruct/R1 checkpoints,
whose tokenizer ships the template the model was trained with; base models need one from the
data config (``data.chat_template``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    """One known checkpoint."""

    alias: str
    hub_id: str
    model_type: str  # transformers ``config.model_type``: qwen2 | llama | deepseek_v2 | deepseek_v3
    params_b: float  # total parameters, billions
    has_chat_template: bool
    active_params_b: float | None = None  # parameters used per token (MoE only), billions

    @property
    def is_moe(self) -> bool:
        """Whether only part of the weights (``active_params_b``) is used per token."""
        return self.active_params_b is not None


_SPECS = [
    ModelSpec("r1-distill-qwen-1.5b", "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "qwen2", 1.78, True),
    ModelSpec("r1-distill-qwen-7b", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "qwen2", 7.62, True),
    ModelSpec("r1-distill-qwen-14b", "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B", "qwen2", 14.8, True),
    ModelSpec("r1-distill-qwen-32b", "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", "qwen2", 32.8, True),
    ModelSpec("r1-distill-llama-8b", "deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "llama", 8.03, True),
    ModelSpec("r1-distill-llama-70b", "deepseek-ai/DeepSeek-R1-Distill-Llama-70B", "llama", 70.6, True),
    ModelSpec("deepseek-llm-7b-base", "deepseek-ai/deepseek-llm-7b-base", "llama", 6.91, False),
    ModelSpec("deepseek-llm-7b-chat", "deepseek-ai/deepseek-llm-7b-chat", "llama", 6.91, True),
    ModelSpec("deepseek-llm-67b-base", "deepseek-ai/deepseek-llm-67b-base", "llama", 67.4, False),
    ModelSpec("deepseek-llm-67b-chat", "deepseek-ai/deepseek-llm-67b-chat", "llama", 67.4, True),
    ModelSpec("deepseek-coder-1.3b-base", "deepseek-ai/deepseek-coder-1.3b-base", "llama", 1.35, False),
    ModelSpec("deepseek-coder-1.3b-instruct", "deepseek-ai/deepseek-coder-1.3b-instruct", "llama", 1.35, True),
    ModelSpec("deepseek-coder-6.7b-base", "deepseek-ai/deepseek-coder-6.7b-base", "llama", 6.74, False),
    ModelSpec("deepseek-coder-6.7b-instruct", "deepseek-ai/deepseek-coder-6.7b-instruct", "llama", 6.74, True),
    ModelSpec("deepseek-coder-33b-base", "deepseek-ai/deepseek-coder-33b-base", "llama", 33.3, False),
    ModelSpec("deepseek-coder-33b-instruct", "deepseek-ai/deepseek-coder-33b-instruct", "llama", 33.3, True),
    ModelSpec("deepseek-v2-lite", "deepseek-ai/DeepSeek-V2-Lite", "deepseek_v2", 15.7, False, 2.4),
    ModelSpec("deepseek-v2-lite-chat", "deepseek-ai/DeepSeek-V2-Lite-Chat", "deepseek_v2", 15.7, True, 2.4),
    ModelSpec("deepseek-v2", "deepseek-ai/DeepSeek-V2", "deepseek_v2", 236.0, False, 21.0),
    ModelSpec("deepseek-v3", "deepseek-ai/DeepSeek-V3", "deepseek_v3", 671.0, True, 37.0),
    ModelSpec("deepseek-r1", "deepseek-ai/DeepSeek-R1", "deepseek_v3", 671.0, True, 37.0),
]

REGISTRY: dict[str, ModelSpec] = {spec.alias: spec for spec in _SPECS}
"""Alias → spec."""

# Multi-head latent attention (V2/V3; V2-Lite has a plain q_proj instead of q_a/q_b) plus the
# dense-layer and shared-expert MLP. Routed experts are left out: name `experts` to adapt them.
_MLA_TARGETS = ("q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj")
_MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")
_LLAMA_LIKE_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", *_MLP_TARGETS)

_DEFAULT_LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "deepseek_v2": _MLA_TARGETS + _MLP_TARGETS,
    "deepseek_v3": _MLA_TARGETS + _MLP_TARGETS,
    **{
        model_type: _LLAMA_LIKE_TARGETS
        for model_type in ("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "gemma3_text", "olmo2", "granite")
    },
}


def resolve_alias(name: str) -> str:
    """The hub id for a registry alias (case-insensitive); any other name is returned unchanged."""
    spec = REGISTRY.get(name.lower())
    return spec.hub_id if spec else name


def find_spec(name: str) -> ModelSpec | None:
    """The spec for an alias or a hub id (case-insensitive), or None for a model outside the registry."""
    lowered = name.lower()
    return REGISTRY.get(lowered) or next((s for s in _SPECS if s.hub_id.lower() == lowered), None)


def default_lora_targets(model_type: str) -> list[str] | str:
    """Leaf module names LoRA adapts by default for ``model_type``; "all-linear" for unknown architectures.

    For DeepSeek-V2/V3 the list names projections that not every checkpoint has (``q_proj`` exists
    only on V2-Lite, ``q_a_proj``/``q_b_proj`` only on the others): callers drop the ones that match nothing.
    """
    targets = _DEFAULT_LORA_TARGETS.get(model_type)
    return list(targets) if targets else "all-linear"
