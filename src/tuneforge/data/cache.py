"""The on-disk cache of encoded datasets.

An encoding run is keyed by a hash of everything that affects its output: the dataset entries
and the size/mtime of their files, the template, the tokenizer, the data options and the
source code of the encoding modules themselves (so a code change never serves stale data).
Those modules are not listed by hand: they are the tuneforge modules that the encoding entry
points import, directly or not, read from the source with `ast`.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# What can change an encoding: the pipeline (reading, converting, mixing, encoding) and the
# templates, whose objects the pipeline is handed and calls without importing them.
ENCODING_ROOTS = ("tuneforge.data.pipeline", "tuneforge.templates")
REPORT_FILE = "report.json"


def default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tuneforge" / "datasets"


def _module_file(package_dir: Path, module: str) -> Path | None:
    """The source file of `module` (dotted, starting with the package's name), if it has one."""
    parts = module.split(".")[1:]
    for candidate in (
        package_dir.joinpath(*parts, "__init__.py"),
        package_dir.joinpath(*parts).with_suffix(".py") if parts else None,
    ):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth (functions too), except under `if TYPE_CHECKING:`,
    which never runs."""
    found: list[ast.Import | ast.ImportFrom] = []
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If) and _is_type_checking(node):
            pending.extend(node.orelse)
            continue
        pending.extend(ast.iter_child_nodes(node))
    return found


def _imported_modules(module: str, source: str, is_package: bool, package: str) -> set[str]:
    """The dotted names `source` (the code of `module`) may import inside `package`: for
    `from a import b` both `a` and `a.b`, since `b` may be a submodule."""
    names: set[str] = set()
    for node in _imports(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:  # relative: counted from the package that holds `module`
            anchor = module.split(".")
            anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
            base = ".".join([*anchor, base] if base else anchor)
        names.add(base)
        names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return {name for name in names if name == package or name.startswith(package + ".")}


def encoding_files(package_dir: Path, roots: tuple[str, ...]) -> list[Path]:
    """The source files of the modules of the package in `package_dir` (named after the folder)
    that importing `roots` runs: their imports' transitive closure, with the packages that hold
    each module (their `__init__.py` runs first). Sorted by path."""
    package = package_dir.name
    seen: dict[str, Path] = {}
    pending = list(roots)
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        path = _module_file(package_dir, module)
        if path is None:  # `from pkg import name` where name is not a module
            continue
        seen[module] = path
        parents = [".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)]
        is_package = path.name == "__init__.py"
        source = path.read_text(encoding="utf-8")
        pending += parents + sorted(_imported_modules(module, source, is_package, package))
    return sorted(set(seen.values()))


def code_fingerprint(package_dir: Path, roots: tuple[str, ...]) -> str:
    """A hash of the source of every file `encoding_files` finds, paths included (moving code
    between modules changes it too)."""
    digest = hashlib.sha256()
    for path in encoding_files(package_dir, roots):
        content = path.read_bytes()
        name = path.relative_to(package_dir).as_posix().encode()
        digest.update(b"%d:%s%d:" % (len(name), name, len(content)) + content)
    return digest.hexdigest()


@functools.cache
def _code_fingerprint() -> str:
    """This installation's encoding code, hashed once per process."""
    return code_fingerprint(Path(__file__).resolve().parent.parent, ENCODING_ROOTS)


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
