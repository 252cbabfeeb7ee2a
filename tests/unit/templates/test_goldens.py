"""Every template renders every case exactly as its golden file says.

Goldens mark trained spans with ⟦ ⟧. After an intended change, regenerate them with
`.venv/bin/python -m tests.unit.templates.regen` and review the diff.
"""

from __future__ import annotations

import pytest

from tuneforge.templates import TEMPLATES

from .cases import CASES, GOLDEN_DIR, golden_path, render_case

_REGEN = "regenerate with `.venv/bin/python -m tests.unit.templates.regen` and review the diff"


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_golden(name: str, case: str) -> None:
    path = golden_path(name, case)
    assert path.exists(), f"missing golden {path.name}: {_REGEN}"
    expected = path.read_text(encoding="utf-8")
    actual = render_case(name, CASES[case])
    assert actual == expected, f"{name}/{case} differs from {path.name}; if intended, {_REGEN}"


def test_no_stale_goldens() -> None:
    wanted = {golden_path(name, case).name for name in TEMPLATES for case in CASES}
    stale = sorted(p.name for p in GOLDEN_DIR.glob("*__*.txt") if p.name not in wanted)
    assert not stale, f"goldens without a template: {stale}; {_REGEN}"
