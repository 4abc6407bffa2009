"""The layout's rules, read from the source: which package may import which, and how long a
function or class may grow. (The architecture: docs/architecture.md.)"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "augment"
MAX_FUNCTION_LINES, MAX_CLASS_LINES = 60, 200


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = ast.parse(path.read_text(encoding="utf-8"))
    return found


def _imports(module: str, tree: ast.Module, is_package: bool) -> set[str]:
    """Every module ``module`` imports, relative imports made absolute (imports inside
    functions count: a lazy import is still an import)."""
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # `from . import x` may name a module: count it as one
            found.update(f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in MODULES)
    return found


MODULES = _modules()
IMPORTS = {
    name: _imports(name, tree, (PACKAGE.parent / name.replace(".", "/") / "__init__.py").is_file())
    for name, tree in MODULES.items()
}


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_four_packages_exist_and_hold_the_modules() -> None:
    packages = {name.split(".")[1] for name in MODULES if name.count(".") >= 2}
    assert packages == {"io", "pipeline", "outputs", "engines"}
    top = sorted(name for name in MODULES if name.count(".") == 1 and name.split(".")[1] not in packages)
    assert top == ["augment.__main__", "augment.api", "augment.cli", "augment.config", "augment.data", "augment.errors"]


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("augment.io", "augment.pipeline"), ("augment.outputs", "augment.engines")],
)
def test_a_package_does_not_import_what_it_must_not(package: str, forbidden: str) -> None:
    offending = {
        f"{module} imports {target}"
        for module, targets in IMPORTS.items()
        if _within(module, package)
        for target in targets
        if _within(target, forbidden)
    }
    assert not offending


def test_the_engines_import_only_torch() -> None:
    # The standard library, torch and each other: no file I/O library, no other augment package.
    # (torchvision is torch's model zoo: googlenet.py builds GoogLeNet's layers from it.)
    allowed_third_party = {"torch", "torchvision"}
    offending = set()
    for module, targets in IMPORTS.items():
        if not _within(module, "augment.engines"):
            continue
        for target in targets:
            top = target.split(".")[0]
            if top == "augment" and not _within(target, "augment.engines"):
                offending.add(f"{module} imports {target}")
            elif top != "augment" and top not in sys.stdlib_module_names and top not in allowed_third_party:
                offending.add(f"{module} imports {target}")
    assert not offending
    assert not any(target in ("pathlib", "io", "PIL") for m, t in IMPORTS.items() if "engines" in m for target in t)


def _field_list_lines(node: ast.ClassDef) -> int:
    """Lines of a dataclass's declarative field list (annotated assignments and the comments
    between them), which the class limit does not count."""
    fields = [n for n in node.body if isinstance(n, ast.AnnAssign)]
    return (fields[-1].end_lineno - fields[0].lineno + 1) if fields else 0  # type: ignore[operator]


def test_no_function_over_60_lines_and_no_class_over_200_beside_the_run_configs_fields() -> None:
    too_long = []
    for module, tree in MODULES.items():
        for node in ast.walk(tree):
            lines = (getattr(node, "end_lineno", 0) or 0) - getattr(node, "lineno", 0) + 1
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and lines > MAX_FUNCTION_LINES:
                too_long.append(f"{module}.{node.name}: {lines} lines")
            elif isinstance(node, ast.ClassDef):
                counted = lines - (_field_list_lines(node) if node.name == "RunConfig" else 0)
                if counted > MAX_CLASS_LINES:
                    too_long.append(f"{module}.{node.name}: {counted} lines")
    assert not too_long


def test_the_rules_see_a_violation() -> None:
    # The checks above must be able to fail: an io module importing the pipeline is seen.
    tree = ast.parse("from ..pipeline.plan import Task\nimport torch\n")
    assert "augment.pipeline.plan" in _imports("augment.io.example", tree, False)
