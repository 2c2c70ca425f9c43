"""The session: where a researcher's runs happen, and the experiments they leave.

:class:`Context` is what every run reads its surroundings from: the LM, the executor that runs
trials, the journal that keeps them (a file, or an in-memory journal of its own: never none), the
thread count. It is a context manager (``with dx.Context(...)``) that nests; :func:`current_context`
returns the innermost one (or the default, built from settings and the environment), and
:func:`journal_store` the journal a ``journal=`` argument names (the current context's when omitted).

:class:`Experiment` is one run in the journal from start (or resume) to finish: evaluation,
SIMBA-C and the DSPy bridge all record through it, nest runs with ``child()``, and check a
resume with the one rule of :func:`check_resumable`. :func:`experiment_record` builds the record
every experiment starts from. :func:`resolve_experiment` is the one rule for naming an experiment (its
id, or a name one experiment has); a run the user stops raises :class:`RunInterrupted` (a
KeyboardInterrupt) carrying the experiment to resume.

This layer sits between the engine and the journal below and evaluation and optimization above:
it may import the engine, the journal, the providers and the data layer, and nothing above it.
"""

from __future__ import annotations

from dspex_lab.session._context import Context, current_context, journal_store
from dspex_lab.session._experiment import Experiment, TrialKey, plan_trials
from dspex_lab.session._interrupt import RunInterrupted
from dspex_lab.session._names import resolve_experiment
from dspex_lab.session._records import (
    MAX_STORED_EXAMPLES,
    check_resumable,
    environment,
    experiment_record,
    identity,
    lm_state,
    metric_name,
    stored_examples,
)

__all__ = [
    "MAX_STORED_EXAMPLES",
    "Context",
    "Experiment",
    "RunInterrupted",
    "TrialKey",
    "check_resumable",
    "current_context",
    "environment",
    "experiment_record",
    "identity",
    "journal_store",
    "lm_state",
    "metric_name",
    "plan_trials",
    "resolve_experiment",
    "stored_examples",
]
