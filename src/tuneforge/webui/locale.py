"""The web workbench's strings, one data file per language (locales/<lang>.yaml).

An entry is a plain string (buttons, tabs, messages) or a field's `{label, info}`.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import yaml

from tuneforge.errors import UserError

LANGUAGES = ("en", "zh")
DEFAULT_LANGUAGE = "en"


@functools.cache
def strings(lang: str) -> dict[str, Any]:
    """Every entry of one language's locale file."""
    if lang not in LANGUAGES:
        lang = DEFAULT_LANGUAGE
    # one step at a time: Python 3.10's Traversable.joinpath takes a single name
    path = resources.files("tuneforge.webui") / "locales" / f"{lang}.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def text(lang: str, name: str, **values: Any) -> str:
    """A plain string (or a field's label), with `values` filled into its placeholders."""
    entry = strings(lang)[name]
    template = entry["label"] if isinstance(entry, dict) else entry
    return template.format(**values) if values else template


def label(lang: str, name: str) -> str:
    return text(lang, name)


def info(lang: str, name: str) -> str | None:
    """A field's help line, if it has one."""
    entry = strings(lang)[name]
    return entry.get("info") if isinstance(entry, dict) else None


class FormError(UserError):
    """A problem with what was entered in the page, told in the page's language.

    `key` names a message of the locale files; a `what` value names another entry (the thing
    that is wrong) and is translated too.
    """

    def __init__(self, key: str, **values: Any) -> None:
        self.key, self.values = key, values
        super().__init__(self.message(DEFAULT_LANGUAGE))

    def message(self, lang: str) -> str:
        values = dict(self.values)
        if "what" in values:
            values["what"] = text(lang, values["what"])
        return text(lang, self.key, **values)


def describe(error: Exception, lang: str) -> str:
    """An error's message for the page: a FormError in `lang`, others as raised."""
    return error.message(lang) if isinstance(error, FormError) else str(error)
