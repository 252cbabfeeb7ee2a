"""The `dataset_info.json` catalogue, in LLaMA-Factory's schema.

Each entry names where a dataset lives (a local file or folder, or a hub repository), its
format (alpaca | sharegpt | openai), whether it holds preference pairs (`ranking`), and how
its columns and role tags are called. Unknown keys are errors, never ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from tuneforge.errors import DataError
from tuneforge.utils.suggest import did_you_mean, unknown_name
from tuneforge.utils.text import not_utf8

CATALOGUE_FILE = "dataset_info.json"
ONLINE = "ONLINE"  # LLaMA-Factory's dataset_dir value for "dataset names are hub ids"

Formatting = Literal["alpaca", "sharegpt", "openai"]
MEDIA_COLUMNS = ("images", "videos", "audios")


@dataclass(frozen=True)
class Columns:
    """Which field of a row holds what. Defaults depend on the formatting (see `_defaults`)."""

    prompt: str | None = None
    query: str | None = None
    response: str | None = None
    history: str | None = None
    messages: str | None = None
    system: str | None = None
    tools: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    kto_tag: str | None = None


@dataclass(frozen=True)
class Tags:
    """How roles are spelled inside sharegpt messages."""

    role_tag: str = "from"
    content_tag: str = "value"
    user_tag: str = "human"
    assistant_tag: str = "gpt"
    observation_tag: str = "observation"
    function_tag: str = "function_call"
    system_tag: str = "system"


OPENAI_TAGS = Tags("role", "content", "user", "assistant", "tool", "function_call", "system")


@dataclass(frozen=True)
class DatasetSpec:
    """One resolved catalogue entry."""

    name: str
    file_name: str | None = None  # a file or folder under dataset_dir
    hf_hub_url: str | None = None
    ms_hub_url: str | None = None
    om_hub_url: str | None = None
    cloud_file_name: str | None = None
    formatting: Formatting = "alpaca"
    ranking: bool = False
    subset: str | None = None
    split: str = "train"
    folder: str | None = None
    num_samples: int | None = None
    columns: Columns = field(default_factory=Columns)
    tags: Tags = field(default_factory=Tags)

    @property
    def where(self) -> str:
        """Where the data lives, for messages."""
        return self.file_name or self.hf_hub_url or self.ms_hub_url or self.om_hub_url or "?"


_ENTRY_KEYS = {f.name for f in fields(DatasetSpec)} - {"name"}
_COLUMN_KEYS = {f.name for f in fields(Columns)}
_TAG_KEYS = {f.name for f in fields(Tags)}


def _defaults(formatting: str) -> tuple[Columns, Tags]:
    if formatting == "alpaca":
        return Columns(prompt="instruction", query="input", response="output"), Tags()
    if formatting == "openai":
        return Columns(messages="messages"), OPENAI_TAGS
    return Columns(messages="conversations"), Tags()


def load_catalogue(dataset_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Reads `dataset_dir/dataset_info.json` as raw entries."""
    path = Path(dataset_dir) / CATALOGUE_FILE
    try:
        found = path.is_file()
    except OSError:  # a name too long for the file system, say
        found = False
    if not found:
        raise DataError(
            f"no {CATALOGUE_FILE} in dataset_dir `{dataset_dir}` ({path.resolve()} does not "
            "exist). Set `dataset_dir` to the folder that holds it."
        )
    try:
        with path.open(encoding="utf-8") as handle:
            catalogue = json.load(handle)
    except json.JSONDecodeError as error:
        raise DataError(
            f"{path}: not valid JSON at line {error.lineno}, column {error.colno}: {error.msg}."
        ) from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text: {not_utf8(path)}.") from None
    if not isinstance(catalogue, dict):
        raise DataError(f"{path}: expected a JSON object mapping dataset names to entries.")
    return catalogue


def resolve(name: str, dataset_dir: str | Path) -> DatasetSpec:
    """Looks `name` up in the catalogue of `dataset_dir` and validates its entry."""
    if str(dataset_dir) == ONLINE:
        return DatasetSpec(name=name, hf_hub_url=name)
    catalogue = load_catalogue(dataset_dir)
    if name not in catalogue:
        raise DataError(
            f"dataset `{name}` is not in {Path(dataset_dir) / CATALOGUE_FILE}: "
            + unknown_name("dataset", name, catalogue)
        )
    return parse_entry(name, catalogue[name], Path(dataset_dir) / CATALOGUE_FILE)


def parse_entry(name: str, entry: Any, source: Path | str) -> DatasetSpec:
    """Validates one raw catalogue entry and fills in LLaMA-Factory's defaults."""
    where = f"{source}, dataset `{name}`"
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object, got {type(entry).__name__}.")
    _check_keys(entry, _ENTRY_KEYS, where)
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt", "openai"):
        raise DataError(
            f"{where}: formatting {formatting!r} is not supported; use alpaca, sharegpt or openai."
        )
    columns, tags = _defaults(formatting)
    raw_columns = entry.get("columns") or {}
    media = sorted(set(raw_columns) & set(MEDIA_COLUMNS))
    if media:
        raise DataError(
            f"{where}: multimodal columns ({', '.join(media)}) are not supported yet; "
            "tuneforge trains on text datasets."
        )
    _check_keys(raw_columns, _COLUMN_KEYS, f"{where}, `columns`")
    _check_keys(entry.get("tags") or {}, _TAG_KEYS, f"{where}, `tags`")
    columns = replace(columns, **raw_columns)
    tags = replace(tags, **(entry.get("tags") or {}))
    if not any(entry.get(key) for key in ("file_name", "hf_hub_url", "ms_hub_url", "om_hub_url")):
        if entry.get("cloud_file_name"):
            raise DataError(f"{where}: cloud_file_name (S3/GCS) is not supported yet.")
        raise DataError(f"{where}: needs `file_name` (a local file or folder) or `hf_hub_url`.")
    if entry.get("ranking") is True and not (columns.chosen and columns.rejected):
        # no default names exist: rows would otherwise read as pairs of empty responses
        raise DataError(
            f"{where}: a ranking dataset names the columns of its two responses; add "
            '`"columns": {"chosen": ..., "rejected": ...}` to its entry.'
        )
    plain = {k: v for k, v in entry.items() if k not in ("columns", "tags")}
    for key, value in plain.items():
        expected = _ENTRY_TYPES.get(key, str)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise DataError(f"{where}: `{key}` must be {_TYPE_NAMES[expected]}, got {value!r}.")
    return DatasetSpec(name=name, columns=columns, tags=tags, **plain)


_ENTRY_TYPES: dict[str, type] = {"ranking": bool, "num_samples": int}
_TYPE_NAMES = {bool: "true or false", int: "an integer", str: "a string"}


def _check_keys(mapping: dict[str, Any], allowed: set[str], where: str) -> None:
    if not isinstance(mapping, dict):
        raise DataError(f"{where}: expected an object.")
    for key in mapping:
        if key not in allowed:
            raise DataError(
                f"{where}: unknown key `{key}`.{did_you_mean(key, allowed)} "
                f"Allowed: {', '.join(sorted(allowed))}."
            )
