"""Annotations: a person's verdict on a trial (a label, a note, a corrected gold), kept as history.

An annotation is never changed once written. Annotating the same trial again adds a row that
supersedes the earlier one in the current view (``annotation_rows(current=True)``, the CLI's label
column, ``Dataset.from_journal``): each annotation is a whole verdict, so a later one with only a note
leaves the trial with no label. Every earlier one stays readable (``current=False``), with who wrote it
and when.

Withdrawing (``annotate(..., withdraw=True)``) is one more row of the same kind, with no label, no
note and no corrected gold: it supersedes the trial's annotation in force, so the current view has
none for the trial until it is annotated again, and the history shows who withdrew it and when.

Texts are bounded so a journal cannot be filled by a pasted file: a label is a short tag
(:data:`MAX_LABEL` characters), a note a paragraph or a few (:data:`MAX_NOTE`), a corrected gold a JSON
object of the example's gold fields of at most :data:`MAX_GOLD_BYTES` bytes encoded.
"""

from __future__ import annotations

import getpass
import json
import re
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dspex_lab.errors import JournalError
from dspex_lab.journal._base import DuckDBStore, _now

if TYPE_CHECKING:
    import duckdb
    import pandas as pd

__all__ = [
    "ANNOTATION_BOUNDS",
    "ANNOTATION_COLUMNS",
    "MAX_AUTHOR",
    "MAX_GOLD_BYTES",
    "MAX_LABEL",
    "MAX_NOTE",
    "AnnotationQueries",
    "annotation_record",
    "is_withdrawal",
]

MAX_LABEL = 100
MAX_NOTE = 4000
MAX_AUTHOR = 100
MAX_GOLD_BYTES = 16 * 1024

#: What an annotation may hold, for a view that checks its fields before it writes: characters of the
#: label, note and author, and bytes of the corrected gold's JSON.
ANNOTATION_BOUNDS = {"label": MAX_LABEL, "note": MAX_NOTE, "author": MAX_AUTHOR, "corrected_gold": MAX_GOLD_BYTES}

#: The columns of :meth:`AnnotationQueries.annotations` and of each dict of ``annotation_rows``.
ANNOTATION_COLUMNS = (
    "id", "experiment_id", "trial_id", "example_id", "label", "note", "corrected_gold", "author", "created_at",
)  # fmt: skip

_SELECT = f"SELECT {', '.join(ANNOTATION_COLUMNS)}, seq FROM annotations"
# A row that withdraws the annotation in force: nothing recorded (see is_withdrawal).
_WITHDRAWAL = "label IS NULL AND note IS NULL AND corrected_gold IS NULL"
# The latest annotation of each trial: ``seq`` orders two written in the same microsecond.
_CURRENT = " QUALIFY row_number() OVER (PARTITION BY experiment_id, trial_id ORDER BY created_at DESC, seq DESC) = 1"


