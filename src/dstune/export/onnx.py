"""`dstune export --format onnx [--quantize int8]`: ONNX graphs checked against PyTorch.

The export itself is ``transformers.exporters.OnnxExporter`` (torch.export + torch.onnx, with
transformers' own patches for its models), so nothing here re-implements tracing:

- classifiers (sequence / token classification) export as one graph with dynamic batch and length;
- causal LMs export as one multi-token *step* with an explicit KV cache (``input.cache.*`` →
  ``output.cache.*``; batch 1): the prompt is a step on an empty cache, then one token per step.
  An adapter run is merged in memory first.

Each graph is checked on sample inputs — classifiers: prediction agreement and max |Δlogit|;
causal LMs: next-token agreement along PyTorch's greedy continuation (teacher-forced through the
KV cache) — and the figures go to ``verification.json`` beside the artifact.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from dstune.config.deploy import ExportSection
from dstune.errors import DstuneError, ModelError
from dstune.export.bundle import Bundle
from dstune.export.quantize import quantize_dynamic_int8
from dstune.export.runtime import OnnxCausalLM, load_exported, onnx_session
from dstune.export.source import Deployable, copy_heads, load_deployable, require_transformers_model
from dstune.export.verify import logit_figures, require, sample_chat_prompts, sample_texts, write_verification

FP32_RELATIVE_TOLERANCE = 1e-3  # float32 graph vs PyTorch: max |Δlogit| / max(1, max |logit|)
CLASSIFIER_MAX_LENGTH = 128


class ClassifierCheck:
    """Reference logits of a sequence/token classifier on sample texts, and the comparison with an export."""

    def __init__(self, deployable: Deployable, settings: ExportSection):
        self.token_level = deployable.task == "token-classification"
        self.inputs = dict(deployable.tokenizer(sample_texts(settings.verify_samples), padding=True, truncation=True,
                                                max_length=CLASSIFIER_MAX_LENGTH, return_tensors="pt"))
        with torch.no_grad():
            self.expected = deployable.model(**self.inputs).logits.float()

    def export_target(self, model) -> tuple[Any, dict]:
        """The module to export and its sample inputs (two rows of different length: batch and length stay dynamic)."""
        return model, {k: v[:2] for k, v in self.inputs.items()}

    def compare(self, directory: Path) -> dict[str, Any]:
        return self.figures(load_exported(directory)(**self.inputs).logits)

    def figures(self, logits) -> dict[str, Any]:
        """Figures of ``logits`` computed on :attr:`inputs` against the references (token level: real tokens only)."""
        mask = self.inputs["attention_mask"] if self.token_level else None
        figures = logit_figures(self.expected, torch.as_tensor(logits), mask)
        figures["prediction_agreement"] = figures.pop("argmax_agreement")
        return figures


class CausalLMCheck:
    """PyTorch's greedy continuations of sample chat prompts, and next-token agreement of an export along them."""

    def __init__(self, deployable: Deployable, settings: ExportSection):
        from transformers import GenerationConfig

        self.prompts = sample_chat_prompts(deployable.tokenizer, settings.verify_samples)
        tokens = settings.verify_new_tokens
        config = GenerationConfig(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                  pad_token_id=deployable.tokenizer.pad_token_id, output_logits=True,
                                  return_dict_in_generate=True)
        self.continuations, self.expected = [], []
        with torch.no_grad():
            for ids in self.prompts:
                out = deployable.model.generate(input_ids=torch.tensor([ids]), generation_config=config)
                self.continuations.append(out.sequences[0, len(ids):].tolist())
                self.expected.append(torch.cat(out.logits).float())

    def export_target(self, model) -> tuple[Any, dict]:
        from transformers.exporters.utils import decompose_prefill_decode

        ids = torch.tensor([self.prompts[0]])
        stages = decompose_prefill_decode(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                                          multi_token_decode=True)
        return stages["decode"]

    def compare(self, directory: Path) -> dict[str, Any]:
        lm = OnnxCausalLM(onnx_session(load_exported(directory)))
        got = [torch.from_numpy(lm.teacher_forced_logits(p, c)) for p, c in zip(self.prompts, self.continuations)]
        figures = logit_figures(torch.cat(self.expected), torch.cat(got).float())
        figures["next_token_agreement"] = figures.pop("argmax_agreement")
        return figures


