"""SFT examples as token ids and labels, with the loss on assistant tokens only.

Conversations are rendered with the tokenizer's own chat template (never a hand-written table).
To find which characters belong to the assistant, every assistant message is rendered twice in
place: once as a unique marker (which shows the template's scaffolding around it) and once as its
content followed by the marker (which shows how the template itself renders that content, e.g.
DeepSeek-R1 drops ``<think>...</think>`` from every assistant message). The final text is the
scaffolding with each assistant content put back, and the labels keep the tokens that start
inside an assistant content or the end-of-turn marker after it (``<|im_end|>``,
``<｜end▁of▁sentence｜>``), so the model learns to stop.

The last assistant turn is always trained on in full, think block included; earlier turns follow
``think_history``: ``strip`` trains on them as the template renders history at inference time,
``keep`` on their raw content.
"""

from __future__ import annotations

import json
import random
import secrets
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from jinja2 import TemplateError

from dstune.data.clean import Cleaner, RecordView, clean_records, sft_view
from dstune.data.formats import RowError, detect_format, to_messages
from dstune.data.readers import Record, read_records
from dstune.errors import ConfigError, DataError, ModelError

if TYPE_CHECKING:
    import datasets

    from dstune.config.schema import DataSection

IGNORE_INDEX = -100
MAX_LISTED_PROBLEMS = 20
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def resolve_chat_template(tokenizer, chat_template: str | None) -> str:
    """The Jinja template for ``data.chat_template``: None (the tokenizer's), ``chatml``, a name or a template."""
    if chat_template == "chatml":
        return CHATML_TEMPLATE
    named = isinstance(tokenizer.chat_template, dict) and chat_template in tokenizer.chat_template
    if chat_template is None or named:
        try:
            return tokenizer.get_chat_template(chat_template)
        except ValueError:
            raise ConfigError(
                "the tokenizer has no chat template to render conversations with",
                where="data.chat_template",
                hint="set data.chat_template: chatml (or give a Jinja template string)",
            ) from None
    if "{{" not in chat_template and "{%" not in chat_template:
        raise ConfigError(
            f"{chat_template!r} is neither 'chatml' nor a Jinja chat template",
            where="data.chat_template",
            hint="use null (the tokenizer's own template), chatml, or a Jinja template string",
        )
    return chat_template


