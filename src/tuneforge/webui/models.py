"""Known model families (models.yaml): the web workbench's model-name list, each name's hub id
and the chat template its family uses."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml


@dataclass(frozen=True)
class ModelFamily:
    family: str
    template: str
    match: tuple[str, ...]  # lower-case prefixes of model names in this family
    models: dict[str, str]  # model name -> hub id


@functools.cache
def model_families() -> tuple[ModelFamily, ...]:
    """The families of models.yaml, in file order."""
    text = resources.files("tuneforge.webui").joinpath("models.yaml").read_text(encoding="utf-8")
    return tuple(
        ModelFamily(entry["family"], entry["template"], tuple(entry["match"]), entry["models"])
        for entry in yaml.safe_load(text)["families"]
    )


def model_names() -> list[str]:
    """Every known model name, family by family."""
    return [name for family in model_families() for name in family.models]


def hub_id(model_name: str) -> str | None:
    """The hub id of a known model name, else None."""
    for family in model_families():
        if model_name in family.models:
            return family.models[model_name]
    return None


def suggested_template(model_name: str) -> str | None:
    """The chat template of the family that `model_name` (or a path ending in it) belongs to."""
    name = Path(model_name.rstrip("/")).name.lower()
    for family in model_families():
        if any(name == known.lower() for known in family.models):
            return family.template
    for family in model_families():
        if any(name.startswith(prefix) for prefix in family.match):
            return family.template
    return None
