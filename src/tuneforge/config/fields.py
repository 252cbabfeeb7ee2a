"""Turning raw YAML / command-line values into the types a config field declares.

Values come from YAML (already typed, though `2e-5` arrives as a string because YAML 1.1
does not read it as a float) or from `key=value` overrides (strings). Every failure raises a
ConfigError that names the key, the value and what is allowed.
"""

from __future__ import annotations

import enum
import json
import types
import typing
from typing import Any, Literal, Union

from tuneforge.errors import ConfigError

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"null", "~", ""}  # "none" stays a string: `report_to: none` means something


def coerce(key: str, value: Any, annotation: Any) -> Any:
    """Converts `value` to `annotation` or raises ConfigError naming `key`."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (Union, types.UnionType):
        return _coerce_union(key, value, args)
    if origin is Literal:
        return _coerce_literal(key, value, args)
    if origin in (list, tuple) or annotation in (list, tuple):
        return _coerce_list(key, value, args[0] if args else Any)
    if origin is dict or annotation is dict:
        return _coerce_dict(key, value)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return _coerce_literal(key, value, tuple(member.value for member in annotation))
    if annotation is bool:
        return _coerce_bool(key, value)
    if annotation is int:
        return _coerce_int(key, value)
    if annotation is float:
        return _coerce_float(key, value)
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        hint = (
            " (YAML reads a bare yes/no/on/off as true/false: quote it)"
            if isinstance(value, bool)
            else ""
        )
        raise _type_error(key, value, f"a string{hint}")
    return value  # an annotation we do not police (objects passed through to transformers)


def _type_error(key: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"config key `{key}`: got {value!r}, expected {expected}.")


def _coerce_union(key: str, value: Any, args: tuple[Any, ...]) -> Any:
    members = [arg for arg in args if arg is not type(None)]
    if type(None) in args and (
        value is None or (isinstance(value, str) and value.lower() in _NONE)
    ):
        return None
    errors = []
    for member in members:
        try:
            return coerce(key, value, member)
        except ConfigError as error:
            errors.append(error)
    if len(errors) == 1:
        raise errors[0]
    raise _type_error(key, value, " or ".join(_describe(member) for member in members))


def _describe(annotation: Any) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}
    if annotation in names:
        return names[annotation]
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(repr(arg) for arg in typing.get_args(annotation))
    if typing.get_origin(annotation) in (list, tuple):
        return "a list"
    if typing.get_origin(annotation) is dict or annotation is dict:
        return "a mapping"
    return getattr(annotation, "__name__", str(annotation))


def _coerce_literal(key: str, value: Any, allowed: tuple[Any, ...]) -> Any:
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool) and not any(isinstance(option, bool) for option in allowed):
        # YAML 1.1 reads a bare `no` / `yes` as a boolean: `save_strategy: no` means "no"
        value = "yes" if value else "no"
    if value in allowed and not (isinstance(value, bool) and True in allowed and 1 in allowed):
        return value
    if isinstance(value, str):
        for option in allowed:
            if str(option).lower() == value.lower():
                return option
    options = ", ".join(repr(option) for option in allowed)
    raise ConfigError(f"config key `{key}`: got {value!r}, expected one of {options}.")


def _coerce_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise _type_error(key, value, "true or false")


def _coerce_int(key: str, value: Any) -> int:
    if isinstance(value, bool):
        raise _type_error(key, value, "an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise _type_error(key, value, "an integer") from None
        if number.is_integer():
            return int(number)
    raise _type_error(key, value, "an integer")


def _coerce_float(key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise _type_error(key, value, "a number")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise _type_error(key, value, "a number")


def _coerce_list(key: str, value: Any, item: Any) -> list[Any]:
    # LLaMA-Factory writes lists as comma-separated strings ("alpaca_en,identity").
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("["):
            try:
                value = json.loads(stripped)
            except json.JSONDecodeError:
                raise _type_error(key, value, "a list such as [a, b] or a,b") from None
        else:
            value = [part.strip() for part in stripped.split(",") if part.strip()]
    if not isinstance(value, (list, tuple)):
        value = [value]
    return [coerce(key, element, item) for element in value]


def _coerce_dict(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            return parsed
    raise _type_error(key, value, 'a mapping (YAML, or JSON such as {"type": "linear"})')
