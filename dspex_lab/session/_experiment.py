"""The experiment object: one run in a journal, from its start (or resume) to its end.

Evaluation, SIMBA-C and the DSPy bridge all record through :class:`Experiment`:

- :meth:`Experiment.start` describes a new experiment (inserted by the journal writer's thread,
  so the first trials do not wait for the file); :meth:`Experiment.resume` reopens an ended one
  after checking it is the same run (:func:`~dspex_lab.session.check_resumable`: the one rule);
- :meth:`Experiment.child` nests another experiment under it (an optimization's candidate
  evaluations), sharing its writer; a resumed run finds its children's trials again;
- :meth:`Experiment.run` runs trials through the engine, skipping the recorded ones and streaming
  each finished trial to the journal; :meth:`Experiment.record` keeps trials something else ran
  (the trials DSPy's optimizer scores during its own compile);
- :meth:`Experiment.recorded` returns every recorded trial (this process's and a resumed run's)
  without a query; :meth:`Experiment.finish` writes how it ended.

There is always a journal: a user who asks for none gets an in-memory one
(:func:`dspex_lab.journal.memory_journal`), so nothing here branches on its absence. If the journal
cannot take the trials when the run ends, they are saved to a private file and the user is told
where (:meth:`Experiment.close`); the in-memory rows still make the result.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any

import pandas as pd

from dspex_lab.data import Dataset
from dspex_lab.engine import Executor, RunPolicy, RunReport, TrialFinished, TrialRunner, TrialTask, run_trials
from dspex_lab.errors import DspexLabWarning, ExecutionError, JournalError
from dspex_lab.journal import ExperimentRecord, JournalStore, trials_frame
from dspex_lab.session._records import check_resumable
from dspex_lab.trace.redaction import mask_text

__all__ = ["Experiment", "TrialKey", "plan_trials"]

#: A trial's key in its experiment: (example id, repeat).
TrialKey = tuple[str, int]

# Kinds whose finished experiments are final: an optimization's result is read back, not resumed.
_FINAL_WHEN_FINISHED = {"optimization": "dx.OptimizationResult.from_journal(journal, {id!r})"}


def plan_trials(data: Dataset, repeats: int) -> list[TrialTask]:
    """Return the trials of ``repeats`` samples of every example of ``data``, in dataset order."""
    return [
        TrialTask(index=index, example_id=example_id, example=example, repeat=repeat)
        for index, (example_id, example) in enumerate(zip(data.example_ids, data, strict=True))
        for repeat in range(repeats)
    ]


class Experiment:
    """One experiment in a journal: its identity, its recorded trials, its nested experiments.

    Build one with :meth:`start` or :meth:`resume` (a nested one with :meth:`child`), use it as a
    context manager (leaving flushes its writer), end it with :meth:`finish`.

    Thread safety: :meth:`run`'s sink and :meth:`record` may be called from any thread.

    Attributes:
        id: the experiment's id.
        name: its name.
        journal: the journal it is recorded in.
        parent: the experiment it is nested in (None at top level).
        resumed: it continues a run recorded earlier.
    """

    def __init__(
        self,
        journal: JournalStore,
        experiment_id: str,
        name: str,
        *,
        writer: Any,
        parent: Experiment | None = None,
        pending: ExperimentRecord | None = None,
        recorded: dict[TrialKey, dict[str, Any]] | None = None,
        resumed: bool = False,
    ) -> None:
        self.id = experiment_id
        self.name = name
        self.journal = journal
        self.parent = parent
        self.resumed = resumed
        self.fallback: Path | None = None
        self._writer = writer
        self._pending = pending  # a child's record, inserted with its first trial
        self._recorded: dict[TrialKey, dict[str, Any]] = recorded if recorded is not None else {}
        self._children: dict[str, Experiment] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._finished = False

    def __repr__(self) -> str:
        return f"Experiment({self.id!r}, name={self.name!r}, trials={len(self._recorded)})"

    # -- beginnings ------------------------------------------------------------------------------

    @classmethod
    def start(cls, journal: JournalStore, record: ExperimentRecord) -> Experiment:
        """Begin a new top-level experiment described by ``record`` (inserted by the writer's thread)."""
        if record.parent_id is not None:
            raise ExecutionError(
                f"experiment {record.id} is nested in {record.parent_id}: start it with parent.child()"
            )
        return cls(journal, record.id, record.name, writer=journal.writer(record.id, create=record))

    @classmethod
    def resume(
        cls,
        journal: JournalStore,
        experiment_id: str,
        expected: ExperimentRecord,
        *,
        error: type[Exception] = ExecutionError,
    ) -> Experiment:
        """Reopen the ended experiment ``experiment_id`` for the run ``expected`` describes.

        Its recorded trials (and its children's) are read once; only missing trials run again.

        Raises:
            error: no such experiment, it is still running, it is final (a finished optimization),
                or it is not the same run (see :func:`~dspex_lab.session.check_resumable`).
        """
        try:
            previous = journal.experiment(experiment_id)
        except JournalError as problem:
            raise error(f"cannot resume {experiment_id!r}: {problem}") from None
        if previous["status"] == "running":
            raise error(f"experiment {experiment_id} is still running in process {previous.get('pid')}")
        read_back = _FINAL_WHEN_FINISHED.get(previous.get("kind"))
        if previous["status"] == "finished" and read_back is not None:
            raise error(
                f"{previous['kind']} run {experiment_id} already finished; read it with "
                + read_back.format(id=experiment_id)
            )
        check_resumable(previous, expected, error=error)
        journal.claim_experiment(experiment_id)
        recorded = {_key(row): row for row in journal.trial_rows(experiment_id)}
        experiment = cls(
            journal,
            experiment_id,
            previous["name"],
            writer=journal.writer(experiment_id),
            recorded=recorded,
            resumed=True,
        )
        experiment._load_children()
        return experiment

    def _load_children(self) -> None:
        rows: dict[str, dict[TrialKey, dict[str, Any]]] = {}
        for row in self.journal.children_trial_rows(self.id):
            rows.setdefault(row.pop("experiment_id"), {})[_key(row)] = row
        for child in self.journal.children(self.id):
            self._children[child.id] = Experiment(
                self.journal,
                child.id,
                child.name,
                writer=self._writer,
                parent=self,
                recorded=rows.get(child.id, {}),
                resumed=True,
            )

    def child(self, record: ExperimentRecord) -> Experiment:
        """Return the experiment nested in this one that ``record`` describes.

        A new child is inserted with its first trial (an evaluation that runs nothing leaves no
        experiment); one this run recorded before (a resume, or a second use) is returned as it is,
        with its trials.
        """
        if record.parent_id != self.id:
            raise ExecutionError(f"record {record.id} names parent {record.parent_id}, not {self.id}")
        with self._lock:
            existing = self._children.get(record.id)
            if existing is None:
                existing = self._children[record.id] = Experiment(
                    self.journal, record.id, record.name, writer=self._writer, parent=self, pending=record
                )
        return existing

    def children(self) -> list[Experiment]:
        """Return the experiments nested in this one that this run knows (recorded or started), oldest first."""
        return list(self._children.values())

    def has_child(self, experiment_id: str) -> bool:
        """Tell whether a nested experiment with this id is recorded or started."""
        return experiment_id in self._children

    # -- trials ----------------------------------------------------------------------------------

    def run(
        self,
        tasks: Sequence[TrialTask],
        runner: TrialRunner,
        *,
        executor: Executor,
        policy: RunPolicy,
        sinks: Sequence[Callable[[Any], None]] = (),
        is_priced: Callable[[Any], bool] | None = None,
    ) -> RunReport:
        """Run the trials of ``tasks`` not recorded yet, recording each as it finishes; return the engine's report.

        ``sinks`` hear every event after the trial is recorded here.
        """
        missing = [task for task in tasks if (task.example_id, task.repeat) not in self._recorded]
        if missing:
            self._insert()
        return run_trials(
            missing,
            runner,
            executor=executor,
            policy=policy,
            sinks=[self._on_event, *sinks],
            run_id=self.id,
            name=self.name,
            already_done=len(tasks) - len(missing),
            is_priced=is_priced,
        )

    def _on_event(self, event: Any) -> None:
        if isinstance(event, TrialFinished):
            self.record(event.result.to_row())

    def record(self, row: dict[str, Any]) -> None:
        """Keep one finished trial (a ``TrialResult.to_row()`` dict) and stream it to the journal.

        A trial already recorded (same example and repeat) is kept as first recorded.
        """
        self._insert()
        with self._lock:
            key = _key(row)
            if key in self._recorded:
                return
            self._recorded[key] = row
        self._writer.add(row, experiment_id=self.id)

    @property
    def span_sink(self) -> Callable[[str, Sequence[Any]], None]:
        """Where a trial runner sends each trial's spans (thread-safe): into this experiment."""
        return functools.partial(self._writer.add_spans, experiment_id=self.id)

    def add_spans(self, trace_id: str, spans: Sequence[Any]) -> None:
        """Store spans that belong to no trial (an optimization step's decisions) in this experiment."""
        self._insert()
        self._writer.add_spans(trace_id, spans, experiment_id=self.id)

    def recorded(self) -> Mapping[TrialKey, dict[str, Any]]:
        """Return every recorded trial by (example id, repeat): this process's and a resumed run's (read-only view)."""
        return MappingProxyType(self._recorded)

    def trials(self) -> pd.DataFrame:
        """Return the recorded trials as a frame in example order (then repeat).

        A resumed experiment's come from the journal (one type for the old and the new trials),
        unless the journal could not take them.
        """
        if self.resumed and self.parent is None and self.close() is None:
            return self.journal.trials(self.id)
        frame = trials_frame(list(self._recorded.values()), experiment_id=None)
        return frame.sort_values(["example_index", "repeat"], kind="stable").reset_index(drop=True)

    def _insert(self) -> None:
        if self._pending is not None:
            with self._lock:
                pending, self._pending = self._pending, None
            if pending is not None:
                self._writer.create(pending)

    # -- ends ------------------------------------------------------------------------------------

    def close(self) -> Path | None:
        """Flush what is queued for the journal and stop its writer; idempotent.

        A nested experiment shares its root's writer, which the root closes: closing a child does
        nothing. If the journal cannot take the trials, they are saved to a new private file (mode
        0600) and a warning says where; the in-memory trials still make the result. Returns that
        file, if any.
        """
        if self.parent is not None:
            return None
        if self._closed:
            return self.fallback
        self._closed = True
        try:
            self._writer.close()
        except JournalError as error:
            self.fallback = self._save_aside(error)
        return self.fallback

    def _save_aside(self, error: JournalError) -> Path:
        rows = [row for child in [self, *self._all_children()] for row in child._recorded.values()]
        # A new file only this user can read (mkstemp: O_EXCL, mode 0600), never one planted in the shared temp folder.
        descriptor, name = tempfile.mkstemp(prefix=f"dspex-unsaved-{self.id}-", suffix=".jsonl")
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False, default=repr) + "\n")
        warnings.warn(
            f"the journal could not be written ({error}); the run's {len(rows)} trials are in the returned "
            f"result and were saved to {name}",
            DspexLabWarning,
            stacklevel=4,
        )
        return Path(name)

    def _all_children(self) -> list[Experiment]:
        found = []
        for child in self._children.values():
            found.extend([child, *child._all_children()])
        return found

    @property
    def saved(self) -> bool:
        """Tell whether every trial reached the journal (False once they had to be saved aside)."""
        return self.fallback is None

    def finish(self, status: str, *, detail: str | None = None, summary: dict[str, Any] | None = None) -> None:
        """Write how the experiment ended, after flushing its trials (see :meth:`close`).

        A nested experiment's queued trials are flushed first (its root's writer goes on). A failure
        to write the end is a warning: the trials are journaled and the run's result stands.
        """
        self._finished = True
        if self.parent is not None:
            self._insert()
            self._writer.flush()
        else:
            self.close()
        if not self.saved:
            return
        try:
            self.journal.finish_experiment(self.id, status=status, detail=detail, summary=summary)
        except JournalError as error:
            warnings.warn(
                f"the trials of {self.id} are journaled, but its final status could not be: {error}",
                DspexLabWarning,
                stacklevel=3,
            )

    def __enter__(self) -> Experiment:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        """Flush the trials; an experiment left by an exception before :meth:`finish` ends with it.

        A KeyboardInterrupt ends it ``interrupted``, any other exception ``failed``, with the
        exception as the detail, so the journal says why it stopped (not a run that merely died).
        """
        if error is not None and not self._finished:
            status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
            self.finish(status, detail=mask_text(f"{type(error).__name__}: {error}")[:2000])
        self.close()


def _key(row: Mapping[str, Any]) -> TrialKey:
    return (str(row["example_id"]), int(row["repeat"]))
