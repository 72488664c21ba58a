"""The package's layering (docs/architecture.md): a module imports from its own layer or the layers above, never
from below. Read from the source with ``ast``, so a lazy import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fixup_transformer"

# docs/architecture.md's list; every top-level module or subpackage must be in it.
LAYERS = {
    # 1. the rule and small shared helpers
    "fixup": 1,
    "errors": 1,
    "choices": 1,
    "paths": 1,
    "hardware": 1,
    "atomic_files": 1,
    # 2. models (and the package's face, which registers them)
    "__init__": 2,
    "text": 2,
    "vision": 2,
    "hub": 2,
    # 3. data, evaluation, and the probes built on models and data
    "data": 3,
    "evaluation": 3,
    "diagnostics": 3,
    "stability": 3,
    "probe_data": 3,
    # 4. training
    "training": 4,
    "convert": 4,
    # 5. commands
    "cli": 5,
    "translate": 5,
}


def component(path: Path) -> str:
    """The top-level module or subpackage a file belongs to."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported_components(path: Path) -> set[str]:
    """Top-level components of this package that ``path`` imports (relative or absolute imports)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    depth = len(path.relative_to(PACKAGE).parts) - 1  # folders between the package and the file
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            up = node.level - 1  # ``from .`` is the file's own folder
            if up > depth:
                continue
            parts = list(path.relative_to(PACKAGE).parts[: depth - up]) + (node.module or "").split(".")
            parts = [p for p in parts if p]
            if parts:
                found.add(parts[0])
            else:  # ``from .. import x`` at the package root: x is the component
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fixup_transformer."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("fixup_transformer."))
    return found


def test_every_component_has_a_layer():
    components = {component(p) for p in PACKAGE.rglob("*.py")}
    assert components - set(LAYERS) == set(), "add the new module to LAYERS and to docs/architecture.md"


def test_no_module_imports_from_a_layer_below_its_own():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = component(path)
        for target in imported_components(path) - {source}:
            if LAYERS.get(target, 0) > LAYERS[source]:
                upward.append(
                    f"{path.relative_to(PACKAGE)} (layer {LAYERS[source]}) imports {target} (layer {LAYERS[target]})"
                )
    assert upward == []


def test_the_import_reader_sees_relative_and_lazy_imports():
    # The check above passes vacuously if the reader finds nothing: pin it on real files.
    assert imported_components(PACKAGE / "paths.py") == {"errors"}
    assert {"text", "vision", "atomic_files"} <= imported_components(PACKAGE / "diagnostics.py")
    assert {"data", "errors", "evaluation", "text"} <= imported_components(PACKAGE / "training" / "mt.py")
