"""The trace layer's public surface and its import footprint."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import dspex_lab.trace as trace


def isort_order(name: str) -> tuple[int, str]:
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


def test_all_is_sorted_and_resolvable() -> None:
    assert trace.__doc__
    assert list(trace.__all__) == sorted(trace.__all__, key=isort_order)
    for name in trace.__all__:
        assert hasattr(trace, name), name


def test_imports_only_dspy_and_the_standard_library() -> None:
    allowed = set(sys.stdlib_module_names) | {"dspy", "dspex_lab", "rich"}
    for path in Path(trace.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = [node.module.split(".")[0]]
            else:
                continue
            for root in roots:
                assert root in allowed, f"{path.name} imports {root}"
                if root == "dspex_lab":
                    # The trace layer's one way out: the module holding every DSPy private name it needs.
                    assert all(
                        (alias.name if isinstance(node, ast.Import) else node.module).startswith(
                            ("dspex_lab.trace", "dspex_lab._dspy_compat")
                        )
                        for alias in node.names
                    ), f"{path.name} reaches outside the trace layer"


def test_rich_is_imported_lazily() -> None:
    """Rich is imported only inside a function (the terminal renderer), never at module level."""
    for path in Path(trace.__file__).parent.glob("*.py"):
        module = ast.parse(path.read_text())
        for node in module.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(name.split(".")[0] == "rich" for name in names), path.name
