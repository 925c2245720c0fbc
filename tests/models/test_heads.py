"""Task heads: left- and right-padded batches pool the same vectors (dstune heads on DeepSeek-V3 and BERT,
transformers' LlamaForSequenceClassification), and the class-weighted / focal losses."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from dstune.data.label_space import LabelSpace
from dstune.models.headed import HeadedModel
from dstune.models.heads import HeadSpec, label_loss, pool

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TEXTS = ["What is AI? Artificial intelligence is the science", "Hello", "合同方A与合同方B签订本合同。"]


def padded(tokenizer, side: str) -> dict:
    tokenizer.padding_side = side
    try:
        return tokenizer(TEXTS, padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = "right"


def test_pool_finds_the_same_positions_for_left_and_right_padding():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool(hidden, right, "last")[:, 0].tolist() == [1.0, 7.0]
    assert pool(hidden, left, "last")[:, 0].tolist() == [3.0, 7.0]
    assert pool(hidden, left, "cls")[:, 0].tolist() == [2.0, 4.0]
    assert pool(hidden, right, "mean")[:, 0].tolist() == [0.5, 5.5]


@pytest.mark.parametrize("fixture, pooling", [("tiny_v3_dir", "last"), ("tiny_v3_dir", "mean"), ("tiny_bert_dir", "cls")])
def test_dstune_heads_give_the_same_outputs_for_left_and_right_padding(request, fixture, pooling):
    path = request.getfixturevalue(fixture)
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    specs = [HeadSpec("topic", LabelSpace("single", ["a", "b", "c"]), pooling=pooling, dropout=0.0)]
    model = HeadedModel(AutoModel.from_pretrained(path), specs).eval()
    with torch.no_grad():
        right = model(**padded(tokenizer, "right")).logits["topic"]
        left = model(**padded(tokenizer, "left")).logits["topic"]
    torch.testing.assert_close(left, right, atol=1e-4, rtol=1e-4)


def test_transformers_decoder_classifier_pools_the_last_real_token_on_either_side(tiny_llama_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_llama_dir, num_labels=3, pad_token_id=tokenizer.pad_token_id
    ).eval()
    with torch.no_grad():
        right = model(**padded(tokenizer, "right")).logits
        left = model(**padded(tokenizer, "left")).logits
        alone = model(**tokenizer(TEXTS[1:2], return_tensors="pt")).logits
    torch.testing.assert_close(left, right, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(right[1:2], alone, atol=1e-4, rtol=1e-4)


def test_class_weights_and_focal_loss():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.5, 0.0]])
    labels = torch.tensor([0, 1, 1])
    plain = label_loss(logits, labels, "single")
    torch.testing.assert_close(plain, torch.nn.functional.cross_entropy(logits, labels))
    weighted = label_loss(logits, labels, "single", weights=torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(weighted, torch.nn.functional.cross_entropy(logits, labels, weight=torch.tensor([1.0, 3.0])))
    focal = label_loss(logits, labels, "single", gamma=2.0)
    assert focal < plain  # easy examples count less
    tokens = label_loss(logits[None], torch.tensor([[0, -100, 1]]), "token")
    torch.testing.assert_close(tokens, torch.nn.functional.cross_entropy(logits[[0, 2]], torch.tensor([0, 1])))
    multi = label_loss(logits, torch.tensor([[1, 0], [0, 1], [1, 1]]), "multi", gamma=2.0)
    assert 0 < multi < label_loss(logits, torch.tensor([[1, 0], [0, 1], [1, 1]]), "multi")