class SFTEncoder:
    """Turns one conversation (or raw text) into ``input_ids`` and ``labels`` of at most ``max_length`` tokens."""

    def __init__(
        self, tokenizer, max_length: int, chat_template: str | None = None, think_history: str = "strip"
    ) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise ModelError(
                f"{type(tokenizer).__name__} is not a fast tokenizer; assistant-only labels need its offset mapping",
                hint="load the tokenizer with use_fast=True (needs a tokenizer.json)",
            )
        if think_history not in ("strip", "keep"):
            raise ValueError(f"think_history must be 'strip' or 'keep', got {think_history!r}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.chat_template = chat_template
        self.think_history = think_history
        self._marker = f"@@dstune-{secrets.token_hex(6)}-"

    def encode(self, example: list[dict] | str) -> dict:
        """``{"input_ids", "labels", "truncated"}``; raises :class:`RowError` for an example it cannot use."""
        if isinstance(example, str):
            ids = self._text_ids(example)
            return self._truncate(ids, list(ids))
        text, spans = self._layout(example)
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        labels = _mask_outside(encoded["input_ids"], encoded["offset_mapping"], spans)
        return self._truncate(encoded["input_ids"], labels)

    def _text_ids(self, text: str) -> list[int]:
        """Raw text with the tokenizer's own special tokens (BOS where it adds one) and a final EOS."""
        ids = list(self.tokenizer(text, add_special_tokens=True)["input_ids"])
        eos = self.tokenizer.eos_token_id
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
        return ids

    def _truncate(self, ids: list[int], labels: list[int]) -> dict:
        truncated = len(ids) > self.max_length
        ids, labels = ids[: self.max_length], labels[: self.max_length]
        if all(label == IGNORE_INDEX for label in labels):
            raise RowError(f"no assistant tokens within max_length ({self.max_length}) - the prompt fills it")
        return {"input_ids": ids, "labels": labels, "truncated": truncated}

    @cached_property
    def template(self) -> str:
        """The resolved chat template (resolved on first use, so text-only data needs none)."""
        return resolve_chat_template(self.tokenizer, self.chat_template)

    @cached_property
    def turn_suffix(self) -> str:
        """What the template writes right after assistant content (``<|im_end|>``), trailing whitespace excluded."""
        mark = f"{self._marker}probe@@"
        try:
            text = self._render([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": mark}])
        except RowError as exc:
            raise ConfigError(
                f"the chat template cannot render a user/assistant exchange: {exc}",
                where="data.chat_template",
                hint="fix the template, or set data.chat_template: chatml",
            ) from None
        if text.count(mark) != 1:
            raise ConfigError(
                "the chat template does not render assistant messages verbatim",
                where="data.chat_template",
                hint="set data.chat_template: chatml or give another Jinja template",
            )
        return text.split(mark)[1].rstrip()

    def _render(self, messages: list[dict]) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, chat_template=self.template, tokenize=False)
        except TemplateError as exc:
            raise RowError(f"the chat template rejected this conversation: {exc}") from None

    def _layout(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        """The training text and the character spans (assistant content + end-of-turn marker) to supervise."""
        turns = [i for i, message in enumerate(messages) if message["role"] == "assistant"]
        marks = [f"{self._marker}{n}@@" for n in range(len(turns))]
        bare = _split_on(self._render(_with_contents(messages, turns, marks)), marks)
        probed_contents = [messages[i]["content"] + mark for i, mark in zip(turns, marks)]
        probed = _split_on(self._render(_with_contents(messages, turns, probed_contents)), marks)
        text, content_spans = "", []
        for n, i in enumerate(turns):
            lead = _common_prefix_len(bare[n], probed[n])
            keep_raw = n == len(turns) - 1 or self.think_history == "keep"
            content = _choose_content(messages[i]["content"], probed[n][lead:], keep_raw, lead < len(bare[n]))
            text += probed[n][:lead]
            content_spans.append((len(text), len(text) + len(content)))
            text += content
        text += probed[-1]
        spans = [(start, end + _common_prefix_len(self.turn_suffix, text[end:])) for start, end in content_spans]
        return text, spans


def _with_contents(messages: list[dict], turns: list[int], contents: list[str]) -> list[dict]:
    """A copy of ``messages`` whose assistant messages (at indices ``turns``) get ``contents``."""
    replaced = {i: content for i, content in zip(turns, contents)}
    return [{**m, "content": replaced[i]} if i in replaced else m for i, m in enumerate(messages)]


def _split_on(text: str, marks: list[str]) -> list[str]:
    """``text`` cut at each marker, in order: ``len(marks) + 1`` pieces."""
    pieces, position = [], 0
    for n, mark in enumerate(marks, start=1):
        at = text.find(mark, position)
        if at < 0 or text.count(mark) != 1:
            raise RowError(f"the chat template does not render assistant message {n} exactly once")
        pieces.append(text[position:at])
        position = at + len(mark)
    pieces.append(text[position:])
    return pieces


def _common_prefix_len(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _choose_content(raw: str, rendered: str, keep_raw: bool, restructured: bool) -> str:
    """The template's rendering of an assistant content, or the raw content where the template drops text.

    A template that rewrites the scaffolding around the content (``restructured``) keeps its own
    rendering; one that only changes whitespace does too.
    """
    if restructured or rendered.strip() == raw.strip() or not keep_raw:
        return rendered
    return raw


def _mask_outside(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """Labels: the token id where the token starts inside a span, else :data:`IGNORE_INDEX`."""
    labels, span = [], 0
    for token_id, (start, _) in zip(ids, offsets):
        while span < len(spans) and start >= spans[span][1]:
            span += 1
        inside = span < len(spans) and spans[span][0] <= start
        labels.append(token_id if inside else IGNORE_INDEX)
    return labels


@dataclass
class SFTData:
    """Tokenized train/eval sets (``input_ids``, ``labels``) and what happened on the way."""

    train: datasets.Dataset
    eval: datasets.Dataset | None
    stats: dict


@dataclass(frozen=True)
class _Rejection:
    record: Record
    reason: str


def prepare_sft_data(cfg: DataSection, tokenizer, output_dir: Path, seed: int = 42, *, cleaning=None) -> SFTData:
    """Read, clean (``cleaning.steps``, when given), convert and tokenize ``cfg.train`` (and the validation data).

    Malformed rows stop the run (``on_error: fail``) with up to 20 of them listed as
    ``file:line: reason``, or (``on_error: skip``) go to ``output_dir/rejected.jsonl``.
    """
    train_records, eval_records, rows_read = read_train_eval(
        cfg.train, cfg.validation, max_samples=cfg.max_samples, eval_split=cfg.eval_split,
        encoding=getattr(cfg, "encoding", "utf-8"), seed=seed,
    )
    fmt = cfg.format if cfg.format != "auto" else _detect(train_records[0])
    encoder = SFTEncoder(tokenizer, cfg.max_length, cfg.chat_template, cfg.think_history)
    rejected: list[_Rejection] = []
    cleaner = Cleaner.for_run(cleaning, tokenizer)
    if cleaner:
        view = sft_view(cleaning, fmt)
        train_records = clean_into(train_records, cleaner, view, rejected)
        eval_records = None if eval_records is None else clean_into(eval_records, cleaner, view, rejected)
    train = _encode_rows(train_records, fmt, cfg.system_prompt, encoder, rejected)
    evaluation = None if eval_records is None else _encode_rows(eval_records, fmt, cfg.system_prompt, encoder, rejected)
    _handle_rejections(rejected, cfg.on_error, Path(output_dir))
    _require_rows(train, "training", cfg.train)
    if evaluation is not None:
        _require_rows(evaluation, "validation", cfg.validation or cfg.train)
    stats = {
        "rows_read": rows_read,
        "rows_rejected": len(rejected),
        "rows_train": len(train),
        "rows_eval": len(evaluation or []),
        "truncated": sum(row["truncated"] for row in train + (evaluation or [])),
        "tokens_train": sum(len(row["input_ids"]) for row in train),
        "supervised_tokens_train": sum(label != IGNORE_INDEX for row in train for label in row["labels"]),
        "format": fmt,
        **(cleaner.stats_for_run() if cleaner else {}),
    }
    return SFTData(_to_dataset(train), None if evaluation is None else _to_dataset(evaluation), stats)


def read_train_eval(
    train: str, validation: str | None, *, max_samples: int | None, eval_split: float, encoding: str, seed: int
) -> tuple[list[Record], list[Record] | None, int]:
    """The training records (first ``max_samples``), the validation records and how many rows were read.

    Validation comes from its own file when given, else ``eval_split`` of the training rows is held out.
    """
    train_records = read_records(train, encoding=encoding)[:max_samples]
    rows_read = len(train_records)
    if validation:
        eval_records = read_records(validation, encoding=encoding)
        rows_read += len(eval_records)
    elif eval_split > 0:
        train_records, eval_records = split_eval(train_records, eval_split, seed)
    else:
        eval_records = None
    return train_records, eval_records, rows_read


def split_eval(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Hold out ``fraction`` of the rows (at least one), chosen by ``seed``; both parts keep file order."""
    n_eval = max(1, round(len(records) * fraction))
    if n_eval >= len(records):
        raise DataError(
            f"cannot hold out {fraction:g} of {len(records)} rows for validation and still train",
            where="data.eval_split",
            hint="add rows, set data.validation to a file, or set data.eval_split: 0",
        )
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_eval])
    train = [r for i, r in enumerate(records) if i not in held]
    return train, [r for i, r in enumerate(records) if i in held]


def _detect(record: Record) -> str:
    try:
        return detect_format(record.data)
    except RowError as exc:
        raise DataError(str(exc), where=record.where(), hint="fix the first row or set data.format") from None


def clean_into(records: list[Record], cleaner: Cleaner, view: RecordView, rejected: list[_Rejection]) -> list[Record]:
    """The records after the cleaning steps; rows a step empties or filters out are appended to ``rejected``."""
    cleaned = clean_records(records, cleaner, view)
    rejected.extend(_Rejection(record, reason) for record, reason in cleaned.rejected)
    return cleaned.kept


def _encode_rows(
    records: list[Record], fmt: str, system_prompt: str | None, encoder: SFTEncoder, rejected: list[_Rejection]
) -> list[dict]:
    """Encoded rows; the ones that cannot be used are appended to ``rejected`` with their reason."""
    encoded = []
    for record in records:
        try:
            encoded.append(encoder.encode(to_messages(record.data, fmt, system_prompt)))
        except RowError as exc:
            rejected.append(_Rejection(record, str(exc)))
    return encoded


def _handle_rejections(rejected: list[_Rejection], on_error: str, output_dir: Path) -> None:
    """``fail``: raise listing the first problems; ``skip``: write every rejected row to rejected.jsonl."""
    if on_error == "skip":
        output_dir.mkdir(parents=True, exist_ok=True)
        with open(output_dir / "rejected.jsonl", "w", encoding="utf-8") as out:
            for r in rejected:
                row = {"source": r.record.source, "line": r.record.line, "reason": r.reason, "row": r.record.data}
                out.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    elif rejected:
        listed = [f"{r.record.where()}: {r.reason}" for r in rejected[:MAX_LISTED_PROBLEMS]]
        if len(rejected) > MAX_LISTED_PROBLEMS:
            listed.append(f"... and {len(rejected) - MAX_LISTED_PROBLEMS} more")
        raise DataError(
            f"{len(rejected)} malformed row(s):\n" + "\n".join(listed),
            hint=f"fix these rows, or set data.on_error: skip to leave them out "
            f"(they are then written to {output_dir / 'rejected.jsonl'})",
        )


def _require_rows(rows: list[dict], name: str, source: str) -> None:
    if not rows:
        raise DataError(f"no usable {name} rows are left", where=source, hint="see rejected.jsonl for the reasons")


def _to_dataset(rows: list[dict]) -> datasets.Dataset:
    import datasets

    return datasets.Dataset.from_dict(
        {"input_ids": [row["input_ids"] for row in rows], "labels": [row["labels"] for row in rows]}
    )