def export_onnx(source: Path, bundle: Bundle, settings: ExportSection, quantize: str | None = None,
                log: Callable = print) -> list[dict[str, Any]]:
    """Export ``source`` to ``bundle/onnx`` (and ``bundle/onnx-int8``), verify each; return the verification records."""
    deployable = load_deployable(source, dtype="float32")
    require_transformers_model(deployable, "--format onnx")
    check = (CausalLMCheck if deployable.task == "causal-lm" else ClassifierCheck)(deployable, settings)
    model = _plain_float32(deployable)
    out = bundle.fresh_dir("onnx")
    log(f"exporting {type(model).__name__} ({deployable.task}) to ONNX …")
    _export_graph(*check.export_target(model), out, settings)
    deployable.tokenizer.save_pretrained(out)
    copy_heads(deployable.heads_dir, out)
    records = [_verify(bundle, "onnx", out, source, deployable.task, check, settings.fp32_min_agreement, True, log)]
    if quantize == "int8":
        target = bundle.fresh_dir("onnx-int8")
        log("quantising to int8 (ONNX Runtime dynamic quantisation) …")
        with _quiet():
            quantize_dynamic_int8(out, target, per_channel=settings.int8_per_channel)
        records.append(_verify(bundle, "onnx-int8", target, source, deployable.task, check,
                               settings.int8_min_agreement, False, log))
    elif quantize is not None:
        raise DstuneError(f"unknown quantisation {quantize!r}", hint="use --quantize int8")
    return records


def _plain_float32(deployable: Deployable):
    """The model as plain transformers modules in float32 (an adapter merged in memory)."""
    model = deployable.model
    if deployable.loaded.kind == "adapter":
        model = model.merge_and_unload()
    return model.float().eval()


def _export_graph(module, inputs: dict, out: Path, settings: ExportSection) -> None:
    """Trace ``module`` on ``inputs`` with dynamic shapes and save the ONNX export in ``out``."""
    from transformers.exporters import OnnxConfig, OnnxExporter

    architecture = type(module).__name__
    try:
        with _quiet():
            exported = OnnxExporter().export(module, inputs, OnnxConfig(dynamic=True, opset_version=settings.opset))
    except Exception as exc:  # torch.export / torch.onnx raise many unrelated types for unsupported code
        raise ModelError(
            f"ONNX export of {architecture} failed: {_first_line(exc)}",
            hint="causal-LM ONNX export is tested on Llama-architecture models (SmolLM2, R1-Distill-Llama, "
            "deepseek-llm) and a tiny DeepSeek-V3 (MLA + MoE), and was checked by hand on a tiny Qwen2; for models "
            "that do not export, use --format merged and serve with vLLM (--debug shows the exporter's traceback)",
        ) from exc
    exported.save_pretrained(out)


def _verify(bundle: Bundle, name: str, directory: Path, source: Path, task: str, check, min_agreement: float,
            fp32: bool, log: Callable) -> dict[str, Any]:
    """Compare the export in ``directory`` with PyTorch, write and record the figures, raise if it fails."""
    figures = check.compare(directory)
    agreement_key = "next_token_agreement" if task == "causal-lm" else "prediction_agreement"
    threshold = {agreement_key: min_agreement}
    passed = figures[agreement_key] >= min_agreement
    if fp32:
        threshold["relative_max_diff"] = FP32_RELATIVE_TOLERANCE
        passed = passed and figures["relative_max_diff"] <= FP32_RELATIVE_TOLERANCE
    record = write_verification(directory, f"{name} vs PyTorch ({task})", figures, threshold, passed,
                                source=str(source))
    bundle.record(name, source=source, task=task, verification=record)
    log(f"{name}: {directory} — {agreement_key} {figures[agreement_key]:.3f}, "
        f"max |Δlogit| {figures['max_abs_diff']:.3g}" + ("" if passed else " [FAILED]"))
    hint = ("set deploy.export.int8_min_agreement lower only after measuring accuracy on labelled data, "
            "or ship the float32 export" if not fp32 else "report this with --debug output: it is an exporter bug")
    return require(record, directory, hint)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' progress prints and version-drift warnings (shown again on failure via --debug)."""
    loggers = [logging.getLogger(name) for name in ("torch", "torch.onnx", "torch.export", "transformers", "root")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
