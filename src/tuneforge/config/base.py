"""How config sections declare their keys.

Each section is a frozen dataclass whose fields are the flat, LLaMA-Factory-named keys.
`key(default, help, not_yet=...)` declares one: `not_yet` marks a key we know but have not
built yet; setting it to anything but its default is an error that says so.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def key(
    default: Any, help: str, *, not_yet: str | None = None, alias_of: str | None = None
) -> Any:  # Any, as dataclasses.field is, so that `x: int = key(...)` type-checks
    """A config key with its default, a one-line help, and optional status notes."""
    metadata = {"help": help, "not_yet": not_yet, "alias_of": alias_of}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def not_yet_note(field: dataclasses.Field) -> str | None:
    return field.metadata.get("not_yet")


def help_of(field: dataclasses.Field) -> str:
    return field.metadata.get("help", "")
