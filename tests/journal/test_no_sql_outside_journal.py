"""No SQL outside dspex_lab/journal/: every other layer reads the journal through the store's methods.

The scan looks for SQL text (a string starting with SELECT, WITH, INSERT, UPDATE, DELETE or CREATE,
written literally, as an f-string, or bound to a name in the same file) passed to a ``.sql(`` or
``.execute(`` call. The user's own read-only escape hatch (``journal.sql(query)``, ``%%dspex sql``,
``dspex journal sql``) passes the user's text, not SQL written here, so it is not flagged.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import dspex_lab as dx

PACKAGE = Path(dx.__file__).parent
_SQL = re.compile(r"\s*(SELECT|WITH|INSERT|UPDATE|DELETE|CREATE)\b", re.IGNORECASE)
_CALLS = {"sql", "execute", "executemany"}

# data/_loaders.py queries the user's own data files (CSV, Parquet, a DuckDB query over them) with DuckDB
# to load a dataset; it never touches a journal, so it is the one allowed exception.
ALLOWED = {"data/_loaders.py"}


def _sql_text(node: ast.AST | None) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str) and bool(_SQL.match(node.value))
    if isinstance(node, ast.JoinedStr):
        return bool(node.values) and _sql_text(node.values[0])
    if isinstance(node, ast.BinOp):  # "SELECT ..." + "..." or "SELECT %s" % ...
        return _sql_text(node.left)
    return False


def sql_calls(source: str) -> list[int]:
    """Return the lines of ``.sql(``/``.execute(`` calls given SQL written in ``source``."""
    tree = ast.parse(source)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and _sql_text(node.value):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and _sql_text(node.value):
            names.add(node.target.id)
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _CALLS:
            arguments = [*node.args, *(keyword.value for keyword in node.keywords)]
            if any(_sql_text(item) or (isinstance(item, ast.Name) and item.id in names) for item in arguments):
                lines.append(node.lineno)
    return sorted(lines)


def test_the_scan_finds_sql_written_inline_in_an_f_string_or_through_a_name():
    source = (
        '_QUERY = """\n  select id from experiments"""\n'
        "def read(journal, table):\n"
        "    journal.sql(_QUERY)\n"
        "    connection.execute(f'DELETE FROM {table}', [1])\n"
        "    journal.sql(query)\n"
        "    journal.sql(query='WITH x AS (SELECT 1) SELECT * FROM x')\n"
        "    print('SELECT is a word')\n"
    )
    assert sql_calls(source) == [4, 5, 7]


def test_no_sql_is_written_outside_the_journal_layer():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith("journal/") or relative in ALLOWED:
            continue
        found += [f"dspex_lab/{relative}:{line}" for line in sql_calls(path.read_text(encoding="utf-8"))]
    assert not found, "SQL outside dspex_lab/journal/ (add a reader method to JournalStore instead): " + ", ".join(
        found
    )


def test_the_allowed_exception_still_needs_its_exception():
    # If data/_loaders.py stops querying with DuckDB, the exception goes too.
    assert sql_calls((PACKAGE / "data" / "_loaders.py").read_text(encoding="utf-8"))
