"""Reproducibility packages: export, verify and re-run on the offline lab LM."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import dspy
import pytest

import dspex_lab as dx
from dspex_lab.cli import main
from dspex_lab.errors import DatasetError, ExecutionError, JournalError, ProgramSpecError
from dspex_lab.journal import DuckDBJournal

PROGRAM = dx.Program(
    "dspy.ChainOfThought",
    signature="question -> answer",
    name="cot-warm",
    variables={"temperature": dx.Float(0.7, low=0.0, high=1.5)},
)
EXPECTED_FILES = {
    "program.json",
    "dataset/manifest.json",
    "dataset/examples.jsonl",
    "run.json",
    "environment.json",
    "results/trials.csv",
    "results/summary.json",
    "README.md",
    "MANIFEST.sha256",
}


def faulty_lm() -> dspy.BaseLM:
    return dx.lab_lm("lab/small", seed=11, error_rate=0.08)


def answer_length_metric(example: Any, prediction: Any, trace: Any = None) -> float:
    """A metric outside dspex_lab.metrics, so a package cannot look it up by name."""
    return float(len(str(prediction.answer)) < 4)


class Run:
    """One journaled evaluation and its exported package, shared by the tests of this module."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.journal = folder / "source.duckdb"
        self.dataset = dx.Dataset(dx.datasets.arithmetic(30, seed=5), name="arith-30")
        with dx.Context(lm=faulty_lm(), journal=self.journal, threads=8):
            self.result = dx.evaluate(PROGRAM, self.dataset, metric=dx.metrics.exact_match, repeats=2, progress=False)
        self.package = dx.export(self.result.experiment_id, folder / "package.zip", journal=self.journal)
        self.trials = dx.open_journal(self.journal).trials(self.result.experiment_id)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return Run(tmp_path_factory.mktemp("package"))


def read_members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def rewrite(
    source: Path,
    target: Path,
    *,
    change: Mapping[str, Callable[[bytes], bytes]] | None = None,
    drop: tuple[str, ...] = (),
    add: Mapping[str, bytes] | None = None,
    refresh_checksums: bool = False,
) -> Path:
    """Copy a package, changing, dropping or adding entries; optionally recompute MANIFEST.sha256."""
    members = read_members(source)
    for name, edit in (change or {}).items():
        members[name] = edit(members[name])
    for name in drop:
        del members[name]
    members.update(add or {})
    if refresh_checksums:
        members["MANIFEST.sha256"] = "".join(
            f"{hashlib.sha256(content).hexdigest()}  {name}\n"
            for name, content in sorted(members.items())
            if name != "MANIFEST.sha256"
        ).encode()
    with zipfile.ZipFile(target, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return target


def trial_rows(content: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(content.decode())))


def flip_first_ok_score(content: bytes) -> bytes:
    rows = trial_rows(content)
    for row in rows:
        if row["status"] == "ok":
            row["score"] = "0.0" if float(row["score"]) == 1.0 else "1.0"
            break
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


# -- export ---------------------------------------------------------------------------------------


def test_export_writes_every_file_with_matching_checksums(run):
    members = read_members(run.package)
    assert set(members) == EXPECTED_FILES
    listed = dict(
        reversed(line.split("  ", 1)) for line in members["MANIFEST.sha256"].decode().splitlines() if line.strip()
    )
    assert set(listed) == EXPECTED_FILES - {"MANIFEST.sha256"}
    for name, digest in listed.items():
        assert hashlib.sha256(members[name]).hexdigest() == digest, name


