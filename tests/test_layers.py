"""The layers stay as designed: core is pure, and every layer imports only inwards.

import-linter checks the imports between packages (``make layers``); this test checks
what it cannot: that core calls no clock and draws no random number, by whatever name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "flowtrail"
CORE_MODULES = sorted((PACKAGE / "core").glob("*.py"))

#: What core may import: the standard library's pure parts, and msgspec.
CORE_MAY_IMPORT = {
    "__future__",
    "abc",
    "collections",
    "dataclasses",
    "datetime",
    "enum",
    "functools",
    "hashlib",
    "itertools",
    "math",
    "msgspec",
    "operator",
    "struct",
    "typing",
    "uuid",
    "flowtrail",
}
#: Names that read a clock or draw randomness, wherever they are imported from.
IMPURE_NAMES = {
    "now",
    "utcnow",
    "today",
    "time",
    "time_ns",
    "monotonic",
    "perf_counter",
    "uuid1",
    "uuid4",
    "urandom",
    "getenv",
    "random",
    "randint",
    "choice",
    "token_bytes",
}
LAYER_MAY_IMPORT = {"core": {"core"}, "store": {"core", "store"}, "projections": {"core", "projections"}}


def _imports(tree: ast.AST) -> list[tuple[int, str, list[str]]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
    return found


@pytest.mark.parametrize("path", CORE_MODULES, ids=lambda p: p.name)
def test_core_imports_only_pure_modules(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for lineno, module, names in _imports(tree):
        top = module.split(".")[0]
        assert top in CORE_MAY_IMPORT, f"{path.name}:{lineno} imports {module}"
        if top == "flowtrail":
            assert module.startswith("flowtrail.core"), f"{path.name}:{lineno} imports {module}"
        impure = IMPURE_NAMES.intersection(names)
        assert not impure, f"{path.name}:{lineno} imports {sorted(impure)} from {module}"


@pytest.mark.parametrize("path", CORE_MODULES, ids=lambda p: p.name)
def test_core_calls_no_clock_and_no_random_source(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = (
                func.attr
                if isinstance(func, ast.Attribute)
                else func.id
                if isinstance(func, ast.Name)
                else None
            )
            assert name not in IMPURE_NAMES, f"{path.name}:{node.lineno} calls {name}()"


@pytest.mark.parametrize("layer", sorted(LAYER_MAY_IMPORT))
def test_each_layer_imports_only_inwards(layer: str) -> None:
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for lineno, module, _ in _imports(ast.parse(path.read_text())):
            parts = module.split(".")
            if (
                parts[0] == "flowtrail"
                and len(parts) > 1
                and parts[1] in {"core", "store", "projections", "engine"}
            ):
                assert parts[1] in LAYER_MAY_IMPORT[layer], f"{path}:{lineno}: {layer} imports {module}"


def test_the_purity_check_would_catch_a_clock_read(tmp_path: Path) -> None:
    """The check itself: a module reading the clock under another name is caught."""
    sneaky = "from datetime import datetime as d\nx = d.now()\n"
    calls = [n for n in ast.walk(ast.parse(sneaky)) if isinstance(n, ast.Call)]
    assert any(isinstance(c.func, ast.Attribute) and c.func.attr in IMPURE_NAMES for c in calls)
