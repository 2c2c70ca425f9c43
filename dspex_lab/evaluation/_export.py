"""Export a journaled evaluation as a reproducibility package (see :mod:`._package_format` for the layout).

Everything written goes through the redaction policy once more on the way out
(:func:`~dspex_lab.trace.redaction.redact_for_storage`): the run settings and LM
state in ``run.json``, the error messages in ``results/trials.csv``, the summary
and the environment, whatever the journal holds.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import platform
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from dspex_lab.errors import DatasetError, JournalError, ProgramSpecError
from dspex_lab.evaluation._package_format import (
    CHECKSUM_FILE,
    DATASET_MANIFEST_FILE,
    ENVIRONMENT_FILE,
    EXAMPLES_FILE,
    PACKAGE_FORMAT,
    PROGRAM_FILE,
    README_FILE,
    RUN_FILE,
    SUMMARY_FILE,
    TRIALS_FILE,
    dataset_from_records,
    json_bytes,
)
from dspex_lab.evaluation._package_reports import format_number
from dspex_lab.journal import JournalStore
from dspex_lab.session import MAX_STORED_EXAMPLES, journal_store
from dspex_lab.trace.redaction import mask_text, redact_for_storage

__all__ = ["EXPORTED_TRIAL_COLUMNS", "export", "lab_seeds"]

# Data is included automatically up to these sizes; include_data=True includes larger stored data too.
MAX_INCLUDED_EXAMPLES = MAX_STORED_EXAMPLES
MAX_INCLUDED_BYTES = 50 * 1024 * 1024

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
# Free text that may quote a provider's answer (and so a key): masked on the way out.
_TEXT_COLUMNS = frozenset({"error_message", "prediction"})


def export(
    experiment_id: str,
    path: str | os.PathLike[str],
    *,
    journal: str | os.PathLike[str] | JournalStore | None = None,
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
        JournalError: an unknown experiment id, or an experiment that is not a finished evaluation.
        ProgramSpecError: the experiment evaluated a live ``dspy.Module`` with no program spec.
        DatasetError: ``include_data=True`` but the examples were not stored in the journal or
            do not reproduce the recorded fingerprint, or ``include_data`` has another value.
    """
    if not (include_data is True or include_data is False or include_data == "auto"):
        raise DatasetError(f"include_data must be True, False or 'auto', got {include_data!r}")
    source_journal = journal_store(journal)
    experiment = source_journal.experiment(experiment_id)
    _check_exportable(experiment, source_journal)
    trials = source_journal.trials(experiment_id)
    examples_text, omitted_reason, identifier = _examples_text(experiment, source_journal, include_data=include_data)

    files: dict[str, bytes] = {}
    files[PROGRAM_FILE] = json_bytes(_program_spec(experiment))
    files[DATASET_MANIFEST_FILE] = json_bytes(
        _dataset_manifest(experiment, examples_text, omitted_reason=omitted_reason, identifier=identifier)
    )
    if examples_text is not None:
        files[EXAMPLES_FILE] = examples_text
    files[RUN_FILE] = json_bytes(redact_for_storage(_run_description(experiment)))
    files[ENVIRONMENT_FILE] = json_bytes(redact_for_storage(_environment_description(experiment)))
    files[TRIALS_FILE] = _trials_csv(trials)
    files[SUMMARY_FILE] = json_bytes(redact_for_storage(_summary_description(experiment, trials)))
    files[README_FILE] = _readme(
        experiment, trials, data_included=examples_text is not None, identifier_key=identifier[0]
    ).encode("utf-8")
    files[README_FILE] = mask_text(files[README_FILE].decode("utf-8")).encode("utf-8")
    files[CHECKSUM_FILE] = "".join(
        f"{hashlib.sha256(content).hexdigest()}  {name}\n" for name, content in sorted(files.items())
    ).encode("utf-8")

    target = Path(path)
    if target.is_dir():
        target = target / f"dspex-{experiment_id}.zip"
    target.parent.mkdir(parents=True, exist_ok=True)
    _write_zip(target, files)
    return target.resolve()


