"""Cleaning steps: text transforms (unicode, whitespace, html, regex, term_map, pii) and row filters
(length, language). Each works on a batch of strings; :data:`STEPS` maps a config ``type`` to its
implementation, so adding a step is adding a class here and a model in ``config/cleaning.py``.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from dstune.config import cleaning as cfg
from dstune.errors import ConfigError

_HALFWIDTH = {**{code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)}, 0x3000: 0x20}
_CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_SCRIPTS = {
    "zh": re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef]"),
    "en": re.compile(r"[A-Za-z\u00c0-\u024f]"),
    "ja": re.compile(r"[\u3040-\u30ff]"),
    "ko": re.compile(r"[\uac00-\ud7af\u1100-\u11ff]"),
    "ru": re.compile(r"[\u0400-\u04ff]"),
    "ar": re.compile(r"[\u0600-\u06ff]"),
}


class Transform:
    """A step that rewrites text."""

    def apply(self, texts: list[str]) -> list[str]:
        return [self.apply_one(text) for text in texts]

    def apply_one(self, text: str) -> str:
        raise NotImplementedError


class Filter:
    """A step that keeps or rejects whole rows; :meth:`check` gives a reason per rejected row, else None."""

    def check(self, documents: list[str]) -> list[str | None]:
        raise NotImplementedError


class UnicodeTransform(Transform):
    def __init__(self, step: cfg.UnicodeStep, **_) -> None:
        self.form, self.halfwidth = step.form, step.halfwidth

    def apply_one(self, text: str) -> str:
        if self.halfwidth:  # first, so that a half-width letter can compose with a following accent
            text = text.translate(_HALFWIDTH)
        return unicodedata.normalize(self.form, text)


class WhitespaceTransform(Transform):
    def __init__(self, step: cfg.WhitespaceStep, **_) -> None:
        self.step = step

    def apply_one(self, text: str) -> str:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        if self.step.keep_newlines:
            text = re.sub(r"[^\S\n]+", " ", text)
            text = re.sub(r"\n{3,}", "\n\n", re.sub(r" ?\n ?", "\n", text))
        else:
            text = re.sub(r"\s+", " ", text)
        if self.step.cjk_spaces:
            text = re.sub(rf"(?<=[{_CJK}]) (?=[{_CJK}])", "", text)
        return text.strip()


class HtmlTransform(Transform):
    _DROP = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>|<!--.*?-->", re.IGNORECASE | re.DOTALL)
    _BREAK = re.compile(r"<(?:br|/p|/div|/li|/tr|/h[1-6])\b[^>]*>", re.IGNORECASE)
    _TAG = re.compile(r"</?[A-Za-z][^<>]*>")

    def __init__(self, step: cfg.HtmlStep, **_) -> None:
        pass

    def apply_one(self, text: str) -> str:
        if "<" in text:
            text = self._TAG.sub("", self._BREAK.sub("\n", self._DROP.sub("", text)))
        return html.unescape(text) if "&" in text else text


class RegexTransform(Transform):
    def __init__(self, step: cfg.RegexStep, **_) -> None:
        self.rules = [
            (
                re.compile(rule.pattern, re.IGNORECASE if rule.ignore_case else 0),
                rule.replace,
            )
            for rule in step.rules
        ]

    def apply_one(self, text: str) -> str:
        for pattern, replace in self.rules:
            text = pattern.sub(replace, text)
        return text


class TermMapTransform(Transform):
    """One pass, longest match first, at any position (no word segmentation needed for Chinese)."""

    def __init__(self, step: cfg.TermMapStep, where: str = "cleaning.steps", **_) -> None:
        self.terms = {
            **(load_term_file(Path(step.file), where) if step.file else {}),
            **step.terms,
        }
        self.pattern = re.compile(trie_pattern(list(self.terms)))

    def apply_one(self, text: str) -> str:
        return self.pattern.sub(lambda match: self.terms[match.group()], text)


def trie_pattern(terms: list[str]) -> str:
    """A regex matching any of ``terms``, built as a trie so the longest term wins and large maps stay fast."""
    trie: dict = {}
    for term in terms:
        node = trie
        for char in term:
            node = node.setdefault(char, {})
        node[""] = {}  # end of a term

    def build(node: dict) -> str:
        branches = [re.escape(char) + build(child) for char, child in node.items() if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        if "" not in node:
            return body
        return f"(?:{body})?" if len(branches) > 1 or len(body) > 1 else f"{body}?"

    return build(trie)


def load_term_file(path: Path, where: str) -> dict[str, str]:
    """``term<TAB>replacement`` or ``term,replacement`` per line; blank lines and ``#`` comments are skipped."""
    if not path.is_file():
        raise ConfigError(
            f"term map file not found: {path}",
            where=where,
            hint="check the path of `file`",
        )
    terms = {}
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        term, sep, replacement = line.partition("\t") if "\t" in line else line.partition(",")
        if not sep or not term.strip():
            raise ConfigError(
                "expected `term<TAB>replacement` or `term,replacement`",
                where=f"{path}:{number}",
                hint="fix the line",
            )
        terms[term.strip()] = replacement.strip()
    return terms


