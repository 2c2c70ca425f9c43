"""The journal store contract: what every journal backend writes and answers, and what it promises.

Two protocols split the contract by role. :class:`JournalWriter` is what a run
writes through (experiments, trials and spans, hypotheses, optimization runs);
:class:`JournalReader` is what the CLI, the notebook widgets, the evaluation
result's HTML and the dashboard read through, never writing SQL against a
backend. :class:`JournalStore` is both. Each states its guarantees (thread
safety, ordering, idempotence, durability, what a reader of each store sees).
The queries return plain Python values (frozen records, dicts, lists), so a
reader such as ``dspex journal list`` needs neither pandas nor DSPy; the
dashboard's three (``leaderboard``, ``trial_page``, ``paired_scores``) return
DataFrames and load pandas when called. :class:`~dspex_lab.journal.DuckDBJournal`
(a durable file) and :class:`~dspex_lab.journal.MemoryJournal` (kept in memory
when the user asks for no journal file) implement all of it.

The journal layer does not import :mod:`dspex_lab.trace`: it stores and returns
span *rows*. Turning rows into ``Span`` objects and a ``TraceTree`` is the trace
layer's job; the package wires that in with :func:`set_trace_reader`, which is
what lets ``journal.spans()`` and ``journal.trace()`` keep returning trace
objects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from dspex_lab.errors import JournalError

if TYPE_CHECKING:
    from dspex_lab._records import ExperimentRecord
    from dspex_lab.journal._writer import TrialWriter

__all__ = [
    "EXPERIMENT_ROLES",
    "TRIAL_ORDERS",
    "ExperimentSummary",
    "JournalReader",
    "JournalStore",
    "JournalWriter",
    "TraceReader",
    "TrialOrder",
    "read_spans",
    "read_trace",
    "set_trace_reader",
]

TrialOrder = Literal["trial", "score", "error", "latency"]
TRIAL_ORDERS: tuple[TrialOrder, ...] = ("trial", "score", "error", "latency")
"""How :meth:`JournalStore.trial_rows` can order trials.

``trial`` is example order (then repeat); ``score`` puts the lowest score first
(a failed trial, without a score, before every scored one); ``error`` puts
failed trials first, then the rest by score as ``score`` does.
"""

EXPERIMENT_ROLES: dict[str, str] = {
    "baseline": "the baseline's (candidate c0's) evaluation on an optimization's validation set",
    "candidate-validation": "another candidate's evaluation on an optimization's validation set",
    "candidate-screen": "a candidate's evaluation on one SIMBA-C mini-batch (screening)",
    "exploration": "a trajectory SIMBA-C sampled on a mini-batch with its exploration LM",
    "confirmation": "the baseline's or the best's evaluation on the held-out confirmation set",
    "compile": "the trials DSPy's optimizer scored for one configuration during its compile",
}
"""The roles a nested experiment (one with a ``parent_id``) plays in its parent run, with what each means.

