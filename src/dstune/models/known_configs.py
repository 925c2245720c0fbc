"""The config facts of the DeepSeek checkpoints in the registry, so that `dstune plan` works offline.

Only the sizes a memory/compute plan needs (copied from each checkpoint's ``config.json`` on the
Hub); the full config, when cached or reachable, is always preferred. A test checks that each
one's parameter count matches the registry's published figure.
"""

from __future__ import annotations

_QWEN2 = {"model_type": "qwen2", "tie_word_embeddings": False}
_LLAMA = {"model_type": "llama", "tie_word_embeddings": False}
_MLA = {"kv_lora_rank": 512, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128, "v_head_dim": 128,
        "tie_word_embeddings": False}


def _dense(base: dict, hidden: int, inter: int, layers: int, heads: int, kv: int, vocab: int) -> dict:
    return {**base, "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv, "vocab_size": vocab}


_CONFIGS: dict[str, dict] = {
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": _dense(_QWEN2, 1536, 8960, 28, 12, 2, 151936),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": _dense(_QWEN2, 3584, 18944, 28, 28, 4, 152064),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B": _dense(_QWEN2, 5120, 13824, 48, 40, 8, 152064),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B": _dense(_QWEN2, 5120, 27648, 64, 40, 8, 152064),
    "deepseek-ai/DeepSeek-R1-Distill-Llama-8B": _dense(_LLAMA, 4096, 14336, 32, 32, 8, 128256),
    "deepseek-ai/DeepSeek-R1-Distill-Llama-70B": _dense(_LLAMA, 8192, 28672, 80, 64, 8, 128256),
    "deepseek-ai/deepseek-llm-7b-base": _dense(_LLAMA, 4096, 11008, 30, 32, 32, 102400),
    "deepseek-ai/deepseek-llm-67b-base": _dense(_LLAMA, 8192, 22016, 95, 64, 8, 102400),
    "deepseek-ai/deepseek-coder-1.3b-base": _dense(_LLAMA, 2048, 5504, 24, 16, 16, 32256),
    "deepseek-ai/deepseek-coder-6.7b-base": _dense(_LLAMA, 4096, 11008, 32, 32, 32, 32256),
    "deepseek-ai/deepseek-coder-33b-base": _dense(_LLAMA, 7168, 19200, 62, 56, 8, 32256),
    "deepseek-ai/DeepSeek-V2-Lite": {
        **_MLA, "model_type": "deepseek_v2", "vocab_size": 102400, "hidden_size": 2048, "intermediate_size": 10944,
        "moe_intermediate_size": 1408, "num_hidden_layers": 27, "num_attention_heads": 16,
        "num_key_value_heads": 16, "n_shared_experts": 2, "n_routed_experts": 64, "num_experts_per_tok": 6,
        "first_k_dense_replace": 1, "q_lora_rank": None, "n_group": 1, "topk_group": 1},
    "deepseek-ai/DeepSeek-V2": {
        **_MLA, "model_type": "deepseek_v2", "vocab_size": 102400, "hidden_size": 5120, "intermediate_size": 12288,
        "moe_intermediate_size": 1536, "num_hidden_layers": 60, "num_attention_heads": 128,
        "num_key_value_heads": 128, "n_shared_experts": 2, "n_routed_experts": 160, "num_experts_per_tok": 6,
        "first_k_dense_replace": 1, "q_lora_rank": 1536, "n_group": 8, "topk_group": 3},
    "deepseek-ai/DeepSeek-V3": {
        **_MLA, "model_type": "deepseek_v3", "vocab_size": 129280, "hidden_size": 7168, "intermediate_size": 18432,
        "moe_intermediate_size": 2048, "num_hidden_layers": 61, "num_attention_heads": 128,
        "num_key_value_heads": 128, "n_shared_experts": 1, "n_routed_experts": 256, "num_experts_per_tok": 8,
        "first_k_dense_replace": 3, "q_lora_rank": 1536, "n_group": 8, "topk_group": 4},
}
_SAME = {  # chat/instruct variants and R1 share their base model's sizes
    "deepseek-ai/deepseek-llm-7b-chat": "deepseek-ai/deepseek-llm-7b-base",
    "deepseek-ai/deepseek-llm-67b-chat": "deepseek-ai/deepseek-llm-67b-base",
    "deepseek-ai/deepseek-coder-1.3b-instruct": "deepseek-ai/deepseek-coder-1.3b-base",
    "deepseek-ai/deepseek-coder-6.7b-instruct": "deepseek-ai/deepseek-coder-6.7b-base",
    "deepseek-ai/deepseek-coder-33b-instruct": "deepseek-ai/deepseek-coder-33b-base",
    "deepseek-ai/DeepSeek-V2-Lite-Chat": "deepseek-ai/DeepSeek-V2-Lite",
    "deepseek-ai/DeepSeek-R1": "deepseek-ai/DeepSeek-V3",
}


def known_config(hub_id: str):
    """A transformers config with the shipped sizes of ``hub_id`` (case-insensitive), or None."""
    from transformers import AutoConfig

    by_lower = {key.lower(): key for key in (*_CONFIGS, *_SAME)}
    key = by_lower.get(hub_id.lower())
    if key is None:
        return None
    values = dict(_CONFIGS[_SAME.get(key, key)])
    return AutoConfig.for_model(values.pop("model_type"), **values)