def _file(journal: JournalStore) -> str | None:
    """Return the journal's file for an error's ``path`` (None for an in-memory journal, which has none)."""
    return str(journal.path) if journal.durable else None


def _program_spec(experiment: Mapping[str, Any]) -> Any:
    spec = experiment["program_spec"]
    # Masking would change the spec's fingerprint and break verification, so a spec holding a secret is refused.
    if redact_for_storage(spec) != spec:
        raise ProgramSpecError(
            f"the program spec of experiment {experiment['id']} holds a credential or key-shaped value; "
            "refusing to write it into a package"
        )
    return spec


def _check_exportable(experiment: Mapping[str, Any], journal: JournalStore) -> None:
    identifier = experiment["id"]
    if experiment["kind"] != "evaluation":
        raise JournalError(
            f"experiment {identifier} in {journal.location} is a {experiment['kind']}, not an evaluation; "
            "only evaluations (dx.evaluate runs) can be exported"
        )
    if experiment["program_spec"] is None:
        raise ProgramSpecError(
            f"experiment {identifier} in {journal.location} evaluated a live dspy.Module "
            f"({experiment.get('program_name')!s}) with no program spec, so it cannot be re-run from a package; "
            "evaluate a dx.Program instead to make it exportable"
        )
    # A run that recorded every planned trial is a complete measurement even when none scored (it
    # ended "failed" for that reason), and its package shows exactly that; one that stopped early is not.
    complete = experiment.get("n_planned") is not None and sum(journal.trial_counts(identifier).values()) >= int(
        experiment["n_planned"]
    )
    if experiment["status"] != "finished" and not (experiment["status"] == "failed" and complete):
        raise JournalError(
            f"experiment {identifier} in {journal.location} is {experiment['status']}, not finished; "
            "only a finished evaluation can be exported (resume it with dx.evaluate(..., resume=...) first)"
        )


def _examples_text(
    experiment: Mapping[str, Any], journal: JournalStore, *, include_data: bool | str
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
                path=_file(journal),
            )
        return None, reason, default_identifier
    if include_data == "auto" and len(stored) > MAX_INCLUDED_EXAMPLES:
        return (
            None,
            f"more than {MAX_INCLUDED_EXAMPLES:,} examples (export with include_data=True to include them)",
            default_identifier,
        )
    inputs = list(manifest.get("inputs") or stored[0][1]["inputs"])
    rebuilt = dataset_from_records(
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
            raise DatasetError(f"cannot include the data of experiment {identifier}: {reason}", path=_file(journal))
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
        # Where the program's custom modules and the metric come from: a re-run names the --import each needs
        # (nothing named here is ever imported automatically).
        "imports": config.get("imports") or {"program": [], "metric": []},
        "repeats": config.get("repeats", 1),
        "timeout": config.get("timeout"),
        "retries": config.get("retries", 3),
        "max_errors": config.get("max_errors"),
        "threads": config.get("threads"),
        "cluster": config.get("cluster"),
        "budget": config.get("budget"),
        "lm": {"model": config.get("lm"), "state": lm_state},
        "seeds": lab_seeds(lm_state),
        "created_at": _timestamp_text(experiment.get("created_at")),
        "finished_at": _timestamp_text(experiment.get("finished_at")),
    }


def lab_seeds(lm_state: Any) -> dict[str, Any]:
    """Return what fixes the run's randomness: the lab engine's seed and fault rates, and the rollouts."""
    seeds: dict[str, Any] = {
        "rollouts": (
            "repeat 0 is the plain request; repeat r >= 1 runs with DSPy rollout_id r * 2**20 "
            "(plus the LM's own) on every LM that samples"
        )
    }
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
    masked = [column in _TEXT_COLUMNS for column in columns]
    for row in trials[columns].itertuples(index=False, name=None):
        writer.writerow(
            [mask_text(_csv_cell(value)) if mask else _csv_cell(value) for value, mask in zip(row, masked, strict=True)]
        )
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
    seeds = lab_seeds(config.get("lm_state"))
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
        f"- mean score: {format_number(summary.get('mean'))} "
        f"({confidence:.0%} CI {format_number(interval[0])} to {format_number(interval[1])}, "
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
