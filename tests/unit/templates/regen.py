"""Rewrite the golden renderings from the current code.

Run from the repository root::

    .venv/bin/python -m tests.unit.templates.regen

then read `git diff tests/unit/templates/golden` against each family's format (LLaMA-Factory's
template.py, the model's official chat template) before accepting it: the goldens exist to catch
changes nobody meant to make. Goldens of templates that no longer exist are deleted.
"""

from __future__ import annotations

from tuneforge.templates import TEMPLATES

from .cases import CASES, GOLDEN_DIR, golden_path, render_case


def main() -> None:
    """Write every golden file and delete stale ones."""
    GOLDEN_DIR.mkdir(exist_ok=True)
    wanted = set()
    for name in TEMPLATES:
        for case_name, case in CASES.items():
            path = golden_path(name, case_name)
            wanted.add(path)
            text = render_case(name, case)
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                path.write_text(text, encoding="utf-8")
                print(f"wrote {path}")
    for path in GOLDEN_DIR.glob("*__*.txt"):
        if path not in wanted:
            path.unlink()
            print(f"deleted {path}")


if __name__ == "__main__":
    main()
