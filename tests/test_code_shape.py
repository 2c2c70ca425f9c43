"""The shape rules of STYLE.md and the one-store redesign, checked on every module of the package.

- no function or method longer than 80 lines (split by phase instead);
- no "is there a journal?" branch: a run always has a store (an in-memory one when the user asks for none);
- no module imports another package's private module or name (layers meet through public names).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import dspex_lab

PACKAGE = Path(dspex_lab.__file__).parent
MAX_FUNCTION_LINES = 80
NONE_BRANCH = re.compile(r"\b(journal|writer)\s+is\s+(not\s+)?None\b")


def modules() -> list[Path]:
    return sorted(path for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts)


def package_of(path: Path) -> str:
    """The top-level part of dspex_lab a module belongs to (``evaluation``; ``cli`` for a root module)."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def test_no_function_is_longer_than_80_lines():
    long = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, "functions over 80 lines:\n" + "\n".join(long)


def test_no_branch_on_a_missing_journal():
    found = [
        f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        for path in modules()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if NONE_BRANCH.search(line)
    ]
    assert not found, "a run always has a journal store; these lines branch on its absence:\n" + "\n".join(found)


def private_imports(source: str, own: str, label: str) -> list[str]:
    """Imports in ``source`` (a module of package ``own``) of another package's private module or name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom) or node.level or not (node.module or "").startswith("dspex_lab."):
            continue
        parts = node.module.split(".")
        if parts[1] == own or (parts[1].startswith("_") and len(parts) == 2):
            continue  # its own package, or a root module every layer may use (_records, _hooks, _dspy_compat...)
        names = [alias.name for alias in node.names]
        if any(part.startswith("_") for part in parts[2:]) or any(name.startswith("_") for name in names):
            found.append(f"{label}:{node.lineno}: from {node.module} import {', '.join(names)}")
    return found


def test_no_module_imports_another_packages_private_names():
    found = [
        line
        for path in modules()
        for line in private_imports(path.read_text(encoding="utf-8"), package_of(path), str(path.relative_to(PACKAGE)))
    ]
    assert not found, "imports of another package's private module or name:\n" + "\n".join(found)


def test_the_checks_catch_what_they_look_for():
    # The detectors themselves, on code that breaks each rule (so a broken detector cannot pass silently).
    assert NONE_BRANCH.search("    if self.journal is not None:") and NONE_BRANCH.search("if writer is None:")
    assert not NONE_BRANCH.search("if journaled is None:")
    breaking = "from dspex_lab.journal._schema import trials_frame\nfrom dspex_lab.engine import _score\n"
    assert len(private_imports(breaking, "evaluation", "probe")) == 2
    allowed = "from dspex_lab.evaluation._result import X\nfrom dspex_lab._records import TRIAL_FIELDS\n"
    assert private_imports(allowed, "evaluation", "probe") == []