def test_export_records_program_data_run_environment_and_results(run):
    members = read_members(run.package)
    assert dx.Program.from_json(members["program.json"].decode()) == PROGRAM
    assert json.loads(members["program.json"])["variables"]["temperature"]["value"] == 0.7

    manifest = json.loads(members["dataset/manifest.json"])
    assert manifest["fingerprint"] == run.dataset.fingerprint
    assert (manifest["n"], manifest["inputs"]) == (30, ["question"])
    assert manifest["examples_sha256"] == hashlib.sha256(members["dataset/examples.jsonl"]).hexdigest()
    lines = [json.loads(line) for line in members["dataset/examples.jsonl"].decode().splitlines()]
    assert [line["id"] for line in lines] == list(run.dataset.example_ids)
    assert lines[3]["answer"] == run.dataset[3].answer

    description = json.loads(members["run.json"])
    assert description["metric"] == "dspex_lab.metrics.exact_match"
    assert (description["repeats"], description["retries"], description["threads"]) == (2, 3, 8)
    assert description["seeds"]["seed"] == 11 and description["seeds"]["error_rate"] == 0.08
    assert description["lm"]["state"]["engine"]["state"]["seed"] == 11

    environment = json.loads(members["environment.json"])
    assert environment["at_run"]["dspy"] == dspy.__version__
    assert f"dspy=={dspy.__version__}" in environment["pip_freeze"]

    rows = trial_rows(members["results/trials.csv"])
    assert len(rows) == 60
    recorded = {(row["example_id"], int(row["repeat"])): (row["status"], row["score"]) for row in rows}
    for trial in run.trials.itertuples():
        score = "" if trial.status == "error" else repr(float(trial.score))
        assert recorded[(trial.example_id, trial.repeat)] == (trial.status, score)
    errors = [row for row in rows if row["status"] == "error"]
    assert errors and all(row["error_type"] for row in errors)  # faults are part of what must reproduce

    summary = json.loads(members["results/summary.json"])
    assert summary["mean"] == pytest.approx(run.result.mean)
    assert summary["n_errors"] == len(errors)

    readme = members["README.md"].decode()
    assert "dspex rerun" in readme and "dspex verify" in readme
    assert f"{run.result.mean:.4f}" in readme and run.result.experiment_id in readme


def test_export_refuses_unknown_experiment(run, tmp_path):
    with pytest.raises(JournalError, match="no experiment 'nope'"):
        dx.export("nope", tmp_path / "x.zip", journal=run.journal)
    assert not (tmp_path / "x.zip").exists()


def test_export_refuses_live_module_and_comparison(tmp_path):
    journal = tmp_path / "j.duckdb"
    dataset = dx.Dataset(dx.datasets.arithmetic(8, seed=2), name="arith-8")
    with dx.Context(lm="lab/small", journal=journal, threads=4):
        live = dx.evaluate(dspy.Predict("question -> answer"), dataset, metric=dx.metrics.exact_match, progress=False)
        other = dx.evaluate(PROGRAM, dataset, metric=dx.metrics.exact_match, progress=False)
        dx.compare(live, other)
        with pytest.raises(ProgramSpecError, match=r"live dspy\.Module.*cannot be re-run"):
            dx.export(live.experiment_id, tmp_path / "live.zip")  # the context's journal
    comparison_id = dx.open_journal(journal).experiments().query("kind == 'comparison'")["id"].iloc[0]
    with pytest.raises(JournalError, match="not an evaluation"):
        dx.export(comparison_id, tmp_path / "comparison.zip", journal=journal)
    assert list(tmp_path.glob("*.zip")) == []


def test_export_include_data_true_refuses_unstored_data(run, tmp_path, monkeypatch):
    monkeypatch.setattr(DuckDBJournal, "dataset_examples", lambda self, fingerprint: [])
    with pytest.raises(DatasetError, match="not stored in the journal"):
        dx.export(run.result.experiment_id, tmp_path / "x.zip", journal=run.journal, include_data=True)
    # "auto" leaves the data out instead, and says so.
    path = dx.export(run.result.experiment_id, tmp_path / "auto.zip", journal=run.journal)
    manifest = json.loads(read_members(path)["dataset/manifest.json"])
    assert manifest["examples_file"] is None and "not stored" in manifest["examples_omitted"]


# -- verify ---------------------------------------------------------------------------------------


def test_verify_accepts_the_exported_package(run):
    report = dx.verify_package(run.package)
    assert report.ok, report.problems
    assert report.problems == ()
    assert set(report.files_checked) == EXPECTED_FILES - {"MANIFEST.sha256"}


def test_verify_detects_an_altered_file(run, tmp_path):
    tampered = rewrite(run.package, tmp_path / "t.zip", change={"results/trials.csv": flip_first_ok_score})
    report = dx.verify_package(tampered)
    assert not report.ok
    assert [problem for problem in report.problems if problem.startswith("results/trials.csv: altered")]


def test_verify_detects_missing_and_extra_files(run, tmp_path):
    missing = dx.verify_package(rewrite(run.package, tmp_path / "m.zip", drop=("program.json",)))
    assert not missing.ok
    assert any("program.json: listed in MANIFEST.sha256 but missing" in problem for problem in missing.problems)
    extra = dx.verify_package(rewrite(run.package, tmp_path / "e.zip", add={"notes.txt": b"hi"}))
    assert not extra.ok and any("notes.txt: in the zip but not listed" in problem for problem in extra.problems)