def _id_card_ok(number: str) -> bool:
    """Chinese resident ID check digit (ISO 7064 MOD 11-2)."""
    weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
    total = sum(int(d) * w for d, w in zip(number[:17], weights))
    return "10X98765432"[total % 11] == number[17].upper()


def _luhn_ok(number: str) -> bool:
    digits = [int(d) for d in re.sub(r"\D", "", number)][::-1]
    return sum(d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2) for i, d in enumerate(digits)) % 10 == 0


_PII: dict[str, tuple[re.Pattern, Callable[[str], bool]]] = {
    "email": (
        re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
        lambda _: True,
    ),
    "id_card": (
        re.compile(
            r"(?<![0-9A-Za-z])[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx](?![0-9A-Za-z])"
        ),
        _id_card_ok,
    ),
    "bank_card": (
        re.compile(r"(?<![\d-])\d{4}(?:[ -]?\d{3,4}){2,3}[ -]?\d{1,4}(?![\d-])"),
        _luhn_ok,
    ),
    "phone": (
        re.compile(
            r"(?<![\d+])(?:(?:\+?86[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2}"  # Chinese mobile
            r"|0\d{2,3}-\d{7,8}"  # Chinese landline
            r"|(?:\+?1[ .-]?)?\(?[2-9]\d{2}\)?[ .-]?\d{3}[ .-]\d{4})(?!\d)"  # North American
        ),
        lambda _: True,
    ),
}


class PiiTransform(Transform):
    """Masks emails, Chinese ID cards, bank cards and phone numbers (in that order); counts each kind."""

    def __init__(self, step: cfg.PiiStep, **_) -> None:
        self.kinds = [kind for kind in _PII if kind in step.kinds]
        self.masks = {kind: step.replacement.replace("{KIND}", kind.upper()) for kind in self.kinds}
        self.counts: Counter[str] = Counter()

    def apply_one(self, text: str) -> str:
        for kind in self.kinds:
            pattern, valid = _PII[kind]
            text = pattern.sub(
                lambda match, kind=kind, valid=valid: self._mask(kind, valid, match),
                text,
            )
        return text

    def _mask(self, kind: str, valid: Callable[[str], bool], match: re.Match) -> str:
        if not valid(match.group()):
            return match.group()
        self.counts[kind] += 1
        return self.masks[kind]


class LengthFilter(Filter):
    def __init__(self, step: cfg.LengthStep, where: str = "cleaning.steps", tokenizer=None, **_) -> None:
        if step.unit == "tokens" and tokenizer is None:
            raise ConfigError(
                "a length filter in tokens needs a tokenizer",
                where=where,
                hint="set cleaning.tokenizer (a hub id or tokenizer folder), or use unit: chars",
            )
        self.step, self.where, self.tokenizer = step, where, tokenizer

    def check(self, documents: list[str]) -> list[str | None]:
        if self.step.unit == "chars":
            lengths = [len(doc) for doc in documents]
        else:
            lengths = [len(ids) for ids in self.tokenizer(documents, add_special_tokens=False)["input_ids"]]
        return [self._reason(n) for n in lengths]

    def _reason(self, n: int) -> str | None:
        lo, hi, unit = self.step.min, self.step.max, self.step.unit
        if lo is not None and n < lo:
            return f"{n} {unit} is below the minimum {lo} ({self.where}.min)"
        if hi is not None and n > hi:
            return f"{n} {unit} is above the maximum {hi} ({self.where}.max)"
        return None


class LanguageFilter(Filter):
    def __init__(self, step: cfg.LanguageStep, **_) -> None:
        self.allow, self.min_ratio = step.allow, step.min_ratio

    def check(self, documents: list[str]) -> list[str | None]:
        return [self._reason(doc) for doc in documents]

    def _reason(self, doc: str) -> str | None:
        counts = {name: len(pattern.findall(doc)) for name, pattern in _SCRIPTS.items()}
        letters = sum(counts.values())
        if letters == 0:
            return "no letters in any known script"
        share = sum(counts[name] for name in self.allow) / letters
        if share >= self.min_ratio:
            return None
        main = max(counts, key=counts.get)
        return f"only {share:.0%} of letters are {'/'.join(self.allow)} (mostly {main}; min {self.min_ratio:.0%})"


STEPS: dict[str, type[Transform | Filter]] = {
    "unicode": UnicodeTransform,
    "whitespace": WhitespaceTransform,
    "html": HtmlTransform,
    "regex": RegexTransform,
    "term_map": TermMapTransform,
    "pii": PiiTransform,
    "length": LengthFilter,
    "language": LanguageFilter,
}
