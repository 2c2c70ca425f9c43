"""Annotations of trials (schema 8): the table, its migration, the journal calls, and their bounds."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb

import dspex_lab as dx
from dspex_lab.journal import SCHEMA_VERSION

FIXTURES = Path(__file__).with_name("fixtures")


def unpacked_v7(folder: Path) -> Path:
    target = folder / "v7.duckdb"
    with gzip.open(FIXTURES / "journal_v7.duckdb.gz", "rb") as packed, target.open("wb") as out:
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


# -- the migration ----------------------------------------------------------------------------------


def test_a_version_7_journal_migrates_to_the_layout_of_a_new_one_and_keeps_its_trials(tmp_path):
    migrated_path = unpacked_v7(tmp_path)
    with duckdb.connect(str(migrated_path), read_only=True) as connection:
        assert connection.execute("SELECT value FROM dspex_meta").fetchall() == [("7",)]
        before = connection.execute("SELECT trial_id, score, prediction FROM trials ORDER BY trial_id").fetchall()
    assert len(before) == 8
    migrated = dx.open_journal(migrated_path)
    assert SCHEMA_VERSION == 8
    assert migrated.sql("select value from dspex_meta where key = 'schema_version'")["value"][0] == "8"
    after = migrated.sql("select trial_id, score, prediction, feedback from trials order by trial_id")
    assert [tuple(row[:3]) for row in after.itertuples(index=False)] == before
    assert after["feedback"].isna().all()
    assert migrated.sql("select count(*) as n from annotations")["n"][0] == 0

    # A new journal written by the same code as the fixture: the same tables, columns, order and keys.
    new_path = tmp_path / "new.duckdb"
    subprocess.run([sys.executable, str(FIXTURES / "make_journal_v7.py"), str(new_path)], check=True)
    assert layout(migrated_path) == layout(new_path)
