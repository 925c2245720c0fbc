"""Labelled rows (classification and token classification) as token ids and label ids, and their collator.

Classification: ``text`` → ``input_ids`` (with the tokenizer's special tokens), ``label`` → one id,
a multi-hot vector (``multi_label``) or a path id (``hierarchical``).

Token classification: the words of ``tokens`` are tokenized one by one (``is_split_into_words``),
so that a sub-token never spans two words; the first sub-token of each word carries the word's
tag and every other position (later sub-tokens, special tokens) gets ``-100``. Words after the
first get a leading space, as in running text, except CJK characters, which Chinese and Japanese
text writes without spaces (Chinese NER data is one token per character).

Bad rows stop the run with ``file:line: reason`` or, with ``data.on_error: skip``, go to
``rejected.jsonl``, as for SFT.

``cleaning.steps`` run before tokenizing, through the same :class:`~dstune.data.clean.Cleaner` as SFT
and ``dstune data prepare``: on the text field of classification rows; on token rows only the row
filters run (the config refuses text transforms there, see
:func:`dstune.config.cleaning.token_rows_problem`). A row a step empties or filters out is a
rejected row like any other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dstune.config.cleaning import CleaningSection, token_rows_problem
from dstune.config.task import LabelledTaskFields
from dstune.data.clean import Cleaner
from dstune.data.formats import RowError
from dstune.data.label_space import BIO, Kind, LabelSpace
from dstune.data.readers import Record
from dstune.data.sft import IGNORE_INDEX, _handle_rejections, _Rejection, clean_into, read_train_eval
from dstune.errors import ConfigError, DataError, ModelError

if TYPE_CHECKING:
    import datasets
    import torch

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_WORDS = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")
_CJK_CHAR = re.compile(f"[{_CJK}]")


@dataclass(frozen=True)
class LabelledSource:
    """One labelled task's data: its settings and files."""

    name: str
    type: str  # classification | token_classification
    settings: LabelledTaskFields
    train: str
    validation: str | None = None
    max_samples: int | None = None

    @property
    def kind(self) -> Kind:
        if self.type == "token_classification":
            return "token"
        return "multi" if self.settings.multi_label else "single"


@dataclass
class LabelledData:
    """Tokenized train/eval sets (``input_ids``, ``labels``, ``task``), the label space and statistics."""

    train: datasets.Dataset
    eval: datasets.Dataset | None
    space: LabelSpace
    stats: dict


def split_words(text: str) -> list[str]:
    """Words of raw text for tagging: whitespace-separated runs, and each CJK character on its own."""
    return _WORDS.findall(text)


def spaced_words(words: list[str]) -> list[str]:
    """Words as they appear in running text: a leading space on each word after the first, unless CJK."""
    return [w if i == 0 or _CJK_CHAR.match(w) else f" {w}" for i, w in enumerate(words)]


class LabelledEncoder:
    """Turns one row into ``{"input_ids", "labels", "truncated"}``; :class:`RowError` for a row it cannot use."""

    def __init__(self, tokenizer, max_length: int, source: LabelledSource, space: LabelSpace) -> None:
        if source.kind == "token" and not getattr(tokenizer, "is_fast", False):
            raise ModelError(
                f"{type(tokenizer).__name__} is not a fast tokenizer; token classification needs its word ids",
                hint="load the tokenizer with use_fast=True (needs a tokenizer.json)",
            )
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.source = source
        self.space = space

    def encode(self, row: dict) -> dict:
        if self.source.kind == "token":
            words, tags = row_tokens(row, self.source.settings)
            return encode_words(self.tokenizer, words, self.max_length, self.space.encode(tags))
        text, label = row_text_label(row, self.source.settings, self.source.kind)
        ids = self.tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"]
        truncated = len(ids) == self.max_length and len(self.tokenizer(text)["input_ids"]) > self.max_length
        return {"input_ids": list(ids), "labels": self.space.encode(label), "truncated": truncated}



def encode_words(tokenizer, words: list[str], max_length: int, tag_ids: list[int] | None = None) -> dict:
    """Token ids and aligned labels (the first sub-token of each word; ``-100`` elsewhere).

    ``word_ids`` gives, per position, the word whose first sub-token it is (None elsewhere).
    """
    encoded = tokenizer(spaced_words(words), is_split_into_words=True, truncation=True, max_length=max_length)
    word_ids = encoded.word_ids()
    first = [w is not None and (i == 0 or word_ids[i - 1] != w) for i, w in enumerate(word_ids)]
    tag_ids = tag_ids or [IGNORE_INDEX] * len(words)
    return {
        "input_ids": list(encoded["input_ids"]),
        "labels": [tag_ids[w] if is_first else IGNORE_INDEX for w, is_first in zip(word_ids, first)],
        "truncated": sum(first) < len(words),
        "word_ids": [w if is_first else None for w, is_first in zip(word_ids, first)],
    }


