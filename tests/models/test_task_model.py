"""Which head implementation a task gets, and the dropout override reaching every kind of head."""

from __future__ import annotations

import pytest
import torch

from dstune.config import validate_config
from dstune.data.label_space import LabelSpace
from dstune.models.heads import HeadSpec
from dstune.models.load import load_tokenizer, resolve_source
from dstune.models.task_model import build_task_model, transformers_class

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def spec(kind="single", pooling="auto", dropout=0.3):
    names = ["O", "B-X", "I-X"] if kind == "token" else ["a", "b"]
    return HeadSpec("t", LabelSpace(kind, names), pooling=pooling, dropout=dropout)


@pytest.mark.parametrize(
    "kind, pooling, model_type, expected",
    [
        ("single", "last", "deepseek_v3", "DeepseekV3ForSequenceClassification"),
        ("single", "mean", "deepseek_v3", None),  # transformers' classes pool the last token only
        ("single", "cls", "bert", "BertForSequenceClassification"),
        ("token", "last", "deepseek_v2", None),  # transformers has no DeepseekV2ForTokenClassification
        ("token", "last", "llama", "LlamaForTokenClassification"),
    ],
)
def test_transformers_class_where_it_exists_and_pools_as_asked(kind, pooling, model_type, expected):
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
        MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
    )

    auto = transformers_class(spec(kind, pooling), model_type)
    mapping = MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES if kind == "token" else MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
    assert (None if auto is None else mapping[model_type]) == expected


def build(model_dir, head: HeadSpec, method="lora"):
    config = validate_config({"model": {"name": str(model_dir)}, "task": {"type": "classification"},
                              "data": {"train": "unused.jsonl"}, "method": {"type": method, "trainable_layers": 1},
                              "training": {"dropout": 0.3}, "output_dir": "unused"})
    source = resolve_source(config.model)
    return build_task_model(config, [head], load_tokenizer(config.model, source), None, source)


def test_dropout_override_reaches_transformers_and_dstune_heads(tiny_llama_dir, tiny_bert_dir):
    llama = build(tiny_llama_dir, spec(), method="freeze")
    assert llama.implementation == "transformers"
    assert llama.model.score.weight.requires_grad  # the head trains under freeze too
    score, hidden = llama.model.score, torch.ones(4, 64)  # a decoder's score has no dropout of its own: dstune adds it
    assert not torch.equal(score.train()(hidden), score(hidden))
    assert torch.equal(score.eval()(hidden), score(hidden))

    bert = build(tiny_bert_dir, spec())
    assert bert.implementation == "transformers"
    assert bert.model.get_base_model().dropout.p == 0.3

    headed = build(tiny_bert_dir, spec(pooling="mean"))
    assert headed.implementation == "dstune" and headed.model.heads["t"].p == 0.3
    assert headed.model.backbone.get_base_model().config.hidden_dropout_prob == 0.3
    assert [n for n, p in headed.model.named_parameters() if p.requires_grad and "heads" in n] == [
        "heads.t.weight", "heads.t.bias"]
