"""Every `pip install 'tuneforge[NAME]'` that the code (or the docs) tells users to run names an
extra that pyproject.toml defines."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 has no tomllib; tomli is its backport
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[2]
# `tuneforge[web]`, `tuneforge[api, web]`: extra names are letters, digits and . _ -
MENTION = re.compile(r"tuneforge\[([A-Za-z0-9._\-,\s]+)\]")


def _normalized(name: str) -> str:
    """PEP 685: extras compare as their PEP 503 normalized names."""
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def _defined_extras() -> set[str]:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        project = tomllib.load(handle)["project"]
    return {_normalized(name) for name in project.get("optional-dependencies", {})}


def _scanned_files() -> list[Path]:
    return [
        *sorted((ROOT / "src" / "tuneforge").rglob("*.py")),
        ROOT / "README.md",
        *sorted((ROOT / "docs").rglob("*.md")),
    ]


def _mentions() -> list[tuple[str, str]]:
    """(file:line, extra) for every extra named anywhere in the scanned files."""
    found = []
    for path in _scanned_files():
        if not path.is_file():
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            for match in MENTION.finditer(line):
                where = f"{path.relative_to(ROOT)}:{number}"
                found += [(where, name.strip()) for name in match.group(1).split(",")]
    return found


def test_the_scan_sees_the_known_mentions():
    names = {_normalized(name) for _, name in _mentions()}
    assert {"flash-attn", "web", "vllm", "qlora"} <= names


def test_every_mentioned_extra_is_defined_in_pyproject():
    defined = _defined_extras()
    missing = [
        f"{where}: tuneforge[{name}]"
        for where, name in _mentions()
        if _normalized(name) not in defined
    ]
    assert not missing, (
        "extras named in the code or docs but not in [project.optional-dependencies] of "
        f"pyproject.toml (defined: {', '.join(sorted(defined))}):\n" + "\n".join(missing)
    )


@pytest.mark.parametrize(("flash_attn", "points_at_extra"), [("fa2", True), ("fa3", False)])
def test_the_flash_attention_messages(monkeypatch, flash_attn: str, points_at_extra: bool):
    from tuneforge.errors import ConfigError
    from tuneforge.models import attention

    monkeypatch.setattr(attention, "_installed", lambda package: False)
    with pytest.raises(ConfigError) as error:
        attention.attention_implementation(flash_attn, "cuda")
    message = str(error.value)
    assert ("tuneforge[flash-attn]" in message) is points_at_extra
    if not points_at_extra:  # FlashAttention-3 has no PyPI wheel: built from the repo
        assert "flash_attn_interface" in message and "hopper" in message
