"""The label set of one task: names in output order, how a row's label becomes ids, and how scores
become a prediction.

Three kinds: ``single`` (one class per row, softmax), ``multi`` (any number of labels per row,
sigmoid with a threshold per label) and ``token`` (one BIO tag per word).

Hierarchical labels (``刑事/诈骗/电信诈骗``) use one flat head over the full paths. A prediction
walks the tree top-down: at each level it takes the child with the most probability mass (the sum
over the paths below it), or stops at the current node when that node is itself a label and holds
more mass than every child. The predicted path is therefore always consistent: each level is the
parent of the next, whatever the individual scores are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from dstune.data.formats import RowError

Kind = Literal["single", "multi", "token"]
BIO = re.compile(r"^(?:O|([BI])-(.+))$")


@dataclass
class LabelSpace:
    """Names in output order; ``thresholds`` (multi) are per label, tuned after training when configured."""

    kind: Kind
    names: list[str]
    hierarchical: bool = False
    separator: str = "/"
    thresholds: list[float] | None = None
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._index = {name: i for i, name in enumerate(self.names)}
        if self.kind == "multi" and self.thresholds is None:
            self.thresholds = [0.5] * len(self.names)

    @classmethod
    def for_values(
        cls, kind: Kind, values: list, declared: list[str] | None = None, *, hierarchical: bool = False,
        separator: str = "/", threshold: float = 0.5,
    ) -> LabelSpace:
        """The space of the declared labels, or of those seen in ``values`` (sorted); tags for ``token``.

        For ``token`` tasks ``declared`` lists entity types and ``values`` are tag lists.
        """
        if kind == "token":
            types = declared if declared is not None else sorted({_entity_type(t) for tags in values for t in tags} - {None})
            return cls("token", ["O", *[f"{p}-{t}" for t in types for p in "BI"]])
        if declared is None:
            seen = {v for value in values for v in (value if isinstance(value, list) else [value])}
            declared = sorted(str(v) for v in seen)
        space = cls(kind, list(declared), hierarchical, separator)
        if kind == "multi":
            space.thresholds = [threshold] * len(declared)
        return space

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: object) -> int:
        """The id of a label; :class:`RowError` for a label outside the set."""
        if not isinstance(name, str | int) or isinstance(name, bool):
            raise RowError(f"label must be a string, got {type(name).__name__}")
        key = str(name).strip()
        if self.hierarchical:
            key = self.separator.join(part.strip() for part in key.split(self.separator))
        if key not in self._index:
            shown = ", ".join(self.names[:12]) + (", ..." if len(self.names) > 12 else "")
            raise RowError(f"label {key!r} is not in the label set ({shown})")
        return self._index[key]

    def encode(self, value: object) -> list[int]:
        """A row's label(s) as ids: ``[id]`` (single), multi-hot (multi), one id per tag (token)."""
        if self.kind == "single":
            return [self.index(value)]
        if not isinstance(value, list) or not value:
            raise RowError(f"expected a non-empty list of {'tags' if self.kind == 'token' else 'labels'}")
        if self.kind == "token":
            return [self.index(tag) for tag in value]
        hot = [0] * len(self.names)
        for name in value:
            hot[self.index(name)] = 1
        return hot

    # --- predictions -------------------------------------------------------------------------

    def predict(self, scores: np.ndarray) -> np.ndarray:
        """Predicted ids from probabilities: (N,) for single (top-down for hierarchical), (N, C) 0/1 for multi."""
        scores = np.asarray(scores, dtype=np.float64)
        if self.kind == "multi":
            return (scores >= np.asarray(self.thresholds)[None, :]).astype(np.int64)
        if self.hierarchical:
            return np.array([self._top_down(row) for row in scores], dtype=np.int64)
        return scores.argmax(axis=-1)

    def levels(self, name: str) -> list[str]:
        """The path prefixes of a hierarchical label: ``a/b/c`` → ``[a, a/b, a/b/c]``."""
        parts = name.split(self.separator)
        return [self.separator.join(parts[: depth + 1]) for depth in range(len(parts))]

    @property
    def depth(self) -> int:
        return max((len(self.levels(name)) for name in self.names), default=0) if self.hierarchical else 1

    def _top_down(self, probs: np.ndarray) -> int:
        children, below = self._tree
        node = ""
        while True:
            options = {child: probs[below[child]].sum() for child in children.get(node, [])}
            if node in self._index:
                options[None] = probs[self._index[node]]  # stop at this node (it is a label itself)
            best = max(options, key=options.get)
            if best is None:
                return self._index[node]
            node = best

    @property
    def _tree(self) -> tuple[dict[str, list[str]], dict[str, list[int]]]:
        """Children of each path prefix ("" is the root) and the label ids at or below each prefix."""
        cached = getattr(self, "_tree_cache", None)
        if cached is None:
            children: dict[str, list[str]] = {}
            below: dict[str, list[int]] = {}
            for i, name in enumerate(self.names):
                parent = ""
                for prefix in self.levels(name):
                    if prefix not in children.setdefault(parent, []):
                        children[parent].append(prefix)
                    below.setdefault(prefix, []).append(i)
                    parent = prefix
            cached = self._tree_cache = (children, below)
        return cached

    # --- saving ------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        out = {"kind": self.kind, "labels": self.names}
        if self.hierarchical:
            out.update(hierarchical=True, separator=self.separator)
        if self.kind == "multi":
            out["thresholds"] = [round(float(t), 6) for t in self.thresholds]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> LabelSpace:
        return cls(data["kind"], list(data["labels"]), data.get("hierarchical", False), data.get("separator", "/"),
                   data.get("thresholds"))


def _entity_type(tag: object) -> str | None:
    """The entity type of a BIO tag (``B-PER`` → ``PER``), None for ``O``; RowError for a non-BIO tag."""
    match = BIO.match(tag) if isinstance(tag, str) else None
    if match is None:
        raise RowError(f"tag {tag!r} is not BIO (O, B-TYPE or I-TYPE)")
    return match.group(2)