def test_verify_checks_the_data_fingerprint_even_with_refreshed_checksums(run, tmp_path):
    def change_an_answer(content: bytes) -> bytes:
        lines = content.decode().splitlines()
        first = json.loads(lines[0])
        first["answer"] = str(int(first["answer"]) + 1)
        return ("\n".join([json.dumps(first), *lines[1:]]) + "\n").encode()

    edited = rewrite(
        run.package,
        tmp_path / "d.zip",
        change={"dataset/examples.jsonl": change_an_answer},
        refresh_checksums=True,
    )
    report = dx.verify_package(edited)
    assert not report.ok
    assert any("examples' fingerprint" in problem for problem in report.problems)


def test_verify_checks_that_the_json_files_are_objects(run, tmp_path):
    edited = rewrite(
        run.package, tmp_path / "r.zip", change={"run.json": lambda content: b"[]"}, refresh_checksums=True
    )
    report = dx.verify_package(edited)
    assert not report.ok and "run.json: a JSON list, expected an object" in report.problems
    with pytest.raises(ExecutionError, match="fails verification"):
        dx.rerun_package(edited)


def test_verify_reports_a_file_that_is_not_a_zip(tmp_path):
    path = tmp_path / "not.zip"
    path.write_text("hello")
    report = dx.verify_package(path)
    assert not report.ok and "not a readable zip" in report.problems[0]


# -- rerun ----------------------------------------------------------------------------------------


def test_rerun_reproduces_every_trial_status_and_score(run, tmp_path):
    journal = tmp_path / "rerun.duckdb"
    report = dx.rerun_package(run.package, journal=journal, threads=3)
    assert report.identical, str(report)
    assert report.journal == dx.open_journal(journal).location and str(journal) in str(report)
    assert (report.n_compared, report.n_identical, report.differences) == (60, 60, ())
    assert report.old_mean == pytest.approx(report.new_mean) and report.old_mean == pytest.approx(run.result.mean)
    # Checked again straight from both journals, not only through the report.
    new = dx.open_journal(journal).trials(report.experiment_id)
    key = ["example_id", "repeat"]
    old = run.trials.set_index(key).sort_index()
    new = new.set_index(key).sort_index()
    assert list(new.index) == list(old.index)
    assert list(new["status"]) == list(old["status"])
    assert new["score"].equals(old["score"])
    assert list(new["error_type"].fillna("")) == list(old["error_type"].fillna(""))
    assert (old["status"] == "error").sum() > 0


def test_rerun_reports_a_recorded_score_that_does_not_reproduce(run, tmp_path):
    # Re-checksummed so that it passes verification: the comparison itself must catch it.
    edited = rewrite(
        run.package,
        tmp_path / "s.zip",
        change={"results/trials.csv": flip_first_ok_score},
        refresh_checksums=True,
    )
    assert dx.verify_package(edited).ok
    report = dx.rerun_package(edited)
    assert not report.identical
    assert (report.n_compared, report.n_identical, len(report.differences)) == (60, 59, 1)
    # Without journal=, the re-run is recorded in a journal of its own, in memory: no file is left behind.
    assert "in-memory journal" in report.journal and f"in {report.journal}" in str(report)
    assert not list(tmp_path.rglob("*.duckdb"))
    first_ok = run.trials[run.trials["status"] == "ok"].iloc[0]
    (difference,) = report.differences
    assert (difference.example_id, difference.repeat) == (first_ok["example_id"], first_ok["repeat"])
    assert difference.new_score == first_ok["score"] and difference.old_score != first_ok["score"]


def test_rerun_refuses_a_package_that_fails_verification(run, tmp_path):
    tampered = rewrite(run.package, tmp_path / "t.zip", change={"program.json": lambda content: content + b" "})
    with pytest.raises(ExecutionError, match=r"fails verification.*program\.json: altered"):
        dx.rerun_package(tampered)


