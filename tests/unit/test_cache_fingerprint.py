"""The encoding cache's code fingerprint: which modules it covers, and what changes it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import tuneforge
from tuneforge.data import cache

PACKAGE_DIR = Path(tuneforge.__file__).resolve().parent


def _names(package_dir: Path, roots: tuple[str, ...]) -> set[str]:
    return {p.relative_to(package_dir).as_posix() for p in cache.encoding_files(package_dir, roots)}


def test_the_derived_modules_cover_encoding_and_nothing_of_training():
    names = _names(PACKAGE_DIR, cache.ENCODING_ROOTS)
    templates = {p.relative_to(PACKAGE_DIR).as_posix() for p in PACKAGE_DIR.glob("templates/*.py")}
    expected = {"data/pipeline.py", "data/encode.py", "data/example.py", "data/formats.py"}
    assert expected | templates <= names
    for name in names:
        assert name.split("/")[0] not in ("training", "serving", "stages", "models", "cli"), name


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    """A copy of the installed package's sources, to edit without touching the real files."""
    copy = tmp_path / "tuneforge"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_the_copy_hashes_as_the_package_does(package_copy: Path):
    assert cache.code_fingerprint(package_copy, cache.ENCODING_ROOTS) == cache._code_fingerprint()


@pytest.mark.parametrize(
    ("module", "changes"),
    [
        ("data/example.py", True),
        ("templates/base.py", True),
        ("utils/hub.py", True),  # read_rows checks that the Hub is reachable
        ("training/trainer.py", False),
        ("serving/app.py", False),
    ],
)
def test_a_source_change_changes_the_fingerprint_only_inside_the_closure(
    package_copy: Path, module: str, changes: bool
):
    before = cache.code_fingerprint(package_copy, cache.ENCODING_ROOTS)
    path = package_copy / module
    path.write_text(path.read_text(encoding="utf-8") + "\nX = 1\n", encoding="utf-8")
    after = cache.code_fingerprint(package_copy, cache.ENCODING_ROOTS)
    assert (after != before) is changes


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")


def test_every_kind_of_import_is_followed(tmp_path: Path):
    package = tmp_path / "toy"
    _write(
        package,
        {
            "__init__.py": "",
            "sub/__init__.py": "from . import helper\n",  # relative, of a submodule
            "sub/helper.py": "from ..leaf import VALUE\n",  # relative, two levels up
            "sub/entry.py": (
                "from toy.sub import sibling\n"  # `from package import module`
                "def run():\n    import toy.lazy\n"  # inside a function
            ),
            "sub/sibling.py": "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from toy import typing_only\n",
            "leaf.py": "import json\nVALUE = 1\n",  # outside the package: not followed
            "lazy.py": "",
            "typing_only.py": "",  # never runs, so not covered
            "unrelated.py": "",
        },
    )
    assert _names(package, ("toy.sub.entry",)) == {
        "__init__.py",
        "sub/__init__.py",
        "sub/helper.py",
        "sub/entry.py",
        "sub/sibling.py",
        "leaf.py",
        "lazy.py",
    }


def test_moving_code_between_modules_changes_the_fingerprint(tmp_path: Path):
    package = tmp_path / "toy"
    _write(package, {"__init__.py": "from toy import a, b\n", "a.py": "X = 1\n", "b.py": ""})
    before = cache.code_fingerprint(package, ("toy",))
    _write(package, {"a.py": "", "b.py": "X = 1\n"})
    assert cache.code_fingerprint(package, ("toy",)) != before


def test_the_fingerprint_is_computed_once_per_process():
    cache._code_fingerprint()
    hits = cache._code_fingerprint.cache_info().hits
    cache.cache_key({"a": 1})
    assert cache._code_fingerprint.cache_info().hits == hits + 1
