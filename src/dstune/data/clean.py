"""Apply the configured cleaning steps, in order, to a dataset (batched ``Dataset.map``, ``dstune data prepare``)
or to the records a training run reads (``dstune train``: SFT, classification and token classification rows).

Transforms rewrite each text piece of a row (a classification text, every message of a
conversation); a transform that empties a piece that had text rejects the row, naming the step.
Filters then judge the whole row. What each step did is counted in :attr:`Cleaner.stats`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from dstune.config.cleaning import CleaningSection
from dstune.data.clean_steps import STEPS, Filter, PiiTransform, Transform
from dstune.data.formats import RowError
from dstune.data.readers import Record

if TYPE_CHECKING:
    import datasets

    from dstune.data.validate import RowSchema

MAP_BATCH = 1_000


class Cleaner:
    """The configured steps, built once (regexes compiled, term files read), applied batch by batch."""

    def __init__(self, steps: list, tokenizer=None) -> None:
        self.steps: list[tuple[str, Transform | Filter]] = []
        for index, step in enumerate(steps):
            where = f"cleaning.steps[{index}]"
            self.steps.append(
                (
                    f"{index}:{step.type}",
                    STEPS[step.type](step, where=where, tokenizer=tokenizer),
                )
            )
        self.stats = {name: {"changed": 0, "rejected": 0} for name, _ in self.steps}
        self.rows_changed = 0  # kept rows whose text differs after all steps

    @classmethod
    def for_run(cls, cleaning: CleaningSection | None, tokenizer=None) -> Cleaner | None:
        """The ``cleaning.steps`` of a run config (None without steps): ``dstune train`` cleans what it tokenizes."""
        if cleaning is None or not cleaning.steps:
            return None
        return cls(cleaning.steps, tokenizer)

    def __bool__(self) -> bool:
        return bool(self.steps)

    def rewrite(self, texts: list[str]) -> list[str]:
        """Inputs at prediction time: the text-rewriting steps only, in order; no row is ever filtered out.

        A model trained on cleaned text (``甲方`` mapped to ``合同方A``) must see its inputs the same way.
        """
        for _, step in self.steps:
            if isinstance(step, Transform):
                texts = step.apply(texts)
        return texts

    def clean(self, texts: list[list[str]], documents) -> tuple[list[list[str]], list[str | None], list[str | None]]:
        """Clean a batch of rows (each a list of text pieces).

        ``documents(texts)`` gives each row's text as one string for the filters. Returns the
        cleaned pieces, and per row the rejecting stage (``clean:<step>``) and reason, or None.
        """
        flat = [piece for row in texts for piece in row]
        owner = [r for r, row in enumerate(texts) for _ in row]
        stage: list[str | None] = [None] * len(texts)
        reason: list[str | None] = [None] * len(texts)
        for name, step in self.steps:
            if isinstance(step, Transform):
                flat = self._transform(name, step, flat, owner, stage, reason)
            else:
                cleaned = _unflatten(flat, texts)
                self._filter(name, step, documents(cleaned), stage, reason)
        cleaned = _unflatten(flat, texts)
        self.rows_changed += sum(s is None and new != old for s, new, old in zip(stage, cleaned, texts))
        return cleaned, stage, reason

    def _transform(self, name, step: Transform, flat, owner, stage, reason) -> list[str]:
        new = step.apply(flat)
        changed, emptied = set(), set()
        for position, (old, text) in enumerate(zip(flat, new)):
            if old != text and stage[owner[position]] is None:  # rows already rejected no longer count
                changed.add(owner[position])
                if old.strip() and not text.strip():
                    emptied.add((owner[position], position))
        self.stats[name]["changed"] += len(changed)
        for row, position in sorted(emptied):
            if stage[row] is None:
                piece = position - owner.index(row) + 1
                stage[row], reason[row] = (
                    f"clean:{name}",
                    f"cleaning step {name} left text piece {piece} empty",
                )
                self.stats[name]["rejected"] += 1
        return new

    def _filter(self, name, step: Filter, documents: list[str], stage, reason) -> None:
        live = [r for r, s in enumerate(stage) if s is None]
        for row, why in zip(live, step.check([documents[r] for r in live])):
            if why is not None:
                stage[row], reason[row] = f"clean:{name}", why
                self.stats[name]["rejected"] += 1

    def stats_for_run(self) -> dict:
        """For a training run's data statistics: rows changed, rows rejected by cleaning, and :meth:`report`."""
        report = self.report()
        return {
            "rows_cleaned": self.rows_changed,
            "rows_rejected_cleaning": sum(step["rejected"] for step in report.values()),
            "cleaning": report,
        }

    def report(self) -> dict:
        """Per step: rows changed and rows rejected; for pii also the count of each kind masked."""
        out = {}
        for name, step in self.steps:
            out[name] = dict(self.stats[name])
            if isinstance(step, PiiTransform):
                out[name]["masked"] = dict(step.counts)
        return out