@pytest.mark.parametrize(
    "lm_class", ["os:system", "dspex_lab.lm.client.dspy.LM", "dspex_lab.lm.client.os.system", "builtins.eval"]
)
def test_rerun_never_imports_a_class_a_package_names(run, tmp_path, lm_class, monkeypatch):
    def foreign_classes(content: bytes) -> bytes:
        description = json.loads(content)
        description["lm"]["state"]["_dspy_lm_class"] = lm_class
        description["lm"]["state"]["engine"]["class"] = lm_class
        return json.dumps(description).encode()

    def no_load_state(*arguments: Any, **keywords: Any) -> None:
        raise AssertionError("a package's LM state must not be loaded by class")

    monkeypatch.setattr(dspy.BaseLM, "load_state", no_load_state)
    edited = rewrite(run.package, tmp_path / "f.zip", change={"run.json": foreign_classes}, refresh_checksums=True)
    # The lab LM is rebuilt from its allow-listed fields (seed, fault rates) whatever class the state names.
    assert dx.rerun_package(edited).identical


def test_rerun_without_examples_needs_the_same_dataset(run, tmp_path):
    path = dx.export(run.result.experiment_id, tmp_path, journal=run.journal, include_data=False)
    assert path.name == f"dspex-{run.result.experiment_id}.zip"
    assert "dataset/examples.jsonl" not in read_members(path)
    assert dx.verify_package(path).ok
    with pytest.raises(DatasetError, match=r"no dataset/examples\.jsonl.*dataset="):
        dx.rerun_package(path)
    with pytest.raises(DatasetError, match="fingerprint"):
        dx.rerun_package(path, dataset=run.dataset[:10])
    assert dx.rerun_package(path, dataset=run.dataset).identical


def test_rerun_needs_a_metric_that_is_not_in_dspex_lab_metrics(tmp_path):
    journal = tmp_path / "j.duckdb"
    dataset = dx.Dataset(dx.datasets.arithmetic(6, seed=9), name="arith-6")
    with dx.Context(lm="lab/small", journal=journal, threads=2):
        result = dx.evaluate(PROGRAM, dataset, metric=answer_length_metric, progress=False)
    path = dx.export(result.experiment_id, tmp_path / "p.zip", journal=journal)
    with pytest.raises(ExecutionError, match=r"answer_length_metric.*metric=your_metric"):
        dx.rerun_package(path)
    assert dx.rerun_package(path, metric=answer_length_metric).identical


@pytest.mark.parametrize("id_shape", ["no id field", "integer id field", "repeated id field"])
def test_examples_round_trip_whatever_their_id_field(tmp_path, id_shape):
    records = [example.toDict() for example in dx.datasets.arithmetic(6, seed=4)]
    for position, record in enumerate(records):
        if id_shape == "no id field":
            del record["id"]
        elif id_shape == "integer id field":
            record["id"] = position  # the example id is the string "0", "1", ...
        else:
            record["id"] = "same"  # example ids become same, same#2, ...
    dataset = dx.Dataset(records, inputs=["question"], name=id_shape)
    journal = tmp_path / "j.duckdb"
    with dx.Context(lm="lab/small", journal=journal, threads=2):
        result = dx.evaluate(PROGRAM, dataset, metric=dx.metrics.exact_match, progress=False)
    path = dx.export(result.experiment_id, tmp_path / "p.zip", journal=journal)
    assert dx.verify_package(path).ok
    report = dx.rerun_package(path)
    assert report.identical and report.n_compared == 6, str(report)


# -- CLI ------------------------------------------------------------------------------------------


def test_cli_export_verify_and_rerun_exit_codes(run, tmp_path, capsys):
    target = tmp_path / "cli.zip"
    assert main(["export", run.result.experiment_id, str(target), "--journal", str(run.journal)]) == 0
    assert str(target.resolve()) in capsys.readouterr().out
    assert main(["verify", str(target)]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["rerun", str(target), "--threads", "4"]) == 0
    assert "REPRODUCED" in capsys.readouterr().out

    tampered = rewrite(target, tmp_path / "t.zip", drop=("results/summary.json",))
    assert main(["verify", str(tampered)]) == 1
    assert "results/summary.json" in capsys.readouterr().out
    assert main(["rerun", str(tampered)]) == 2
    assert "fails verification" in capsys.readouterr().err

    differing = rewrite(
        target, tmp_path / "s.zip", change={"results/trials.csv": flip_first_ok_score}, refresh_checksums=True
    )
    assert main(["rerun", str(differing)]) == 1
    assert "NOT REPRODUCED" in capsys.readouterr().out

    assert main(["export", "missing-id", str(tmp_path / "x.zip"), "--journal", str(run.journal)]) == 2
    assert "no experiment 'missing-id'" in capsys.readouterr().err
