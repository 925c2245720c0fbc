"""Fixtures for export tests."""

from __future__ import annotations

import pytest

from dstune.testing import save_tiny_hf_classifier


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory):
    """A plain Hugging Face BertForSequenceClassification folder (2 layers, hidden 32) with its tokenizer."""
    return save_tiny_hf_classifier(tmp_path_factory.mktemp("tiny_classifier"))
