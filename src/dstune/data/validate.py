"""Validate rows against a task's schema and split them into columns that later stages work on.

Every task maps a raw row to the same set of columns (``texts`` to clean, ``label``,
``annotations``, ``tokens``/``tags``, ``group``, ...) plus ``_rest``: the JSON of what the row
holds besides them, so that :meth:`RowSchema.restore` writes the row back in its own shape. A row
that does not fit raises :class:`~dstune.data.formats.RowError` with the reason; the caller adds
file and line. Schemas are registered by task type: ``sft``, ``classification``,
``token_classification``.
"""

from __future__ import annotations

import copy
import json
import re
from typing import ClassVar

import pyarrow as pa

from dstune.config.cleaning import FieldNames
from dstune.data.formats import RowError, detect_format, to_messages
from dstune.data.labels import LabelRules
from dstune.errors import ConfigError

ARROW_SCHEMA = pa.schema(
    [
        ("_where", pa.string()),
        ("_line", pa.int64()),
        ("_rest", pa.string()),
        ("texts", pa.list_(pa.string())),
        ("label", pa.string()),
        ("annotations", pa.list_(pa.string())),
        ("annotators", pa.list_(pa.string())),
        ("item_id", pa.string()),
        ("group", pa.string()),
        ("tokens", pa.list_(pa.string())),
        ("tags", pa.list_(pa.string())),
    ]
)
_EMPTY = {"texts": [], "label": None, "annotations": [], "annotators": [], "item_id": None, "group": None,
          "tokens": [], "tags": []}  # fmt: skip
_BIO = re.compile(r"^(?:O|([BI])-(.+))$")


class RowSchema:
    """Base of the task schemas: the shared key handling; subclasses implement extract/restore."""

    task: ClassVar[str]

    def __init__(self, fields: FieldNames, labels: LabelRules) -> None:
        self.fields = fields
        self.labels = labels

    def extract(self, row: dict) -> dict:
        """The derived columns and ``_rest`` of a valid row; :class:`RowError` for an invalid one."""
        raise NotImplementedError

    def restore(self, columns: dict) -> dict:
        """The output row: ``_rest`` with the (cleaned, aggregated) columns written back."""
        raise NotImplementedError

    def document(self, columns: dict) -> str:
        """The row's text as one string (for dedup, lengths and language): its text pieces joined."""
        return "\n".join(columns["texts"])

    def _common(self, row: dict) -> dict:
        group = self.fields.group
        if group is None:
            return {}
        if row.get(group) in (None, ""):
            raise RowError(f"missing group key {group!r} (cleaning.fields.group)")
        return {"group": str(row[group])}


class SftSchema(RowSchema):
    """SFT rows in any format of :mod:`dstune.data.formats`; the texts are every message content."""

    task = "sft"

    def __init__(self, fields: FieldNames, labels: LabelRules, fmt: str = "auto") -> None:
        super().__init__(fields, labels)
        self.fmt = fmt

    def extract(self, row: dict) -> dict:
        fmt = detect_format(row) if self.fmt == "auto" else self.fmt
        to_messages(row, fmt)  # raises RowError with the reason
        rest = copy.deepcopy(row)
        slots = _sft_slots(rest, fmt)
        texts = [container[key] for container, key in slots]
        for container, key in slots:
            container[key] = ""
        return {
            **_EMPTY,
            **self._common(row),
            "texts": texts,
            "_rest": json.dumps([fmt, rest], ensure_ascii=False),
        }

    def restore(self, columns: dict) -> dict:
        fmt, row = json.loads(columns["_rest"])
        for (container, key), text in zip(_sft_slots(row, fmt), columns["texts"]):
            container[key] = text
        return row


def _sft_slots(row: dict, fmt: str) -> list[tuple[dict, str]]:
    """Where an SFT row of format ``fmt`` keeps its texts, as (container, key) pairs in reading order."""
    if fmt == "messages":
        return [(message, "content") for message in row["messages"]]
    if fmt == "sharegpt":
        return [(turn, "value" if "value" in turn else "content") for turn in row["conversations"]]
    if fmt == "alpaca":
        return [(row, key) for key in ("system", "instruction", "input", "output") if isinstance(row.get(key), str)]
    return [(row, "text")]


