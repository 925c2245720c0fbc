"""The ``deploy`` section: how `dstune export`, `dstune bench` and `dstune serve` behave.

Every value has a default that works on a laptop CPU, so a run config needs no ``deploy`` section;
the commands' flags override single values::

    deploy:
      export:
        merge_dtype: float32       # merge LoRA in float32, save in the base checkpoint's dtype
        int8_min_agreement: 0.95
      bench:
        batch_sizes: [1, 8]
        seq_lens: [128, 512]
      serve:
        max_tokens_limit: 2048
        max_concurrent: 2
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from dstune.config.base import Section


class ExportSection(Section):
    """`dstune export`: how artifacts are built and how strictly they are verified."""

    merge_dtype: Literal["base", "float32"] = Field(
        "base",
        description="dtype the LoRA update is added in: 'base' (the base checkpoint's dtype) or 'float32' "
        "(merged in float32, then saved in the base dtype; avoids bf16 rounding of W + BA).",
    )
    save_dtype: Literal["base", "float32"] = Field(
        "base", description="dtype of the merged safetensors: the base checkpoint's dtype, or float32."
    )
    merge_tolerance: float = Field(
        1e-3,
        gt=0,
        description="Merged-vs-adapter check: largest allowed max|Δlogit| / max(1, max|logit|) when saved in "
        "float32 (20x this for bfloat16/float16 weights). Larger differences fail the export.",
    )
    verify_samples: int = Field(8, gt=0, le=256, description="Inputs used to verify each artifact.")
    verify_new_tokens: int = Field(
        16, gt=0, le=512, description="Causal LM: greedy tokens per input whose next-token agreement is checked."
    )
    fp32_min_agreement: float = Field(
        0.99, ge=0.0, le=1.0, description="ONNX float32: least share of predictions / next tokens equal to PyTorch."
    )
    int8_min_agreement: float = Field(
        0.8,
        ge=0.0,
        le=1.0,
        description="ONNX int8: least share of predictions / next tokens equal to PyTorch; below it the export "
        "fails (int8 is lossy; measure the accuracy change on labelled data before shipping).",
    )
    int8_per_channel: bool = Field(
        True, description="int8: one weight scale per output channel (more accurate) instead of per tensor."
    )
    opset: int | None = Field(None, ge=17, description="ONNX opset; None: the newest onnxscript supports.")


class BenchSection(Section):
    """`dstune bench`: which shapes to measure and how long."""

    batch_sizes: list[int] = Field([1, 8], min_length=1, description="Batch sizes to measure.")
    seq_lens: list[int] = Field([128], min_length=1, description="Input lengths (tokens) to measure.")
    warmup: int = Field(5, ge=0, description="Untimed runs before measuring each shape.")
    iterations: int = Field(50, gt=0, description="Timed runs per shape and backend.")
    decode_tokens: int = Field(32, gt=0, description="Causal LM: tokens generated to measure decode speed.")
    threads: int | None = Field(
        None, gt=0, description="CPU threads for PyTorch and ONNX Runtime alike; None: the cores this process may use."
    )


class ServeSection(Section):
    """`dstune serve`: limits that keep one server healthy under load."""

    host: str = Field("127.0.0.1", description="Interface to bind; 0.0.0.0 exposes the server to the network.")
    port: int = Field(8000, gt=0, lt=65536)
    api_key_env: str = Field("DSTUNE_API_KEY", description="Environment variable read for the API key.")
    max_body_bytes: int = Field(1_000_000, gt=0, description="Larger request bodies get 413.")
    max_tokens_limit: int = Field(2048, gt=0, description="Requests asking for more max_tokens get 400.")
    default_max_tokens: int = Field(256, gt=0, description="max_tokens when a request gives none.")
    max_concurrent: int = Field(1, gt=0, description="Generations running at once; more wait in the queue.")
    max_queue: int = Field(64, ge=0, description="Requests allowed to wait; beyond it they get 429.")
    request_timeout_s: float = Field(
        300.0, gt=0, description="A request (queueing + generation) that takes longer is stopped (408)."
    )


class DeploySection(Section):
    """Export, benchmark and serving settings (all optional)."""

    export: ExportSection = ExportSection()
    bench: BenchSection = BenchSection()
    serve: ServeSection = ServeSection()
