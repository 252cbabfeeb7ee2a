"""Imports flow downward: each package of src/tuneforge imports only from the layers below its
own (docs/architecture.md, "Layers"). Every import counts: module-level, inside functions, and
under TYPE_CHECKING, since each is a dependency the next engineer has to reason about."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "src" / "tuneforge"

# Bottom to top, as docs/architecture.md draws them. A package may import from any layer below
# its own, never from its own layer's other packages, never upward. `tuneforge` is the package
# root (__init__.py: the version).
LAYERS: list[set[str]] = [
    {"tuneforge", "errors", "utils"},
    {"config"},
    {"data", "evaluation"},
    {"templates"},
    {"models", "adapters"},
    {"training"},
    {"stages", "inference", "export"},
    {"serving", "webui", "demo"},
    {"cli"},
    {"__main__"},
]
LAYER_OF = {name: index for index, layer in enumerate(LAYERS) for name in layer}


def unit_of(path: Path, package: Path = PACKAGE) -> str:
    """The package (or top-level module) a file of the tuneforge package belongs to."""
    parts = path.relative_to(package).with_suffix("").parts
    return "tuneforge" if parts == ("__init__",) else parts[0]


def imported_units(path: Path) -> list[tuple[int, str]]:
    """(line, imported package) for every tuneforge import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "tuneforge":
                found.append((node.lineno, parts[1] if len(parts) > 1 else "tuneforge"))
    return found


def layering_violations(package: Path = PACKAGE) -> list[str]:
    problems = []
    for path in sorted(package.rglob("*.py")):
        unit = unit_of(path, package)
        for line, target in imported_units(path):
            if target == unit:
                continue
            where = f"{path.relative_to(package.parent)}:{line}"
            if unit not in LAYER_OF or target not in LAYER_OF:
                problems.append(f"{where}: `{unit}` or `{target}` has no layer; add it")
            elif LAYER_OF[target] >= LAYER_OF[unit]:
                direction = "upward" if LAYER_OF[target] > LAYER_OF[unit] else "sideways"
                problems.append(f"{where}: {unit} imports {target} ({direction})")
    return problems


def test_imports_flow_downward():
    problems = layering_violations()
    assert not problems, "imports against the layers of docs/architecture.md:\n" + "\n".join(
        problems
    )


def test_every_package_has_a_layer():
    units = {unit_of(path) for path in PACKAGE.rglob("*.py")}
    assert units <= set(LAYER_OF), f"packages with no layer: {sorted(units - set(LAYER_OF))}"


def test_an_upward_import_is_caught(tmp_path):
    package = tmp_path / "tuneforge"
    (package / "models").mkdir(parents=True)
    (package / "training").mkdir()
    (package / "models" / "value_head.py").write_text(
        "def scores():\n    from tuneforge.training.loss import token_losses\n"
    )
    (package / "training" / "loss.py").write_text("from tuneforge.models import value_head\n")
    assert layering_violations(package) == [
        "tuneforge/models/value_head.py:2: models imports training (upward)"
    ]
