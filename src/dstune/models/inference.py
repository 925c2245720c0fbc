"""Load what a run produced (or any Hugging Face model) for evaluation, export and serving."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dstune.errors import ModelError


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    kind: str  # "adapter" (base + PEFT adapter), "model" (full weights of a run) or "hf" (plain model)
    source: Path | str
    config: Any | None = None  # the run's RunConfig, when loaded from a run directory
    predictor: Any | None = None  # labelled-task runs: their models.predict.Predictor (heads, labels, decoding)


def load_run_config(run_dir: Path):
    from dstune.config import load_config

    return load_config(Path(run_dir) / "config.yaml")


def load_for_inference(path: str | Path, *, dtype: str | None = None) -> LoadedModel:
    """A run directory (adapter/ on its base model, or model/), or a plain model folder / hub id / .gguf.

    The model is returned in eval mode, the tokenizer with the chat template the run trained with.
    """
    from dstune.config.schema import MethodSection, ModelSection
    from dstune.models.load import ModelSource, load_causal_lm, load_tokenizer

    path = Path(path)
    if (path / "config.yaml").is_file() and (path / "metrics.json").is_file():
        config = load_run_config(path)
        model_cfg = config.model.model_copy(update={"dtype": dtype} if dtype else {})
        if (path / "adapter").is_dir():
            from peft import PeftModel

            base = load_causal_lm(model_cfg, MethodSection(type="lora"))
            model = PeftModel.from_pretrained(base, path / "adapter")
            adapter = str(path / "adapter")  # no config.json there: skip resolve_source's model-folder check
            tokenizer = load_tokenizer(ModelSection(name=adapter), ModelSource(adapter, is_local=True))
            return LoadedModel(model.eval(), tokenizer, "adapter", path, config)
        weights = path / "model"
        spec = model_cfg.model_copy(update={"name": str(weights)})
        return LoadedModel(_load_plain(spec), load_tokenizer(spec), "model", path, config)
    if (path / "config.yaml").is_file():
        raise ModelError(
            f"{path} is a run directory without metrics.json: the run did not finish",
            hint=f"resume it with `dstune train {path}/config.yaml --resume`",
        )
    spec = ModelSection(name=str(path), **({"dtype": dtype} if dtype else {}))
    return LoadedModel(_load_plain(spec), load_tokenizer(spec), "hf", path)


def _load_plain(spec):
    from dstune.config.schema import MethodSection
    from dstune.models.load import load_causal_lm

    return load_causal_lm(spec, MethodSection(type="full")).eval()
