"""Packages are untrusted input, and exports and displays never carry a secret.

Hostile packages arrive as a user would receive them: a crafted zip given to
``dspex verify`` / ``dspex rerun``. Secrets are planted in the journal itself, so
the export's own redaction is what is tested, whatever the engine stored.
"""

from __future__ import annotations

import hashlib
import json
import stat
import time
import tracemalloc
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import duckdb
import pytest
from loopback import DEFAULT_API_KEY

import dspex_lab as dx
from dspex_lab.cli import main
from dspex_lab.errors import DspexLabWarning, PackageError
from dspex_lab.evaluation import _package_format

PROGRAM = dx.Program(
    "dspy.Predict",
    signature="question -> answer",
    name="predict",
    variables={"temperature": dx.Float(0.0, low=0.0, high=1.0)},
)
KEY = "sk-proj-SECRETabcdef0123456789"
OPAQUE_KEY = "lab9f8e7d6c5b4a3210secret"
PASSWORD = "hunter2hunter2"


class Source:
    """A small journaled evaluation on a faulty lab LM, and its package."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.journal = folder / "source.duckdb"
        dataset = dx.Dataset(dx.datasets.arithmetic(8, seed=2), name="arith-8")
        with dx.Context(lm=dx.lab_lm("lab/small", seed=5, error_rate=0.3), journal=self.journal, threads=2):
            self.result = dx.evaluate(PROGRAM, dataset, metric=dx.metrics.exact_match, progress=False)
        assert self.result.n_errors > 0
        self.package = dx.export(self.result.experiment_id, folder / "package.zip", journal=self.journal)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Source:
    return Source(tmp_path_factory.mktemp("security"))


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def rehash(source: Path, target: Path, changes: Mapping[str, Callable[[bytes], bytes]]) -> Path:
    """Copy a package with some members changed and MANIFEST.sha256 recomputed, as an attacker would."""
    content = members(source)
    for name, change in changes.items():
        content[name] = change(content[name])
    content["MANIFEST.sha256"] = "".join(
        f"{hashlib.sha256(data).hexdigest()}  {name}\n"
        for name, data in sorted(content.items())
        if name != "MANIFEST.sha256"
    ).encode()
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in content.items():
            archive.writestr(name, data)
    return target


def edit_run(edit: Callable[[dict[str, Any]], None]) -> Callable[[bytes], bytes]:
    """Return a member change that edits a JSON object (run.json, program.json) in place."""

    def change(content: bytes) -> bytes:
        description = json.loads(content)
        edit(description)
        return json.dumps(description).encode()

    return change


# -- zip members are size-checked before reading ------------------------------------------------------


def zip_bomb(source: Path, target: Path, *, megabytes: int) -> Path:
    """A package whose trials file inflates from a few hundred KB to ``megabytes`` MB of zeros."""
    content = members(source)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in content.items():
            if name != "results/trials.csv":
                archive.writestr(name, data)
        with archive.open("results/trials.csv", "w", force_zip64=True) as member:
            block = b"\0" * (1 << 20)
            for _ in range(megabytes):
                member.write(block)
    return target


def test_a_zip_bomb_is_refused_at_once_by_dspex_verify_and_rerun(source, tmp_path, capsys):
    bomb = zip_bomb(source.package, tmp_path / "bomb.zip", megabytes=300)
    assert bomb.stat().st_size < 2 * 1024 * 1024
    tracemalloc.start()
    started, cpu_started = time.monotonic(), time.thread_time()
    try:
        assert main(["verify", str(bomb)]) == 1
        cpu, elapsed = time.thread_time() - cpu_started, time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    output = capsys.readouterr().out
    assert "results/trials.csv expands" in output and "zip bomb" in output
    # Refused from the declared sizes: reading the 300 MB member through takes about 1 s of CPU on its own.
    assert cpu < 0.5, f"verify used {cpu:.2f} s of CPU on a zip bomb"
    assert peak < 20 * 1024 * 1024
    assert elapsed < 60  # a hang guard only; the CPU and memory bounds above are what is tested
    assert main(["rerun", str(bomb)]) == 2
    assert "zip bomb" in capsys.readouterr().err


def test_declared_sizes_and_member_counts_are_capped(source, tmp_path, monkeypatch):
    monkeypatch.setattr(_package_format, "MAX_METADATA_MEMBER_BYTES", 100)
    report = dx.verify_package(source.package)
    assert not report.ok
    assert "uncompressed, more than the 100 a package member may hold" in report.problems[0]
    monkeypatch.undo()

    monkeypatch.setattr(_package_format, "MAX_TOTAL_BYTES", 1000)
    report = dx.verify_package(source.package)
    assert "bytes uncompressed in all, more than a package's limit of 1,000" in report.problems[0]
    monkeypatch.undo()

    crowded = tmp_path / "crowded.zip"
    with zipfile.ZipFile(crowded, "w") as archive:
        for number in range(_package_format.MAX_MEMBERS + 1):
            archive.writestr(f"extra/{number}.txt", b"x")
    report = dx.verify_package(crowded)
    assert not report.ok and "more than a package's limit of 64" in report.problems[0]


def test_a_member_yielding_more_than_it_declares_is_refused(source, tmp_path):
    archive = _package_format.PackageArchive(source.package)
    with archive:
        info = archive._infos["README.md"]
        info.file_size = 10  # as a forged local header would say
        # zipfile stops at the declared size (then the CRC fails); the bounded read refuses either way.
        with pytest.raises(PackageError, match=r"README\.md (holds more bytes than the 10|cannot be read)"):
            archive.read("README.md")
        with pytest.raises(PackageError, match=r"README\.md"):
            archive.sha256("README.md")


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (
            lambda spec: spec.update(constraints=["len('x'*1000000000) > 0"]),
            "repeating a literal 1,000,000,000 times exceeds 100,000 items",
        ),
        (
            lambda spec: spec["variables"]["temperature"].update(target="__class__.forward"),
            "variable 'temperature': target '__class__.forward' reaches '__class__'",
        ),
        (lambda spec: spec.update(init={"api_base": "http://127.0.0.1:9/v1"}), "init.api_base"),
    ],
)
def test_a_hostile_program_spec_fails_dspex_verify_quickly(source, tmp_path, capsys, edit, problem):
    edited = rehash(source.package, tmp_path / "spec.zip", {"program.json": edit_run(edit)})
    tracemalloc.start()
    started, cpu_started = time.monotonic(), time.thread_time()
    try:
        assert main(["verify", str(edited)]) == 1
        cpu, elapsed = time.thread_time() - cpu_started, time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    output = capsys.readouterr().out
    assert "program.json: does not parse as a dx.Program" in output and problem in output
    # Building the repeated literal alone would take about 0.7 s of CPU and 1 GB; verify refuses it unbuilt.
    assert cpu < 1.0, f"verify used {cpu:.2f} s of CPU on a hostile spec"
    assert peak < 50 * 1024 * 1024
    assert elapsed < 60  # a hang guard only; the CPU and memory bounds above are what is tested
    assert main(["rerun", str(edited)]) == 2
    assert "fails verification" in capsys.readouterr().err


# -- run settings from a package are bounded ------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda run: run.update(threads=100_000), "run.json: threads is 100000, outside the allowed range [1, 64]"),
        (lambda run: run.update(repeats=10**6), "run.json: repeats is 1000000, outside the allowed range [1, 100]"),
        (
            lambda run: run.update(timeout=1e9),
            "run.json: timeout is 1000000000.0, outside the allowed range [0.001, 3600]",
        ),
        (lambda run: run.update(retries="many"), "run.json: retries is 'many', not an integer"),
        (
            lambda run: run["lm"]["state"]["engine"]["state"].update(latency=1e6),
            "run.json: lm.state.engine.state.latency is 1000000.0, outside the allowed range [0, 10]",
        ),
        (
            lambda run: run["lm"]["state"]["engine"]["state"].update(hang_rate=5),
            "run.json: lm.state.engine.state.hang_rate is 5, outside the allowed range [0, 1]",
        ),
        (
            lambda run: run["lm"]["state"].update(num_retries=1000),
            "run.json: lm.state.num_retries is 1000, outside the allowed range [0, 10]",
        ),
    ],
)
def test_run_settings_out_of_bounds_fail_verification_and_rerun(source, tmp_path, capsys, edit, problem):
    edited = rehash(source.package, tmp_path / "edited.zip", {"run.json": edit_run(edit)})
    report = dx.verify_package(edited)
    assert problem in report.problems
    assert main(["rerun", str(edited)]) == 2
    assert "fails verification" in capsys.readouterr().err


# -- rerun rebuilds the LM from allow-listed fields, and never picks a hosted model or endpoint ---------


def hosted_state(api_base: str | None) -> Callable[[dict[str, Any]], None]:
    def edit(run: dict[str, Any]) -> None:
        state = {
            "_dspy_lm_class": "dspex_lab.lm.client.dspy.LM",
            "model": "openai/gpt-4o-mini",
            "temperature": 0.0,
            "num_retries": 0,
            "cache": False,
        }
        if api_base is not None:
            state["api_base"] = api_base
        run["lm"] = {"model": "openai/gpt-4o-mini", "state": state}

    return edit


def test_a_package_cannot_send_the_environment_key_to_its_own_endpoint(
    source, tmp_path, capsys, monkeypatch, loopback_provider
):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-environment-0123456789")
    edited = rehash(
        source.package, tmp_path / "hosted.zip", {"run.json": edit_run(hosted_state(loopback_provider.url))}
    )
    assert dx.verify_package(edited).ok  # the checksums are consistent: only the rerun's rules protect the user
    assert main(["rerun", str(edited)]) == 2
    error = capsys.readouterr().err
    assert "names an endpoint (api_base=" in error and "--api-base" in error
    # Naming the model is not enough: the endpoint must come from the user too.
    assert main(["rerun", str(edited), "--model", "openai/gpt-4o-mini"]) == 2
    assert "names an endpoint" in capsys.readouterr().err
    assert loopback_provider.requests == []


def test_a_package_cannot_choose_a_hosted_model(source, tmp_path, capsys, monkeypatch, loopback_provider):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-environment-0123456789")
    monkeypatch.setenv("OPENAI_API_BASE", loopback_provider.url)
    monkeypatch.setenv("OPENAI_BASE_URL", loopback_provider.url)
    edited = rehash(source.package, tmp_path / "hosted.zip", {"run.json": edit_run(hosted_state(None))})
    assert main(["rerun", str(edited)]) == 2
    error = capsys.readouterr().err
    assert "records the hosted model 'openai/gpt-4o-mini'; a package cannot choose a hosted LM" in error
    assert "--model openai/gpt-4o-mini" in error
    assert loopback_provider.requests == []


def test_a_hosted_rerun_runs_when_the_user_names_the_model_and_endpoint(
    source, tmp_path, capsys, monkeypatch, loopback_provider
):
    monkeypatch.setenv("OPENAI_API_KEY", DEFAULT_API_KEY)
    edited = rehash(source.package, tmp_path / "hosted.zip", {"run.json": edit_run(hosted_state("http://elsewhere"))})
    code = main(["rerun", str(edited), "--model", "openai/gpt-4o-mini", "--api-base", loopback_provider.url])
    assert code in (0, 1), capsys.readouterr().err
    assert len(loopback_provider.requests) > 0
    assert {request.model for request in loopback_provider.requests} == {"gpt-4o-mini"}


def test_lab_state_fields_outside_the_allow_list_are_ignored(source, tmp_path):
    def plant(run: dict[str, Any]) -> None:
        run["lm"]["state"]["_dspy_lm_class"] = "dspex_lab.lm.client.dspy.LM"
        run["lm"]["state"]["engine"]["class"] = "os:system"
        run["lm"]["state"]["launch_kwargs"] = {"command": "rm -rf /"}
        run["lm"]["state"]["extra_headers"] = {"X-Exfiltrate": "yes"}

    edited = rehash(source.package, tmp_path / "planted.zip", {"run.json": edit_run(plant)})
    report = dx.rerun_package(edited)
    assert report.identical, str(report)


# -- exports and displays redact on the way out ------------------------------------------------------------


def plant_secrets(journal: Path, experiment_id: str) -> None:
    connection = duckdb.connect(str(journal))
    try:
        config = json.loads(
            connection.execute("select config from experiments where id = ?", [experiment_id]).fetchone()[0]
        )
        config["lm_state"]["extra_headers"] = {"Authorization": f"Bearer {OPAQUE_KEY}", "X-Org-Token": OPAQUE_KEY}
        config["lm_state"]["api_base"] = f"https://user:{PASSWORD}@llm.example/v1"
        connection.execute("update experiments set config = ? where id = ?", [json.dumps(config), experiment_id])
        connection.execute(
            "update trials set error_message = ?, traceback = ? where experiment_id = ? and status = 'error'",
            [
                f"Error code: 401 - Incorrect API key provided: {OPAQUE_KEY}. Also {KEY}",
                f"Traceback ...\nAuthenticationError: Incorrect API key provided: {OPAQUE_KEY}",
                experiment_id,
            ],
        )
    finally:
        connection.close()


def test_every_exported_file_is_redacted(tmp_path):
    planted = Source(tmp_path)
    plant_secrets(planted.journal, planted.result.experiment_id)
    path = dx.export(planted.result.experiment_id, tmp_path / "planted.zip", journal=planted.journal)
    content = members(path)
    for name, data in content.items():
        text = data.decode("utf-8")
        for secret in (KEY, OPAQUE_KEY, PASSWORD):
            assert secret not in text, f"{secret} leaked into {name}"
    run = json.loads(content["run.json"])
    assert run["lm"]["state"]["api_base"] == "https://user:[REDACTED]@llm.example/v1"
    assert run["lm"]["state"]["extra_headers"] == {"Authorization": "[REDACTED]", "X-Org-Token": "[REDACTED]"}
    assert "Incorrect API key provided: [REDACTED]" in content["results/trials.csv"].decode()
    assert dx.verify_package(path).ok


def test_a_program_spec_holding_a_key_is_not_exported(tmp_path):
    planted = Source(tmp_path)
    connection = duckdb.connect(str(planted.journal))
    try:
        spec = json.loads(
            connection.execute(
                "select program_spec from experiments where id = ?", [planted.result.experiment_id]
            ).fetchone()[0]
        )
        spec["variables"]["temperature"]["description"] = f"tuned with {KEY}"
        connection.execute(
            "update experiments set program_spec = ? where id = ?", [json.dumps(spec), planted.result.experiment_id]
        )
    finally:
        connection.close()
    with pytest.raises(dx.errors.ProgramSpecError, match="holds a credential or key-shaped value"):
        dx.export(planted.result.experiment_id, tmp_path / "spec.zip", journal=planted.journal)


def test_the_result_html_masks_error_text(tmp_path):
    calls: list[int] = []

    def leaky_metric(example: Any, prediction: Any) -> float:
        calls.append(1)
        if len(calls) % 2:
            raise ValueError(f"Incorrect API key provided: {OPAQUE_KEY}")
        return 1.0

    dataset = dx.Dataset(dx.datasets.arithmetic(4, seed=1), name="arith-4")
    context = dx.Context(lm="lab/small", journal=tmp_path / "j.duckdb", threads=1)
    with context, pytest.warns(DspexLabWarning, match="the metric raised") as warned:
        result = dx.evaluate(PROGRAM, dataset, metric=leaky_metric, trace=True, progress=False)
    assert OPAQUE_KEY not in "".join(str(item.message) for item in warned)
    # Whatever the engine stored, the display masks what it shows.
    result.trials.loc[result.trials["status"] == "error", "error_message"] = f"key {OPAQUE_KEY} and {KEY}"
    page = result._repr_html_()
    assert "failed trials" in page
    assert OPAQUE_KEY not in page and KEY not in page
    assert "[REDACTED]" in page


# -- member names cannot escape the package (zip-slip), repeat, or link elsewhere -------------------------------


def with_member(source: Path, target: Path, name: str | zipfile.ZipInfo, data: bytes = b"x") -> Path:
    """Copy a package and add one member, listed in MANIFEST.sha256 with its true checksum, as an attacker would."""
    content = members(source)
    label = name.filename if isinstance(name, zipfile.ZipInfo) else name
    content["MANIFEST.sha256"] += f"{hashlib.sha256(data).hexdigest()}  {label}\n".encode()
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for member, payload in content.items():
            archive.writestr(member, payload)
        archive.writestr(name, data)
    return target


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("../../etc/cron.d/x", "a '..' component"),
        ("dataset/../../x", "a '..' component"),
        ("/etc/passwd", "an absolute path"),
        ("dataset\\..\\..\\x", "a backslash in its name"),
        ("C:/Windows/x", "a drive letter"),
        ("c:x", "a drive letter"),
        ("notes\nREADME.md", "a control character (NUL, newline...) in its name"),
        ("./README2.md", "an empty or '.' component"),
    ],
)
def test_zip_slip_member_names_are_refused_by_dspex_verify_and_rerun(source, tmp_path, capsys, name, problem):
    hostile = with_member(source.package, tmp_path / "slip.zip", name)
    report = dx.verify_package(hostile)
    assert not report.ok
    assert report.problems == (
        f"{hostile}: member {name!r} has {problem}; a package's members are plain relative paths such as "
        "dataset/manifest.json, so this zip is refused",
    )
    assert main(["verify", str(hostile)]) == 1
    assert problem in capsys.readouterr().out
    assert main(["rerun", str(hostile)]) == 2
    error = capsys.readouterr().err
    assert "fails verification" in error and problem in error


def test_a_nul_in_a_member_name_is_refused_although_zipfile_hides_what_follows_it(source, tmp_path):
    # zipfile cuts a name at NUL, so Python sees README.md while other unzip tools may write ../x.
    plain = with_member(source.package, tmp_path / "plain.zip", "README.mdX../x")
    raw = plain.read_bytes()
    assert raw.count(b"README.mdX../x") == 2  # the local header and the central directory
    hostile = tmp_path / "nul.zip"
    hostile.write_bytes(raw.replace(b"README.mdX../x", b"README.md\0../x"))
    report = dx.verify_package(hostile)
    assert not report.ok
    assert "member 'README.md\\x00../x' has a control character" in report.problems[0]


def test_a_repeated_member_name_is_refused(source, tmp_path):
    with pytest.warns(UserWarning, match="Duplicate name"):  # zipfile warns, and writes it anyway
        hostile = with_member(source.package, tmp_path / "twice.zip", "README.md", b"another readme")
    report = dx.verify_package(hostile)
    assert not report.ok
    assert "member 'README.md' has a name that appears more than once" in report.problems[0]


def test_a_symbolic_link_member_is_refused(source, tmp_path):
    link = zipfile.ZipInfo("dataset/link")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    hostile = with_member(source.package, tmp_path / "link.zip", link, b"../../../../etc/passwd")
    report = dx.verify_package(hostile)
    assert not report.ok
    assert "member 'dataset/link' has a symbolic link" in report.problems[0]
    with pytest.raises(PackageError, match="symbolic link"):
        _package_format.PackageArchive(hostile)


def test_a_plain_package_still_verifies(source):
    assert dx.verify_package(source.package).ok


# -- JSON inside a package that Python's parser cannot take -------------------------------------------------


@pytest.mark.parametrize(
    ("member", "text", "problem"),
    [
        (
            "program.json",
            '{"module": "dspy.Predict", "init": {"x": ' + "[" * 100_000 + "]" * 100_000 + "}}",
            "program.json: does not parse as a dx.Program: program.json, line 1: nested more than 64 levels deep",
        ),
        (
            "program.json",
            '{"module": "dspy.Predict", "name": ' + "9" * 5000 + "}",
            "program.json: does not parse as a dx.Program: program.json, line 1: an integer of 5,000 digits",
        ),
        (
            "program.json",
            '{"module": "dspy.Predict", "signature": "question -> answer", "constraints": ["max() > 0"]}',
            "program.json: does not parse as a dx.Program: constraint 'max() > 0': max() takes at least 1 argument",
        ),
        ("run.json", '{"threads": ' + "[" * 100_000 + "]" * 100_000 + "}", "run.json: JSON nested too deeply"),
        ("run.json", '{"threads": ' + "9" * 5000 + "}", "run.json: JSON that cannot be read (Exceeds the limit"),
    ],
    ids=["program-deep", "program-long-integer", "program-max", "run-deep", "run-long-integer"],
)
def test_unparseable_json_in_a_package_is_a_verification_problem_not_a_crash(
    source, tmp_path, capsys, member, text, problem
):
    edited = rehash(source.package, tmp_path / "json.zip", {member: lambda _: text.encode()})
    report = dx.verify_package(edited)
    assert not report.ok
    assert any(found.startswith(problem) for found in report.problems), report.problems
    assert main(["rerun", str(edited)]) == 2
    assert "fails verification" in capsys.readouterr().err
