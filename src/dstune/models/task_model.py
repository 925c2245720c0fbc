"""The model of a labelled task: transformers' own head class where one fits, else dstune heads.

One task whose architecture has an ``AutoModelForSequenceClassification`` /
``AutoModelForTokenClassification`` class (Llama, Qwen2, DeepSeek-V2/V3 and BERT-like encoders
for sequences; DeepSeek-V2 has no token class) and whose pooling is that class's own (last
non-padding token on decoders, ``[CLS]`` on encoders) trains that class: its head is a peft
``modules_to_save`` module, so the run loads with plain transformers + peft. Multi-task runs,
``mean`` pooling and architectures without such a class use :class:`~dstune.models.headed.HeadedModel`
(an ``AutoModel`` backbone with dstune heads, saved as described in :mod:`dstune.models.heads`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch.nn.functional as F
from torch import nn

from dstune.models.adapters import AdapterReport, AdapterTask, apply_method, build_report
from dstune.models.headed import HeadedModel
from dstune.models.heads import HeadSpec
from dstune.models.tokens import NewTokens, resize_and_init, trainable_rows

if TYPE_CHECKING:
    from dstune.config.schema import RunConfig
    from dstune.models.load import ModelSource

HEAD_MODULES = ("score", "classifier")
"""Head module names of transformers' classification classes (what peft's SEQ_CLS/TOKEN_CLS save)."""


@dataclass
class TaskModel:
    model: Any
    report: AdapterReport
    implementation: str  # "transformers" or "dstune"


def model_type_of(config: RunConfig, source: ModelSource) -> str:
    from transformers import AutoConfig

    from dstune.models.load import _from_pretrained

    return _from_pretrained(AutoConfig, source, config.model).model_type


def is_encoder(model_type: str) -> bool:
    """BERT-like (masked-LM) architectures pool ``[CLS]``; decoders pool their last token."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def resolve_pooling(setting: str, model_type: str) -> str:
    if setting != "auto":
        return setting
    return "cls" if is_encoder(model_type) else "last"


def transformers_class(spec: HeadSpec, model_type: str):
    """transformers' Auto class for this head on this architecture, or None where dstune heads are needed."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
        MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
    )

    if spec.space.kind == "token":
        return AutoModelForTokenClassification if model_type in MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES else None
    native = spec.pooling == resolve_pooling("auto", model_type)
    has_class = model_type in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
    return AutoModelForSequenceClassification if native and has_class else None


def build_task_model(
    config: RunConfig, specs: list[HeadSpec], tokenizer, new_tokens: NewTokens | None, source: ModelSource,
    loss_weighting: str = "fixed", heads: str = "auto",
) -> TaskModel:
    """Load the backbone, add the heads and apply the method; new tokens get their rows resized and trained.

    ``auto`` pooling in the specs is resolved here (``cls`` on encoders, ``last`` on decoders);
    ``heads="dstune"`` always uses dstune heads (multi-task runs).
    """
    from transformers import set_seed

    set_seed(config.training.seed)  # head and adapter initialisation are part of the run's reproducibility
    model_type = model_type_of(config, source)
    for spec in specs:
        spec.pooling = resolve_pooling(spec.pooling, model_type)
    auto = transformers_class(specs[0], model_type) if len(specs) == 1 and heads == "auto" else None
    if auto is not None:
        return _transformers_model(auto, config, specs[0], tokenizer, new_tokens, source)
    return _headed_model(config, specs, tokenizer, new_tokens, source, loss_weighting)


def _transformers_model(auto, config: RunConfig, spec: HeadSpec, tokenizer, new_tokens, source) -> TaskModel:
    from dstune.models.load import load_model

    space = spec.space
    updates = label_config(space, tokenizer)
    if config.training.dropout is not None:
        updates["classifier_dropout"] = config.training.dropout
    model = load_model(auto, config.model, config.method, config.training.dropout, source, **updates)
    resize_and_init(model, new_tokens, len(tokenizer))
    model.accepts_loss_kwargs = False  # its loss is a per-batch mean: let the Trainer scale it for accumulation
    heads = tuple(name for name, _ in model.named_children() if name in HEAD_MODULES)
    task = AdapterTask("TOKEN_CLS" if space.kind == "token" else "SEQ_CLS", heads, trainable_rows(model, new_tokens))
    model, report = apply_method(model, config.method, task=task)
    if config.training.dropout is not None and not _has_head_dropout(model):
        add_input_dropout(_inner(model).get_submodule(heads[0]), config.training.dropout)
    return TaskModel(model, report, "transformers")


def _headed_model(config: RunConfig, specs, tokenizer, new_tokens, source, loss_weighting: str) -> TaskModel:
    from transformers import AutoModel

    from dstune.models.load import load_model

    backbone = load_model(AutoModel, config.model, config.method, config.training.dropout, source)
    resize_and_init(backbone, new_tokens, len(tokenizer))
    task = AdapterTask("FEATURE_EXTRACTION", (), trainable_rows(backbone, new_tokens))
    backbone, report = apply_method(backbone, config.method, task=task)
    model = HeadedModel(backbone, specs, loss_weighting)
    return TaskModel(model, build_report(model, config.method.type, report.notes), "dstune")


def label_config(space, tokenizer) -> dict:
    """The config fields of a transformers classification class for this label space: label names (so that
    pipelines, exports and served results name the labels), padding, and single- vs multi-label scoring."""
    updates = {
        "id2label": dict(enumerate(space.names)),
        "label2id": {name: i for i, name in enumerate(space.names)},
        "pad_token_id": tokenizer.pad_token_id,
    }
    if space.kind != "token":
        updates["problem_type"] = ("multi_label_classification" if space.kind == "multi"
                                   else "single_label_classification")
    return updates


def add_input_dropout(module: nn.Module, p: float) -> None:
    """Dropout on a module's input in training (for heads that have none: decoders' ``score``)."""

    def hook(mod: nn.Module, args: tuple) -> tuple:
        return (F.dropout(args[0], p, mod.training), *args[1:])

    module.register_forward_pre_hook(hook)


def _has_head_dropout(model: nn.Module) -> bool:
    """Whether the classification model applies a dropout of its own before its head."""
    return any(isinstance(child, nn.Dropout) for child in _inner(model).children())


def _inner(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model
