"""User-facing errors: what went wrong, where, and how to fix it.

Anything raised as a :class:`DstuneError` is shown by the CLI as a short message without a
traceback (``--debug`` shows it). Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class DstuneError(Exception):
    """An error caused by the user's input (config, data, paths), not by dstune itself."""

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None):
        self.message = message
        self.where = where
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f"\nHow to fix: {self.hint}"
        return text


class ConfigError(DstuneError):
    """The YAML config (or a --set override) is invalid."""


class DataError(DstuneError):
    """A data file is missing, unreadable or has malformed rows."""


class ModelError(DstuneError):
    """A model or tokenizer cannot be found or loaded."""