The candidate an optimization's evaluation belongs to is in its ``config["candidate"]``.
"""


@dataclass(frozen=True)
class ExperimentSummary:
    """One line of the experiment list: what an experiment is, how it stands, and its trial counts.

    Attributes:
        id: the experiment id.
        name: its name.
        kind: ``evaluation``, ``comparison``, ``optimization`` or ``hypothesis``.
        status: ``running``, ``finished``, ``failed``, ``cancelled`` or ``interrupted`` (a running
            experiment whose process is gone is reported as interrupted).
        status_detail: why it ended as it did, if recorded.
        program_name: the program's name, if any.
        program_fingerprint: the program spec's fingerprint, if any.
        dataset_name: the dataset's name, if any.
        dataset_fingerprint: the dataset's fingerprint, if any.
        metric: the metric's name, if any.
        n_planned: how many trials the run planned, if known.
        n_trials: how many trials are recorded.
        n_errors: how many of them failed.
        mean_score: the mean score of the scored trials (None without any).
        created_at: when it started (UTC, naive).
        finished_at: when it ended (None while running).
        parent_id: the experiment this one is nested in (an optimization run for its candidate
            evaluations), None for a top-level experiment.
        role: what it is for in its parent (one of :data:`EXPERIMENT_ROLES`), None at top level.
    """

    id: str
    name: str
    kind: str
    status: str
    status_detail: str | None
    program_name: str | None
    program_fingerprint: str | None
    dataset_name: str | None
    dataset_fingerprint: str | None
    metric: str | None
    n_planned: int | None
    n_trials: int
    n_errors: int
    mean_score: float | None
    created_at: datetime | None
    finished_at: datetime | None
    parent_id: str | None = None
    role: str | None = None


@runtime_checkable
class JournalWriter(Protocol):
    """The writing half of a journal: experiments, trials and spans, hypotheses, optimization runs.

    Thread safety: every method may be called from any thread of a process at the same time; a
    store serialises what it must. A file store (:class:`~dspex_lab.journal.DuckDBJournal`) may
    also be written by several processes at once (kernels, the CLI); it raises
    :class:`~dspex_lab.errors.JournalError` when it cannot get the file in its ``lock_timeout``.
    An in-memory store (:class:`~dspex_lab.journal.MemoryJournal`) is written by its own process
    only.

    Ordering: a write has happened when its call returns: every read that starts after it sees it
    (in a file store, from any process). Writes made one after the other take effect in that order.
    ``append_trials`` stores its trials, their spans and the experiment's totals in one transaction:
    a reader sees all of a call's trials or none.

    Idempotence: every write may be repeated without effect, because the journal service retries
    a call whose serving process died, and a writer retries a failed flush: creating an existing
    id, appending a recorded trial or span, registering a hypothesis again, recording a known
    candidate or an annotation whose id is recorded changes nothing (``annotate`` makes the id before
    the write); a step and an experiment's end are written by value. A write that
    would rewrite what is recorded (a hypothesis under the same id with other terms) is a
    :class:`~dspex_lab.errors.JournalError`.

    Immutability: an experiment's identity and a recorded trial, span, candidate or annotation never
    change once written (a later annotation of a trial supersedes the earlier one in current views);
    only an experiment's status, summary and heartbeat, a hypothesis' decision and a step's progress
    are updated.

    Durability: :attr:`durable` says whether what is written outlives the process. A file store's
    write is in the file when its call returns (a ``TrialWriter`` flushes at least twice a second,
    so a crash loses well under a second of a run's trials); an in-memory store's writes are gone
    with the object or the process, and :attr:`location` says so in messages.
    """

    @property
    def durable(self) -> bool:
        """True if what is written outlives this process (a file), False if it is kept in memory."""
        ...

    @property
    def location(self) -> str:
        """Where the journal is, for messages: ``journal <path>`` or an in-memory journal."""
        ...

    def hold(self) -> AbstractContextManager[None]:
        """Return a context that keeps the journal ready for a run's many writes (harmless to nest).

        A file store keeps its file open meanwhile and serves other processes' calls; an in-memory
        store holds its database for its whole life, so this does nothing there.
        """
        ...

    def writer(
        self, experiment_id: str, *, flush_interval: float = 0.4, create: ExperimentRecord | None = None
    ) -> TrialWriter:
        """Return a ``TrialWriter`` streaming ``experiment_id``'s trials from a background thread.

        Its ``add`` never waits for the store; its thread flushes every ``flush_interval`` seconds
        (records queued with ``create`` first, in the order queued) and its ``close`` flushes the rest
        or raises :class:`~dspex_lab.errors.JournalError` naming what was not written.
        """
        ...

    def create_experiment(self, record: ExperimentRecord) -> str:
        """Insert a new running experiment and return its id.

        The experiment is owned by the calling process, which keeps it alive with its writes. Creating
        an id that exists already changes nothing (a retried call is harmless) and returns the id.
        """
        ...

    def claim_experiment(self, experiment_id: str) -> None:
        """Mark an existing experiment as running again, owned by the calling process (resume).

        Its recorded trials, spans and identity stay as they were; its end (status detail, finish
        time) is cleared.
        """
        ...

    def finish_experiment(
        self, experiment_id: str, *, status: str, detail: str | None = None, summary: dict[str, Any] | None = None
    ) -> None:
        """Record how an experiment ended (``status``, ``detail``), with its summary (a JSON object)."""
        ...

    def append_trials(self, experiment_id: str, rows: Sequence[dict[str, Any]], *, spans: Any = ()) -> int:
        """Append finished trials (``TrialResult.to_row()`` dicts) and their spans atomically.

        A trial already recorded (same trial id in the experiment) is ignored, and so is a span
        already recorded, so a retried call adds nothing. Returns the number of rows given.
        """
        ...

    def register_hypothesis(self, record: dict[str, Any]) -> str:
        """Record a pre-registered hypothesis (status ``registered``, no verdict) and return its id.

        ``record`` has ``id``, ``statement``, ``baseline``, ``treatment``, ``direction``,
        ``min_effect``, ``alpha`` and optionally ``metric``.
        """
        ...

    def decide_hypothesis(self, hypothesis_id: str, *, status: str, verdict: dict[str, Any]) -> None:
        """Record a hypothesis' decision: its new status, its verdict (a JSON object) and when it was decided."""
        ...

    def record_candidates(self, run_id: str, candidates: Sequence[dict[str, Any]]) -> None:
        """Record an optimization run's new candidates; a candidate already recorded is left as it was.

        Each dict has ``candidate_id``, ``step``, ``parent_id``, ``strategy``, ``rationale``,
        ``fingerprint``, and ``values`` and ``program_spec`` (JSON values, read back with their
        JSON types: a boolean stays a boolean).
        """
        ...

    def record_step(self, run_id: str, step: dict[str, Any]) -> None:
        """Record one step of an optimization run, replacing an earlier write of the same step.

        ``step`` has ``step``, ``status`` and ``incumbent_id`` and may have the other step columns
        (``accepted_id``, ``best_mean``, ``lm_calls``...). A step is written when it starts and again
        when it ends: its start time is the first write's, and it has a finish time once its
        ``status`` is not ``running``. ``minibatch``,
        ``screening`` and ``evaluations`` are JSON values, read back with their JSON types.
        """
        ...

    def finish_children(self, run_id: str, *, status: str) -> None:
        """Give ``status`` to the experiments nested in ``run_id`` that still run; ended ones keep theirs."""
        ...

    def annotate(
        self,
        experiment_id: str,
        trial_id: str,
        *,
        label: str | None = None,
        note: str | None = None,
        corrected_gold: dict[str, Any] | None = None,
        author: str | None = None,
        withdraw: bool = False,
    ) -> str:
        """Record a person's verdict on a recorded trial and return the annotation's id.

        Annotations are append-only: a later one of the same trial supersedes it in the current view and
        the earlier ones stay in the history. ``withdraw=True`` appends a withdrawal (no label, note or
        gold): the trial has no annotation in force until it is annotated again. Raises
        :class:`~dspex_lab.errors.JournalError` for an unknown trial, an empty annotation, a text past its
        bound (label 100, note 4,000, author 100 characters), a corrected gold that is not a JSON object of
        at most 16 KB or names an input field, or a withdrawal with something to record or of a trial
        with no annotation in force.
        """
        ...

    def record_annotation(self, record: dict[str, Any]) -> str:
        """Write an annotation record built by ``annotate`` (its id made before the write).

        Writing the same id again changes nothing.
        """
        ...


@runtime_checkable
class JournalReader(Protocol):
    """The reading half of a journal: the queries the CLI, the widgets, the result HTML and the dashboard share.

    Thread safety: every query may be called from any thread, and while writes go on; it sees each
    write whole or not at all (never part of an ``append_trials``), and every write whose call
    returned before it started. ``trial_page`` reads its page and its total in one snapshot.

    Ordering: each query states its order, and the order is total (ties broken by ids), so two
    reads of unchanged data return the same sequence.

    Returned values are fresh: records are frozen, dicts, lists and DataFrames belong to the caller,
    and changing them changes nothing stored.

    What a reader sees: a file store, whatever wrote it, this process or another, now or in an
    earlier session; before its first write there is no file, listing queries answer empty and
    others may raise :class:`~dspex_lab.errors.JournalError` saying it does not exist yet. An
    in-memory store shows exactly what was written to that object, by this process: nothing
    another process or another in-memory store wrote, and nothing at all once it is dropped. A
    running experiment of an in-memory store never reads ``interrupted`` (its process is the
    reader's).
    """

    def experiment_summaries(self, *, children: bool = True) -> list[ExperimentSummary]:
        """Return every experiment, newest first (then by id), with its trial counts and mean score.

        Counts cover every recorded trial (``n_errors`` those with status ``error``); the mean is
        over the trials with a score (a failed trial has none; None when no trial has one). A
        running experiment whose process is gone reads ``interrupted``. Without ``children``, only
        top-level experiments (no ``parent_id``) are returned.
        """
        ...

    def ended_summaries(self) -> dict[str, dict[str, Any]]:
        """Return the summary each ended experiment stored with :meth:`finish_experiment`, by id (ordered by id).

        Experiments recorded as running (a resumed one included) and those ended without a summary
        are left out.
        """
        ...

    def children(self, experiment_id: str, *, role: str | None = None) -> list[ExperimentSummary]:
        """Return the experiments nested in ``experiment_id`` (optionally of one role), oldest first (then by id)."""
        ...

    def parent(self, experiment_id: str) -> str | None:
        """Return the id of the experiment ``experiment_id`` is nested in (None at top level).

        Raises:
            JournalError: no such experiment.
        """
        ...

    def experiment(self, experiment_id: str) -> dict[str, Any]:
        """Return one experiment's record with its JSON fields decoded; JournalError if unknown."""
        ...

    def trial_rows(
        self,
        experiment_id: str,
        *,
        columns: Sequence[str] | None = None,
        status: str | None = None,
        order: TrialOrder = "trial",
        limit: int | None = None,
        traced_only: bool = False,
        with_span_counts: bool = False,
        min_score: float | None = None,
        max_score: float | None = None,
    ) -> list[dict[str, Any]]:
        """Return an experiment's trials as dicts (NULL as None), filtered, ordered and limited.

        Args:
            experiment_id: the experiment.
            columns: the trial columns to return (default: all).
            status: only trials with this status (``ok`` or ``error``).
            min_score: only trials scored at least this (unscored trials are left out).
            max_score: only trials scored at most this (unscored trials are left out).
            order: one of :data:`TRIAL_ORDERS`.
            limit: at most this many trials.
            traced_only: only trials with at least one stored span.
            with_span_counts: add a ``spans`` entry, the number of stored spans of the trial.
        """
        ...

    def trials(self, experiment_id: str, *, columns: Iterable[str] | None = None) -> Any:
        """Return an experiment's trials (or only ``columns``) as a DataFrame, in example order, then repeat."""
        ...

    def trial_counts(self, experiment_id: str) -> dict[str, int]:
        """Return the number of recorded trials of an experiment per status (absent statuses left out)."""
        ...

    def finished_keys(self, experiment_id: str) -> set[tuple[str, int]]:
        """Return (example id, repeat) of every recorded trial of an experiment."""
        ...

    def span_rows(self, experiment_id: str, trials: str | Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Return stored span rows (attributes as JSON text) by trial, then start time, parents first."""
        ...

    def span_counts(self, experiment_id: str, trials: Sequence[str]) -> dict[str, int]:
        """Return the number of stored spans of each given trial, in the order given (0 for a trial without).

        Raises:
            JournalError: ``trials`` is not a sequence of trial ids.
        """
        ...

    def spans(self, experiment_id: str, trials: str | Sequence[str] | None = None) -> list[Any]:
        """Return the ``Span`` objects of one trial, several, or all of an experiment's (see :func:`read_spans`)."""
        ...

    def trace(self, experiment_id: str, trial_id: str) -> Any:
        """Return one trial's ``TraceTree`` (see :func:`read_trace`); JournalError if the trial has no spans."""
        ...

    def dataset_examples(self, fingerprint: str) -> list[tuple[str, dict[str, Any]]]:
        """Return the stored (example id, fields) of a dataset in order; empty if not stored."""
        ...

    def hypothesis_rows(self) -> list[dict[str, Any]]:
        """Return every registered hypothesis as a dict (verdict decoded), oldest first (then by id)."""
        ...

    def candidate_rows(self, run_id: str) -> list[dict[str, Any]]:
        """Return an optimization run's candidates in the order they were made (by step, then time, then id)."""
        ...

    def step_rows(self, run_id: str) -> list[dict[str, Any]]:
        """Return an optimization run's steps by step number (JSON columns decoded)."""
        ...

    def children_trial_rows(self, parent_id: str) -> list[dict[str, Any]]:
        """Return the trials of every experiment nested in ``parent_id``, by experiment id, then example order."""
        ...

    def annotation_rows(self, experiment_id: str | None = None, *, current: bool = False) -> list[dict[str, Any]]:
        """Return annotations (of one experiment, or all) as dicts, in the order they were written.

        Each has ``id``, ``experiment_id``, ``trial_id``, ``example_id``, ``label``, ``note``,
        ``corrected_gold`` (the decoded JSON object, or None), ``author`` and ``created_at`` (UTC,
        naive); a withdrawal has no label, note or gold. With ``current``, only each trial's latest
        annotation, the one in force (none for a trial whose latest is a withdrawal).
        """
        ...

    def annotations(self, experiment_id: str | None = None, *, current: bool = False) -> Any:
        """Return :meth:`annotation_rows` as a DataFrame with those columns, even when empty."""
        ...

    def child_timeline(self, parent_id: str) -> list[dict[str, Any]]:
        """Return when each experiment nested in ``parent_id`` ran and how it ended, oldest first (then by id).

        One dict per child: ``experiment_id``, ``name``, ``role``, ``status`` (``interrupted`` for a running
        one whose process is gone), ``candidate`` and ``phase`` (from its config, or None), ``n_planned``,
        ``n_trials``, ``n_errors``, ``mean_score``, ``first_trial_at`` and ``last_trial_at`` (its trials'
        first start and last end, None without a trial), ``started_at`` (its record's creation),
        ``finished_at`` (None if it never finished; a run ends its children when it ends) and
        ``last_seen_at`` (its last write or heartbeat), UTC and naive. The dashboard's timeline draws these.
        """
        ...

    def leaderboard(
        self,
        *,
        name: str | None = None,
        kind: str | None = None,
        status: str | None = None,
        limit: int = 500,
        children: bool = False,
        parent: str | None = None,
    ) -> Any:
        """Return a DataFrame, one row per experiment newest first, with counts, mean and interval.

        Nested experiments (an optimization's candidate evaluations) are left out unless ``children``
        (then each follows the experiment it is nested in); ``n_children`` counts each row's own.
        ``parent`` lists only the experiments nested in that one, oldest first.
        """
        ...

    def score_intervals(self) -> dict[str, tuple[float, float, float, str]]:
        """Return ``(mean, ci_low, ci_high, ci_method)`` per experiment id: the numbers every view shows.

        An evaluation that ended shows the mean and interval its result stored in its summary; any
        other experiment with scores the interval of ``dspex_lab.stats.score_interval`` over its
        per-example mean scores; one without a score NaN, NaN, NaN and ``""``.
        """
        ...

    def trial_page(
        self,
        experiment_id: str,
        *,
        status: str | None = None,
        min_score: float | None = None,
        max_score: float | None = None,
        sort: str = "example_id",
        descending: bool = False,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[Any, int]:
        """Return one page of an experiment's trials (a DataFrame) and the number of matching trials."""
        ...

    def paired_scores(self, a: str, b: str) -> Any:
        """Return a DataFrame of example_id, score_a, score_b: per-example means of ok repeats present in both."""
        ...

    def comparable_pair(self) -> tuple[str, str, int] | None:
        """Return ``(baseline, newest, examples in common)``: the newest evaluation and the one sharing most with it.

        None with fewer than two evaluations; the count is 0 when no other evaluation shares an example.
        """
        ...


@runtime_checkable
class JournalStore(JournalWriter, JournalReader, Protocol):
    """A whole journal: :class:`JournalWriter` and :class:`JournalReader`, with the guarantees of both.

    :class:`~dspex_lab.journal.DuckDBJournal` (a file, durable, shared by processes) and
    :class:`~dspex_lab.journal.MemoryJournal` (in memory, for one process, when the user asks for no
    journal file) implement it with one implementation of every write and query;
    ``tests/journal/test_store_conformance.py`` runs one suite on both. Their DataFrame
    conveniences (``experiments()``, ``trials()``, ``hypotheses()``) and the read-only ``sql()``
    are the user's, not part of the contract the package's own readers use.
    """


@dataclass(frozen=True)
class TraceReader:
    """How span rows become trace objects: set by the package, since the journal cannot import the trace layer.

    Attributes:
        spans: builds the ``Span`` objects of stored rows (same order).
        tree: builds one trial's ``TraceTree`` from its stored rows.
    """

    spans: Callable[[list[dict[str, Any]]], list[Any]]
    tree: Callable[[list[dict[str, Any]]], Any]


_trace_reader: TraceReader | None = None


def set_trace_reader(reader: TraceReader) -> None:
    """Set how :func:`read_spans` and :func:`read_trace` build trace objects (``import dspex_lab`` does it)."""
    global _trace_reader
    _trace_reader = reader


def _reader() -> TraceReader:
    if _trace_reader is None:
        raise JournalError(
            "no trace reader is set: import dspex_lab (it wires dspex_lab.trace into the journal), "
            "or read span rows with journal.span_rows()"
        )
    return _trace_reader


def read_spans(rows: list[dict[str, Any]]) -> list[Any]:
    """Return the ``Span`` objects of stored span rows, built by the registered trace reader."""
    return _reader().spans(rows)


def read_trace(rows: list[dict[str, Any]]) -> Any:
    """Return the ``TraceTree`` of one trial's stored span rows, built by the registered trace reader."""
    return _reader().tree(rows)
