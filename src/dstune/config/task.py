"""Settings of the labelled tasks (classification, token classification), shared by ``task`` and each
``multitask.tasks.<name>``.

Classification rows are ``{"text": ..., "label": ...}``: the label is a string, a list of strings
(``multi_label: true``) or a path such as ``刑事/诈骗/电信诈骗`` (``hierarchical: true``). Token
classification rows are ``{"tokens": [...], "tags": [...]}`` with one BIO tag per token; Chinese
text is tagged character by character (one token per character).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from dstune.config.base import Section


class LabelledTaskFields(Section):
    """Where the text and labels are in a row, how the head pools, and how the loss treats the labels."""

    text_field: str = Field("text", description="classification: the row key holding the text.")
    label_field: str = Field("label", description="classification: the row key holding the label (or label list).")
    tokens_field: str = Field("tokens", description="token_classification: the row key holding the token list.")
    tags_field: str = Field("tags", description="token_classification: the row key holding one BIO tag per token.")
    labels: list[str] | None = Field(
        None,
        description="The label set in output order (classes, leaf paths, or entity types for token tasks); "
        "null infers it, sorted, from the training data. A label outside the set is a row error.",
    )
    multi_label: bool = Field(False, description="classification: a row has a list of labels (sigmoid per label).")
    hierarchical: bool = Field(
        False,
        description="classification: labels are paths (a/b/c). One flat head over the full paths; prediction "
        "walks the tree top-down (the parent with the most probability mass first), so every predicted path "
        "is consistent, and metrics are also reported per level.",
    )
    separator: str = Field("/", min_length=1, description="Separator of hierarchical label paths.")
    pooling: Literal["auto", "last", "cls", "mean"] = Field(
        "auto",
        description="classification: how a text becomes one vector. auto: last non-padding token on decoders "
        "(transformers' *ForSequenceClassification), [CLS] on encoders; mean: masked mean of all tokens.",
    )
    class_weights: Literal["none", "balanced"] | dict[str, float] = Field(
        "none",
        description="Loss weight per class: none, balanced (n / (classes * count); for multi_label the "
        "negative/positive ratio), or {label: weight} (others 1.0). Training loss only.",
    )
    focal_gamma: float | None = Field(
        None, ge=0.0, description="Focal loss: down-weight easy examples by (1 - p)^gamma (2.0 is usual); null: off."
    )
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="multi_label: default decision threshold per label.")
    tune_thresholds: bool = Field(
        True, description="multi_label: after training, pick each label's threshold for the best F1 on validation."
    )

    @model_validator(mode="after")
    def _compatible(self) -> LabelledTaskFields:
        if self.multi_label and self.hierarchical:
            raise ValueError("multi_label and hierarchical cannot be combined; choose one")
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ValueError("labels lists a label twice")
        return self