def _bounded_text(value: Any, name: str, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise JournalError(f"annotation {name} must be text, got {type(value).__name__}")
    if len(value) > limit:
        raise JournalError(f"annotation {name} is {len(value)} characters; at most {limit} are kept")
    return value


def _gold_json(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise JournalError(
            "corrected_gold must be a mapping of the example's gold field names to values, "
            f"e.g. {{'answer': '42'}}; got {type(value).__name__}"
        )
    try:
        text = json.dumps(dict(value), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise JournalError(f"corrected_gold must hold JSON values only: {error}") from error
    size = len(text.encode("utf-8"))
    if size > MAX_GOLD_BYTES:
        raise JournalError(f"corrected_gold is {size} bytes of JSON; at most {MAX_GOLD_BYTES} are kept")
    return text


def is_withdrawal(row: Mapping[str, Any]) -> bool:
    """Tell whether an annotation row withdraws the trial's annotation in force (no label, note or corrected gold)."""
    return row["label"] is None and row["note"] is None and row["corrected_gold"] is None


def _check_record(record: Any) -> None:
    """Refuse a record :func:`annotation_record` would not have built (the bounds hold at the write too).

    A record with no label, note or corrected gold is a withdrawal (:func:`is_withdrawal`).
    """
    keys = {"id", "experiment_id", "trial_id", "label", "note", "corrected_gold", "author"}
    if not isinstance(record, Mapping) or set(record) != keys:
        raise JournalError(f"an annotation record has exactly the fields {sorted(keys)}; build it with annotate()")
    if not isinstance(record["id"], str) or not re.fullmatch(r"[0-9a-f]{32}", record["id"]):
        raise JournalError(f"annotation id must be 32 lowercase hex digits, got {record['id']!r:.80}")
    for name, limit in (("label", MAX_LABEL), ("note", MAX_NOTE), ("author", MAX_AUTHOR)):
        _bounded_text(record[name], name, limit)
    gold = record["corrected_gold"]
    if gold is not None:
        try:
            decoded = json.loads(gold) if isinstance(gold, str) else None
        except ValueError:
            decoded = None
        if not isinstance(decoded, dict) or len(gold.encode("utf-8")) > MAX_GOLD_BYTES:
            raise JournalError(f"corrected_gold must be a JSON object of at most {MAX_GOLD_BYTES} bytes")
    if not record["author"]:
        raise JournalError("an annotation needs an author")


def _default_author() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (a container's bare uid)
        return "unknown"


def annotation_record(
    experiment_id: str,
    trial_id: str,
    *,
    label: str | None = None,
    note: str | None = None,
    corrected_gold: Mapping[str, Any] | None = None,
    author: str | None = None,
    withdraw: bool = False,
) -> dict[str, Any]:
    """Return a checked annotation record, with a new id (what :meth:`AnnotationQueries.record_annotation` writes).

    ``withdraw``: the record withdraws the trial's annotation in force (it holds no label, note or gold).

    Raises:
        JournalError: nothing to record, a withdrawal with something to record, or a text or the gold past
            its bound or of the wrong type.
    """
    if not isinstance(withdraw, bool):
        raise JournalError(f"annotate(withdraw=...) must be True or False, got {withdraw!r:.80}")
    for name, value in (("experiment_id", experiment_id), ("trial_id", trial_id)):
        if not isinstance(value, str) or not value:
            raise JournalError(f"annotate needs the {name} as non-empty text, got {value!r:.80}")
    record = {
        "id": uuid.uuid4().hex,
        "experiment_id": experiment_id,
        "trial_id": trial_id,
        "label": _bounded_text(label, "label", MAX_LABEL),
        "note": _bounded_text(note, "note", MAX_NOTE),
        "corrected_gold": _gold_json(corrected_gold),
        "author": _bounded_text(_default_author() if author is None else author, "author", MAX_AUTHOR),
    }
    if withdraw and not is_withdrawal(record):
        raise JournalError(
            f"withdrawing the annotation of trial {trial_id!r:.80} takes no label, note or corrected gold; "
            "annotate it again afterwards to give new ones"
        )
    if not withdraw and is_withdrawal(record):
        raise JournalError(f"annotation of trial {trial_id!r:.80} is empty: give a label, a note or a corrected gold")
    if not record["author"]:
        raise JournalError("annotation author must be non-empty text")
    return record


class AnnotationQueries(DuckDBStore):
    """Annotate trials and read the annotations back (every one, or each trial's current one)."""

    def annotate(
        self,
        experiment_id: str,
        trial_id: str,
        *,
        label: str | None = None,
        note: str | None = None,
        corrected_gold: Mapping[str, Any] | None = None,
        author: str | None = None,
        withdraw: bool = False,
    ) -> str:
        """Record a person's verdict on a trial, or withdraw the one in force, and return the annotation's id.

        The annotation supersedes the trial's earlier ones in the current view; they stay in the
        history. A withdrawal (``withdraw=True``) is an annotation with no label, note or corrected
        gold: the trial then has no annotation in force until it is annotated again. Its id is made
        here, before the write, so the write may be retried (through another process's journal
        service) without recording it twice.

        Args:
            experiment_id: the experiment the trial belongs to.
            trial_id: the trial (``<example id>/r<repeat>``).
            label: a short tag such as ``wrong gold`` (at most 100 characters).
            note: free text (at most 4,000 characters).
            corrected_gold: the example's gold fields as they should be, e.g. ``{"answer": "42"}``
                (a JSON object of at most 16 KB; input fields are refused).
            author: who annotates (default: the operating system's user name).
            withdraw: withdraw the trial's annotation in force instead (no label, note or gold with it).

        Raises:
            JournalError: no such trial, nothing to record, a value past its bound, or a withdrawal with
                something to record or of a trial with no annotation in force.
        """
        record = annotation_record(
            experiment_id,
            trial_id,
            label=label,
            note=note,
            corrected_gold=corrected_gold,
            author=author,
            withdraw=withdraw,
        )
        return self.record_annotation(record)

    def record_annotation(self, record: dict[str, Any]) -> str:
        """Write an annotation record (:func:`annotation_record`'s); writing the same id again changes nothing.

        The record is checked again here, where it is written: a call through the journal service
        comes from another process. A withdrawal is refused when the trial has no annotation in force.
        """
        _check_record(record)
        with self._connect(write=True) as connection:
            example_id = _trial_example(connection, record, self.location)
            known = connection.execute("SELECT 1 FROM annotations WHERE id = ?", [record["id"]]).fetchone()
            if is_withdrawal(record) and known is None:
                _check_in_force(connection, record)
            connection.execute(
                """INSERT OR IGNORE INTO annotations (id, experiment_id, trial_id, example_id, label, note,
                   corrected_gold, author, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                [
                    record["id"], record["experiment_id"], record["trial_id"], example_id, record["label"],
                    record["note"], record["corrected_gold"], record["author"], _now(),
                ],
            )  # fmt: skip
        return str(record["id"])

    def annotation_rows(self, experiment_id: str | None = None, *, current: bool = False) -> list[dict[str, Any]]:
        """Return annotations as dicts (``corrected_gold`` decoded), in the order they were written.

        Args:
            experiment_id: one experiment's (default: every experiment's).
            current: only each trial's latest annotation (the one in force), not the history.
        """
        if not isinstance(current, bool):
            raise JournalError(f"annotation_rows(current=...) must be True or False, got {current!r}")
        if not self._exists():
            return []
        where, parameters = ("", []) if experiment_id is None else (" WHERE experiment_id = ?", [experiment_id])
        query = _SELECT + where + (_CURRENT if current else "")
        # A trial whose latest annotation is a withdrawal has none in force.
        in_force = f" WHERE NOT ({_WITHDRAWAL})" if current else ""
        rows = self._rows(f"SELECT * FROM ({query}){in_force} ORDER BY created_at, seq", parameters)
        for row in rows:
            del row["seq"]
            if isinstance(row["corrected_gold"], str):
                row["corrected_gold"] = json.loads(row["corrected_gold"])
        return rows

    def annotations(self, experiment_id: str | None = None, *, current: bool = False) -> pd.DataFrame:
        """Return annotations as a DataFrame, in the order they were written (see :meth:`annotation_rows`).

        ``corrected_gold`` holds the decoded JSON object (or None); ``created_at`` is UTC, naive.
        """
        import pandas as pd

        rows = self.annotation_rows(experiment_id, current=current)
        frame = pd.DataFrame(rows, columns=list(ANNOTATION_COLUMNS))
        frame["created_at"] = pd.to_datetime(frame["created_at"])
        return frame


def _check_in_force(connection: duckdb.DuckDBPyConnection, record: Mapping[str, Any]) -> None:
    """Refuse to withdraw the annotation of a trial that has none in force (never annotated, or withdrawn)."""
    latest = connection.execute(
        f"SELECT label, note, corrected_gold FROM annotations WHERE experiment_id = ? AND trial_id = ?{_CURRENT}",
        [record["experiment_id"], record["trial_id"]],
    ).fetchone()
    if latest is None or all(value is None for value in latest):
        said = "was never annotated" if latest is None else "has its annotation withdrawn already"
        raise JournalError(
            f"trial {record['trial_id']!r:.80} of experiment {record['experiment_id']!r:.80} {said}: "
            "there is no annotation in force to withdraw"
        )


def _trial_example(connection: duckdb.DuckDBPyConnection, record: Mapping[str, Any], location: str) -> str:
    """Return the annotated trial's example id; refuse an unknown trial or a gold that names an input field."""
    found = connection.execute(
        "SELECT example_id FROM trials WHERE experiment_id = ? AND trial_id = ?",
        [record["experiment_id"], record["trial_id"]],
    ).fetchone()
    if found is None:
        raise JournalError(
            f"no trial {record['trial_id']!r:.80} in experiment {record['experiment_id']!r:.80} of {location}; "
            f"list its trials with: dspex journal trials {record['experiment_id']:.80}"
        )
    example_id = str(found[0])
    if record["corrected_gold"] is not None:
        stored = connection.execute(
            """SELECT d.record FROM experiments e
               JOIN dataset_examples d ON d.dataset_fingerprint = e.dataset_fingerprint
               WHERE e.id = ? AND d.example_id = ? LIMIT 1""",
            [record["experiment_id"], example_id],
        ).fetchone()
        inputs = set(json.loads(stored[0]).get("inputs") or []) if stored is not None else set()
        named = sorted(inputs & set(json.loads(record["corrected_gold"])))
        if named:
            raise JournalError(
                f"corrected_gold names the input field(s) {named} of example {example_id!r:.80}; "
                "a gold correction changes only the fields the program should output"
            )
    return example_id
