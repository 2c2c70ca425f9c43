"""One rule for naming an experiment: by its id, or by its name when one experiment has it.

Every place a researcher names an experiment (``dx.load``, ``%dspex compare``, ``%dspex trace``,
``--resume``) resolves it here, so a name that works in one works in all, and a name two experiments
share is the same one-line error everywhere, listing them.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection

from dspex_lab.errors import JournalError
from dspex_lab.journal import ExperimentSummary, JournalStore

__all__ = ["resolve_experiment"]

# An ambiguous name lists at most this many experiments (the newest); the rest are counted.
_LISTED = 5


def resolve_experiment(journal: JournalStore, experiment: str, *, kinds: Collection[str] = ()) -> str:
    """Return the id of the experiment ``experiment`` names in ``journal``: an id, or a name one experiment has.

    An id always wins over a name. Among experiments of that name, those of ``kinds`` (when given)
    are preferred, then top-level ones over runs nested in another (an optimization's candidates),
    so a name that is unique where the caller looks resolves; a name of another kind only still
    resolves, and the caller says what that experiment is instead.

    Args:
        journal: where the experiment was recorded.
        experiment: an experiment id, or an experiment's name.
        kinds: the kinds the caller reads (``"evaluation"``, ``"optimization"``...); empty: any kind.

    Raises:
        JournalError: nothing has that id or name (close names are suggested), or several experiments
            have that name (they are listed with id, kind, status and start time: name one by its id).

    Examples:
        >>> import dspex_lab as dx
        >>> from dspex_lab.journal import memory_journal
        >>> from dspex_lab.session import experiment_record
        >>> journal = memory_journal()
        >>> qa = dx.Program("dspy.Predict", signature="question -> answer")
        >>> data = dx.Dataset(dx.datasets.arithmetic(2, seed=0))
        >>> record = experiment_record("evaluation", "qa-base", program=qa, data=data, metric="exact_match", config={})
        >>> run = journal.create_experiment(record)
        >>> resolve_experiment(journal, "qa-base") == resolve_experiment(journal, run) == run
        True
    """
    if not isinstance(experiment, str) or not experiment.strip():
        raise JournalError(f"an experiment is named by its id or name (text), got {experiment!r:.80}")
    try:
        journal.experiment(experiment)
    except JournalError:
        pass
    else:
        return experiment
    summaries = journal.experiment_summaries()
    named = [summary for summary in summaries if summary.name == experiment]
    named = [summary for summary in named if summary.kind in kinds] or named
    named = [summary for summary in named if summary.parent_id is None] or named
    if len(named) == 1:
        return named[0].id
    if not named:
        close = difflib.get_close_matches(experiment, sorted({summary.name for summary in summaries}), n=3)
        hint = f"; close names: {', '.join(repr(name) for name in close)}" if close else ""
        raise JournalError(f"no experiment {experiment!r:.80} in {journal.location}, by id or by name{hint}")
    raise JournalError(
        f"{len(named)} experiments are named {experiment!r:.80} in {journal.location}: {_listed(named)}; "
        "name one by its id"
    )


def _listed(summaries: list[ExperimentSummary]) -> str:
    """Return the newest few of ``summaries`` as ``id (kind, status, started ...)``, and how many more there are."""
    shown = [
        f"{summary.id} ({summary.kind}, {summary.status}, started {summary.created_at:%Y-%m-%d %H:%M:%S})"
        if summary.created_at is not None
        else f"{summary.id} ({summary.kind}, {summary.status})"
        for summary in summaries[:_LISTED]
    ]
    more = len(summaries) - _LISTED
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")