def row_text_label(row: dict, settings: LabelledTaskFields, kind: Kind) -> tuple[str, Any]:
    """A classification row's text and raw label (a list for multi-label rows)."""
    text = row.get(settings.text_field)
    if not isinstance(text, str) or not text.strip():
        raise RowError(f"{settings.text_field!r} must be a non-empty string (the row has {sorted(row)})")
    if row.get(settings.label_field) is None:
        raise RowError(f"missing key {settings.label_field!r} (the row has {sorted(row)})")
    label = row[settings.label_field]
    if kind == "multi" and not isinstance(label, list):
        label = [label]
    return text, label


def row_tokens(row: dict, settings: LabelledTaskFields) -> tuple[list[str], list[str]]:
    """A token-classification row's words and BIO tags (equal lengths)."""
    words, tags = row.get(settings.tokens_field), row.get(settings.tags_field)
    for key, value in ((settings.tokens_field, words), (settings.tags_field, tags)):
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise RowError(f"{key!r} must be a non-empty list of strings (the row has {sorted(row)})")
    if len(words) != len(tags):
        raise RowError(f"{len(words)} tokens but {len(tags)} tags; each token needs one tag")
    bad = next((tag for tag in tags if not BIO.match(tag)), None)
    if bad is not None:
        raise RowError(f"tag {bad!r} is not BIO (O, B-TYPE or I-TYPE)")
    return words, tags


class TextFieldView:
    """A classification row as the cleaner sees it: only the text the encoder reads; labels stay the task's."""

    def __init__(self, key: str) -> None:
        self.key = key

    def extract(self, row: dict) -> dict:
        text = row.get(self.key)
        if not isinstance(text, str) or not text.strip():
            raise RowError(f"no text in {self.key!r}")  # kept as is: the encoder reports it with its reason
        return {"texts": [text], "row": row}

    def restore(self, columns: dict) -> dict:
        return {**columns["row"], self.key: columns["texts"][0]}

    def document(self, columns: dict) -> str:
        return "\n".join(columns["texts"])


class TokenListView:
    """A token-classification row as the cleaner sees it: no text to rewrite, only the tokens for the filters.

    The filters judge the tokens joined by spaces, as ``dstune data prepare`` does, so that a row that
    passed there passes here.
    """

    def __init__(self, key: str) -> None:
        self.key = key

    def extract(self, row: dict) -> dict:
        tokens = row.get(self.key)
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise RowError(f"no token list in {self.key!r}")
        return {"texts": [], "tokens": tokens, "row": row}

    def restore(self, columns: dict) -> dict:
        return columns["row"]

    def document(self, columns: dict) -> str:
        return " ".join(columns["tokens"])


def prepare_labelled_data(
    source: LabelledSource, data_cfg, tokenizer, output_dir: Path, seed: int = 42, task_index: int = 0,
    *, cleaning: CleaningSection | None = None,
) -> LabelledData:
    """Read, split, clean (``cleaning.steps``, when given), validate and tokenize one labelled task.

    The label space comes from the config or from the (cleaned) training rows.
    """
    train_records, eval_records, rows_read = read_train_eval(
        source.train, source.validation, max_samples=source.max_samples, eval_split=data_cfg.eval_split,
        encoding=getattr(data_cfg, "encoding", "utf-8"), seed=seed,
    )
    rejected: list[_Rejection] = []
    cleaner = _cleaner(source, cleaning, tokenizer)
    if cleaner:
        settings = source.settings
        view = TokenListView(settings.tokens_field) if source.kind == "token" else TextFieldView(settings.text_field)
        train_records = clean_into(train_records, cleaner, view, rejected)
        eval_records = None if eval_records is None else clean_into(eval_records, cleaner, view, rejected)
    space = _label_space(source, train_records)
    encoder = LabelledEncoder(tokenizer, data_cfg.max_length, source, space)
    train = _encode(train_records, encoder, rejected)
    evaluation = None if eval_records is None else _encode(eval_records, encoder, rejected)
    _handle_rejections(rejected, data_cfg.on_error, Path(output_dir))
    for rows, name, where in ((train, "training", source.train), (evaluation, "validation", source.validation)):
        if rows is not None and not rows:
            raise DataError(f"no usable {name} rows are left", where=where or source.train,
                            hint="see rejected.jsonl for the reasons")
    stats = {
        "rows_read": rows_read,
        "rows_rejected": len(rejected),
        "rows_train": len(train),
        "rows_eval": len(evaluation or []),
        "truncated": sum(row["truncated"] for row in train + (evaluation or [])),
        "tokens_train": sum(len(row["input_ids"]) for row in train),
        "labels": len(space),
        **(cleaner.stats_for_run() if cleaner else {}),
    }
    datasets_ = [None if rows is None else _to_dataset(rows, task_index) for rows in (train, evaluation)]
    return LabelledData(datasets_[0], datasets_[1], space, stats)


