"""Domain vocabulary (``model.add_tokens``): new tokens, their embeddings, and which rows train.

The terms are added to the tokenizer before the data is tokenized, so every occurrence becomes one
token. The embedding matrix (and an untied output layer) grows by one row per term, and each new
row starts as the mean of the rows of the pieces the term used to split into, so the model starts
from what it already knew about the term. Under LoRA exactly these rows train, through peft's
``trainable_token_indices`` (saved in the adapter); the extended tokenizer is saved with the run, and
the adapter loads with plain peft on a base model resized to the tokenizer::

    tokenizer = AutoTokenizer.from_pretrained("run/adapter")
    base = AutoModelForCausalLM.from_pretrained(BASE)
    base.resize_token_embeddings(len(tokenizer))
    model = PeftModel.from_pretrained(base, "run/adapter")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dstune.errors import ConfigError


@dataclass(frozen=True)
class NewTokens:
    """Terms added to the tokenizer: their new ids and the ids of the pieces each used to split into."""

    terms: tuple[str, ...]
    ids: tuple[int, ...]
    pieces: tuple[tuple[int, ...], ...]


def read_terms(spec: list[str] | str) -> list[str]:
    """The terms of ``model.add_tokens``: a list, or a UTF-8 file with one term per line (# comments)."""
    if isinstance(spec, str):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ConfigError(f"add_tokens file not found: {spec}", where="model.add_tokens",
                              hint="give a list of terms, or a text file with one term per line")
        lines = path.read_text(encoding="utf-8").splitlines()
        spec = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    terms = list(dict.fromkeys(term.strip() for term in spec if term.strip()))
    if not terms:
        raise ConfigError("model.add_tokens lists no terms", where="model.add_tokens")
    return terms


def add_terms(tokenizer, spec: list[str] | str | None) -> NewTokens | None:
    """Add the terms the tokenizer does not have as single tokens; None when there is nothing to add."""
    if spec is None:
        return None
    new_terms, pieces = [], []
    for term in read_terms(spec):
        ids = tokenizer(term, add_special_tokens=False)["input_ids"]
        if len(ids) > 1:
            new_terms.append(term)
            pieces.append(tuple(ids))
    if not new_terms:
        return None
    tokenizer.add_tokens(new_terms)
    ids = tuple(tokenizer.convert_tokens_to_ids(term) for term in new_terms)
    return NewTokens(tuple(new_terms), ids, tuple(pieces))


def resize_and_init(model: nn.Module, new: NewTokens | None, vocab_size: int) -> None:
    """Grow the embeddings to ``vocab_size`` and start each new row at the mean of its pieces' rows."""
    if new is None:
        return
    model.resize_token_embeddings(vocab_size, mean_resizing=False)
    layers = [model.get_input_embeddings()]
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None and output.weight is not layers[0].weight:
        layers.append(output)
    with torch.no_grad():
        for layer in layers:
            for token_id, piece_ids in zip(new.ids, new.pieces):
                layer.weight[token_id] = layer.weight[list(piece_ids)].mean(dim=0)


def trainable_rows(model: nn.Module, new: NewTokens | None) -> dict[str, list[int]] | None:
    """peft ``trainable_token_indices``: the new rows of the input embeddings and of an untied output layer."""
    if new is None:
        return None
    names = {id(module): name for name, module in model.named_modules()}
    embeddings = model.get_input_embeddings()
    out = {names[id(embeddings)]: list(new.ids)}
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None and output.weight is not embeddings.weight:
        out[names[id(output)]] = list(new.ids)
    return out
