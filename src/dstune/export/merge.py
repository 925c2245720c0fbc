"""`dstune export --format merged`: LoRA merged into the base weights, saved, reloaded and checked.

1. the adapter model (base + PEFT adapter, float32) computes reference logits: causal LMs on a few
   chat prompts, classifiers (sequence / token) on a padded batch of sample texts;
2. the adapter is merged in the base checkpoint's dtype (or float32 with ``merge_dtype: float32``);
   a classifier's head, trained whole as a peft ``modules_to_save`` module, replaces the base one;
3. the merged model is saved (safetensors, tokenizer with the training chat template, model card;
   classifiers: label names in ``config.json`` and the run's ``heads/`` label files);
4. it is reloaded with plain ``transformers`` (``AutoModelForCausalLM`` /
   ``AutoModelForSequenceClassification`` / ``AutoModelForTokenClassification``) and its logits
   compared with the references; a difference above the tolerance fails the export.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dstune.config.deploy import ExportSection
from dstune.errors import DstuneError
from dstune.export.bundle import Bundle
from dstune.export.card import write_model_card
from dstune.export.onnx import ClassifierCheck
from dstune.export.source import Deployable, copy_heads, load_deployable, require_transformers_model
from dstune.export.verify import logit_figures, require, sample_chat_prompts, write_verification

# The tolerance grows with the precision lost when the merged weights are saved in a 16-bit dtype.
_TOLERANCE_FACTOR = {torch.float32: 1.0, torch.float16: 10.0, torch.bfloat16: 50.0}


def export_merged(source: Path, bundle: Bundle, settings: ExportSection, log: Callable = print) -> dict[str, Any]:
    """Merge, save and verify; return the verification record (raises if verification fails)."""
    reference = load_deployable(source, dtype="float32")
    require_transformers_model(reference, "--format merged")
    probe = (CausalProbe if reference.task == "causal-lm" else ClassifierProbe)(reference, settings)
    base_model, base_dtype = _base_facts(reference)
    merge_dtype = torch.float32 if settings.merge_dtype == "float32" else base_dtype
    save_dtype = torch.float32 if settings.save_dtype == "float32" else base_dtype
    log(f"merging {reference.loaded.kind} in {_name(merge_dtype)}, saving in {_name(save_dtype)}")
    merged = _merge(reference if merge_dtype == torch.float32 else None, source, merge_dtype)
    tokenizer, name, task, heads = reference.tokenizer, reference.name, reference.task, reference.heads_dir
    del reference
    gc.collect()

    out = bundle.fresh_dir("merged")
    merged.to(save_dtype).save_pretrained(out)
    tokenizer.save_pretrained(out)
    copy_heads(heads, out)
    del merged
    gc.collect()

    record = _verify_reload(out, probe, settings.merge_tolerance * _TOLERANCE_FACTOR[save_dtype], save_dtype)
    write_model_card(out, name=f"{name}-merged", source=source, task=task, base_model=base_model,
                     verification=record, artifact="merged")
    bundle.record("merged", source=source, task=task, verification=record, dtype=_name(save_dtype))
    log(f"merged model: {out} (max |Δlogit| {record['figures']['max_abs_diff']:.3g} vs the adapter model)")
    return require(record, out, hint="try deploy.export.merge_dtype: float32, or serve the adapter unmerged "
                                     "(dstune serve RUN_DIR / vllm serve BASE --enable-lora)")


class CausalProbe:
    """A causal LM's reference logits on sample chat prompts, one forward each (no padding, so nothing
    depends on masking), and the same figures for the reloaded model."""

    auto_class = "AutoModelForCausalLM"

    def __init__(self, deployable: Deployable, settings: ExportSection):
        self.prompts = sample_chat_prompts(deployable.tokenizer, settings.verify_samples)
        self.expected = _logits(deployable.model, self.prompts)
        self.count = len(self.prompts)

    def figures(self, model) -> dict[str, Any]:
        got = _logits(model, self.prompts)
        return logit_figures(torch.cat([e[0] for e in self.expected]), torch.cat([g[0] for g in got]))


class ClassifierProbe:
    """A classifier's reference logits on a padded batch of sample texts (what ONNX export checks too)."""

    def __init__(self, deployable: Deployable, settings: ExportSection):
        self.check = ClassifierCheck(deployable, settings)
        self.count = len(self.check.expected)
        self.auto_class = ("AutoModelForTokenClassification" if self.check.token_level
                           else "AutoModelForSequenceClassification")

    @torch.no_grad()
    def figures(self, model) -> dict[str, Any]:
        return self.check.figures(model(**self.check.inputs).logits)


def _merge(loaded: Deployable | None, source: Path, dtype: torch.dtype):
    """The merged plain transformers model: from ``loaded`` (already float32) or reloaded in ``dtype``."""
    loaded = loaded or load_deployable(source, dtype=_name(dtype))
    model = loaded.model
    if loaded.loaded.kind == "adapter":
        model = model.merge_and_unload(safe_merge=True)
    return model.eval()


def _verify_reload(out: Path, probe: CausalProbe | ClassifierProbe, tolerance: float,
                   save_dtype: torch.dtype) -> dict[str, Any]:
    """Reload ``out`` with plain transformers (float32) and compare its logits with the probe's references."""
    import transformers

    reloaded = getattr(transformers, probe.auto_class).from_pretrained(out, dtype=torch.float32).eval()
    figures = probe.figures(reloaded)
    passed = figures["relative_max_diff"] <= tolerance
    return write_verification(
        out, f"merged vs adapter logits (reloaded with plain transformers {probe.auto_class})", figures,
        {"relative_max_diff": tolerance}, passed, inputs=probe.count, saved_dtype=_name(save_dtype),
    )


@torch.no_grad()
def _logits(model, prompts: list[list[int]]) -> list[torch.Tensor]:
    """Float32 logits for each prompt, one forward pass each (no padding, so nothing depends on masking)."""
    return [model(input_ids=torch.tensor([ids])).logits.float() for ids in prompts]


def _base_facts(deployable: Deployable) -> tuple[str | None, torch.dtype]:
    """The base model's name and its checkpoint dtype (float32 when the checkpoint does not say)."""
    config = deployable.loaded.config
    base_name = config.model.name if config is not None else str(deployable.loaded.source)
    model_config = deployable.model.config
    dtype = getattr(model_config, "dtype", None)
    if config is not None and config.model.dtype in ("float32", "bfloat16", "float16"):
        dtype = getattr(torch, config.model.dtype)
    elif config is not None:
        dtype = _checkpoint_dtype(config.model) or dtype
    return base_name, dtype if isinstance(dtype, torch.dtype) and dtype in _TOLERANCE_FACTOR else torch.float32


def _checkpoint_dtype(model_section) -> torch.dtype | None:
    """The dtype the base checkpoint was saved in, from its config.json (None if unknown)."""
    from transformers import AutoConfig

    from dstune.models.load import resolve_source

    try:
        source = resolve_source(model_section)
        value = getattr(AutoConfig.from_pretrained(source.path, **source.kwargs(model_section)), "dtype", None)
    except (OSError, ValueError, DstuneError):
        return None
    if isinstance(value, str):
        value = getattr(torch, value, None)
    return value if isinstance(value, torch.dtype) else None


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
