"""`--explain`: the heatmap is the model's own last-layer attention (heads averaged) from the pooled position,
spread over the characters of each token, with the share that fell on the text."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dstune.evaluate.explain import classifier_heatmap


@pytest.mark.parametrize("pooling", ["last", "cls", "mean"])
def test_classifier_heatmap_is_the_attention_row_of_the_pooled_position(tiny_llama_dir, pooling):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="sdpa").eval()
    text = "hello how are you today"
    heat = classifier_heatmap(model, tokenizer, text, pooling, "example")
    assert model.config._attn_implementation == "sdpa"  # switched to eager for the weights, then restored

    encoded = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    eager = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        attention = eager(input_ids=torch.tensor([encoded["input_ids"]]), output_attentions=True).attentions[-1]
    rows = attention[0].mean(0).numpy()  # heads averaged: (query, key)
    query = {"last": rows[-1], "cls": rows[0], "mean": rows.mean(0)}[pooling]
    expected = np.zeros(len(text))
    for weight, (start, end) in zip(query, encoded["offset_mapping"]):
        expected[start:end] += weight
    assert heat.text == text and len(heat.weights) == len(text)
    np.testing.assert_allclose(heat.weights, expected, atol=1e-5)
    on_text = sum(w for w, (s, e) in zip(query, encoded["offset_mapping"]) if e > s)
    assert heat.share == pytest.approx(on_text / query.sum(), abs=1e-5) and 0.0 < heat.share <= 1.0
