"""SFT row formats: detect which one a row uses and convert it to chat messages.

Supported rows:

* ``messages`` (OpenAI): ``{"messages": [{"role": "user", "content": "..."}, ...]}``
* Alpaca: ``{"instruction": "...", "input": "...", "output": "...", "system": "..."}``
  (``input`` and ``system`` optional)
* ShareGPT: ``{"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", ...}]}``
* raw ``text``: ``{"text": "..."}``, trained on as a whole
"""

from __future__ import annotations

FORMATS = ("messages", "alpaca", "sharegpt", "text")
MESSAGE_ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}
_EXPECTED_KEYS = "messages (OpenAI), instruction + output (Alpaca), conversations (ShareGPT) or text"


class RowError(ValueError):
    """A row that cannot be used; the message is the reason only (callers add file:line)."""


def detect_format(row: dict) -> str:
    """Name the format of a row from its keys: ``messages``, ``alpaca``, ``sharegpt`` or ``text``."""
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "text" in row:
        return "text"
    raise RowError(f"cannot tell the row format from its keys {sorted(row)}; expected {_EXPECTED_KEYS}")


def to_messages(row: dict, fmt: str, system_prompt: str | None = None) -> list[dict] | str:
    """Convert a row to chat messages (``[{"role", "content"}, ...]``), or to a string for ``text`` rows.

    ``system_prompt`` becomes the first message of conversations that have no system message.
    """
    if fmt == "text":
        return _require_text(row, "text")
    converters = {"messages": _from_messages, "alpaca": _from_alpaca, "sharegpt": _from_sharegpt}
    if fmt not in converters:
        raise ValueError(f"unknown SFT format {fmt!r}; expected one of {FORMATS}")
    messages = converters[fmt](row)
    if not any(message["role"] == "assistant" for message in messages):
        raise RowError("the conversation has no assistant message to train on")
    if system_prompt and not any(message["role"] == "system" for message in messages):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def _require_text(row: dict, key: str) -> str:
    if key not in row or row[key] is None:
        raise RowError(f"missing key {key!r} (the row has {sorted(row)})")
    return _non_empty(row[key], f"{key!r}")


def _non_empty(value: object, what: str) -> str:
    if value is None:
        raise RowError(f"{what} is missing")
    if not isinstance(value, str):
        raise RowError(f"{what} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RowError(f"{what} is empty")
    return value


def _turns(row: dict, key: str) -> list:
    if key not in row:
        raise RowError(f"missing key {key!r} (the row has {sorted(row)})")
    turns = row[key]
    if not isinstance(turns, list) or not turns:
        raise RowError(f"{key!r} must be a non-empty list of messages")
    return turns


def _from_messages(row: dict) -> list[dict]:
    messages = []
    for number, message in enumerate(_turns(row, "messages"), start=1):
        if not isinstance(message, dict) or "role" not in message:
            raise RowError(f"message {number} must be an object with 'role' and 'content'")
        role = message["role"]
        if role not in MESSAGE_ROLES:
            raise RowError(f"message {number} has unknown role {role!r}; expected one of {', '.join(MESSAGE_ROLES)}")
        content = _non_empty(message.get("content"), f"content of message {number} ({role})")
        messages.append({**message, "content": content})
    return messages


def _from_alpaca(row: dict) -> list[dict]:
    instruction = _require_text(row, "instruction")
    extra = row.get("input")
    if extra is not None and not isinstance(extra, str):
        raise RowError(f"'input' must be a string, got {type(extra).__name__}")
    user = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": _require_text(row, "output")}]
    if row.get("system"):
        messages.insert(0, {"role": "system", "content": _non_empty(row["system"], "'system'")})
    return messages


def _from_sharegpt(row: dict) -> list[dict]:
    messages = []
    for number, turn in enumerate(_turns(row, "conversations"), start=1):
        if not isinstance(turn, dict):
            raise RowError(f"turn {number} must be an object with 'from' and 'value'")
        speaker = turn.get("from", turn.get("role"))
        if speaker not in SHAREGPT_ROLES:
            raise RowError(
                f"turn {number} has unknown speaker {speaker!r}; expected one of {', '.join(SHAREGPT_ROLES)}"
            )
        content = _non_empty(turn.get("value", turn.get("content")), f"value of turn {number} ({speaker})")
        messages.append({"role": SHAREGPT_ROLES[speaker], "content": content})
    return messages
