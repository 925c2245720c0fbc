"""Shared fixtures: tiny models and tokenizers built from config, saved once per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

from dstune.testing import build_tokenizer, save_tiny_causal_lm, save_tiny_encoder  # noqa: E402


@pytest.fixture(scope="session")
def tiny_v3_dir(tmp_path_factory):
    """A saved tiny DeepSeek-V3 (2 layers, hidden 64, 4 routed + 1 shared expert, MLA) with tokenizer."""
    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny_v3"), arch="deepseek_v3")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A saved tiny Llama-architecture model (as the R1-Distill-Llama / SmolLM2 family) with tokenizer."""
    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny_llama"), arch="llama")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A saved tiny BERT encoder (2 layers, hidden 64) with a WordPiece tokenizer ([CLS] ... [SEP])."""
    return save_tiny_encoder(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def lora_classifier_run(tiny_bert_dir, tmp_path_factory):
    """A finished LoRA classification run on tiny BERT: BertForSequenceClassification + peft adapter, the head
    trained whole (peft modules_to_save), labels ai / contract / greet (export and serve tests)."""
    import torch

    from dstune.testing import train_toy_labelled_run

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as one_torch_thread: several threads on a small shared CPU thrash
    try:
        return train_toy_labelled_run(tiny_bert_dir, tmp_path_factory.mktemp("lora_classifier"))
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run torch on one thread: on a small shared CPU, several threads per process thrash (10-50x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tokenizer():
    """A ChatML tokenizer trained on the fly (byte-level BPE, English and Chinese)."""
    return build_tokenizer()


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
