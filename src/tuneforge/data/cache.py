"""The on-disk cache of encoded datasets.

An encoding run is keyed by a hash of everything that affects its output: the dataset entries
and the size/mtime of their files, the template, the tokenizer, the data options and the
source code of the encoding modules themselves (so a code change never serves stale data).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CODE_MODULES = (
    "data/catalogue.py",
    "data/formats.py",
    "data/mixing.py",
    "data/encode.py",
    "data/sources.py",
    "data/pipeline.py",
)
REPORT_FILE = "report.json"


def default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tuneforge" / "datasets"


def _code_fingerprint() -> str:
    package = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    files = [package / name for name in CODE_MODULES]
    files += sorted((package / "templates").glob("*.py"))
    for path in files:
        if path.exists():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def file_fingerprints(paths: Iterable[Path]) -> list[tuple[str, int, int]]:
    """(path, size, mtime) of every file under `paths`: cheap, and changes with the content."""
    found = []
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if file.exists():
                stat = file.stat()
                found.append((str(file.resolve()), stat.st_size, stat.st_mtime_ns))
    return found


def tokenizer_fingerprint(tokenizer: Any) -> str:
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:  # slow tokenizers: the vocabulary stands for the whole
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(repr(sorted(tokenizer.special_tokens_map.items())).encode())
    digest.update(str(getattr(tokenizer, "chat_template", None)).encode())
    return digest.hexdigest()


def cache_key(parts: dict[str, Any]) -> str:
    """A short, stable hash of `parts` (JSON-serialisable) and of the encoding code."""
    payload = json.dumps({**parts, "code": _code_fingerprint()}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def save(folder: Path, splits: dict[str, Any], report: dict[str, Any]) -> None:
    """Writes `splits` (name -> datasets.Dataset) and the report atomically: a crash midway
    leaves no folder that a later run would take for a complete cache."""
    import datasets

    datasets.disable_progress_bars()  # a progress bar per save says nothing useful here
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        for name, dataset in splits.items():
            dataset.save_to_disk(str(staging / name))
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=1), encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load(folder: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The splits and report saved in `folder`, or None when there is no complete cache."""
    import datasets

    report_path = folder / REPORT_FILE
    if not report_path.is_file():
        return None
    report = json.loads(report_path.read_text(encoding="utf-8"))
    splits = {
        path.name: datasets.load_from_disk(str(path))
        for path in sorted(folder.iterdir())
        if path.is_dir()
    }
    return splits, report
