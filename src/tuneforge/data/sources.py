"""Reading the rows of a dataset from files (json, jsonl, csv, parquet, arrow, txt, or a
folder of them) or from the Hugging Face Hub.

Rows are plain dicts, each paired with a `Row.where` such as "data/x.json row 12" so that
later stages can point at the exact row that is wrong.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.data.catalogue import DatasetSpec
from tuneforge.errors import DataError
from tuneforge.utils.hub import hub_reachable
from tuneforge.utils.text import not_utf8

READABLE_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".arrow", ".txt")


@dataclass(frozen=True)
class Row:
    fields: dict[str, Any]
    where: str  # "file row N" (1-based)


def read_rows(
    spec: DatasetSpec, dataset_dir: str | Path, cache_dir: str | None = None
) -> list[Row]:
    """All rows of the dataset `spec` describes, in file order."""
    if spec.file_name:
        return read_path(Path(dataset_dir) / spec.file_name)
    if spec.hf_hub_url:
        return read_hub(spec, cache_dir)
    raise DataError(
        f"dataset `{spec.name}`: only local files and the Hugging Face Hub are supported; "
        f"ModelScope/Modelers ids ({spec.where}) are not yet. Download it and set `file_name`."
    )


def read_path(path: Path) -> list[Row]:
    """Rows of one file, or of every readable file in a folder (sorted by name)."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        files = [p for p in files if p.suffix.lower() in READABLE_SUFFIXES]
        if not files:
            raise DataError(
                f"folder {path} holds no readable data files ({', '.join(READABLE_SUFFIXES)})."
            )
        suffixes = {p.suffix.lower() for p in files}
        if len(suffixes) > 1:
            raise DataError(
                f"folder {path} mixes file types ({', '.join(sorted(suffixes))}); "
                "keep one type per dataset folder."
            )
        return [row for file in files for row in read_file(file)]
    if not path.exists():
        raise DataError(f"data file {path} does not exist (check `file_name` and `dataset_dir`).")
    return read_file(path)


def read_file(path: Path) -> list[Row]:
    suffix = path.suffix.lower()
    readers = {
        ".json": _read_json,
        ".jsonl": _read_jsonl,
        ".csv": _read_csv,
        ".parquet": _read_parquet,
        ".arrow": _read_arrow,
        ".txt": _read_txt,
    }
    if suffix not in readers:
        raise DataError(
            f"{path}: cannot read `{suffix or 'no suffix'}` files; "
            f"use one of {', '.join(READABLE_SUFFIXES)}."
        )
    try:
        rows = [Row(fields, f"{path} row {number}") for number, fields in readers[suffix](path)]
    except UnicodeDecodeError:
        raise DataError(f"data file {path} is not UTF-8 text: {not_utf8(path)}.") from None
    for row in rows:
        if not isinstance(row.fields, dict):
            raise DataError(f"{row.where}: expected an object, got {type(row.fields).__name__}.")
    return rows


def _read_json(path: Path) -> Iterator[tuple[int, Any]]:
    text = path.read_text(encoding="utf-8")
    if not text.lstrip().startswith("["):
        # Hugging Face's json loader also accepts JSON lines in a .json file.
        yield from _parse_json_lines(path, text)
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(
            f"{path}: not valid JSON at line {error.lineno}, column {error.colno}: {error.msg}."
        ) from None
    yield from enumerate(data, start=1)


def _read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    yield from _parse_json_lines(path, path.read_text(encoding="utf-8"))


def _parse_json_lines(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(
                f"{path} row {number}: not valid JSON at column {error.colno}: {error.msg}."
            ) from None


def _read_csv(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open(encoding="utf-8", newline="") as handle:
        # Row numbers count data rows, the header excluded.
        yield from enumerate(csv.DictReader(handle), start=1)


def _read_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path}: not a readable parquet file ({error}).") from None
    yield from enumerate(table.to_pylist(), start=1)


def _read_arrow(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow as pa

    # `datasets` writes the IPC stream format; plain Arrow files use the file format.
    for opener in (pa.ipc.open_stream, pa.ipc.open_file):
        try:
            with pa.memory_map(str(path)) as source:
                table = opener(source).read_all()
            break
        except pa.ArrowInvalid:
            continue
    else:
        raise DataError(f"{path}: not a readable Arrow file (neither IPC stream nor file format).")
    yield from enumerate(table.to_pylist(), start=1)


def _read_txt(path: Path) -> Iterator[tuple[int, Any]]:
    # One document per line, in a `text` column, as Hugging Face's text loader does.
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield number, {"text": line.rstrip("\n")}


def read_hub(spec: DatasetSpec, cache_dir: str | None) -> list[Row]:
    """Rows of a Hugging Face Hub dataset; fails fast and clearly when the Hub is unreachable."""
    import datasets

    where = f"dataset `{spec.name}` (hf_hub_url: {spec.hf_hub_url})"
    try:
        # A copy already in the cache loads without network.
        loaded = _load_hub(spec, cache_dir, offline=True)
    except Exception:
        if not hub_reachable():
            raise DataError(
                f"{where} lives on the Hugging Face Hub, which cannot be reached from this "
                "machine (offline?). Download it elsewhere, copy the files into dataset_dir "
                "and set `file_name` in dataset_info.json."
            ) from None
        try:
            loaded = _load_hub(spec, cache_dir, offline=False)
        except (datasets.exceptions.DatasetNotFoundError, FileNotFoundError, ValueError) as error:
            raise DataError(f"{where} could not be loaded: {error}") from None
    return [Row(dict(fields), f"{spec.hf_hub_url} row {n}") for n, fields in enumerate(loaded, 1)]


def _load_hub(spec: DatasetSpec, cache_dir: str | None, offline: bool):
    import datasets
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = previous or offline
    try:
        return datasets.load_dataset(
            spec.hf_hub_url,
            name=spec.subset,
            data_dir=spec.folder,
            split=spec.split,
            cache_dir=cache_dir,
        )
    finally:
        constants.HF_HUB_OFFLINE = previous
