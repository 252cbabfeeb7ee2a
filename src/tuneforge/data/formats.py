"""Normalising rows of alpaca, sharegpt and openai datasets into `Example`s.

The rules follow LLaMA-Factory's converters (same columns, same role tags, same joining of
instruction and input), but a malformed row raises `RowError` saying which field is wrong
and what was expected, instead of being dropped with a vague warning.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from tuneforge.data.catalogue import DatasetSpec
from tuneforge.data.example import PROMPT_ROLES, RESPONSE_ROLES, Example, Message, Role
from tuneforge.data.sources import Row


class RowError(ValueError):
    """A row that cannot be converted; the message names the field and what was expected."""


def to_example(row: Row, spec: DatasetSpec) -> Example:
    """Converts one row according to the dataset's formatting; raises RowError."""
    if spec.formatting == "alpaca":
        return _alpaca(row, spec)
    return _conversation(row, spec)


def _text(row: Row, column: str | None, what: str) -> str | None:
    if column is None:
        return None
    value = row.fields.get(column)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RowError(f"field `{column}` ({what}) must be a string, got {_kind(value)}")
    return value


def _required_text(row: Row, column: str | None, what: str) -> str:
    value = _text(row, column, what)
    if value is None:
        raise RowError(f"field `{column}` ({what}) is missing or null")
    return value


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _kto_tag(row: Row, column: str | None) -> bool | None:
    if column is None or column not in row.fields:
        return None
    value = row.fields[column]
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise RowError(f"field `{column}` (kto_tag) must be true or false, got {value!r}")


def _tools(row: Row, column: str | None) -> str:
    if column is None or row.fields.get(column) in (None, ""):
        return ""
    value = row.fields[column]
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as error:
            raise RowError(f"field `{column}` (tools) is not valid JSON: {error.msg}") from None
    else:
        parsed = value
    if isinstance(parsed, dict):
        parsed = [parsed]
    if not isinstance(parsed, list):
        raise RowError(f"field `{column}` (tools) must be a JSON list of tool schemas")
    return json.dumps(parsed, ensure_ascii=False)


def _alpaca(row: Row, spec: DatasetSpec) -> Example:
    columns = spec.columns
    messages: list[Message] = []
    history = row.fields.get(columns.history) if columns.history else None
    if history is not None:
        if not isinstance(history, list):
            raise RowError(f"field `{columns.history}` (history) must be a list of [query, answer]")
        for turn, pair in enumerate(history, start=1):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise RowError(
                    f"field `{columns.history}` (history) turn {turn} must be a "
                    "[query, answer] pair"
                )
            if not all(isinstance(part, str) for part in pair):
                raise RowError(f"field `{columns.history}` (history) turn {turn} must hold strings")
            messages += [Message("user", pair[0]), Message("assistant", pair[1])]
    parts = [
        part
        for part in (_text(row, columns.prompt, "prompt"), _text(row, columns.query, "query"))
        if part
    ]
    if not parts:
        raise RowError(f"field `{columns.prompt}` (prompt) is missing or empty")
    messages.append(Message("user", "\n".join(parts)))
    rejected = None
    if spec.ranking:
        chosen = _required_text(row, columns.chosen, "chosen")
        rejected = Message("assistant", _required_text(row, columns.rejected, "rejected"))
        messages.append(Message("assistant", chosen))
    else:
        response = _text(row, columns.response, "response")
        if response is not None:
            messages.append(Message("assistant", response))
    return Example(
        messages=tuple(messages),
        system=_text(row, columns.system, "system") or "",
        tools=_tools(row, columns.tools),
        rejected=rejected,
        kto_tag=_kto_tag(row, columns.kto_tag),
        origin=row.where,
    )


