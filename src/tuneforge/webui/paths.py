"""Where the workbench keeps runs: `<saves>/<model name>/<method>/<run>`, LLaMA-Factory's
layout, and the checks on names and paths typed into the page.

Typed text is data, never structure: a run name (or an argument file's name) is one plain
folder entry (`check_name`), and a path typed in is checked by `check_path` and `inside`, so that
nothing the page writes lands outside the saves folder unless the user asked for that path.
"""

from __future__ import annotations

import re
import unicodedata
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
        return self.root / folder_name(model) / check_name(method, "finetuning_type")

    def runs(self, model: str, method: str) -> list[str]:
        """Names of the finished runs (folders with weights or an adapter), newest first."""
        folder = self.method_dir(model, method)
        if not folder.is_dir():
            return []
        found = [p for p in folder.iterdir() if p.is_dir() and is_run(p)]
        return [p.name for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]

    def run_path(self, model: str, method: str, name: str, what: str = "what_run_name") -> Path:
        """The folder of the run `name` (a plain name, see `check_name`) under the method folder."""
        return self.method_dir(model, method) / check_name(name, what)

    def checkpoint_path(self, model: str, method: str, text: str) -> Path:
        """A checkpoint to read: a run's name, or a path typed in (its existence is checked
        with the rest of the run's paths)."""
        if is_path_like(text):
            return check_path(text, "what_checkpoint")
        return self.run_path(model, method, text, "what_checkpoint")

    def output_path(self, text: str, what: str) -> Path:
        """An explicit folder to write into: absolute, or relative and under the saves folder;
        not a file."""
        path = check_path(text, what)
        if not path.is_absolute() and not inside(path, self.root):
            raise FormError("msg_output_outside", what=what, path=text, root=str(self.root))
        return check_folder(path)

    def args_path(self, text: str, allow_outside: bool = False) -> Path:
        """An argument file: a name in the saves folder's configs/, or a path inside it; a path
        elsewhere only when `allow_outside` (the user ticked the page's confirmation)."""
        folder = self.root / ARGS_FOLDER
        if is_path_like(text):
            path = check_path(text, "what_args")
        else:
            path = folder / check_name(text, "what_args")
        if path.suffix not in (".yaml", ".yml"):
            path = path.with_name(f"{path.name}.yaml")
        if not allow_outside and not inside(path, folder):
            raise FormError("msg_args_outside", path=str(path), folder=str(folder))
        return path

    def job_dir(self, kind: str) -> Path:
        """A fresh folder for a job that has no output dir of its own to hold its files."""
        return self.root / JOBS_FOLDER / timestamped(kind)


def is_run(folder: Path) -> bool:
    return any((folder / marker).is_file() for marker in RUN_MARKERS)


def is_path_like(text: str) -> bool:
    return "/" in text or "\\" in text or text.startswith(("~", "."))


def has_control(text: str) -> bool:
    """Control characters (newlines, tabs, NUL ...) and Unicode line or paragraph breaks."""
    return any(unicodedata.category(char) in ("Cc", "Zl", "Zp") for char in text)


def check_name(text: str, what: str) -> str:
    """`text` (stripped), if it names one entry of a folder: not empty, no control character,
    no path separator, not starting with a dot (so neither `..` nor a hidden file).

    Raises:
        FormError: saying which rule `text` breaks; `what` (a locale entry) names the field.
    """
    name = (text or "").strip()
    if not name:
        raise FormError("msg_name_empty", what=what)
    if has_control(name):
        raise FormError("msg_name_control", what=what, value=name)
    if "/" in name or "\\" in name:
        raise FormError("msg_name_separator", what=what, value=name)
    if name.startswith("."):
        raise FormError("msg_name_dot", what=what, value=name)
    return name


def check_path(text: str, what: str) -> Path:
    """`text` (stripped, `~` expanded) as a Path, if it is not empty and has no control
    character; where it may point is for the caller to decide (`inside`)."""
    path = (text or "").strip()
    if not path:
        raise FormError("msg_name_empty", what=what)
    if has_control(path):
        raise FormError("msg_name_control", what=what, value=path)
    return Path(path).expanduser()


def inside(path: Path, folder: Path) -> bool:
    """Whether `path` resolves (links and `..` followed) to `folder` or below it."""
    return path.expanduser().resolve().is_relative_to(folder.expanduser().resolve())


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
