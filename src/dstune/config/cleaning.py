"""The ``cleaning`` section: validation, cleaning steps, labels, dedup, split and report settings.

Used by ``dstune data prepare`` and, for its ``steps``, by ``dstune train``. Each cleaning step is
a small typed model selected by its ``type`` key, applied in the order listed::

    cleaning:
      task: classification
      steps:
        - type: unicode            # NFKC + full-width → half-width
        - type: html
        - type: term_map
          terms: {甲方: 合同方A, 乙方: 合同方B}
        - type: pii
        - type: length
          min: 20
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from dstune.config.base import Section

TaskType = Literal["sft", "classification", "token_classification"]
PiiKind = Literal["phone", "email", "id_card", "bank_card"]
Script = Literal["zh", "en", "ja", "ko", "ru", "ar"]


class UnicodeStep(Section):
    """Unicode normalisation; NFKC also turns full-width letters, digits and punctuation half-width."""

    type: Literal["unicode"] = "unicode"
    form: Literal["NFKC", "NFC", "NFKD", "NFD"] = Field("NFKC", description="Unicode normal form.")
    halfwidth: bool = Field(
        True,
        description="Map full-width ASCII (ＡＢＣ１２３，！) and the ideographic space to half-width.",
    )


class WhitespaceStep(Section):
    """Collapse runs of spaces and tabs to one space, trim every line and the text."""

    type: Literal["whitespace"] = "whitespace"
    keep_newlines: bool = Field(
        True,
        description="Keep line breaks (at most one blank line); false joins lines.",
    )
    cjk_spaces: bool = Field(
        True,
        description="Remove spaces between two Chinese/Japanese characters (OCR residue).",
    )


class HtmlStep(Section):
    """Strip HTML/XML markup: tags removed, script/style blocks dropped, entities (&amp;) decoded."""

    type: Literal["html"] = "html"


class RegexRule(Section):
    pattern: str = Field(description="Python regular expression.")
    replace: str = Field(
        "",
        description="Replacement (\\1 back-references allowed); empty removes the match.",
    )
    ignore_case: bool = Field(False)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
        return value


class RegexStep(Section):
    """Regex remove/replace rules, applied in order."""

    type: Literal["regex"] = "regex"
    rules: list[RegexRule] = Field(min_length=1, description="pattern/replace pairs.")


class TermMapStep(Section):
    """Replace domain terms (甲方 → 合同方A), longest match first, without needing word boundaries."""

    type: Literal["term_map"] = "term_map"
    terms: dict[str, str] = Field(default_factory=dict, description="Inline term → replacement map.")
    file: str | None = Field(
        None,
        description="Dictionary file: one `term<TAB>replacement` (or `term,replacement`) per line.",
    )

    @model_validator(mode="after")
    def _has_terms(self) -> TermMapStep:
        if not self.terms and not self.file:
            raise ValueError("term_map needs `terms` (inline map) or `file` (dictionary file)")
        if "" in self.terms:
            raise ValueError("term_map terms must not be empty strings")
        return self


class PiiStep(Section):
    """Mask personal data and count each kind masked."""

    type: Literal["pii"] = "pii"
    kinds: list[PiiKind] = Field(
        ["email", "id_card", "bank_card", "phone"],
        description="What to mask: phone (Chinese mobile/landline, +1 numbers), email, id_card (Chinese "
        "resident ID, checksum verified), bank_card (13-19 digits, Luhn verified).",
    )
    replacement: str = Field(
        "[{KIND}]",
        description="Mask text; {KIND} becomes PHONE, EMAIL, ID_CARD or BANK_CARD.",
    )


class LengthStep(Section):
    """Reject rows shorter than ``min`` or longer than ``max``."""

    type: Literal["length"] = "length"
    min: int | None = Field(None, ge=0, description="Minimum length (inclusive).")
    max: int | None = Field(None, gt=0, description="Maximum length (inclusive).")
    unit: Literal["chars", "tokens"] = Field(
        "chars",
        description="tokens needs cleaning.tokenizer (or model.name in a run config).",
    )

    @model_validator(mode="after")
    def _has_bound(self) -> LengthStep:
        if self.min is None and self.max is None:
            raise ValueError("length needs `min`, `max` or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"length min ({self.min}) is above max ({self.max})")
        return self


class LanguageStep(Section):
    """Keep rows written mostly in the allowed languages, judged by the script of their letters."""

    type: Literal["language"] = "language"
    allow: list[Script] = Field(
        ["zh", "en"],
        min_length=1,
        description="zh Han, en Latin, ja kana, ko Hangul, ...",
    )
    min_ratio: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="Share of letters that must be in allowed scripts.",
    )


CleaningStep = Annotated[
    UnicodeStep | WhitespaceStep | HtmlStep | RegexStep | TermMapStep | PiiStep | LengthStep | LanguageStep,
    Field(discriminator="type"),
]


class FieldNames(Section):
    """Which row keys hold what (classification, token classification, annotators, groups)."""

    text: str = Field("text", description="Classification: the text.")
    label: str = Field(
        "label",
        description="Classification: one label, or a path such as 刑事/诈骗/电信诈骗.",
    )
    annotations: str = Field("labels", description="Classification: a list of labels, one per annotator.")
    annotator: str | None = Field(None, description="One row per annotator: the annotator key (needs `id`).")
    id: str | None = Field(
        None,
        description="Row id; rows sharing it are one item labelled by several annotators.",
    )
    group: str | None = Field(None, description="Group key (e.g. case_id): a group never spans two splits.")
    tokens: str = Field("tokens", description="Token classification: the token list.")
    tags: str = Field("tags", description="Token classification: one BIO tag per token.")


class LabelSettings(Section):
    """Label normalisation, allowed sets, hierarchy and annotator aggregation."""

    synonyms: dict[str, str] = Field(default_factory=dict, description="Label → canonical label, applied first.")
    allowed: list[str] | None = Field(None, description="The label set; other labels are rejected rows.")
    separator: str = Field("/", min_length=1, description="Separator of hierarchical label paths.")
    levels: list[list[str]] | None = Field(
        None,
        description="Hierarchical labels: the allowed labels at each level, top level first.",
    )
    on_tie: Literal["reject", "first"] = Field(
        "reject",
        description="Annotators tied: reject the row (reported), or take the tied label seen first.",
    )


class NearDedupSettings(Section):
    enabled: bool = Field(True, description="Find near-duplicates with MinHash LSH.")
    threshold: float = Field(
        0.8,
        gt=0.0,
        le=1.0,
        description="Jaccard similarity at which two texts are duplicates.",
    )
    num_perm: int = Field(
        128,
        ge=16,
        le=1024,
        description="MinHash permutations (more: more precise, slower).",
    )
    shingle: int = Field(5, ge=1, description="Characters per shingle (works for unsegmented Chinese).")


class DedupSettings(Section):
    exact: bool = Field(
        True,
        description="Drop rows whose normalised text (NFKC, case, spacing, punctuation) repeats.",
    )
    near: NearDedupSettings = NearDedupSettings()
    leakage: Literal["remove", "report", "off"] = Field(
        "remove",
        description="Validation/test rows that duplicate a training row: remove them, only count them, or skip.",
    )


class SplitSettings(Section):
    """How train is split when no validation/test file is given (validation share: data.eval_split)."""

    test: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Share of train held out for test (if no data.test).",
    )
    stratify: bool = Field(
        True,
        description="Keep each label's share equal across splits (classification).",
    )
    seed: int = Field(42)


class CleaningSection(Section):
    """Data preparation: validate, clean, deduplicate, label, split, report (``dstune data prepare``)."""

    task: TaskType | None = Field(None, description="Row schema to validate against; default: task.type.")
    fields: FieldNames = FieldNames()
    steps: list[CleaningStep] = Field(
        default_factory=list,
        description="Cleaning steps, applied in order; `dstune train` runs them too, on the text the task reads "
        "(SFT: every message; classification: task.text_field) before tokenizing, and a row a step empties or "
        "filters out is a rejected row (data.on_error). Token classification takes only the row filters "
        "(length, language, judged on the tokens joined by spaces): a text transform would rewrite, merge or "
        "delete tokens, or miss a span that crosses tokens, so the tags would no longer line up with the "
        "tokens; such a step is a config error there.",
    )
    labels: LabelSettings = LabelSettings()
    dedup: DedupSettings = DedupSettings()
    split: SplitSettings = SplitSettings()
    tokenizer: str | None = Field(
        None,
        description="Tokenizer (hub id or folder) for token lengths; default: model.name when present.",
    )
    output_dir: str = Field(
        "data/prepared",
        description="Where prepare writes splits, reports and manifest.json.",
    )
    output_format: Literal["jsonl", "input"] = Field(
        "jsonl",
        description="jsonl, or input: the training file's own format (csv, tsv, parquet, json, txt).",
    )


ROW_FILTERS = ("length", "language")
"""Steps that keep or reject a whole row without rewriting it: the only ones token classification takes."""


def token_rows_problem(steps: list, rows: str = "token_classification rows", multitask: bool = False) -> str | None:
    """Why ``steps`` cannot run on token-classification ``rows`` (None when they can).

    A text transform works on running text: on a token list it could change the number of tokens, or
    match nothing that spans two tokens (a term or phone number written one character per token), and
    the tags would silently stop matching what the model reads. Refusing is the honest option.
    """
    transforms = [f"cleaning.steps[{i}] ({step.type})" for i, step in enumerate(steps) if step.type not in ROW_FILTERS]
    if not transforms:
        return None
    elsewhere = ""
    if multitask:
        elsewhere = " (a multitask run's classification files can be cleaned with `dstune data prepare`)"
    return (
        f"{', '.join(transforms)} rewrite(s) text, but {rows} are token lists aligned one-to-one with their tags: "
        "a rewrite could merge, split or delete tokens, or miss a span that crosses tokens, and the tags would no "
        f"longer match. Token classification takes only the row filters ({', '.join(ROW_FILTERS)}); clean the "
        f"text before it is tokenized and tagged, or remove these steps{elsewhere}"
    )
