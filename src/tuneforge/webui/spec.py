"""The form of the web workbench, read from form.yaml: fields, their rows and panels.

No gradio here: `components.py` turns fields into widgets, `arguments.py` turns their values
into config keys.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

NONE_CHOICE = "none"  # a dropdown's "leave the key out" choice


@dataclass(frozen=True)
class Field:
    """One form field (see the comment at the top of form.yaml)."""

    name: str
    widget: str
    key: str | None  # the config key it sets; None for page-only fields
    default: Any
    type: str = "str"
    choices: tuple[str, ...] | str = ()  # a list, or "$source" resolved by `choices_of`
    requires: dict[str, str] = field(default_factory=dict)
    omit: tuple[Any, ...] = ()
    custom: bool = False
    min: float | None = None
    max: float | None = None
    step: float | None = None


@dataclass(frozen=True)
class Panel:
    name: str
    when: dict[str, tuple[str, ...]]  # field -> values for which the panel applies
    rows: tuple[tuple[str, ...], ...]

    def applies(self, values: Mapping[str, Any]) -> bool:
        return all(values.get(name) in allowed for name, allowed in self.when.items())


@dataclass(frozen=True)
class FormSpec:
    fields: dict[str, Field]
    layout: dict[str, tuple[tuple[str, ...], ...]]  # part of the page -> rows of field names
    panels: dict[str, Panel]

    def names(self, part: str) -> list[str]:
        """Field names of one part of the page (`top`, `train` with its panels, `eval` ...)."""
        rows = list(self.layout[part])
        if part == "train":
            rows += [row for panel in self.panels.values() for row in panel.rows]
        return [name for row in rows for name in row]

    def panel_of(self, name: str) -> Panel | None:
        for panel in self.panels.values():
            if any(name in row for row in panel.rows):
                return panel
        return None


@functools.cache
def form_spec() -> FormSpec:
    """form.yaml, parsed."""
    text = resources.files("tuneforge.webui").joinpath("form.yaml").read_text(encoding="utf-8")
    raw = yaml.safe_load(text)
    fields = {}
    for name, props in raw["fields"].items():
        props = dict(props)
        key = props.pop("key", name)
        for listed in ("choices", "omit"):
            if isinstance(props.get(listed), list):
                props[listed] = tuple(props[listed])
        fields[name] = Field(name=name, key=key, **props)
    layout = {part: tuple(tuple(row) for row in rows) for part, rows in raw["layout"].items()}
    panels = {
        name: Panel(
            name,
            {k: tuple(v) for k, v in (entry["when"] or {}).items()},
            tuple(tuple(row) for row in entry["rows"]),
        )
        for name, entry in raw["panels"].items()
    }
    return FormSpec(fields, layout, panels)


def _templates() -> list[str]:
    from tuneforge.templates.registry import template_names

    return template_names()


def _models() -> list[str]:
    from tuneforge.webui.models import model_names

    return model_names()


def _schedulers() -> list[str]:
    from transformers.trainer_utils import SchedulerType

    return [scheduler.value for scheduler in SchedulerType]


CHOICE_SOURCES: dict[str, Callable[[], list[str]]] = {
    "$templates": _templates,
    "$models": _models,
    "$schedulers": _schedulers,
}


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def choices_of(spec: Field, is_installed: Callable[[str], bool] = installed) -> list[str]:
    """The choices a field offers on this machine: computed ones resolved, and choices whose
    package is not installed left out."""
    if isinstance(spec.choices, str):
        return CHOICE_SOURCES[spec.choices]()
    return [
        choice
        for choice in spec.choices
        if choice not in spec.requires or is_installed(spec.requires[choice])
    ]
