"""Journal files for migration tests: an old schema's packed fixture unpacked, and a file's table layout."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import duckdb

FIXTURES = Path(__file__).parent.parent / "journal" / "fixtures"


def unpacked(version: int, folder: Path) -> Path:
    """Return a copy in ``folder`` of the journal written at schema ``version`` (``journal_v<version>.duckdb.gz``)."""
    target = folder / f"v{version}.duckdb"
    with gzip.open(FIXTURES / f"journal_v{version}.duckdb.gz", "rb") as packed, target.open("wb") as out:
        shutil.copyfileobj(packed, out)
    return target


def layout(path: Path) -> dict[str, list[tuple]]:
    """Every table's columns (name, type, nullability, in order) and constraints."""
    with duckdb.connect(str(path), read_only=True) as connection:
        columns = connection.execute(
            """SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns
               WHERE table_schema = 'main' ORDER BY table_name, ordinal_position"""
        ).fetchall()
        constraints = connection.execute(
            """SELECT table_name, constraint_type, constraint_column_names FROM duckdb_constraints()
               WHERE schema_name = 'main' ORDER BY ALL"""
        ).fetchall()
    found: dict[str, list[tuple]] = {}
    for table, *column in columns:
        found.setdefault(table, []).append(tuple(column))
    for table, kind, names in constraints:
        found.setdefault(f"{table} constraints", []).append((kind, tuple(names)))
    return found
