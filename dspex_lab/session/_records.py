"""How an experiment describes itself: its record, and what two runs must share to be one experiment.

Every experiment a run starts (an evaluation, an optimization, a candidate's evaluation nested in
one, the trials DSPy's optimizer scored during its compile) is described by an
:class:`~dspex_lab.journal.ExperimentRecord` built here, by :func:`experiment_record`, from the
program, the dataset and the metric: the same fields, filled the same way, whoever starts it.

A resumed run must be the run it continues: :func:`identity` reads, from a record, the things
that must not change (program, dataset, metric, LM, and per kind the repeats or the optimizer's
settings); :func:`check_resumable` compares the stored record's with the new one's and says which
differs. Both sides go through the same function, so the rule is written once.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any

from dspex_lab.data import Dataset
from dspex_lab.errors import ExecutionError
from dspex_lab.journal import ExperimentRecord

__all__ = [
    "MAX_STORED_EXAMPLES",
    "check_resumable",
    "environment",
    "experiment_record",
    "identity",
    "lm_state",
    "metric_name",
    "stored_examples",
]

# Datasets up to this size are stored in the journal, so an experiment can be exported and re-run
# from the journal alone; larger ones are identified by fingerprint and source hash only.
MAX_STORED_EXAMPLES = 20_000


@functools.cache
def _versions() -> tuple[tuple[str, str], ...]:
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for package in ("dspy", "dspex_lab", "duckdb", "numpy", "scipy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return tuple(versions.items())


def environment() -> dict[str, str]:
    """Return the versions that make a result reproducible (read once per process)."""
    return dict(_versions())


def lm_state(lm: Any) -> dict[str, Any] | None:
    """Return an LM's settings as DSPy dumps them (no API key), or None when it cannot say."""
    # dump_state leaves out API keys (not headers or passwords in URLs: configs are redacted as a whole).
    try:
        return lm.dump_state()
    except Exception:
        return None


def metric_name(metric: Callable[..., Any]) -> str:
    """Return the name a metric is recorded under: ``module.qualname``, or the bare qualname for ``__main__``'s.

    The qualified name keeps a method's class (``mylab.Graders.strict``, not ``mylab.strict``), so the
    recorded name is the one ``dspex evaluate --metric mylab:Graders.strict`` imports. A callable
    object is named by its class.

    Examples:
        >>> import math
        >>> metric_name(math.isclose)
        'math.isclose'
    """
    module = getattr(metric, "__module__", "") or ""
    name = getattr(metric, "__qualname__", None) or getattr(metric, "__name__", None) or type(metric).__qualname__
    return f"{module}.{name}" if module and not module.startswith("__") else name


def stored_examples(data: Dataset) -> tuple[tuple[str, dict[str, Any]], ...]:
    """Return the (example id, fields and input names) a journal keeps of ``data``; none past the size limit."""
    if len(data) > MAX_STORED_EXAMPLES:
        return ()
    stored = []
    for example_id, example in zip(data.example_ids, data, strict=True):
        fields = {key: value for key, value in example.toDict().items() if not key.startswith("dspy_")}
        stored.append((example_id, {"fields": fields, "inputs": list(data.inputs)}))
    return tuple(stored)


def experiment_record(
    kind: str,
    name: str,
    *,
    program: Any,
    data: Dataset,
    metric: str,
    config: dict[str, Any],
    n_planned: int | None = None,
    store_examples: bool = True,
    parent_id: str | None = None,
    role: str | None = None,
    experiment_id: str | None = None,
) -> ExperimentRecord:
    """Return the record of a new experiment of ``program`` on ``data``.

    Args:
        kind: ``evaluation`` or ``optimization``.
        name: the experiment's name.
        program: a ``dx.Program`` (its name, fingerprint and spec are recorded), or a tuple
            ``(name, fingerprint, spec)`` for a live DSPy module (fingerprint and spec None).
        data: the dataset it runs on (its manifest; its examples too when ``store_examples``).
        metric: the metric's recorded name (:func:`metric_name`).
        config: the run's settings, already redacted.
        n_planned: how many trials it plans, if known.
        store_examples: store the dataset's examples (an optimization stores each set once).
        parent_id: the run it is nested in, if any; ``role`` says what it is there for.
        role: one of :data:`~dspex_lab.journal.EXPERIMENT_ROLES` for a nested experiment.
        experiment_id: its id (default: a new random one).
    """
    if isinstance(program, tuple):
        program_name, fingerprint, spec = program
    else:
        program_name, fingerprint, spec = program.name, program.fingerprint, program.to_dict()
    extra = {"id": experiment_id} if experiment_id is not None else {}
    return ExperimentRecord(
        kind=kind,
        name=name,
        program_name=program_name,
        program_fingerprint=fingerprint,
        program_spec=spec,
        dataset_name=data.name,
        dataset_fingerprint=data.fingerprint,
        dataset_manifest=data.manifest(),
        metric=metric,
        config=config,
        environment=environment(),
        n_planned=n_planned,
        examples=stored_examples(data) if store_examples else (),
        parent_id=parent_id,
        role=role,
        **extra,
    )


def _field(record: ExperimentRecord | Mapping[str, Any], name: str) -> Any:
    return record.get(name) if isinstance(record, Mapping) else getattr(record, name)


def identity(record: ExperimentRecord | Mapping[str, Any]) -> dict[str, Any]:
    """Return what a run continuing ``record``'s experiment must share with it, by name.

    Every experiment: its program (fingerprint), its dataset (fingerprint; an optimization's
    trainset), its metric and its LM (model and settings). An evaluation adds its repeats; an
    optimization its valset, optimizer settings, seed and confirmation set. Works on a new
    record and on a stored one (a dict from ``journal.experiment``) alike.
    """
    config = _field(record, "config") or {}
    kind = _field(record, "kind")
    items: dict[str, Any] = {
        "program": _field(record, "program_fingerprint"),
        "trainset" if kind == "optimization" else "dataset": _field(record, "dataset_fingerprint"),
        "metric": _field(record, "metric"),
        "LM": (config.get("lm"), config.get("lm_state")) if "lm" in config else None,
    }
    if kind == "optimization":
        items["valset"] = (config.get("valset") or {}).get("fingerprint")
        items["optimizer"] = config.get("optimizer_config")
        items["seed"] = config.get("seed")
        items["confirmation set"] = config.get("confirmation")
    else:
        items["repeats"] = config.get("repeats", 1)
    return items


def check_resumable(
    previous: Mapping[str, Any], new: ExperimentRecord, *, error: type[Exception] = ExecutionError
) -> None:
    """Raise ``error`` naming the first thing ``new`` does not share with the stored run it would continue.

    A program without a fingerprint (a live DSPy module) cannot be checked, so cannot be resumed.
    An item the stored record lacks (written by an older dspex_lab) is not checked.
    """
    if previous.get("kind") != new.kind:
        raise error(f"cannot resume {previous['id']}: it is {_a(previous.get('kind'))}, not {_a(new.kind)}")
    if new.program_fingerprint is None:
        raise error(f"cannot resume {previous['id']}: a live DSPy module cannot be checked; resume with a dx.Program")
    before, after = identity(previous), identity(new)
    for what, old in before.items():
        if old is not None and old != after[what]:
            raise error(
                f"cannot resume {previous['id']}: it ran with a different {what} ({_short(old)} vs "
                f"{_short(after[what])}); resume with the same {what}"
            )


def _a(kind: Any) -> str:
    """Return ``kind`` with its indefinite article ("an evaluation", "a comparison")."""
    return f"{'an' if str(kind)[:1] in 'aeiou' else 'a'} {kind}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