class ClassificationSchema(RowSchema):
    """``text`` + ``label`` (or a list of annotator ``labels``, or one row per annotator)."""

    task = "classification"

    def extract(self, row: dict) -> dict:
        f = self.fields
        text = _required_text(row, f.text)
        annotations, annotators = self._annotations(row)
        per_annotator = f.annotator is not None  # then the label field holds this annotator's label
        label = self.labels.normalise(row[f.label]) if row.get(f.label) is not None and not per_annotator else None
        if label is None and not annotations:
            raise RowError(f"missing key {f.label!r} (or {f.annotations!r}: one label per annotator)")
        rest = {k: v for k, v in row.items() if k not in (f.text, f.label, f.annotations, f.annotator)}
        return {
            **_EMPTY,
            **self._common(row),
            "texts": [text],
            "label": label,
            "annotations": annotations,
            "annotators": annotators,
            "item_id": None if f.id is None or row.get(f.id) is None else str(row[f.id]),
            "_rest": json.dumps(rest, ensure_ascii=False, default=str),
        }

    def _annotations(self, row: dict) -> tuple[list[str], list[str]]:
        f = self.fields
        if f.annotator is not None:
            if f.id is None or row.get(f.id) is None:
                raise RowError(f"missing id key {f.id!r}: rows per annotator are joined by cleaning.fields.id")
            if row.get(f.annotator) in (None, ""):
                raise RowError(f"missing annotator key {f.annotator!r}")
            return [self.labels.normalise(row.get(f.label))], [str(row[f.annotator])]
        values = row.get(f.annotations)
        if values is None:
            return [], []
        if not isinstance(values, list) or not values:
            raise RowError(f"{f.annotations!r} must be a non-empty list of labels, one per annotator")
        return [self.labels.normalise(v) for v in values], [str(n) for n in range(1, len(values) + 1)]

    def restore(self, columns: dict) -> dict:
        f = self.fields
        row = {
            **json.loads(columns["_rest"]),
            f.text: columns["texts"][0],
            f.label: columns["label"],
        }
        if columns["annotations"] and f.annotator is None:
            row[f.annotations] = columns["annotations"]
        elif columns["annotations"]:
            row[f.annotations] = dict(zip(columns["annotators"], columns["annotations"]))
        return row


class TokenClassificationSchema(RowSchema):
    """``tokens`` + ``tags`` of equal length, tags in BIO (``O``, ``B-X``, ``I-X`` after ``B-X``/``I-X``).

    Tokens are not rewritten by cleaning (that would break their alignment with the tags).
    """

    task = "token_classification"

    def extract(self, row: dict) -> dict:
        f = self.fields
        tokens, tags = _string_list(row, f.tokens), _string_list(row, f.tags)
        if len(tokens) != len(tags):
            raise RowError(f"{len(tokens)} tokens but {len(tags)} tags; each token needs one tag")
        self._check_bio(tags)
        rest = {k: v for k, v in row.items() if k not in (f.tokens, f.tags)}
        return {
            **_EMPTY,
            **self._common(row),
            "tokens": tokens,
            "tags": tags,
            "_rest": json.dumps(rest, ensure_ascii=False),
        }

    def _check_bio(self, tags: list[str]) -> None:
        previous = None
        for position, tag in enumerate(tags, start=1):
            match = _BIO.match(tag)
            if match is None:
                raise RowError(f"tag {position} {tag!r} is not BIO (O, B-TYPE or I-TYPE)")
            prefix, kind = match.groups()
            if prefix == "I" and previous != kind:
                raise RowError(f"tag {position} {tag!r} continues an entity that was not begun (expected B-{kind})")
            if kind is not None and self.labels.allowed is not None and kind not in self.labels.allowed:
                raise RowError(f"entity type {kind!r} (tag {position}) is not in cleaning.labels.allowed")
            previous = kind

    def restore(self, columns: dict) -> dict:
        return {
            **json.loads(columns["_rest"]),
            self.fields.tokens: columns["tokens"],
            self.fields.tags: columns["tags"],
        }

    def document(self, columns: dict) -> str:
        return " ".join(columns["tokens"])


SCHEMAS: dict[str, type[RowSchema]] = {s.task: s for s in (SftSchema, ClassificationSchema, TokenClassificationSchema)}


def make_schema(task: str, fields: FieldNames, labels: LabelRules, sft_format: str = "auto") -> RowSchema:
    """The schema registered for ``task`` (``sft``, ``classification`` or ``token_classification``)."""
    if task not in SCHEMAS:
        raise ConfigError(
            f"no data schema for task type {task!r}",
            where="cleaning.task",
            hint=f"use one of {', '.join(SCHEMAS)}",
        )
    if task == "sft":
        return SftSchema(fields, labels, sft_format)
    return SCHEMAS[task](fields, labels)


def detect_task(row: dict, fields: FieldNames) -> str:
    """Guess the task from a row's keys (for ``data inspect``): tokens+tags, text+label(s), else SFT."""
    if fields.tokens in row and fields.tags in row:
        return "token_classification"
    if fields.text in row and (fields.label in row or fields.annotations in row):
        return "classification"
    return "sft"


def _required_text(row: dict, key: str) -> str:
    if key not in row or row[key] is None:
        raise RowError(f"missing key {key!r} (the row has {sorted(row)})")
    value = row[key]
    if not isinstance(value, str):
        raise RowError(f"{key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RowError(f"{key!r} is empty")
    return value


def _string_list(row: dict, key: str) -> list[str]:
    value = row.get(key)
    if value is None:
        raise RowError(f"missing key {key!r} (the row has {sorted(row)})")
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise RowError(f"{key!r} must be a non-empty list of strings")
    return value
