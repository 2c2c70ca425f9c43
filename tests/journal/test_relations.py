"""Runs nest through a real link: ``parent_id`` and ``role`` columns, their readers, and their migration.

Experiment ids keep a readable shape (``<run>/c3/val``), but nothing reads a relation out of one: the
schema-7 migration is the only code that ever parsed the old format, to back-fill the columns.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import duckdb
import pytest
from journal_files import layout, unpacked
from journal_rows import trial_row

import dspex_lab as dx
from dspex_lab.cli import main
from dspex_lab.errors import JournalError
from dspex_lab.journal import EXPERIMENT_ROLES, SCHEMA_VERSION, ExperimentRecord

FIXTURES = Path(__file__).with_name("fixtures")
PACKAGE = Path(dx.__file__).parent


def relations(journal: dx.journal.DuckDBJournal) -> dict[tuple, tuple]:
    """(run name, candidate, phase) -> (parent's name, role) for every experiment an optimization made.

    Read from each evaluation's stored config (which names its run, candidate and phase), never its id.
    """
    names = {summary.id: summary.name for summary in journal.experiment_summaries()}
    found = {}
    for summary in journal.experiment_summaries():
        config = journal.experiment(summary.id)["config"] or {}
        run = config.get("optimization")
        if run is None:
            assert summary.parent_id is None and summary.role is None, summary
            continue
        key = (names[run], config["candidate"], config["phase"])
        found[key] = (names.get(summary.parent_id), summary.role)
    return found


def expected_role(candidate: str, phase: str) -> str:
    # The test's own reading of the phases the optimizers record (the package never parses them).
    if phase == "val":
        return "baseline" if candidate == "c0" else "candidate-validation"
    if phase in ("screen", "confirm"):
        return {"screen": "candidate-screen", "confirm": "confirmation"}[phase]
    return "exploration" if "explore" in phase else "compile"


# -- the migration ----------------------------------------------------------------------------------


def test_a_migrated_version_6_journal_equals_a_new_one(tmp_path):
    migrated_path = unpacked(6, tmp_path)
    with duckdb.connect(str(migrated_path), read_only=True) as connection:
        assert connection.execute("SELECT value FROM dspex_meta").fetchall() == [("6",)]
    migrated = dx.open_journal(migrated_path)
    assert migrated.sql("select value from dspex_meta where key = 'schema_version'")["value"][0] == str(SCHEMA_VERSION)

    sys.path.insert(0, str(FIXTURES))
    try:
        from make_journal_v6 import write
    finally:
        sys.path.remove(str(FIXTURES))
    new_path = tmp_path / "new.duckdb"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fixture's small valsets are underpowered, and say so
        write(new_path)
    new = dx.open_journal(new_path)

    # The same tables with the same columns, types, order and keys.
    assert layout(migrated_path) == layout(new_path)
    # The same relations: every evaluation of each run is its child with the role a new run records.
    old_relations, new_relations = relations(migrated), relations(new)
    assert old_relations == new_relations
    assert len(old_relations) == 20
    for (run, candidate, phase), (parent, role) in old_relations.items():
        assert parent == run and role == expected_role(candidate, phase)
    assert {role for _, role in old_relations.values()} == set(EXPERIMENT_ROLES)
    # And the same views: the default lists show the three top-level experiments only.
    for journal in (migrated, new):
        assert sorted(journal.leaderboard()["name"]) == ["bootstrap", "plain", "simba-c"]
        assert len(journal.leaderboard(children=True)) == 23
        run = journal.leaderboard(name="simba-c")["experiment_id"][0]
        assert len(journal.children(run)) == 15 and len(journal.children(run, role="exploration")) == 2


def test_the_migration_reads_old_ids_only_below_an_optimization(tmp_path):
    # A user's own evaluation named like a child ("a/b") is no child unless "a" is an optimization run.
    path = unpacked(6, tmp_path)
    with duckdb.connect(str(path)) as connection:
        plain = connection.execute("SELECT id FROM experiments WHERE name = 'plain'").fetchall()[0][0]
        connection.execute(
            "INSERT INTO experiments (id, kind, name, status, created_at, updated_at) "
            "SELECT ? || '/c1/val', 'evaluation', 'lookalike', 'finished', now(), now()",
            [plain],
        )
    journal = dx.open_journal(path)
    assert journal.parent(f"{plain}/c1/val") is None
    assert "lookalike" in list(journal.leaderboard()["name"])


# -- the readers and writers --------------------------------------------------------------------------


@pytest.fixture
def nested(journal_path):
    """A run with two children whose ids do not start with the run's, and a top-level look-alike."""
    journal = dx.open_journal(journal_path)
    run = journal.create_experiment(ExperimentRecord(kind="optimization", name="run", id="run"))
    journal.create_experiment(
        ExperimentRecord(kind="evaluation", name="base", id="first", parent_id=run, role="baseline")
    )
    journal.create_experiment(
        ExperimentRecord(kind="evaluation", name="screen", id="second", parent_id=run, role="candidate-screen")
    )
    journal.create_experiment(ExperimentRecord(kind="evaluation", name="lookalike", id="run/c1/val"))
    return journal


def test_finish_children_follows_the_column_not_the_id(nested):
    nested.finish_children("run", status="failed")
    statuses = {summary.id: summary.status for summary in nested.experiment_summaries()}
    assert statuses["first"] == statuses["second"] == "failed"
    assert statuses["run/c1/val"] == "running" and statuses["run"] == "running"


def test_a_finished_child_ends_at_its_last_trial_not_at_the_run_end(nested):
    ended = time.time() - 3600.0
    nested.append_trials("first", [trial_row("e1", 0, finished_at=ended - 5.0), trial_row("e2", 1, finished_at=ended)])
    nested.finish_children("run", status="finished")
    records = {record.id: record for record in nested.experiment_summaries()}
    assert abs(records["first"].finished_at.timestamp() - ended) < 1e-3
    # A child without a trial ended when its run closed it.
    assert abs(records["second"].finished_at.timestamp() - time.time()) < 600


def test_the_default_lists_hide_children_and_a_flag_shows_them(nested, capsys):
    assert sorted(nested.leaderboard()["experiment_id"]) == ["run", "run/c1/val"]
    board = nested.leaderboard(children=True).set_index("experiment_id")
    assert board.loc["second", "parent_id"] == "run" and board.loc["second", "role"] == "candidate-screen"
    assert [summary.id for summary in nested.experiment_summaries(children=False)] == ["run/c1/val", "run"]
    assert len(nested.experiment_summaries()) == 4  # the Python API lists every experiment unless asked
    assert [child.id for child in nested.children("run")] == ["first", "second"]
    assert [child.id for child in nested.children("run", role="baseline")] == ["first"]
    assert nested.children("first") == []
    assert nested.parent("second") == "run" and nested.parent("run") is None
    with pytest.raises(JournalError, match="no experiment 'missing'"):
        nested.parent("missing")
    with pytest.raises(JournalError, match=r"children=\.\.\."):
        nested.leaderboard(children="yes")

    assert main(["journal", "list", "--journal", str(nested.path)]) == 0
    listed = capsys.readouterr().out
    assert "lookalike" in listed and "screen" not in listed and "base " not in listed
    assert main(["journal", "list", "--all", "--journal", str(nested.path)]) == 0
    listed = capsys.readouterr().out
    assert "candidate-screen" in listed and "baseline" in listed


def test_the_experiment_browser_hides_children_unless_asked(nested):
    pytest.importorskip("anywidget")
    shown = {row["id"]: row for row in dx.ExperimentBrowser(nested).experiments}
    assert set(shown) == {"run", "run/c1/val"}
    shown = {row["id"]: row for row in dx.ExperimentBrowser(nested, nested=True).experiments}
    assert set(shown) == {"run", "run/c1/val", "first", "second"}
    assert (shown["second"]["parent"], shown["second"]["role"]) == ("run", "candidate-screen")
    assert shown["run/c1/val"]["parent"] is None


SERVED_CALLS = """
import sys
import dspex_lab as dx
from dspex_lab.journal import ExperimentRecord
journal = dx.open_journal(sys.argv[1])
record = ExperimentRecord(kind="evaluation", name="far", id="far", parent_id="run", role="confirmation")
journal.create_experiment(record)
print([(child.id, child.role) for child in journal.children("run", role="confirmation")])
print(list(journal.leaderboard()["experiment_id"]), journal.parent("far"))
"""


def test_the_relation_travels_through_the_journal_service(nested):
    # While this process holds the journal, another one writes and reads through its service.
    with nested.hold():
        done = subprocess.run(
            [sys.executable, "-c", SERVED_CALLS, str(nested.path)], capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "[('far', 'confirmation')]"
    assert json.loads(lines[1].replace("'", '"').rsplit(" ", 1)[0]) == ["run/c1/val", "run"]
    assert lines[1].endswith(" run")


# -- nothing outside the migration reads a relation out of an id ----------------------------------------

# Operations that take a string apart, on a line that is about an experiment or run id.
_PARSING = re.compile(
    r"""starts_with\s*\(|\.startswith\s*\(|removeprefix\s*\(|\.split\s*\(\s*["']/|\.rsplit\s*\(\s*["']/|"""
    r"""\.partition\s*\(\s*["']/|\.rpartition\s*\(\s*["']/|\bLIKE\b|\.contains\s*\(\s*["']/|"""
    r"""["']/["']\s+(?:not\s+)?in\b"""
)
_ID_WORDS = re.compile(r"experiment_id|run_id|experiment\b|experiments\b|\bid\b|\.id\b|exp_id|parent")
_ALLOWED = {Path("journal/_schema.py")}


def id_parsing_lines(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root) in _ALLOWED:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            code = line.split("#", 1)[0]
            if _PARSING.search(code) and _ID_WORDS.search(code):
                found.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    return found


def test_no_code_outside_the_migration_parses_experiment_ids():
    assert id_parsing_lines(PACKAGE) == []


def test_the_scan_finds_the_id_parsing_it_forbids(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text(
        'a = journal.sql("select * from trials where starts_with(experiment_id, ?)", [run_id + "/"])\n'
        'b = group.experiment_id.removeprefix(f"{run_id}/")\n'
        'c = [experiment.split("/")[1] for experiment in created]\n'
        'd = board["experiment_id"].str.contains("/", regex=False)\n'
        'e = "SELECT id FROM experiments WHERE id LIKE ?"\n'
        'ok = name.removesuffix("/").split("/")  # a zip member, not an id\n'
    )
    assert [line.split(": ", 1)[0] for line in id_parsing_lines(tmp_path)] == [
        "planted.py:1",
        "planted.py:2",
        "planted.py:3",
        "planted.py:4",
        "planted.py:5",
    ]
