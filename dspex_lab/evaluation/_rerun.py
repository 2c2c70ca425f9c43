"""Re-run a reproducibility package and compare every trial with the recorded one.

A package is data written by someone else, so a re-run takes from it only what
it can bound: run settings within
:data:`~dspex_lab.evaluation._package_format.RUN_LIMITS`, and an LM rebuilt from an
allow-list of fields (never a class named by the package). A lab model is
rebuilt with its seed and fault rates; a hosted model runs only when the user
names it (``model=`` / ``dspex rerun --model``), and an endpoint recorded in the
package is refused unless the user gives one (``api_base=`` / ``--api-base``),
so a package can never send the user's credentials to a host it chose.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy
import pandas as pd

from dspex_lab import metrics
from dspex_lab.data import Dataset
from dspex_lab.errors import DatasetError, ExecutionError, PackageError, ProgramSpecError
from dspex_lab.evaluation._evaluate import evaluate
from dspex_lab.evaluation._package_format import (
    DATASET_MANIFEST_FILE,
    EXAMPLES_FILE,
    PROGRAM_FILE,
    RUN_FILE,
    SUMMARY_FILE,
    TRIALS_FILE,
    PackageArchive,
    check_run_settings,
    read_examples,
    read_trials,
)
from dspex_lab.evaluation._package_reports import RerunReport, TrialDifference
from dspex_lab.evaluation._result import EvaluationResult
from dspex_lab.evaluation._verify import verify_package
from dspex_lab.journal import JournalStore, memory_journal
from dspex_lab.program import Program
from dspex_lab.session import Context, journal_store
from dspex_lab.trace.redaction import mask_text

__all__ = ["rerun_package"]

Metric = Callable[[dspy.Example, Any], Any]

_LAB_METRICS_PREFIX = "dspex_lab.metrics."
_LAB_PREFIX = "lab/"
# The only LM fields a re-run takes from a package; everything else in the recorded state is ignored.
_LM_FIELDS = ("temperature", "max_tokens", "num_retries", "cache")
_LAB_ENGINE_FIELDS = ("latency", "error_rate", "rate_limit_rate", "hang_rate", "hang_seconds", "seed")
# Recorded fields that would choose where requests go or what credentials they carry.
_ENDPOINT_FIELDS = ("api_base", "base_url", "endpoint", "url", "host", "proxy", "proxies")
_MAXIMUM_SEED = 2**63


def rerun_package(
    path: str | os.PathLike[str],
    *,
    journal: str | os.PathLike[str] | JournalStore | None = None,
    threads: int | None = None,
    metric: Metric | None = None,
    dataset: Dataset | None = None,
    lm: dspy.BaseLM | None = None,
    model: str | None = None,
    api_base: str | None = None,
) -> RerunReport:
    """Verify a package, run its evaluation again, and compare every trial with the recorded one.

    Args:
        path: the package zip.
        journal: where to record the re-run (a path or a journal); when omitted, a new in-memory journal
            (the report says what the re-run found; nothing is written to disk).
        threads: worker threads; the recorded number when omitted (scores do not depend on it).
        metric: the metric to use; needed when the package's metric is not one of
            ``dspex_lab.metrics`` (only those are looked up by name).
        dataset: the data, for a package exported without its examples; its fingerprint must
            equal the recorded one.
        lm: the LM to use instead of the one rebuilt from the package.
        model: run this model instead of the recorded one; needed to run a hosted model at all,
            since a package cannot choose one (lab models are rebuilt from the package).
        api_base: the endpoint for a hosted model; needed when the package records one, which
            is otherwise refused (a package cannot choose where requests and credentials go).

    Returns:
        The comparison, matched by (example id, repeat).

    Raises:
        ExecutionError: the package fails verification, or its metric cannot be found by name.
        PackageError: (an ExecutionError) verification failed, or the package asks for a hosted
            model or an endpoint the caller did not give, or for settings out of bounds.
        DatasetError: the package has no examples and no ``dataset`` was given, or the given one differs.
    """
    package = _read_package(path)
    run = package.run
    data = _rerun_dataset(package.path, package.manifest, package.examples_text, dataset)
    chosen_metric = metric if metric is not None else _metric_by_name(run.get("metric"), package.path, run)
    chosen_lm = lm if lm is not None else rebuild_lm(run.get("lm") or {}, package.path, model=model, api_base=api_base)
    target = _rerun_journal(journal)
    with Context(lm=chosen_lm, journal=target, threads=threads or run.get("threads") or None):
        result = _evaluate_again(package, data, chosen_metric)
    return _compare_trials(
        package.path,
        run,
        package.trials,
        _frame_trials(result.table()),
        old_mean=package.summary.get("mean"),
        new_mean=_finite(result.mean),
        experiment_id=str(result.experiment_id),
        journal=target.location,
    )


def _rerun_journal(journal: str | os.PathLike[str] | JournalStore | None) -> JournalStore:
    """Return where the re-run is recorded: the journal the caller names, else a new in-memory one of its own."""
    match journal:
        case None:  # not the context's journal: a check of a package leaves nothing in the user's journal
            return memory_journal()
        case _:
            return journal_store(journal)


@dataclass(frozen=True)
class _Package:
    """What a re-run reads from a verified package: its run settings (checked), program, data and results."""

    path: Path
    run: Mapping[str, Any]
    program: Program
    manifest: Mapping[str, Any]
    examples_text: str | None
    trials: dict[tuple[str, int], dict[str, Any]]
    summary: Mapping[str, Any]


def _read_package(path: str | os.PathLike[str]) -> _Package:
    """Verify the package at ``path``, then read what a re-run needs from it, its run settings checked again."""
    report = verify_package(path)
    if not report.ok:
        raise PackageError(
            f"refusing to re-run {report.path}: it fails verification "
            f"({len(report.problems)} problem(s): {'; '.join(report.problems[:5])})"
        )
    # Opened again with the same bounds, and the settings checked again: the file may have changed since.
    with PackageArchive(report.path) as archive:
        run = json.loads(archive.read(RUN_FILE))
        program = Program.from_json(archive.read(PROGRAM_FILE).decode("utf-8"))
        manifest = json.loads(archive.read(DATASET_MANIFEST_FILE))
        examples_text = archive.read(EXAMPLES_FILE).decode("utf-8") if EXAMPLES_FILE in archive else None
        recorded_trials = read_trials(archive.read(TRIALS_FILE).decode("utf-8"))
        summary = json.loads(archive.read(SUMMARY_FILE))
    problems = check_run_settings(run) if isinstance(run, Mapping) else [f"{RUN_FILE}: not a JSON object"]
    if problems:
        raise PackageError(f"refusing to re-run {report.path}: {'; '.join(problems)}")
    # A cluster field changes only the standard error, never a trial, but it must name a field.
    cluster = run.get("cluster")
    if cluster is not None and not isinstance(cluster, str):
        raise PackageError(f"{report.path}: cluster in {RUN_FILE} is {cluster!r}, not a field name")
    return _Package(report.path, run, program, manifest, examples_text, recorded_trials, summary)


def _evaluate_again(package: _Package, data: Dataset, metric: Metric) -> EvaluationResult:
    """Run the package's evaluation again in the current context, with its recorded settings."""
    run = package.run
    # A spending budget is not re-applied: stopping early would leave recorded trials without a re-run.
    return evaluate(
        package.program,
        data,
        metric=metric,
        name=f"{run.get('name') or package.program.name} (rerun of {run.get('experiment_id')})",
        repeats=int(run.get("repeats") or 1),
        timeout=run.get("timeout"),
        retries=int(run.get("retries") if run.get("retries") is not None else 3),
        max_errors=run.get("max_errors"),
        progress=False,
        cluster=run.get("cluster") or None,
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
    return read_examples(examples_text, manifest)


def _metric_by_name(name: Any, package: Path, run: Mapping[str, Any]) -> Metric:
    if isinstance(name, str) and name.startswith(_LAB_METRICS_PREFIX):
        short = name[len(_LAB_METRICS_PREFIX) :]
        if short in metrics.NAMES:
            return metrics.get(short)
    raise ExecutionError(
        f"{package}: metric {name!r} in {RUN_FILE} is not one of dspex_lab.metrics "
        f"({', '.join(metrics.NAMES)}), and metrics are only looked up by name there; "
        f"pass it yourself: dx.rerun_package(path, metric=your_metric){_metric_hint(name, package, run)}"
    )


def _metric_hint(name: Any, package: Path, run: Mapping[str, Any]) -> str:
    """Say the ``dspex rerun`` options that bring a recorded custom metric back (never imported on its own)."""
    imports = run.get("imports") if isinstance(run.get("imports"), Mapping) else {}
    recorded = [module for module in imports.get("metric") or [] if isinstance(module, str)]
    if not isinstance(name, str) or not recorded or not name.startswith(f"{recorded[0]}."):
        return ""
    module, function = recorded[0], name[len(recorded[0]) + 1 :]
    needed = [item for item in imports.get("program") or [] if isinstance(item, str)] + [module]
    options = "".join(f" --import {item}" for item in dict.fromkeys(needed))
    return f", or from a terminal: dspex rerun {package}{options} --metric {module}:{function}"


def rebuild_lm(
    description: Mapping[str, Any], package: Path, *, model: str | None = None, api_base: str | None = None
) -> dspy.BaseLM:
    """Rebuild the run's LM from the allow-listed fields of its recorded state.

    Args:
        description: ``run.json``'s ``lm`` entry (``model`` and ``state``).
        package: the package, for error messages.
        model: the model the user asked for; required to run a hosted (non-lab) model.
        api_base: the endpoint the user gave; required when the package records one.

    Raises:
        PackageError: the package records a hosted model the user did not ask for, an
            endpoint the user did not give, or unreadable LM fields.
    """
    state = description.get("state")
    state = state if isinstance(state, Mapping) else {}
    recorded = description.get("model") or state.get("model")
    chosen = model if model is not None else recorded
    if not isinstance(chosen, str) or not chosen.strip():
        raise PackageError(f"{package}: {RUN_FILE} records no LM model; pass lm= to dx.rerun_package or --model")
    chosen = chosen.strip()
    endpoints = {key: state[key] for key in _ENDPOINT_FIELDS if state.get(key)}
    if endpoints and api_base is None:
        shown = ", ".join(f"{key}={mask_text(str(value))!r}" for key, value in endpoints.items())
        raise PackageError(
            f"{package}: the LM state in {RUN_FILE} names an endpoint ({shown}); a package cannot choose where "
            "requests go: give the endpoint yourself (dx.rerun_package(..., api_base=...) or dspex rerun --api-base)"
        )
    if chosen.startswith(_LAB_PREFIX):
        if api_base is not None:
            raise PackageError(f"{package}: lab model {chosen!r} runs offline and takes no endpoint (api_base)")
        return _rebuild_lab_lm(chosen, state, package)
    if model is None:
        raise PackageError(
            f"{package}: {RUN_FILE} records the hosted model {chosen!r}; a package cannot choose a hosted LM. "
            f"Ask for it yourself (dx.rerun_package(..., model={chosen!r}) or dspex rerun --model {chosen}), "
            "with credentials from your environment"
        )
    arguments = _lm_fields(state, package)
    if api_base is not None:
        arguments["api_base"] = api_base
    try:
        return dspy.LM(chosen, **arguments)
    except (ValueError, TypeError) as error:
        raise PackageError(f"{package}: cannot build dspy.LM({chosen!r}): {error}") from error


def _lm_fields(state: Mapping[str, Any], package: Path) -> dict[str, Any]:
    fields = {key: state[key] for key in _LM_FIELDS if state.get(key) is not None}
    if "cache" in fields and not isinstance(fields["cache"], bool):
        raise PackageError(f"{package}: lm.state.cache in {RUN_FILE} is {fields['cache']!r}, not true or false")
    problems = check_run_settings({"lm": {"state": fields}})
    if problems:
        raise PackageError(f"{package}: {'; '.join(problems)}")
    return fields


def _rebuild_lab_lm(model: str, state: Mapping[str, Any], package: Path) -> dspy.BaseLM:
    from dspex_lab.lm import lab_lm

    engine = state.get("engine")
    engine_state = engine.get("state") if isinstance(engine, Mapping) else None
    engine_state = engine_state if isinstance(engine_state, Mapping) else {}
    faults = {key: engine_state[key] for key in _LAB_ENGINE_FIELDS if engine_state.get(key) is not None}
    seed = faults.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not -_MAXIMUM_SEED < seed < _MAXIMUM_SEED:
        raise PackageError(f"{package}: the lab engine's seed in {RUN_FILE} is {seed!r}, not a 64-bit integer")
    problems = check_run_settings({"lm": {"state": {"engine": {"state": faults}}}})
    if problems:
        raise PackageError(f"{package}: {'; '.join(problems)}")
    try:
        return lab_lm(model, **faults, **_lm_fields(state, package))
    except ProgramSpecError as error:
        raise PackageError(f"{package}: cannot rebuild the lab LM from {RUN_FILE}: {error}") from error


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
    experiment_id: str,
    journal: str,
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