def _unflatten(flat: list[str], shape: list[list[str]]) -> list[list[str]]:
    out, start = [], 0
    for row in shape:
        out.append(flat[start : start + len(row)])
        start += len(row)
    return out


def clean_dataset(dataset: datasets.Dataset, cleaner: Cleaner, schema: RowSchema) -> datasets.Dataset:
    """``dataset`` with cleaned ``texts`` and two new columns, ``_stage`` and ``_reason`` (None for kept rows)."""

    def documents_of(batch):
        def documents(texts: list[list[str]]) -> list[str]:
            return [schema.document({"texts": t, "tokens": k}) for t, k in zip(texts, batch["tokens"])]

        return documents

    def clean_batch(batch: dict) -> dict:
        texts, stage, reason = cleaner.clean(batch["texts"], documents_of(batch))
        return {"texts": texts, "_stage": stage, "_reason": reason}

    # Statistics are gathered as the batches pass, so the result must never come from the cache.
    return dataset.map(
        clean_batch,
        batched=True,
        batch_size=MAP_BATCH,
        load_from_cache_file=False,
        desc="cleaning",
    )


@dataclass
class CleanedRecords:
    kept: list[Record]
    rejected: list[tuple[Record, str]]
    stats: dict


class RecordView(Protocol):
    """How the cleaner sees one kind of row: its text pieces (``columns["texts"]``), written back by ``restore``.

    :class:`~dstune.data.validate.RowSchema` is one; ``dstune train`` adds views that clean exactly the
    field its encoder reads (:mod:`dstune.data.labelled`).
    """

    def extract(self, row: dict) -> dict: ...

    def restore(self, columns: dict) -> dict: ...

    def document(self, columns: dict) -> str: ...


def clean_records(records: list[Record], cleaner: Cleaner, view: RecordView) -> CleanedRecords:
    """Apply ``cleaner`` to records (``dstune train``): cleaned copies, in file order, and rejected rows.

    Rows ``view`` cannot read are kept unchanged, so that the encoder reports them with its own reason.
    ``cleaner`` keeps counting across calls, so train and validation add up in one :meth:`Cleaner.report`.
    """
    kept: list[Record] = []
    rejected: list[tuple[Record, str]] = []
    for start in range(0, len(records), MAP_BATCH):
        batch, columns = [], []
        for record in records[start : start + MAP_BATCH]:
            try:
                columns.append(view.extract(record.data))
                batch.append(record)
            except RowError:
                kept.append(record)

        def documents(texts: list[list[str]], columns=columns) -> list[str]:
            return [view.document({**column, "texts": text}) for column, text in zip(columns, texts)]

        texts, _, reasons = cleaner.clean([c["texts"] for c in columns], documents)
        for record, column, text, why in zip(batch, columns, texts, reasons):
            if why is not None:
                rejected.append((record, why))
            else:
                kept.append(Record(record.source, record.line, view.restore({**column, "texts": text}), record.unit))
    kept.sort(key=lambda r: r.line)
    return CleanedRecords(kept, rejected, cleaner.report())


def sft_view(cleaning: CleaningSection, fmt: str = "auto") -> RowSchema:
    """SFT rows as the cleaner sees them: every message content (or prompt/response field) is a text piece."""
    from dstune.data.labels import LabelRules
    from dstune.data.validate import SftSchema

    return SftSchema(cleaning.fields, LabelRules(cleaning.labels), fmt)


def clean_sft_records(
    records: list[Record], cleaning: CleaningSection, tokenizer=None, fmt: str = "auto"
) -> CleanedRecords:
    """Apply ``cleaning.steps`` to SFT records: cleaned copies and rejected rows (see :func:`clean_records`)."""
    return clean_records(records, Cleaner(cleaning.steps, tokenizer), sft_view(cleaning, fmt))
