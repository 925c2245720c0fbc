"""Run exported ONNX models with ONNX Runtime: sessions, classifiers, and causal LMs with a KV cache.

Classifiers run through ``transformers.exporters.ExportedModel`` (it returns the same output
objects as the PyTorch model). Causal LMs are exported as one multi-token step with an explicit
KV cache (``input.cache.*`` in, ``output.cache.*`` out): :class:`OnnxCausalLM` drives it — the
prompt is one step on an empty cache, then one token per step.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from dstune.errors import ModelError

_ONNX_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def cpu_count() -> int:
    """Cores this process may run on (not every core of the machine)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def session_options(threads: int | None = None):
    """ONNX Runtime session options with the thread pool sized to ``threads`` (default: the usable cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or cpu_count()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # idle worker threads sleep instead of spinning: spinning threads steal the CPU from whatever runs next
    # (PyTorch in `dstune bench`, the server's other requests) on machines with few cores
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def load_exported(directory: Path, *, threads: int | None = None, providers: list | None = None):
    """An ``ExportedModel`` loaded from ``directory`` on ONNX Runtime (CPU unless ``providers`` say otherwise)."""
    from transformers.exporters import ExportedModel

    if not (Path(directory) / "export.json").is_file():
        raise ModelError(f"{directory} is not an ONNX export (no export.json)",
                         hint="create one with `dstune export SOURCE --format onnx`")
    return ExportedModel.from_pretrained(
        str(directory), local_files_only=True, providers=providers or ["CPUExecutionProvider"],
        session_options=session_options(threads),
    )


def onnx_session(exported):
    """The ONNX Runtime session of a single-graph export."""
    return exported.runners["model"].session


class OnnxCausalLM:
    """Greedy steps of an exported causal LM (batch 1) over its explicit KV cache."""

    def __init__(self, session):
        self.session = session
        self.inputs = {spec.name: spec for spec in session.get_inputs()}
        self.output_names = [spec.name for spec in session.get_outputs()]
        self.cache_inputs = [name for name in self.inputs if name.startswith("input.")]
        if "input_ids" not in self.inputs or "logits" not in self.output_names:
            raise ModelError("this ONNX graph is not a causal LM step (no input_ids / logits)")

    def empty_cache(self) -> dict[str, np.ndarray]:
        """A zero-length cache: every symbolic axis of a cache input (the past length) set to 0."""
        return {name: np.zeros([_static(dim) for dim in self.inputs[name].shape],
                               dtype=_ONNX_DTYPES.get(self.inputs[name].type, np.float32))
                for name in self.cache_inputs}

    def step(self, token_ids: list[int], cache: dict[str, np.ndarray], past: int) -> tuple[np.ndarray, dict]:
        """Run ``token_ids`` after ``past`` cached tokens: logits for each new position (seq, vocab) and the new cache."""
        ids = np.asarray([token_ids], dtype=np.int64)
        total = past + ids.shape[1]
        extra = {
            "position_ids": np.arange(past, total, dtype=np.int64)[None],
            "attention_mask": np.ones((1, total), dtype=np.int64),
            "cache_position": np.arange(past, total, dtype=np.int64),
        }
        feed = {"input_ids": ids, **cache, **{k: v for k, v in extra.items() if k in self.inputs}}
        outputs = dict(zip(self.output_names, self.session.run(None, feed)))
        new_cache = {name: outputs["output." + name.removeprefix("input.")] for name in self.cache_inputs}
        return outputs["logits"][0], new_cache

    def teacher_forced_logits(self, prompt: list[int], continuation: list[int]) -> np.ndarray:
        """Next-token logits after the prompt and after each token of ``continuation`` but the last (len, vocab)."""
        logits, cache = self.step(prompt, self.empty_cache(), 0)
        rows, past = [logits[-1]], len(prompt)
        for token in continuation[:-1]:
            logits, cache = self.step([token], cache, past)
            rows.append(logits[-1])
            past += 1
        return np.stack(rows)

    def greedy(self, prompt: list[int], max_new_tokens: int, eos_token_id: int | None = None) -> list[int]:
        """Greedy decoding, stopping at ``eos_token_id``."""
        logits, cache = self.step(prompt, self.empty_cache(), 0)
        past, out = len(prompt), []
        for _ in range(max_new_tokens):
            token = int(logits[-1].argmax())
            out.append(token)
            if token == eos_token_id:
                break
            logits, cache = self.step([token], cache, past)
            past += 1
        return out


def _static(dim: Any) -> int:
    """A fixed axis size (ints, or digit strings as the exporter names some), else 0 for a symbolic axis."""
    if isinstance(dim, int):
        return dim
    return int(dim) if isinstance(dim, str) and dim.isdigit() else 0
