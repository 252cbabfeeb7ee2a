"""The datasets of a dataset_info.json that fit a stage, and a preview of their first rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneforge.data.catalogue import CATALOGUE_FILE, load_catalogue, resolve
from tuneforge.errors import UserError
from tuneforge.webui.locale import FormError

PREFERENCE_STAGES = ("rm", "dpo")  # these need `ranking` (chosen/rejected) datasets


def fits(entry: Any, stage: str | None) -> bool:
    """Whether a raw catalogue entry can feed `stage` (None: any stage)."""
    if not isinstance(entry, dict) or stage is None:
        return isinstance(entry, dict)
    ranking = bool(entry.get("ranking"))
    if stage in PREFERENCE_STAGES:
        return ranking
    if stage == "kto":
        return "kto_tag" in (entry.get("columns") or {})
    return not ranking


def dataset_names(dataset_dir: str, stage: str | None = None) -> list[str]:
    """Names of the catalogue's datasets that fit `stage`; none when there is no catalogue."""
    if not (Path(dataset_dir) / CATALOGUE_FILE).is_file():
        return []
    try:
        catalogue = load_catalogue(dataset_dir)
    except UserError:
        return []
    return [name for name, entry in catalogue.items() if fits(entry, stage)]


def preview_rows(dataset_dir: str, names: list[str], count: int = 3) -> dict[str, Any]:
    """The first `count` rows of each named local dataset, as stored (before any encoding).

    Raises:
        FormError: no dataset is named, or the folder has no catalogue.
        DataError: a dataset's entry or file cannot be read (the message names which).
    """
    from tuneforge.data.sources import read_path

    if not names:
        raise FormError("msg_no_dataset")
    if not (Path(dataset_dir) / CATALOGUE_FILE).is_file():
        raise FormError("msg_no_catalogue", path=dataset_dir)
    preview: dict[str, Any] = {}
    for name in names:
        spec = resolve(name, dataset_dir)
        if not spec.file_name:  # a hub dataset: reading it would mean downloading it
            preview[name] = f"{spec.where} (hub)"
            continue
        rows = read_path(Path(dataset_dir) / spec.file_name)
        preview[name] = [row.fields for row in rows[:count]]
    return preview
