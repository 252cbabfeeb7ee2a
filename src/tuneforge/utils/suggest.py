"""Nearest-name suggestions for error messages."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, candidates: Iterable[str], limit: int = 3) -> str:
    """Returns ' Did you mean: a, b?' for the closest candidates, or '' when none is close."""
    matches = difflib.get_close_matches(name, list(candidates), n=limit, cutoff=0.6)
    if not matches:
        return ""
    return " Did you mean: " + ", ".join(f"`{match}`" for match in matches) + "?"


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> str:
    """A message for an unknown registry name that lists the valid ones and the nearest match."""
    valid = sorted(valid)
    return f"unknown {kind} `{name}`.{did_you_mean(name, valid)} Valid: {', '.join(valid)}."