def _cleaner(source: LabelledSource, cleaning: CleaningSection | None, tokenizer) -> Cleaner | None:
    """The run's cleaner for this task; text transforms on token rows are refused (the config checks it first)."""
    problem = None
    if cleaning is not None and source.kind == "token":
        problem = token_rows_problem(cleaning.steps, f"task {source.name!r} rows")
    if problem:
        raise ConfigError(problem, where="cleaning.steps")
    return Cleaner.for_run(cleaning, tokenizer)


def _label_space(source: LabelledSource, records: list[Record]) -> LabelSpace:
    """The configured label set, or the labels of the valid training rows (bad rows are reported later)."""
    settings = source.settings
    values = []
    if settings.labels is None:
        for record in records:
            try:
                if source.kind == "token":
                    values.append(row_tokens(record.data, settings)[1])
                else:
                    values.append(row_text_label(record.data, settings, source.kind)[1])
            except RowError:
                continue
    space = LabelSpace.for_values(source.kind, values, settings.labels, hierarchical=settings.hierarchical,
                                  separator=settings.separator, threshold=settings.threshold)
    if source.kind != "token" and len(space) < 2:
        raise DataError(f"the task {source.name!r} has {len(space)} label(s); classification needs at least 2",
                        where=source.train, hint="check the label field (task.label_field) or list task.labels")
    return space


def _encode(records: list[Record], encoder: LabelledEncoder, rejected: list[_Rejection]) -> list[dict]:
    rows = []
    for record in records:
        try:
            rows.append(encoder.encode(record.data))
        except (RowError, ValueError, TypeError) as exc:
            rejected.append(_Rejection(record, str(exc)))
    return rows


def _to_dataset(rows: list[dict], task_index: int) -> datasets.Dataset:
    import datasets

    return datasets.Dataset.from_dict({
        "input_ids": [row["input_ids"] for row in rows],
        "labels": [row["labels"] for row in rows],
        "task": [task_index] * len(rows),
    })


@dataclass
class LabelledCollator:
    """Pads ``input_ids`` and builds ``labels``.

    ``packed`` (dstune head models, any mix of tasks in a batch): ``labels`` is ``(B, 1 + W)`` with
    the task index in column 0 and the row's label ids after it, padded with -100. Otherwise
    (transformers' own classes, one task): ``(B,)`` class ids, ``(B, C)`` float multi-hot, or
    ``(B, T)`` tag ids aligned with the padded tokens.
    """

    tokenizer: Any
    kinds: list[Kind]
    packed: bool

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        import torch

        batch = self.tokenizer.pad({"input_ids": [row["input_ids"] for row in rows]}, return_tensors="pt")
        width = batch["input_ids"].shape[1]
        vectors = [self._aligned(row, width) for row in rows]
        if self.packed:
            size = 1 + max(len(v) for v in vectors)
            batch["labels"] = torch.tensor([[row["task"], *v] + [IGNORE_INDEX] * (size - 1 - len(v))
                                            for row, v in zip(rows, vectors)])
        elif self.kinds[0] == "multi":
            batch["labels"] = torch.tensor(vectors, dtype=torch.float32)
        else:
            batch["labels"] = torch.tensor(vectors if self.kinds[0] == "token" else [v[0] for v in vectors])
        return dict(batch)

    def _aligned(self, row: dict, width: int) -> list[int]:
        labels = list(row["labels"])
        if self.kinds[row["task"]] != "token":
            return labels
        pad = [IGNORE_INDEX] * (width - len(labels))
        return pad + labels if self.tokenizer.padding_side == "left" else labels + pad
