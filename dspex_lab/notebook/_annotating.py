"""Annotating a trial from a view: the dashboard's trace page and the notebook's experiment browser.

Both views write through :meth:`~dspex_lab.journal.AnnotationQueries.annotate` (its checks and bounds
are the journal's), with the operating system's user as the author. What they share is here: each
trial's current label, the label presets they offer, recording a form's label, note and corrected
gold (read by :meth:`~dspex_lab.notebook.ExampleFields.corrected_gold`, as the CLI's ``--gold`` is),
and withdrawing a trial's annotation in force (the CLI's ``--withdraw``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dspex_lab.journal import JournalStore
    from dspex_lab.notebook._trace_data import ExampleFields

__all__ = ["LABEL_PRESETS", "annotate_trial", "current_labels", "withdraw_trial"]

#: The labels a view offers with one click; any other short text is a label too.
LABEL_PRESETS = ("good", "wrong gold", "ambiguous", "wrong prediction")


def current_labels(journal: JournalStore, experiment_id: str) -> dict[str, str]:
    """Return each annotated trial's label in force: ``(note)`` or ``(gold)`` for an annotation without one."""
    labels = {}
    for row in journal.annotation_rows(experiment_id, current=True):
        label = row["label"] or ("(gold)" if row["corrected_gold"] is not None else "(note)")
        labels[str(row["trial_id"])] = label
    return labels


def annotate_trial(
    journal: JournalStore,
    trial: dict[str, Any],
    *,
    experiment_id: str,
    fields: ExampleFields,
    label: str = "",
    note: str = "",
    gold: str = "",
) -> str:
    """Annotate one trial from a view's form and return the line the view shows.

    Empty texts are left out (a form's untouched box is not an empty note); the author is the
    operating system's user. ``trial`` is the trial's row (``trial_id``, ``example_id``, ``prediction``).

    Raises:
        JournalError: nothing to record, a text past its bound, an unknown trial or an unreadable gold.
    """
    label, note, gold = label.strip(), note.strip(), gold.strip()
    trial_id = str(trial["trial_id"])
    example_id = str(trial.get("example_id") or "")
    corrected = fields.corrected_gold(example_id, trial.get("prediction"), gold) if gold else None
    journal.annotate(experiment_id, trial_id, label=label or None, note=note or None, corrected_gold=corrected)
    said = [f"label {label!r}"] if label else []
    said += ["a note"] if note else []
    said += [f"gold {json.dumps(corrected, ensure_ascii=False)}"] if corrected is not None else []
    return f"annotated trial {trial_id} with {', '.join(said)}"


def withdraw_trial(journal: JournalStore, trial: dict[str, Any], *, experiment_id: str) -> str:
    """Withdraw one trial's annotation in force from a view's form and return the line the view shows.

    The withdrawal is journaled (author: the operating system's user) and kept in the history.

    Raises:
        JournalError: an unknown trial, or one with no annotation in force to withdraw.
    """
    trial_id = str(trial["trial_id"])
    journal.annotate(experiment_id, trial_id, withdraw=True)
    return f"withdrew the annotation of trial {trial_id}: it has none in force"