def _conversation(row: Row, spec: DatasetSpec) -> Example:
    """sharegpt and openai rows: a list of role-tagged messages."""
    columns, tags = spec.columns, spec.tags
    raw = row.fields.get(columns.messages) if columns.messages else None
    if not isinstance(raw, list) or not raw:
        raise RowError(f"field `{columns.messages}` (messages) must be a non-empty list")
    system = _text(row, columns.system, "system") or ""
    roles: dict[str, Role] = {
        tags.user_tag: "user",
        tags.assistant_tag: "assistant",
        tags.observation_tag: "observation",
        tags.function_tag: "function",
    }
    messages = []
    for index, raw_message in enumerate(raw, start=1):
        role, content = _message(raw_message, index, spec, roles)
        if role == "system":
            if index != 1:
                raise RowError(f"message {index}: a system message may only come first")
            system = content
            continue
        messages.append(Message(role, content))
    _check_alternation(messages, raw[0], tags)
    rejected = None
    if spec.ranking:
        chosen = _single_response(row, columns.chosen, "chosen", spec, roles)
        rejected = _single_response(row, columns.rejected, "rejected", spec, roles)
        messages.append(chosen)
    return Example(
        messages=tuple(messages),
        system=system,
        tools=_tools(row, columns.tools),
        rejected=rejected,
        kto_tag=_kto_tag(row, columns.kto_tag),
        origin=row.where,
    )


def _message(
    raw: Any, index: int, spec: DatasetSpec, roles: dict[str, Role]
) -> tuple[Role | Literal["system"], str]:
    tags = spec.tags
    if not isinstance(raw, dict):
        raise RowError(
            f"message {index} must be an object with `{tags.role_tag}` and `{tags.content_tag}`"
        )
    tag = raw.get(tags.role_tag)
    if tag == tags.system_tag:
        return "system", _content(raw, index, tags.content_tag)
    if tag not in roles:
        allowed = ", ".join(repr(t) for t in [*roles, tags.system_tag])
        raise RowError(f"message {index}: `{tags.role_tag}` is {tag!r}, expected one of {allowed}")
    role = roles[tag]
    if spec.formatting == "openai" and role == "assistant" and raw.get("tool_calls"):
        return "function", _openai_calls(raw["tool_calls"], index)
    content = _content(raw, index, tags.content_tag)
    if role == "function":
        _check_call_json(content, index)
    return role, content


def _content(raw: dict[str, Any], index: int, content_tag: str) -> str:
    content = raw.get(content_tag)
    if not isinstance(content, str):
        raise RowError(f"message {index}: `{content_tag}` must be a string, got {_kind(content)}")
    return content


def _check_call_json(content: str, index: int) -> None:
    try:
        calls = json.loads(content)
    except json.JSONDecodeError as error:
        raise RowError(
            f"message {index} (function call) is not valid JSON ({error.msg}); expected "
            '{"name": ..., "arguments": {...}} or a list of them'
        ) from None
    for call in calls if isinstance(calls, list) else [calls]:
        if not (isinstance(call, dict) and isinstance(call.get("name"), str)):
            raise RowError(
                f"message {index} (function call) must be "
                '{"name": ..., "arguments": {...}} or a list of them'
            )


def _openai_calls(tool_calls: Any, index: int) -> str:
    if not isinstance(tool_calls, list):
        raise RowError(f"message {index}: `tool_calls` must be a list")
    calls = []
    for call in tool_calls:
        function = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise RowError(f"message {index}: each tool call needs function.name")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError:
                raise RowError(f"message {index}: tool call arguments are not valid JSON") from None
        calls.append({"name": function["name"], "arguments": arguments})
    return json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)


def _check_alternation(messages: list[Message], first: Any, tags: Any) -> None:
    for index, message in enumerate(messages):
        expected = PROMPT_ROLES if index % 2 == 0 else RESPONSE_ROLES
        if message.role not in expected:
            side = (
                "a user or observation turn" if index % 2 == 0 else "an assistant or function turn"
            )
            number = (
                index
                + 1
                + (isinstance(first, dict) and first.get(tags.role_tag) == tags.system_tag)
            )
            raise RowError(
                f"message {number} is {message.role!r} where {side} was expected "
                "(turns must alternate, starting with the user)"
            )


def _single_response(
    row: Row, column: str | None, what: str, spec: DatasetSpec, roles: dict[str, Role]
) -> Message:
    value = row.fields.get(column) if column else None
    if isinstance(value, str):
        return Message("assistant", value)
    if not isinstance(value, dict):
        raise RowError(f"field `{column}` ({what}) must be a message object or a string")
    role, content = _message(value, 1, spec, roles)
    if role not in ("assistant", "function"):  # RESPONSE_ROLES, spelled out for the type
        raise RowError(f"field `{column}` ({what}) must be an assistant message, got {role!r}")
    return Message(role, content)
