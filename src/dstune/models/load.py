"""Load a tokenizer and a causal LM from a hub id, an alias, a local directory or a .gguf file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dstune.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from dstune.config.schema import MethodSection, ModelSection

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


@dataclass(frozen=True)
class ModelSource:
    """Where the weights come from: ``path`` is a hub id or a local directory; ``gguf_file`` a file name in it."""

    path: str
    gguf_file: str | None = None
    is_local: bool = False

    def kwargs(self, model: ModelSection) -> dict:
        kwargs: dict = {"trust_remote_code": model.trust_remote_code}
        if self.gguf_file:
            kwargs["gguf_file"] = self.gguf_file
        if model.revision and not self.is_local:
            kwargs["revision"] = model.revision
        return kwargs


def resolve_source(model: ModelSection) -> ModelSource:
    """Turn ``model.name`` into a loadable source, failing early and clearly for missing local paths."""
    from dstune.models.registry import resolve_alias

    name = resolve_alias(model.name)
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {path}", where="model.name")
        return ModelSource(str(path.parent), gguf_file=path.name, is_local=True)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"{path} is a directory but has no config.json",
                where="model.name",
                hint="point model.name at a Hugging Face model folder (config.json + weights) or a .gguf file",
            )
        return ModelSource(str(path), is_local=True)
    if looks_local(name):
        raise ModelError(f"model path not found: {name}", where="model.name",
                         hint="check the path (a run directory, a Hugging Face model folder or a .gguf file)")
    return ModelSource(name)


def looks_local(name: str) -> bool:
    """A name that can only mean a local path: explicit (./, /, ~), deeper than a hub id's ``org/name``, or
    inside a folder that exists here (``runs/demo``): looking it up on the hub would only wait for retries."""
    parts = Path(name).parts
    return (name.startswith((".", "/", "~")) or os.sep in name.strip("/").replace("/", "", 1)
            or (len(parts) > 1 and Path(parts[0]).is_dir()))


def check_method_environment(method: MethodSection) -> None:
    """Fail at config time, before any heavy work, when the method cannot run on this machine."""
    if method.type != "qlora":
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            "qlora needs a CUDA GPU (bitsandbytes 4/8-bit kernels); none is available on this machine",
            where="method.type",
            hint="use method.type: lora on CPU, or run on a machine with an NVIDIA GPU",
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(
            "qlora needs the bitsandbytes package", where="method.type", hint="pip install 'dstune[qlora]'"
        ) from None


def load_tokenizer(model: ModelSection, source: ModelSource | None = None):
    from transformers import AutoTokenizer

    source = source or resolve_source(model)
    tokenizer = _from_pretrained(AutoTokenizer, source, model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(model: ModelSection, method: MethodSection, dropout: float | None = None, source=None):
    """Load the causal LM in the configured dtype (4/8-bit for qlora), with the dropout override applied."""
    from transformers import AutoModelForCausalLM

    return load_model(AutoModelForCausalLM, model, method, dropout, source)


def load_model(auto_class, model: ModelSection, method: MethodSection, dropout: float | None = None, source=None,
               **config_updates):
    """Load ``model`` with a transformers Auto class (AutoModel, AutoModelForSequenceClassification, ...).

    ``config_updates`` are set on the model config before the weights load (e.g. ``id2label``).
    """
    import torch
    from transformers import AutoConfig

    source = source or resolve_source(model)
    config = _from_pretrained(AutoConfig, source, model)
    if dropout is not None:
        override_dropout(config, dropout)
    for key, value in config_updates.items():
        setattr(config, key, value)
    kwargs = source.kwargs(model)
    kwargs["dtype"] = _torch_dtype(model.dtype, torch)
    if model.attn_implementation:
        kwargs["attn_implementation"] = model.attn_implementation
    if method.type == "qlora":
        kwargs["quantization_config"] = _bnb_config(method.bits, kwargs["dtype"])
    lm = _from_pretrained(auto_class, source, model, config=config, **kwargs)
    if source.gguf_file:
        # The weights were de-quantised on load; forget the GGUF quantizer so that save_pretrained works.
        lm.hf_quantizer = None
        lm.config.quantization_config = None
        if hasattr(lm, "is_quantized"):
            lm.is_quantized = False
    return lm


def override_dropout(config, p: float) -> list[str]:
    """Set every float ``*dropout*`` attribute of a model config (and its sub-configs) to ``p``."""
    changed = []
    for key, value in list(vars(config).items()):
        if "dropout" in key and isinstance(value, float) and not isinstance(value, bool):
            setattr(config, key, p)
            changed.append(key)
        elif hasattr(value, "to_dict") and hasattr(value, "model_type"):
            changed += [f"{key}.{name}" for name in override_dropout(value, p)]
    return changed


def _torch_dtype(name: str, torch):
    if name in _DTYPES:
        return getattr(torch, _DTYPES[name])
    # auto: the checkpoint's dtype on GPU; float32 on CPU, where fp16 training is not supported
    return "auto" if torch.cuda.is_available() else torch.float32


def _bnb_config(bits: int, dtype):
    import torch
    from transformers import BitsAndBytesConfig

    compute = dtype if isinstance(dtype, torch.dtype) and dtype != torch.float32 else torch.bfloat16
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute
    )


def _from_pretrained(cls, source: ModelSource, model: ModelSection, **extra):
    kwargs = {**source.kwargs(model), **extra}
    try:
        return cls.from_pretrained(source.path, **kwargs)
    except OSError as exc:
        if source.is_local:
            raise ModelError(f"cannot load {cls.__name__} from {source.path}: {exc}", where="model.name") from None
        raise ModelError(
            f"model {source.path!r} is not in the local Hugging Face cache and the hub could not be reached "
            f"({_first_line(exc)})",
            where="model.name",
            hint=f"download it where the hub is reachable (`hf download {source.path}`) and copy the cache, "
            "or set model.name to a local folder in Hugging Face format or a .gguf file",
        ) from None
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise ModelError(
                f"{source.path} ships its own modelling code", where="model.trust_remote_code",
                hint="set model.trust_remote_code: true if you trust this checkpoint",
            ) from None
        raise


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
