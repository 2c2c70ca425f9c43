"""The trial writer: a background thread that streams a run's finished trials into a journal.

``add`` is called from the run's worker threads and never waits for the database; the writer's
thread flushes what accumulated every ``flush_interval`` seconds, so a crash loses well under a
second of work, and each flush refreshes the experiment's heartbeat.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dspex_lab.errors import JournalError
from dspex_lab.journal._schema import span_table

if TYPE_CHECKING:
    from dspex_lab._records import ExperimentRecord
    from dspex_lab.journal._store import JournalWriter

__all__ = ["TrialWriter"]


class TrialWriter:
    """Stream finished trials into the journal from a background thread.

    ``add`` is cheap and never blocks on the database; a flusher thread writes
    what accumulated every ``flush_interval`` seconds in one transaction per
    experiment. A flush that fails (journal locked too long) keeps its rows for
    the next one; ``close`` makes a final flush and raises JournalError if rows
    remain unsaved.

    One writer may serve several experiments (an optimization run's candidate
    evaluations): :meth:`create` queues another experiment's record, and ``add``
    takes the experiment a row belongs to. Records are inserted before any of
    their trials, in the order they were queued.
    """

    def __init__(
        self,
        journal: JournalWriter,
        experiment_id: str,
        *,
        flush_interval: float = 0.4,
        create: ExperimentRecord | None = None,
    ) -> None:
        if create is not None and create.id != experiment_id:
            raise JournalError(f"writer for {experiment_id} was given the record of {create.id}")
        self.journal = journal
        self.experiment_id = experiment_id
        self.flush_interval = flush_interval
        self.written = 0
        self.last_error: BaseException | None = None
        self._pending_records: list[ExperimentRecord] = [create] if create is not None else []
        self._buffer: list[tuple[str, dict[str, Any]]] = []
        self._span_buffer: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dspex-journal", daemon=True)
        self._thread.start()

    def create(self, record: ExperimentRecord) -> str:
        """Queue another experiment's record; its trials may be added at once. Returns its id."""
        with self._lock:
            self._pending_records.append(record)
        return record.id

    def add(self, row: dict[str, Any], *, spans: Sequence[Any] = (), experiment_id: str | None = None) -> None:
        """Queue one trial row (and its spans, serialised later on the writer's thread) for the next flush."""
        target = experiment_id or self.experiment_id
        with self._lock:
            self._buffer.append((target, row))
            if spans:
                self._span_buffer.extend((target, span) for span in spans)

    def add_spans(self, trial_id: str, spans: Sequence[Any], *, experiment_id: str | None = None) -> None:
        """Queue the spans of one trial (a span sink: thread-safe, called from the trial's worker thread)."""
        if spans:
            target = experiment_id or self.experiment_id
            with self._lock:
                self._span_buffer.extend((target, span) for span in spans)

    def flush(self) -> None:
        """Write everything queued so far."""
        with self._lock:
            records, self._pending_records = self._pending_records, []
            rows, self._buffer = self._buffer, []
            spans, self._span_buffer = self._span_buffer, []
        # experiment -> (rows, spans); what is left in here after an error is put back.
        unsaved: dict[str, tuple[list[dict[str, Any]], list[Any]]] = {}
        for target, row in rows:
            unsaved.setdefault(target, ([], []))[0].append(row)
        for target, item in spans:
            unsaved.setdefault(target, ([], []))[1].append(item)
        if not unsaved:
            unsaved[self.experiment_id] = ([], [])  # a heartbeat for the writer's own experiment
        try:
            while records:
                self.journal.create_experiment(records[0])
                records.pop(0)
            for target, (trial_rows, trial_spans) in list(unsaved.items()):
                table = span_table(trial_spans) if trial_spans else ()
                self.written += self.journal.append_trials(target, trial_rows, spans=table)
                del unsaved[target]
            self.last_error = None
        except Exception as error:
            self.last_error = error
            with self._lock:
                self._pending_records[:0] = records
                self._buffer[:0] = [(target, row) for target, (items, _) in unsaved.items() for row in items]
                self._span_buffer[:0] = [(target, item) for target, (_, items) in unsaved.items() for item in items]

    def _loop(self) -> None:
        if self._pending_records:
            self.flush()
        while not self._stop.wait(self.flush_interval):
            self.flush()

    def close(self) -> None:
        """Stop the flusher and write what remains."""
        self._stop.set()
        self._thread.join()
        self.flush()
        if self._buffer or self._pending_records:
            raise JournalError(
                f"{len(self._buffer)} trials could not be written to {self.journal.location}: {self.last_error}"
            )
