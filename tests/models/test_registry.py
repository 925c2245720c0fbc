"""The checkpoint registry: aliases resolve to exact hub ids, and each family has sensible LoRA defaults."""

from __future__ import annotations

import pytest

from dstune.models.registry import REGISTRY, ModelSpec, default_lora_targets, find_spec, resolve_alias

FAMILIES = {"qwen2", "llama", "deepseek_v2", "deepseek_v3"}


def test_aliases_resolve_to_hub_ids():
    assert resolve_alias("r1-distill-qwen-1.5b") == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    assert resolve_alias("R1-Distill-Llama-8B") == "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
    assert resolve_alias("deepseek-v2-lite") == "deepseek-ai/DeepSeek-V2-Lite"
    assert resolve_alias("deepseek-coder-6.7b-instruct") == "deepseek-ai/deepseek-coder-6.7b-instruct"


@pytest.mark.parametrize("name", ["deepseek-ai/DeepSeek-V3", "HuggingFaceTB/SmolLM2-135M", "./runs/base", "x.gguf"])
def test_other_names_are_unchanged(name):
    assert resolve_alias(name) == name


def test_registry_covers_the_deepseek_families():
    by_type: dict[str, set[str]] = {}
    for spec in REGISTRY.values():
        by_type.setdefault(spec.model_type, set()).add(spec.alias)
    assert set(by_type) == FAMILIES
    assert {f"r1-distill-qwen-{size}" for size in ("1.5b", "7b", "14b", "32b")} <= by_type["qwen2"]
    assert {"r1-distill-llama-8b", "r1-distill-llama-70b", "deepseek-llm-67b-chat"} <= by_type["llama"]
    assert {"deepseek-coder-1.3b-base", "deepseek-coder-33b-instruct"} <= by_type["llama"]
    assert by_type["deepseek_v2"] == {"deepseek-v2-lite", "deepseek-v2-lite-chat", "deepseek-v2"}
    assert by_type["deepseek_v3"] == {"deepseek-v3", "deepseek-r1"}


@pytest.mark.parametrize("spec", list(REGISTRY.values()), ids=list(REGISTRY))
def test_spec_is_consistent(spec: ModelSpec):
    assert spec.hub_id.startswith("deepseek-ai/")
    assert REGISTRY[spec.alias] is spec and spec.alias == spec.alias.lower()
    assert spec.params_b > 0
    assert spec.is_moe == spec.model_type.startswith("deepseek_v")
    if spec.is_moe:
        assert 0 < spec.active_params_b < spec.params_b
    is_base = spec.alias.endswith("-base") or spec.alias in {"deepseek-v2", "deepseek-v2-lite"}
    assert spec.has_chat_template == (not is_base)
    assert isinstance(default_lora_targets(spec.model_type), list)


def test_specs_are_frozen():
    with pytest.raises(AttributeError):
        REGISTRY["deepseek-v3"].params_b = 1.0  # type: ignore[misc]


def test_find_spec_by_alias_or_hub_id():
    assert find_spec("deepseek-r1").active_params_b == 37.0
    assert find_spec("deepseek-ai/deepseek-v2-lite").alias == "deepseek-v2-lite"
    assert find_spec("gpt2") is None


def test_default_targets_for_mla_models():
    targets = default_lora_targets("deepseek_v3")
    assert {"q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"} <= set(targets)
    assert "q_proj" in targets  # V2-Lite has no low-rank query projection
    assert {"gate_proj", "up_proj", "down_proj"} <= set(targets)
    assert "experts" not in targets and "lm_head" not in targets
    assert default_lora_targets("deepseek_v2") == targets


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3", "mistral"])
def test_default_targets_for_llama_like_models(model_type):
    expected = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert default_lora_targets(model_type) == expected


def test_unknown_architecture_uses_all_linear():
    assert default_lora_targets("some_new_arch") == "all-linear"


def test_default_targets_are_a_fresh_list():
    default_lora_targets("llama").append("lm_head")
    assert "lm_head" not in default_lora_targets("llama")


def test_an_uncached_hub_model_offline_says_so_and_how_to_use_a_local_folder(monkeypatch):
    from dstune.config.schema import MethodSection, ModelSection
    from dstune.errors import ModelError
    from dstune.models.load import load_causal_lm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as caught:  # an alias: resolved to its hub id, which is not in the cache
        load_causal_lm(ModelSection(name="r1-distill-qwen-1.5b"), MethodSection(type="lora"))
    text = str(caught.value)
    assert "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B" in text and "not in the local Hugging Face cache" in text
    assert "model.name" in text and "local folder" in text
