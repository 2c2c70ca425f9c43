"""Reproducibility packages: export an evaluation to a zip, verify one, and re-run it.

A package is a zip that holds everything needed to run an evaluation again
somewhere else: the program spec, the data (when small enough), the metric's
name, the run settings including the LM's state (the lab LM's seed and fault
rates), the versions it ran with, and its per-trial results. A checksum
manifest covers every other file, so :func:`verify_package` can tell whether a
package arrived intact, and :func:`rerun_package` runs it again and compares
every trial's score with the recorded one.

Layout::

    program.json              the dx.Program spec (variable values included); Program.from_json reads it
    dataset/manifest.json     name, n, inputs, fields, fingerprint, SHA-256 of the data file and of the source
    dataset/examples.jsonl    one {"id": ..., **fields} per line (left out for large or unstored data)
    run.json                  metric, repeats, timeout, retries, threads, LM model and state, seeds
    environment.json          versions recorded at run time, and the installed packages at export time
    results/trials.csv        one row per trial: example id, repeat, status, score, error type, ...
    results/summary.json      the recorded summary (mean, CI, errors, tokens, cost)
    README.md                 what the package is and how to check and re-run it
    MANIFEST.sha256           "<sha256>  <path>" for every file above

The checksums detect accidental damage and edits made without updating the
manifest; they are not a signature, so they do not prove who wrote a package.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import platform
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import dspy
import pandas as pd

from dspex_lab.data import Dataset
from dspex_lab.errors import DatasetError, DspexLabError, ExecutionError, JournalError, PackageError, ProgramSpecError
from dspex_lab.evaluate._context import Context, current_context
from dspex_lab.evaluate._evaluate import MAX_STORED_EXAMPLES, evaluate
from dspex_lab.journal import DuckDBJournal, open_journal
from dspex_lab.program import Program

__all__ = [
    "PACKAGE_FORMAT",
    "RerunReport",
    "TrialDifference",
    "VerificationReport",
    "export",
    "rerun_package",
    "verify_package",
]

PACKAGE_FORMAT = "dspex_lab.package/1"

# Data is included automatically up to these sizes; include_data=True includes larger stored data too.
MAX_INCLUDED_EXAMPLES = MAX_STORED_EXAMPLES
MAX_INCLUDED_BYTES = 50 * 1024 * 1024

PROGRAM_FILE = "program.json"
DATASET_MANIFEST_FILE = "dataset/manifest.json"
EXAMPLES_FILE = "dataset/examples.jsonl"
RUN_FILE = "run.json"
ENVIRONMENT_FILE = "environment.json"
TRIALS_FILE = "results/trials.csv"
SUMMARY_FILE = "results/summary.json"
README_FILE = "README.md"
CHECKSUM_FILE = "MANIFEST.sha256"
REQUIRED_FILES = (
    PROGRAM_FILE,
    DATASET_MANIFEST_FILE,
    RUN_FILE,
    ENVIRONMENT_FILE,
    TRIALS_FILE,
    SUMMARY_FILE,
    README_FILE,
)

EXPORTED_TRIAL_COLUMNS = (
    "trial_id",
    "example_id",
    "example_index",
    "repeat",
    "status",
    "score",
    "error_type",
    "error_stage",
    "error_message",
    "latency",
    "input_tokens",
    "output_tokens",
    "cost",
    "lm_calls",
    "attempts",
    "prediction",
)
_COMPARED_COLUMNS = ("example_id", "repeat", "status", "score")

# Only classes under this prefix are imported from a package's LM state.
_TRUSTED_CLASS_PREFIX = "dspex_lab."
_LAB_METRICS_PREFIX = "dspex_lab.metrics."
_LAB_METRICS = ("contains", "exact_match", "f1", "numeric_match")
_CHECKSUM_LINE = re.compile(r"^([0-9a-f]{64})  (\S.*)$")
_HASH_CHUNK_SIZE = 1 << 20

Metric = Callable[[dspy.Example, Any], Any]


# -- reports ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerificationReport:
    """What :func:`verify_package` found.

    Attributes:
        path: the package checked.
        ok: True when no problem was found.
        problems: one sentence per problem (a missing, extra or altered file, a spec that does
            not parse, data whose fingerprint differs from the manifest's).
        files_checked: the files whose checksums were compared, in manifest order.
    """

    path: Path
    ok: bool
    problems: tuple[str, ...]
    files_checked: tuple[str, ...]

    def __str__(self) -> str:
        verdict = "OK" if self.ok else f"FAILED ({len(self.problems)} problem{'s' if len(self.problems) != 1 else ''})"
        lines = [f"Package {self.path}: {verdict}", f"  {len(self.files_checked)} files checked against checksums"]
        lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)


@dataclass(frozen=True)
class TrialDifference:
    """One trial whose status or score changed between the package and the re-run.

    Attributes:
        example_id: the example's id.
        repeat: the repeat (rollout) index.
        old_status: the recorded status (``ok`` or ``error``).
        new_status: the re-run's status.
        old_score: the recorded score (None for an error).
        new_score: the re-run's score.
        old_error_type: the recorded error type, if any.
        new_error_type: the re-run's error type, if any.
    """

    example_id: str
    repeat: int
    old_status: str
    new_status: str
    old_score: float | None
    new_score: float | None
    old_error_type: str | None = None
    new_error_type: str | None = None

    def __str__(self) -> str:
        def describe(status: str, score: float | None, error_type: str | None) -> str:
            if status == "ok":
                return f"ok {score!r}"
            return f"{status} ({error_type})" if error_type else status

        old = describe(self.old_status, self.old_score, self.old_error_type)
        new = describe(self.new_status, self.new_score, self.new_error_type)
        return f"{self.example_id}/r{self.repeat}: {old} -> {new}"


@dataclass(frozen=True)
class RerunReport:
    """How a re-run of a package compares with its recorded results, trial by trial.

    Attributes:
        path: the package.
        original_experiment_id: the experiment the package was exported from.
        experiment_id: the re-run's experiment id.
        journal: the journal the re-run was written to, or None for a temporary one.
        n_compared: trials present in both the package and the re-run, matched by (example id, repeat).
        n_identical: compared trials with the same status and the same score.
        differences: the compared trials that differ.
        only_in_package: trial ids recorded in the package that the re-run did not produce.
        only_in_rerun: trial ids the re-run produced that the package does not record.
        old_mean: the recorded mean score.
        new_mean: the re-run's mean score.
    """

    path: Path
    original_experiment_id: str
    experiment_id: str | None
    journal: Path | None
    n_compared: int
    n_identical: int
    differences: tuple[TrialDifference, ...]
    only_in_package: tuple[str, ...]
    only_in_rerun: tuple[str, ...]
    old_mean: float | None
    new_mean: float | None

    @property
    def identical(self) -> bool:
        """True when every recorded trial was re-run and kept its status and score."""
        return (
            self.n_compared > 0
            and self.n_identical == self.n_compared
            and not self.only_in_package
            and not self.only_in_rerun
        )

    def __str__(self) -> str:
        verdict = "REPRODUCED" if self.identical else "NOT REPRODUCED"
        lines = [
            f"Re-run of {self.path} (experiment {self.original_experiment_id}): {verdict}",
            f"  trials compared: {self.n_compared}, identical: {self.n_identical}, differing: {len(self.differences)}",
            f"  mean score: recorded {_format_number(self.old_mean)}, re-run {_format_number(self.new_mean)}",
        ]
        if self.only_in_package:
            lines.append(f"  recorded but not re-run: {len(self.only_in_package)} ({_preview(self.only_in_package)})")
        if self.only_in_rerun:
            lines.append(f"  re-run but not recorded: {len(self.only_in_rerun)} ({_preview(self.only_in_rerun)})")
        lines += [f"  - {difference}" for difference in self.differences[:20]]
        if len(self.differences) > 20:
            lines.append(f"  ... and {len(self.differences) - 20} more differing trials")
        where = f"journal {self.journal}" if self.journal is not None else "a temporary journal"
        lines.append(f"  re-run experiment {self.experiment_id} in {where}")
        return "\n".join(lines)


def _format_number(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _preview(names: Sequence[str]) -> str:
    shown = ", ".join(names[:5])
    return shown + (", ..." if len(names) > 5 else "")


# -- export ----------------------------------------------------------------------------------------


def export(
    experiment_id: str,
    path: str | os.PathLike[str],
    *,
    journal: str | os.PathLike[str] | DuckDBJournal | None = None,
    include_data: bool | str = "auto",
) -> Path:
    """Write a reproducibility package (a zip) for a journaled evaluation.

    Args:
        experiment_id: the evaluation's id in the journal.
        path: the zip to write (replaced if it exists), or an existing folder to write
            ``dspex-<experiment_id>.zip`` into.
        journal: the journal (a path or a journal object); defaults to the current context's.
        include_data: ``"auto"`` includes the examples when the journal stored them and they
            are at most 20,000 examples and 50 MB; True always includes them (an error if they
            were not stored); False leaves them out (the package then identifies the data by
            fingerprint only, and a re-run needs the data passed in).

    Returns:
        The path of the written zip.

    Raises:
        JournalError: no journal, an unknown experiment id, or an experiment that is not a
            finished evaluation.
        ProgramSpecError: the experiment evaluated a live ``dspy.Module`` with no program spec.
        DatasetError: ``include_data=True`` but the examples were not stored in the journal or
            do not reproduce the recorded fingerprint, or ``include_data`` has another value.
    """
    if not (include_data is True or include_data is False or include_data == "auto"):
        raise DatasetError(f"include_data must be True, False or 'auto', got {include_data!r}")
    source_journal = _journal_of(journal)
    experiment = source_journal.experiment(experiment_id)
    _check_exportable(experiment, source_journal)
    trials = source_journal.trials(experiment_id)
    examples_text, omitted_reason, identifier = _examples_text(experiment, source_journal, include_data=include_data)

    files: dict[str, bytes] = {}
    files[PROGRAM_FILE] = _json_bytes(experiment["program_spec"])
    files[DATASET_MANIFEST_FILE] = _json_bytes(
        _dataset_manifest(experiment, examples_text, omitted_reason=omitted_reason, identifier=identifier)
    )
    if examples_text is not None:
        files[EXAMPLES_FILE] = examples_text
    files[RUN_FILE] = _json_bytes(_run_description(experiment))
    files[ENVIRONMENT_FILE] = _json_bytes(_environment_description(experiment))
    files[TRIALS_FILE] = _trials_csv(trials)
    files[SUMMARY_FILE] = _json_bytes(_summary_description(experiment, trials))
    files[README_FILE] = _readme(
        experiment, trials, data_included=examples_text is not None, identifier_key=identifier[0]
    ).encode("utf-8")
    files[CHECKSUM_FILE] = "".join(
        f"{hashlib.sha256(content).hexdigest()}  {name}\n" for name, content in sorted(files.items())
    ).encode("utf-8")

    target = Path(path)
    if target.is_dir():
        target = target / f"dspex-{experiment_id}.zip"
    target.parent.mkdir(parents=True, exist_ok=True)
    _write_zip(target, files)
    return target.resolve()


def _journal_of(journal: str | os.PathLike[str] | DuckDBJournal | None) -> DuckDBJournal:
    if isinstance(journal, DuckDBJournal):
        return journal
    if journal is not None:
        return open_journal(journal)
    context_journal = current_context().journal
    if context_journal is None:
        raise JournalError(
            "export needs a journal: the current dx.Context keeps results in memory only (journal=False); "
            "pass journal='path/to/journal.duckdb'"
        )
    return context_journal


def _check_exportable(experiment: Mapping[str, Any], journal: DuckDBJournal) -> None:
    identifier = experiment["id"]
    if experiment["kind"] != "evaluation":
        raise JournalError(
            f"experiment {identifier} in {journal.path} is a {experiment['kind']}, not an evaluation; "
            "only evaluations (dx.evaluate runs) can be exported"
        )
    if experiment["program_spec"] is None:
        raise ProgramSpecError(
            f"experiment {identifier} in {journal.path} evaluated a live dspy.Module "
            f"({experiment.get('program_name')!s}) with no program spec, so it cannot be re-run from a package; "
            "evaluate a dx.Program instead to make it exportable"
        )
    if experiment["status"] != "finished":
        raise JournalError(
            f"experiment {identifier} in {journal.path} is {experiment['status']}, not finished; "
            "only a finished evaluation can be exported (resume it with dx.evaluate(..., resume=...) first)"
        )


def _examples_text(
    experiment: Mapping[str, Any], journal: DuckDBJournal, *, include_data: bool | str
) -> tuple[bytes | None, str | None, tuple[str, bool]]:
    """Return the examples file's bytes (or None), why the data was left out (or None), and its id key.

    The id key is the line key holding each example's id and whether it is also a data field
    (see :func:`_identifier_key`).
    """
    default_identifier = ("id", False)
    if include_data is False:
        return None, "left out at export (include_data=False)", default_identifier
    identifier = experiment["id"]
    manifest = experiment["dataset_manifest"] or {}
    stored = journal.dataset_examples(experiment["dataset_fingerprint"])
    if not stored:
        reason = (
            f"not stored in the journal (datasets of more than {MAX_STORED_EXAMPLES:,} examples are "
            "identified by fingerprint only)"
        )
        if include_data is True:
            raise DatasetError(
                f"cannot include the data of experiment {identifier}: dataset {manifest.get('name')!r} "
                f"({manifest.get('n')} examples) is {reason}; export with include_data=False or 'auto'",
                path=str(journal.path),
            )
        return None, reason, default_identifier
    if include_data == "auto" and len(stored) > MAX_INCLUDED_EXAMPLES:
        return (
            None,
            f"more than {MAX_INCLUDED_EXAMPLES:,} examples (export with include_data=True to include them)",
            default_identifier,
        )
    inputs = list(manifest.get("inputs") or stored[0][1]["inputs"])
    rebuilt = _dataset_from_records(
        [(example_id, record["fields"]) for example_id, record in stored],
        inputs=inputs,
        name=manifest.get("name") or experiment["dataset_name"] or "dataset",
    )
    if rebuilt.fingerprint != experiment["dataset_fingerprint"]:
        reason = (
            "the examples stored in the journal do not reproduce the recorded fingerprint "
            "(some field values were not JSON data)"
        )
        if include_data is True:
            raise DatasetError(f"cannot include the data of experiment {identifier}: {reason}", path=str(journal.path))
        return None, reason, default_identifier
    records = [(example_id, record["fields"]) for example_id, record in stored]
    key, key_is_field = _identifier_key(records)
    text = _examples_jsonl(records, key=key)
    if include_data == "auto" and len(text) > MAX_INCLUDED_BYTES:
        reason = f"larger than {MAX_INCLUDED_BYTES // (1024 * 1024)} MB (export with include_data=True)"
        return None, reason, default_identifier
    return text, None, (key, key_is_field)


def _identifier_key(records: Sequence[tuple[str, Mapping[str, Any]]]) -> tuple[str, bool]:
    """Return the line key holding each example's id, and whether it is also a data field.

    ``id`` when no example has an ``id`` field, or when every example's ``id`` field already
    equals its example id; otherwise a key no example uses, so no field is overwritten.
    """
    with_field = [fields for _, fields in records if "id" in fields]
    if not with_field:
        return "id", False
    if len(with_field) == len(records) and all(fields["id"] == example_id for example_id, fields in records):
        return "id", True
    used = {name for _, fields in records for name in fields}
    key = "example_id"
    while key in used:
        key = "_" + key
    return key, False


def _examples_jsonl(records: Sequence[tuple[str, Mapping[str, Any]]], *, key: str) -> bytes:
    lines = [json.dumps({key: example_id, **fields}, ensure_ascii=False) for example_id, fields in records]
    return ("\n".join(lines) + "\n").encode("utf-8")


def _dataset_from_records(
    records: Sequence[tuple[str, Mapping[str, Any]]], *, inputs: Sequence[str], name: str
) -> Dataset:
    return Dataset(
        [dict(fields) for _, fields in records],
        inputs=list(inputs),
        name=name,
        ids=[example_id for example_id, _ in records],
    )


def _dataset_manifest(
    experiment: Mapping[str, Any],
    examples_text: bytes | None,
    *,
    omitted_reason: str | None,
    identifier: tuple[str, bool],
) -> dict[str, Any]:
    recorded = dict(experiment["dataset_manifest"] or {})
    identifier_key, identifier_is_field = identifier
    return {
        "format": PACKAGE_FORMAT,
        "name": recorded.get("name", experiment["dataset_name"]),
        "n": recorded.get("n"),
        "inputs": recorded.get("inputs"),
        "fields": recorded.get("fields"),
        "fingerprint": experiment["dataset_fingerprint"],
        "examples_file": EXAMPLES_FILE if examples_text is not None else None,
        "examples_sha256": hashlib.sha256(examples_text).hexdigest() if examples_text is not None else None,
        "examples_omitted": omitted_reason,
        "id_key": identifier_key,
        "id_is_field": identifier_is_field,
        "source": recorded.get("source"),
        "source_sha256": recorded.get("source_sha256"),
        "query": recorded.get("query"),
    }


def _run_description(experiment: Mapping[str, Any]) -> dict[str, Any]:
    config = experiment["config"] or {}
    lm_state = config.get("lm_state")
    return {
        "format": PACKAGE_FORMAT,
        "experiment_id": experiment["id"],
        "name": experiment["name"],
        "status": experiment["status"],
        "program_name": experiment.get("program_name"),
        "program_fingerprint": experiment["program_fingerprint"],
        "dataset_fingerprint": experiment["dataset_fingerprint"],
        "metric": experiment["metric"],
        "repeats": config.get("repeats", 1),
        "timeout": config.get("timeout"),
        "retries": config.get("retries", 3),
        "max_errors": config.get("max_errors"),
        "threads": config.get("threads"),
        "cluster": config.get("cluster"),
        "budget": config.get("budget"),
        "lm": {"model": config.get("lm"), "state": lm_state},
        "seeds": _seeds(lm_state),
        "created_at": _timestamp_text(experiment.get("created_at")),
        "finished_at": _timestamp_text(experiment.get("finished_at")),
    }


def _seeds(lm_state: Any) -> dict[str, Any]:
    """Return what fixes the run's randomness: the lab engine's seed and fault rates, and the rollouts."""
    seeds: dict[str, Any] = {"rollouts": "repeat r of every example runs as rollout r"}
    engine = lm_state.get("engine") if isinstance(lm_state, Mapping) else None
    engine_state = engine.get("state") if isinstance(engine, Mapping) else None
    if isinstance(engine_state, Mapping):
        for key in ("seed", "error_rate", "rate_limit_rate", "hang_rate", "hang_seconds", "latency"):
            if key in engine_state:
                seeds[key] = engine_state[key]
    if isinstance(lm_state, Mapping) and "temperature" in lm_state:
        seeds["lm_temperature"] = lm_state["temperature"]
    return seeds


def _environment_description(experiment: Mapping[str, Any]) -> dict[str, Any]:
    packages: dict[str, str] = {}
    for distribution in metadata.distributions():
        name = distribution.metadata["Name"]
        if name:
            packages.setdefault(name.lower().replace("_", "-"), f"{name}=={distribution.version}")
    return {
        "at_run": experiment.get("environment") or {},
        "at_export": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        "pip_freeze": [packages[key] for key in sorted(packages)],
    }


def _summary_description(experiment: Mapping[str, Any], trials: pd.DataFrame) -> dict[str, Any]:
    return {
        "experiment_id": experiment["id"],
        "status": experiment["status"],
        "n_trials_recorded": len(trials),
        **(experiment["summary"] or {}),
    }


def _timestamp_text(value: Any) -> str | None:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return pd.Timestamp(value).isoformat()


def _csv_cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back as the same float
    if hasattr(value, "item"):  # numpy scalars
        return _csv_cell(value.item())
    return str(value)


def _trials_csv(trials: pd.DataFrame) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = [column for column in EXPORTED_TRIAL_COLUMNS if column in trials.columns]
    writer.writerow(columns)
    for row in trials[columns].itertuples(index=False, name=None):
        writer.writerow([_csv_cell(value) for value in row])
    return buffer.getvalue().encode("utf-8")


def _readme(experiment: Mapping[str, Any], trials: pd.DataFrame, *, data_included: bool, identifier_key: str) -> str:
    summary = experiment["summary"] or {}
    config = experiment["config"] or {}
    manifest = experiment["dataset_manifest"] or {}
    interval = summary.get("ci") or [None, None]
    errors = summary.get("errors") or {}
    error_text = ", ".join(f"{kind}: {count}" for kind, count in errors.items()) or "none"
    tokens = summary.get("tokens") or {}
    cost = summary.get("cost")
    seeds = _seeds(config.get("lm_state"))
    data_text = (
        f"The {manifest.get('n')} examples are in `{EXAMPLES_FILE}`."
        if data_included
        else (
            "The examples are NOT included; the data is identified by its fingerprint in "
            f"`{DATASET_MANIFEST_FILE}`. To re-run, load the same data and call "
            "`dx.rerun_package(path, dataset=...)`."
        )
    )
    confidence = summary.get("confidence", 0.95)
    lines = [
        f"# Reproducibility package: {experiment['name']}",
        "",
        f"This zip records one evaluation made with dspex_lab (experiment `{experiment['id']}`): the program, "
        "the data, the metric, the run settings and LM state, the software versions, and the score of every "
        "trial, so that anyone can check the files and run the evaluation again.",
        "",
        "## Headline numbers",
        "",
        f"- program: `{experiment.get('program_name')}` ({(experiment['program_spec'] or {}).get('module')})",
        f"- dataset: `{manifest.get('name')}`, {manifest.get('n')} examples, fingerprint "
        f"`{str(experiment['dataset_fingerprint'])[:16]}`",
        f"- metric: `{experiment['metric']}`",
        f"- LM: `{config.get('lm')}`" + (f" (seed {seeds['seed']})" if "seed" in seeds else ""),
        f"- mean score: {_format_number(summary.get('mean'))} "
        f"({confidence:.0%} CI {_format_number(interval[0])} to {_format_number(interval[1])}, "
        f"{summary.get('ci_method', 't')})",
        f"- examples scored: {summary.get('n')}; repeats per example: {config.get('repeats', 1)}; "
        f"trials: {len(trials)}",
        f"- errors (counted apart, not averaged in as 0): {summary.get('n_errors', 0)} ({error_text})",
        f"- tokens in/out: {tokens.get('input', 0):,}/{tokens.get('output', 0):,}; cost: "
        + ("unknown" if cost is None else f"${cost:.4f}"),
        "",
        "## Check and re-run",
        "",
        "With dspex_lab installed (the versions it ran with are in `environment.json`):",
        "",
        "```",
        "dspex verify <this zip>    # checksums, program spec, data fingerprint",
        "dspex rerun <this zip>     # run again and compare every trial's score",
        "```",
        "",
        "`dspex verify` exits 0 when every file matches `MANIFEST.sha256`, the program spec parses and the "
        "examples reproduce the recorded fingerprint. `dspex rerun` verifies first, runs the evaluation again "
        "(add `--journal PATH` to keep the new run, `--threads N` to change parallelism) and exits 0 only when "
        "every trial has the same status and score as recorded. From Python: `dx.verify_package(path)` and "
        "`dx.rerun_package(path)`.",
        "",
        "The offline lab LM (`lab/...` models) is deterministic per prompt, temperature and rollout, so a "
        "re-run on it reproduces every score exactly. A hosted LM needs its credentials in the environment "
        "(e.g. `OPENAI_API_KEY`), and its scores may differ from run to run.",
        "",
        "## Files",
        "",
        f"- `{PROGRAM_FILE}`: the program spec with its variable values (`dx.Program.from_json` reads it)",
        f"- `{DATASET_MANIFEST_FILE}`: dataset name, size, input fields, fingerprint and file checksums",
        f"- `{EXAMPLES_FILE}`: one JSON object per example, its id under `{identifier_key}`. {data_text}",
        f"- `{RUN_FILE}`: metric, repeats, timeout, retries, threads, LM model and state (seed, fault rates)",
        f"- `{ENVIRONMENT_FILE}`: versions at run time, and installed packages at export time",
        f"- `{TRIALS_FILE}`: one row per trial (example id, repeat, status, score, error type, latency, tokens)",
        f"- `{SUMMARY_FILE}`: the recorded summary statistics",
        f"- `{CHECKSUM_FILE}`: SHA-256 of every other file (`sha256sum -c {CHECKSUM_FILE}` after unzipping)",
        "",
    ]
    return "\n".join(lines)


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n").encode("utf-8")


def _write_zip(target: Path, files: Mapping[str, bytes]) -> None:
    """Write the zip next to ``target`` and move it into place, so a failed export leaves no half zip."""
    handle, temporary = tempfile.mkstemp(prefix=target.name + ".", suffix=".partial", dir=target.parent)
    os.close(handle)
    try:
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name in sorted(files, key=lambda name: (name == CHECKSUM_FILE, name)):
                archive.writestr(name, files[name])
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# -- verification ----------------------------------------------------------------------------------


def verify_package(path: str | os.PathLike[str]) -> VerificationReport:
    """Check a package's files against its checksum manifest and its contents against each other.

    Checks that every file listed in ``MANIFEST.sha256`` is present with the same SHA-256, that
    no unlisted file was added, that the required files are there, that ``program.json`` parses
    as a :class:`~dspex_lab.Program` with the recorded fingerprint, and that the examples (when
    included) rebuild a dataset with the manifest's fingerprint.

    Args:
        path: the package zip.

    Returns:
        The report; ``ok`` is False when any problem was found. Problems are reported, not raised.
    """
    package = Path(path)
    if not package.is_file():
        return VerificationReport(package, False, (f"{package}: no such file",), ())
    try:
        archive = zipfile.ZipFile(package)
    except (zipfile.BadZipFile, OSError) as error:
        return VerificationReport(package, False, (f"{package}: not a readable zip archive ({error})",), ())
    with archive:
        problems: list[str] = []
        checked = _check_checksums(archive, problems)
        contents = _PackageContents(archive, problems)
        _check_objects(contents, problems)
        _check_program(contents, problems)
        _check_examples(contents, problems)
        _check_trials(contents, problems)
    return VerificationReport(package, not problems, tuple(problems), checked)


def _check_checksums(archive: zipfile.ZipFile, problems: list[str]) -> tuple[str, ...]:
    names = [info.filename for info in archive.infolist() if not info.is_dir()]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    for name in duplicated:
        problems.append(f"{name}: appears more than once in the zip")
    if CHECKSUM_FILE not in names:
        problems.append(f"{CHECKSUM_FILE}: missing, so no file can be checked")
        return ()
    listed: dict[str, str] = {}
    text = archive.read(CHECKSUM_FILE).decode("utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _CHECKSUM_LINE.match(line)
        if match is None:
            problems.append(f"{CHECKSUM_FILE}:{number}: not '<sha256>  <path>': {line[:80]!r}")
            continue
        digest, name = match.groups()
        if name in listed:
            problems.append(f"{CHECKSUM_FILE}:{number}: {name} is listed twice")
        listed[name] = digest
    present = set(names)
    checked = []
    for name, digest in listed.items():
        if name not in present:
            problems.append(f"{name}: listed in {CHECKSUM_FILE} but missing from the zip")
            continue
        checked.append(name)
        actual = _member_sha256(archive, name)
        if actual != digest:
            problems.append(f"{name}: altered (SHA-256 {actual[:16]}..., {CHECKSUM_FILE} says {digest[:16]}...)")
    for name in sorted(present - set(listed) - {CHECKSUM_FILE}):
        problems.append(f"{name}: in the zip but not listed in {CHECKSUM_FILE}")
    for name in REQUIRED_FILES:
        if name not in present and name not in listed:
            problems.append(f"{name}: required but absent from the zip and from {CHECKSUM_FILE}")
    return tuple(checked)


def _member_sha256(archive: zipfile.ZipFile, name: str) -> str:
    digest = hashlib.sha256()
    with archive.open(name) as member:
        while chunk := member.read(_HASH_CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


class _PackageContents:
    """Reads a package's JSON files once, recording a problem for any that do not parse."""

    def __init__(self, archive: zipfile.ZipFile, problems: list[str]) -> None:
        self.archive = archive
        self.problems = problems
        self.names = set(archive.namelist())
        self._cache: dict[str, Any] = {}

    def text(self, name: str) -> str | None:
        if name not in self.names:
            return None
        try:
            return self.archive.read(name).decode("utf-8")
        except UnicodeDecodeError as error:
            self.problems.append(f"{name}: not UTF-8 text ({error})")
            return None

    def json(self, name: str) -> Any:
        if name not in self._cache:
            text = self.text(name)
            value = None
            if text is not None:
                try:
                    value = json.loads(text)
                except json.JSONDecodeError as error:
                    self.problems.append(f"{name}:{error.lineno}: not valid JSON ({error.msg})")
            self._cache[name] = value
        return self._cache[name]


def _check_objects(contents: _PackageContents, problems: list[str]) -> None:
    for name in (RUN_FILE, DATASET_MANIFEST_FILE, SUMMARY_FILE, ENVIRONMENT_FILE):
        value = contents.json(name)
        if value is not None and not isinstance(value, dict):
            problems.append(f"{name}: a JSON {type(value).__name__}, expected an object")


def _check_program(contents: _PackageContents, problems: list[str]) -> None:
    spec = contents.json(PROGRAM_FILE)
    if spec is None:
        return
    try:
        program = Program.from_dict(spec)
    except DspexLabError as error:
        problems.append(f"{PROGRAM_FILE}: does not parse as a dx.Program: {error}")
        return
    run = contents.json(RUN_FILE)
    recorded = run.get("program_fingerprint") if isinstance(run, Mapping) else None
    if recorded is not None and program.fingerprint != recorded:
        problems.append(
            f"{PROGRAM_FILE}: program fingerprint {program.fingerprint[:16]}... differs from "
            f"{recorded[:16]}... recorded in {RUN_FILE}"
        )


def _check_examples(contents: _PackageContents, problems: list[str]) -> None:
    manifest = contents.json(DATASET_MANIFEST_FILE)
    if not isinstance(manifest, Mapping):
        return
    if manifest.get("examples_file") is None:
        if EXAMPLES_FILE in contents.names:
            problems.append(f"{EXAMPLES_FILE}: present, but {DATASET_MANIFEST_FILE} says the data is not included")
        return
    text = contents.text(EXAMPLES_FILE)
    if text is None:
        if EXAMPLES_FILE not in contents.names:
            problems.append(f"{EXAMPLES_FILE}: named in {DATASET_MANIFEST_FILE} but absent")
        return
    recorded_sha256 = manifest.get("examples_sha256")
    actual_sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if recorded_sha256 != actual_sha256:
        problems.append(f"{EXAMPLES_FILE}: SHA-256 differs from examples_sha256 in {DATASET_MANIFEST_FILE}")
    try:
        dataset = _read_examples(text, manifest)
    except DatasetError as error:
        problems.append(str(error))
        return
    if len(dataset) != manifest.get("n"):
        problems.append(f"{EXAMPLES_FILE}: {len(dataset)} examples, {DATASET_MANIFEST_FILE} says {manifest.get('n')}")
    if dataset.fingerprint != manifest.get("fingerprint"):
        problems.append(
            f"{EXAMPLES_FILE}: the examples' fingerprint {dataset.fingerprint[:16]}... differs from "
            f"{str(manifest.get('fingerprint'))[:16]}... in {DATASET_MANIFEST_FILE}"
        )


def _read_examples(text: str, manifest: Mapping[str, Any]) -> Dataset:
    """Rebuild the dataset from the examples file; DatasetError names the file and line."""
    key = manifest.get("id_key") or "id"
    keep_key = bool(manifest.get("id_is_field"))
    inputs = manifest.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise DatasetError(f"no input field names in {DATASET_MANIFEST_FILE}", path=EXAMPLES_FILE)
    records: list[tuple[str, dict[str, Any]]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            fields = json.loads(line)
        except json.JSONDecodeError as error:
            raise DatasetError(f"not valid JSON ({error.msg})", path=EXAMPLES_FILE, line=number) from None
        if not isinstance(fields, dict) or key not in fields:
            raise DatasetError(f"not a JSON object with the example id under {key!r}", path=EXAMPLES_FILE, line=number)
        example_id = fields[key] if keep_key else fields.pop(key)
        if not isinstance(example_id, str):
            raise DatasetError(f"example id {example_id!r} is not a string", path=EXAMPLES_FILE, line=number)
        records.append((example_id, fields))
    try:
        return _dataset_from_records(records, inputs=inputs, name=str(manifest.get("name") or "dataset"))
    except DatasetError as error:
        raise DatasetError(f"cannot rebuild the dataset: {error}", path=EXAMPLES_FILE) from None


def _check_trials(contents: _PackageContents, problems: list[str]) -> None:
    text = contents.text(TRIALS_FILE)
    if text is None:
        return
    try:
        _read_trials(text)
    except DatasetError as error:
        problems.append(str(error))


def _read_trials(text: str) -> dict[tuple[str, int], dict[str, Any]]:
    """Return the recorded trials keyed by (example id, repeat); DatasetError names the line."""
    reader = csv.DictReader(io.StringIO(text))
    missing = [column for column in _COMPARED_COLUMNS if column not in (reader.fieldnames or ())]
    if missing:
        raise DatasetError(f"missing column(s) {missing}", path=TRIALS_FILE, line=1)
    trials: dict[tuple[str, int], dict[str, Any]] = {}
    for row in reader:
        line = reader.line_num
        try:
            repeat = int(row["repeat"])
            score = float(row["score"]) if row["score"] else None
        except ValueError as error:
            raise DatasetError(f"unreadable repeat or score ({error})", path=TRIALS_FILE, line=line) from None
        key = (row["example_id"], repeat)
        if key in trials:
            raise DatasetError(f"trial {key[0]}/r{repeat} appears twice", path=TRIALS_FILE, line=line)
        trials[key] = {"status": row["status"], "score": score, "error_type": row.get("error_type") or None}
    return trials


# -- re-run ----------------------------------------------------------------------------------------


def rerun_package(
    path: str | os.PathLike[str],
    *,
    journal: str | os.PathLike[str] | DuckDBJournal | None = None,
    threads: int | None = None,
    metric: Metric | None = None,
    dataset: Dataset | None = None,
    lm: dspy.BaseLM | None = None,
) -> RerunReport:
    """Verify a package, run its evaluation again, and compare every trial with the recorded one.

    Args:
        path: the package zip.
        journal: where to record the re-run (a path or a journal); a temporary journal when omitted.
        threads: worker threads; the recorded number when omitted (scores do not depend on it).
        metric: the metric to use; needed when the package's metric is not one of
            ``dspex_lab.metrics`` (only those are looked up by name).
        dataset: the data, for a package exported without its examples; its fingerprint must
            equal the recorded one.
        lm: the LM to use instead of the one rebuilt from the package.

    Returns:
        The comparison, matched by (example id, repeat).

    Raises:
        ExecutionError: the package fails verification, or its metric cannot be found by name.
        DatasetError: the package has no examples and no ``dataset`` was given, or the given one differs.
        ProgramSpecError: the recorded LM state names a class outside dspex_lab.
    """
    report = verify_package(path)
    if not report.ok:
        raise PackageError(
            f"refusing to re-run {report.path}: it fails verification "
            f"({len(report.problems)} problem(s): {'; '.join(report.problems[:5])})"
        )
    with zipfile.ZipFile(report.path) as archive:
        run = json.loads(archive.read(RUN_FILE))
        program = Program.from_json(archive.read(PROGRAM_FILE).decode("utf-8"))
        manifest = json.loads(archive.read(DATASET_MANIFEST_FILE))
        examples_text = archive.read(EXAMPLES_FILE).decode("utf-8") if EXAMPLES_FILE in archive.namelist() else None
        recorded_trials = _read_trials(archive.read(TRIALS_FILE).decode("utf-8"))
        summary = json.loads(archive.read(SUMMARY_FILE))
    data = _rerun_dataset(report.path, manifest, examples_text, dataset)
    chosen_metric = metric if metric is not None else _metric_by_name(run.get("metric"), report.path)
    chosen_lm = lm if lm is not None else _rebuild_lm(run.get("lm") or {}, report.path)
    run_threads = threads or run.get("threads") or None
    # A cluster field changes only the standard error, never a trial; a spending budget is not re-applied,
    # since stopping early would leave recorded trials without a re-run.
    extra: dict[str, Any] = {"cluster": run["cluster"]} if run.get("cluster") else {}

    with tempfile.TemporaryDirectory(prefix="dspex-rerun-", ignore_cleanup_errors=True) as folder:
        target_journal = _journal_of(journal) if journal is not None else open_journal(Path(folder) / "rerun.duckdb")
        with Context(lm=chosen_lm, journal=target_journal, threads=run_threads):
            result = evaluate(
                program,
                data,
                metric=chosen_metric,
                name=f"{run.get('name') or program.name} (rerun of {run.get('experiment_id')})",
                repeats=int(run.get("repeats") or 1),
                timeout=run.get("timeout"),
                retries=int(run.get("retries") if run.get("retries") is not None else 3),
                max_errors=run.get("max_errors"),
                progress=False,
                **extra,
            )
        # Read back through the journal: this also waits for its file to be closed before cleanup.
        new_frame = target_journal.trials(result.experiment_id) if result.experiment_id is not None else result.table()
    new_trials = _frame_trials(new_frame)
    return _compare_trials(
        report.path,
        run,
        recorded_trials,
        new_trials,
        old_mean=summary.get("mean"),
        new_mean=_finite(result.mean),
        experiment_id=result.experiment_id,
        journal=target_journal.path if journal is not None else None,
    )


def _rerun_dataset(
    package: Path, manifest: Mapping[str, Any], examples_text: str | None, dataset: Dataset | None
) -> Dataset:
    recorded = manifest.get("fingerprint")
    if dataset is not None:
        if not isinstance(dataset, Dataset):
            raise DatasetError(f"dataset must be a dx.Dataset, got {type(dataset).__name__}")
        if dataset.fingerprint != recorded:
            raise DatasetError(
                f"the given dataset's fingerprint {dataset.fingerprint[:16]}... differs from "
                f"{str(recorded)[:16]}... recorded in {DATASET_MANIFEST_FILE}; pass the same data the package ran on",
                path=str(package),
            )
        return dataset
    if examples_text is None:
        raise DatasetError(
            f"the package has no {EXAMPLES_FILE} ({manifest.get('examples_omitted') or 'data left out'}); "
            f"load dataset {manifest.get('name')!r} ({manifest.get('n')} examples, fingerprint "
            f"{str(recorded)[:16]}...) and call dx.rerun_package(path, dataset=...)",
            path=str(package),
        )
    return _read_examples(examples_text, manifest)


def _metric_by_name(name: Any, package: Path) -> Metric:
    if isinstance(name, str) and name.startswith(_LAB_METRICS_PREFIX):
        short = name[len(_LAB_METRICS_PREFIX) :]
        if short in _LAB_METRICS:
            from dspex_lab import metrics

            return getattr(metrics, short)  # type: ignore[no-any-return]
    raise ExecutionError(
        f"{package}: metric {name!r} in {RUN_FILE} is not one of dspex_lab.metrics "
        f"({', '.join(_LAB_METRICS)}), and metrics are only looked up by name there; "
        f"pass it yourself: dx.rerun_package(path, metric=your_metric)"
    )


def _class_paths(state: Mapping[str, Any]) -> list[str]:
    paths = [state.get("_dspy_lm_class")]
    for key in ("engine", "async_engine"):
        engine = state.get(key)
        if isinstance(engine, Mapping):
            paths.append(engine.get("class"))
    return [str(path) for path in paths if path is not None]


def _rebuild_lm(description: Mapping[str, Any], package: Path) -> dspy.BaseLM:
    """Rebuild a lab LM from its state; any other LM from its model string (credentials from the environment)."""
    from dspex_lab.lm import resolve_lm

    state = description.get("state")
    model = description.get("model")
    lm_class = state.get("_dspy_lm_class") if isinstance(state, Mapping) else None
    if isinstance(state, Mapping) and isinstance(lm_class, str) and lm_class.startswith(_TRUSTED_CLASS_PREFIX):
        untrusted = [path for path in _class_paths(state) if not path.startswith(_TRUSTED_CLASS_PREFIX)]
        if untrusted:
            raise ProgramSpecError(
                f"{package}: the LM state in {RUN_FILE} names class(es) {untrusted} outside dspex_lab; "
                "refusing to import them; pass lm= to dx.rerun_package to choose the LM yourself"
            )
        try:
            return dspy.BaseLM.load_state(dict(state), allow_custom_lm_class=True)
        except (ImportError, TypeError, ValueError) as error:
            raise ProgramSpecError(f"{package}: cannot rebuild the LM from {RUN_FILE}: {error}") from error
    if not isinstance(model, str) or not model:
        raise ProgramSpecError(f"{package}: {RUN_FILE} records no LM model; pass lm= to dx.rerun_package")
    return resolve_lm(model)


def _frame_trials(frame: pd.DataFrame) -> dict[tuple[str, int], dict[str, Any]]:
    trials: dict[tuple[str, int], dict[str, Any]] = {}
    for example_id, repeat, status, score, error_type in frame[
        ["example_id", "repeat", "status", "score", "error_type"]
    ].itertuples(index=False, name=None):
        trials[(str(example_id), int(repeat))] = {
            "status": str(status),
            "score": _finite(score),
            "error_type": None if error_type is None or pd.isna(error_type) else str(error_type),
        }
    return trials


def _finite(value: Any) -> float | None:
    if value is None or pd.isna(value):
        return None
    return float(value)


def _same(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return old["status"] == new["status"] and old["score"] == new["score"]


def _compare_trials(
    package: Path,
    run: Mapping[str, Any],
    recorded: Mapping[tuple[str, int], Mapping[str, Any]],
    rerun: Mapping[tuple[str, int], Mapping[str, Any]],
    *,
    old_mean: float | None,
    new_mean: float | None,
    experiment_id: str | None,
    journal: Path | None,
) -> RerunReport:
    shared = [key for key in recorded if key in rerun]
    differences = tuple(
        TrialDifference(
            example_id=example_id,
            repeat=repeat,
            old_status=recorded[(example_id, repeat)]["status"],
            new_status=rerun[(example_id, repeat)]["status"],
            old_score=recorded[(example_id, repeat)]["score"],
            new_score=rerun[(example_id, repeat)]["score"],
            old_error_type=recorded[(example_id, repeat)]["error_type"],
            new_error_type=rerun[(example_id, repeat)]["error_type"],
        )
        for example_id, repeat in shared
        if not _same(recorded[(example_id, repeat)], rerun[(example_id, repeat)])
    )
    return RerunReport(
        path=package,
        original_experiment_id=str(run.get("experiment_id")),
        experiment_id=experiment_id,
        journal=journal,
        n_compared=len(shared),
        n_identical=len(shared) - len(differences),
        differences=differences,
        only_in_package=_trial_ids(key for key in recorded if key not in rerun),
        only_in_rerun=_trial_ids(key for key in rerun if key not in recorded),
        old_mean=_finite(old_mean),
        new_mean=new_mean,
    )


def _trial_ids(keys: Iterable[tuple[str, int]]) -> tuple[str, ...]:
    return tuple(f"{example_id}/r{repeat}" for example_id, repeat in keys)
