"""The import rules of docs/architecture.md: each part of the package imports only the parts below it, and nothing
in the package imports a script, a benchmark or a test. Every import statement counts, also those inside functions
(the lazy imports that keep ``lgrnet --help`` fast)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "lgrnet"

# What each part of ``lgrnet`` may import from the rest of the package (besides itself). A part is a subpackage
# (``lgrnet.model``) or a top-level module (``lgrnet.config``).
FOUNDATION = {"errors", "config", "precision", "output_paths"}
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "precision": {"errors"},
    "output_paths": {"errors"},
    "config": {"errors"},
    "data": {"errors", "config"},
    "synth": {"errors", "config", "data"},
    "model": {"errors", "config", "precision"},
    "inference": FOUNDATION | {"data", "model"},
    "engine": FOUNDATION | {"data", "synth", "model"},
    "benchmark": FOUNDATION | {"data", "model", "engine"},
    "quickstart": FOUNDATION | {"data", "synth", "model", "engine", "inference"},
    "demo": FOUNDATION | {"data", "synth", "model", "inference"},
    "serve": FOUNDATION | {"data", "model", "inference"},
    "commands": FOUNDATION | {"data", "synth", "model", "engine", "inference", "benchmark", "quickstart", "demo",
                              "serve"},
    "cli": {"errors", "commands"},
    "__init__": FOUNDATION | {"model", "inference"},
}
OUTSIDE = ("scripts", "benchmarks", "tests", "conftest")


def _part(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file; relative imports resolved against the file."""
    package = ["lgrnet", *path.relative_to(PACKAGE).parent.parts]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                found.append((node.lineno, ".".join(base + ([node.module] if node.module else []))))
            elif node.module:
                found.append((node.lineno, node.module))
    return found


def _violations() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        part = _part(path)
        allowed = ALLOWED.get(part)
        if allowed is None:
            problems.append(f"{path.relative_to(PACKAGE)}: part '{part}' has no rule in ALLOWED")
            continue
        for line, module in _imports(path):
            top, _, rest = module.partition(".")
            where = f"{path.relative_to(PACKAGE)}:{line} imports {module}"
            if top in OUTSIDE:
                problems.append(f"{where} (the package must not import scripts, benchmarks or tests)")
            elif top == "lgrnet" and rest:
                target = rest.split(".")[0]
                if target != part and target not in allowed:
                    problems.append(f"{where} ('{part}' may import only {sorted(allowed)})")
    return problems


def test_every_part_imports_only_the_parts_below_it():
    assert _violations() == []


@pytest.mark.parametrize(("part", "forbidden"), [
    ("inference", "engine"), ("model", "data"), ("model", "engine"), ("data", "model"), ("data", "engine"),
])
def test_the_named_rules_are_part_of_the_table(part, forbidden):
    assert forbidden not in ALLOWED[part]


def test_the_checker_sees_a_forbidden_import(tmp_path, monkeypatch):
    """The rule check itself can fail: a model file importing the engine, also inside a function, is reported."""
    fake = tmp_path / "lgrnet"
    (fake / "model").mkdir(parents=True)
    (fake / "model" / "bad.py").write_text("def f():\n    from lgrnet.engine.train import Trainer\n")
    (fake / "model" / "relative.py").write_text("from ..data import transforms\n")
    (fake / "inference").mkdir()
    (fake / "inference" / "script.py").write_text("import scripts.mutate\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    problems = _violations()
    assert any("model/bad.py:2 imports lgrnet.engine.train" in p for p in problems)
    assert any("model/relative.py:1 imports lgrnet.data" in p for p in problems)
    assert any("inference/script.py:1 imports scripts.mutate" in p for p in problems)
    assert len(problems) == 3
