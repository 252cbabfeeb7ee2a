"""Where the workbench keeps runs: `<saves>/<model name>/<method>/<run>`, LLaMA-Factory's
layout, and the checks on paths typed into the page."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tuneforge.webui.locale import FormError

# Files that make a folder a loadable run (an adapter, or full weights).
RUN_MARKERS = ("adapter_config.json", "config.json")
ARGS_FOLDER = "configs"
JOBS_FOLDER = "webui_jobs"


@dataclass(frozen=True)
class Saves:
    """The saves folder the page lists runs from and writes new runs into."""

    root: Path

    def method_dir(self, model: str, method: str) -> Path:
        return self.root / folder_name(model) / method

    def runs(self, model: str, method: str) -> list[str]:
        """Names of the finished runs (folders with weights or an adapter), newest first."""
        folder = self.method_dir(model, method)
        if not folder.is_dir():
            return []
        found = [p for p in folder.iterdir() if p.is_dir() and is_run(p)]
        return [p.name for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]

    def run_path(self, model: str, method: str, name: str) -> Path:
        """A run name resolves under the method folder; anything path-like stays as it is."""
        return (
            Path(name).expanduser() if is_path_like(name) else self.method_dir(model, method) / name
        )

    def args_path(self, name: str) -> Path:
        path = Path(name).expanduser() if is_path_like(name) else self.root / ARGS_FOLDER / name
        return path if path.suffix in (".yaml", ".yml") else path.with_suffix(".yaml")

    def job_dir(self, kind: str) -> Path:
        """A fresh folder for a job that has no output dir of its own to hold its files."""
        return self.root / JOBS_FOLDER / timestamped(kind)


def is_run(folder: Path) -> bool:
    return any((folder / marker).is_file() for marker in RUN_MARKERS)


def is_path_like(text: str) -> bool:
    return "/" in text or "\\" in text or text.startswith(("~", "."))


def folder_name(model: str) -> str:
    """A model name or path as one folder name (its last component, unsafe characters as _)."""
    name = Path(model.strip().rstrip("/\\")).name or "model"
    return re.sub(r"[^\w.\-]+", "_", name)


def timestamped(prefix: str) -> str:
    return f"{prefix}_{datetime.now():%Y-%m-%d-%H-%M-%S}"


def looks_like_hub_id(text: str) -> bool:
    """`org/name` with hub-legal characters, and not a relative path that exists."""
    return bool(re.fullmatch(r"[\w.\-]+/[\w.\-]+", text)) and not Path(text).exists()


def check_model_path(path: str) -> None:
    """A local model folder must exist; anything else must read as a hub id."""
    if not path.strip():
        raise FormError("msg_no_model_path")
    if Path(path).expanduser().exists() or looks_like_hub_id(path):
        return
    raise FormError("msg_path_missing", what="what_model", path=path)


def check_existing(path: str | Path, what: str) -> Path:
    """`path` as a Path, if it exists; `what` names it (a locale entry) in the error."""
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise FormError("msg_path_missing", what=what, path=str(resolved))
    return resolved


def check_folder(path: Path) -> Path:
    """`path` may be created or is a folder already."""
    if path.exists() and not path.is_dir():
        raise FormError("msg_not_a_folder", path=str(path))
    return path
