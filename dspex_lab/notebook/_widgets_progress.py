"""``RunProgress``: a live view of a run (trials, mean with its interval, errors, tokens, cost) with Cancel.

How Cancel reaches a busy kernel. While a cell runs an evaluation, the kernel's main thread is inside
``dx.evaluate``, so a widget message from the browser waits in the main thread's queue until the cell
ends: too late to stop anything. ipykernel 7 reads every shell message on its own shell-channel thread
first, and asks each widget's comm, on that thread, where a comm message should go (the
``_reply_subshell_for`` routing hook of ``ipykernel.comm.BaseComm``). ``RunProgress`` wraps that hook on
its own comm: a Cancel message is noticed there, on arrival, and the run is interrupted at once with
``_thread.interrupt_main`` — what the kernel's own stop button does, aimed at the main thread — so the run
ends ``interrupted`` within the executor's half-second wait and keeps every finished trial in the journal
(``dx.evaluate`` then raises KeyboardInterrupt naming the id to resume with). The message still goes on to
the main thread afterwards, where it finds the run over and does nothing.

Where that hook is absent (ipykernel 6, or a kernel without its shell-channel thread), a Cancel message
that reaches Python while the run goes (an ``async`` cell, or :meth:`RunProgress.cancel` called from
another thread) stops it at the next finished trial instead, and one that arrives after the run is
ignored. The widget says which of the two it relies on (``cancel_mode``).
"""

from __future__ import annotations

import _thread
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from dspex_lab.engine import RunFinished, RunStarted, TrialFinished
from dspex_lab.errors import ExecutionError, MissingDependencyError
from dspex_lab.notebook._widgets_common import front_end_file, json_number
from dspex_lab.optimization import OptimizationEnded, OptimizationStanding, OptimizationStarted, OptimizationStep
from dspex_lab.stats import score_interval

try:
    import anywidget
    import traitlets
except ImportError as error:  # pragma: no cover - exercised only without the notebook extra
    raise MissingDependencyError("anywidget", "notebook") from error

__all__ = ["RunProgress", "show_run_progress"]

# How often the widget's numbers are sent to the front end while trials finish: each update is a comm
# message, and a fast run finishes hundreds of trials a second.
_REFRESH_SECONDS = 0.2

_CANCEL_MESSAGE = "cancel"


def _is_cancel(data: Any) -> bool:
    # A widget's custom message, as ipywidgets wraps it: {"method": "custom", "content": {...}}.
    return (
        isinstance(data, dict)
        and data.get("method") == "custom"
        and isinstance(data.get("content"), dict)
        and data["content"].get("type") == _CANCEL_MESSAGE
    )


class RunProgress(anywidget.AnyWidget):
    """Show a run as it goes, and stop it from the notebook.

    A run display (:class:`~dspex_lab.optimization.RunDisplay`: an event subscriber with ``begin`` and
    ``finish``): pass it as ``progress=`` to :func:`dspex_lab.evaluate` or :func:`dspex_lab.optimize`
    (both show one by themselves with ``progress=True`` in a Jupyter kernel).
    It shows trials done of planned, the mean score so far with its 95% interval
    (:func:`dspex_lab.stats.score_interval` over per-example means, as the result computes it: Wilson
    for 0/1 scores, Student t otherwise; failed trials are counted as errors, never averaged in), errors by type, tokens
    and cost so far (a model without a known price is named as unpriced, never counted as $0), elapsed
    time and an estimate of the time left, the final status, and a Cancel button.

    Each run it receives starts the trial counts and the mean afresh; tokens, cost and LM calls add up
    over every run it has shown.

    An optimization (begun with :meth:`begin`) is shown as one run: step k of N, candidates screened
    and validated, the run's LM calls, tokens and cost, its elapsed time and the time left (at the pace
    of its steps so far, or until its budget is spent, whichever comes first), and its best candidate so
    far with its validation interval; the evaluation running now (a candidate's screening or validation)
    is a secondary line. The run's numbers are the ones the optimization sends with each step and at its
    end (:class:`~dspex_lab.optimization.OptimizationStanding`, counted as its result counts them: the
    rule proposals and DSPy's own compile calls included), plus the trials finished since; the final
    ones equal the result's ``spending`` and ``best_result``.

    Thread safety: events must come from one thread at a time (the engine's contract); :meth:`cancel` may
    be called from any thread.

    Args:
        title: what to call the run before its first event names it.
    """

    _esm = front_end_file("run_progress.js", widget="RunProgress")
    _css = front_end_file("run_progress.css", widget="RunProgress")

    title = traitlets.Unicode("").tag(sync=True)
    status = traitlets.Unicode("waiting").tag(sync=True)
    done = traitlets.Int(0).tag(sync=True)
    total = traitlets.Int(0).tag(sync=True)
    already_done = traitlets.Int(0).tag(sync=True)
    n_scored = traitlets.Int(0).tag(sync=True)
    mean = traitlets.Float(None, allow_none=True).tag(sync=True)
    ci_low = traitlets.Float(None, allow_none=True).tag(sync=True)
    ci_high = traitlets.Float(None, allow_none=True).tag(sync=True)
    ci_method = traitlets.Unicode("").tag(sync=True)
    n_errors = traitlets.Int(0).tag(sync=True)
    errors = traitlets.Dict().tag(sync=True)
    input_tokens = traitlets.Int(0).tag(sync=True)
    output_tokens = traitlets.Int(0).tag(sync=True)
    lm_calls = traitlets.Int(0).tag(sync=True)
    cost = traitlets.Float(None, allow_none=True).tag(sync=True)
    unpriced_models = traitlets.List().tag(sync=True)
    elapsed = traitlets.Float(0.0).tag(sync=True)
    eta = traitlets.Float(None, allow_none=True).tag(sync=True)
    runs = traitlets.Int(0).tag(sync=True)
    step = traitlets.Int(None, allow_none=True).tag(sync=True)
    best = traitlets.Dict().tag(sync=True)
    # An optimization's own numbers (kind "optimization"); the trial counts above are then its current evaluation's.
    kind = traitlets.Unicode("evaluation").tag(sync=True)
    evaluation = traitlets.Unicode("").tag(sync=True)
    planned_steps = traitlets.Int(None, allow_none=True).tag(sync=True)
    screened = traitlets.Int(0).tag(sync=True)
    validated = traitlets.Int(0).tag(sync=True)
    tokens = traitlets.Int(0).tag(sync=True)
    budget = traitlets.Dict().tag(sync=True)
    eta_basis = traitlets.Unicode("").tag(sync=True)
    cancel_mode = traitlets.Unicode("").tag(sync=True)

    def __init__(self, *, title: str = "") -> None:
        super().__init__(title=title)
        self._lock = threading.Lock()
        # Per example: the sum and count of its scored repeats (repeats are averaged, as in the result).
        self._scores: dict[str, list[float]] = {}
        self._n_scored = 0
        self._error_types: Counter[str] = Counter()
        self._unpriced: set[str] = set()
        self._cost = 0.0
        self._input_tokens = self._output_tokens = self._lm_calls = 0
        # An optimization's totals at its last standing, and the trials' sums at that moment (see _totals).
        self._standing: OptimizationStanding | None = None
        self._trial_sums_then = (0, 0, 0.0)
        self._begun = 0.0
        self._step_times: dict[int, float] = {}
        self._started = 0.0
        self._last_sent = 0.0
        self._run_thread: int | None = None
        self._spanning = False
        self._closing = False
        self._cancel_requested = False
        self._interrupt_sent = False
        self.cancel_mode = "immediate" if self._watch_comm() else "next trial"
        self.on_msg(self._on_front_end_message)

    # -- Cancel ----------------------------------------------------------------------------------------

    def _watch_comm(self) -> bool:
        """Notice Cancel on the kernel's shell-channel thread, before the busy main thread could."""
        comm = getattr(self, "comm", None)
        route = getattr(comm, "_reply_subshell_for", None)
        if comm is None or route is None or not callable(route):
            return False

        def routed(data: Any, default: Any) -> Any:
            if _is_cancel(data):
                self.cancel()
            return route(data, default)

        comm._reply_subshell_for = routed
        return True

    def _on_front_end_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if isinstance(content, dict) and content.get("type") == _CANCEL_MESSAGE:
            self.cancel()

    def cancel(self) -> bool:
        """Stop the run this widget shows, keeping every finished trial; return whether a run was stopped.

        Called from another thread than the run's (the Cancel button in a busy kernel), it interrupts the
        run's thread at once if that is the main thread; otherwise the run stops when its next trial
        finishes. Without a running run it does nothing.
        """
        with self._lock:
            # Once every planned trial has finished the run is closing: an interrupt now could land after it,
            # in whatever the thread runs next, so the request is ignored.
            if self._run_thread is None or self._cancel_requested or self._closing:
                return False
            self._cancel_requested = True
            other_thread = threading.get_ident() != self._run_thread
            main = self._run_thread == threading.main_thread().ident
            # interrupt_main only raises where Python's own SIGINT handler is installed (the kernel puts it
            # there while a cell runs); elsewhere it would be lost, so the next finished trial stops the run.
            if other_thread and main and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                self._interrupt_sent = True
                _thread.interrupt_main()
        return True

    # -- A display spanning several runs (an optimization) ------------------------------------------------

    def begin(self, title: str) -> None:
        """Start showing a run made of several evaluations (``dx.optimize`` calls this).

        Until :meth:`finish`, Cancel stops the whole run, between its evaluations too.
        """
        with self._lock:
            self._spanning = True
            self._run_thread = threading.get_ident()
            self._cancel_requested = False
            self._interrupt_sent = False
        self._begun = time.monotonic()
        self._standing = None
        self._step_times = {}
        with self.hold_sync():
            self.title = title
            self.status = "running"
            self.kind = "optimization"
            self.step = None
            self.best = {}
            self.elapsed = 0.0

    def finish(self, status: str) -> None:
        """End a run begun with :meth:`begin`, showing its final ``status``."""
        with self._lock:
            spanning, self._spanning = self._spanning, False
            self._run_thread = None
            self._cancel_requested = False
        with self.hold_sync():
            if spanning:
                self.elapsed = time.monotonic() - self._begun
            self.eta = None
            self.eta_basis = ""
            self.status = status  # a cancelled run reads "interrupted", as in the journal and the terminal

    # -- Events ----------------------------------------------------------------------------------------

    def __call__(self, event: Any) -> None:
        """Update the view from one run event (the engine calls this on the run's thread)."""
        if isinstance(event, RunStarted):
            self._run_started(event)
        elif isinstance(event, TrialFinished):
            self._trial_finished(event)
        elif isinstance(event, RunFinished):
            self._run_finished(event)
        elif isinstance(event, OptimizationStep):
            self._step_finished(event)
        elif isinstance(event, (OptimizationStarted, OptimizationEnded)):
            self._take_standing(event.standing)

    def _run_started(self, event: RunStarted) -> None:
        with self._lock:
            self._run_thread = threading.get_ident()
            self._closing = False
            if not self._spanning:
                self._cancel_requested = False
                self._interrupt_sent = False
        self._scores = {}
        self._n_scored = 0
        self._error_types = Counter()
        self._started = time.monotonic()
        self._last_sent = self._started
        if not self._spanning:  # an evaluation on its own, maybe in a widget that showed an optimization before
            self._standing = None
        with self.hold_sync():
            if not self._spanning:
                self.title = event.name
                self.kind = "evaluation"
            self.evaluation = event.name
            self.status = "running"
            self.runs += 1
            self.total = event.total
            self.already_done = event.already_done
            self.done = event.already_done
            self.n_scored = 0
            self.n_errors = 0
            self.errors = {}
            self.mean = self.ci_low = self.ci_high = None
            self.ci_method = ""
            if not self._spanning:  # an optimization's clock and time left run from begin() to finish()
                self.eta = None
                self.elapsed = 0.0

    def _trial_finished(self, event: TrialFinished) -> None:
        result = event.result
        if result.score is not None:
            totals = self._scores.setdefault(str(result.example_id), [0.0, 0.0])
            totals[0] += float(result.score)
            totals[1] += 1
            self._n_scored += 1
        if result.status == "error":
            self._error_types[result.error_type or "error"] += 1
        self._add_spending(result)
        now = time.monotonic()
        if now - self._last_sent >= _REFRESH_SECONDS or event.done == event.total:
            self._last_sent = now
            self._publish(done=self.already_done + event.done, now=now)
        with self._lock:
            stop_here = self._cancel_requested and not self._interrupt_sent
            if stop_here:
                self._interrupt_sent = True
            elif event.done >= event.total and not self._spanning:
                self._closing = True
        if stop_here:
            # Raised on the run's thread, between trials: the executor ends the run "interrupted" and
            # every trial finished so far (this one included) is already recorded.
            raise KeyboardInterrupt("cancelled from the RunProgress widget")

    def _run_finished(self, event: RunFinished) -> None:
        with self._lock:
            spanning = self._spanning
            self._closing = False
            if not spanning:
                self._run_thread = None
                self._cancel_requested = False
        self._publish(done=self.already_done + event.done, now=time.monotonic())
        with self.hold_sync():
            if not spanning:  # the whole run's status, clock and time left come with finish()
                self.elapsed = event.wall_seconds
                self.eta = None
                self.status = event.status  # "interrupted" after Cancel, the journal's word for it

    def _step_finished(self, event: OptimizationStep) -> None:
        self._step_times.setdefault(event.step, time.monotonic())
        if event.standing is not None:
            self._take_standing(event.standing)
            return
        # A step event built without a standing (by hand): the best as its steps table has it.
        self.step = event.step
        if event.steps.empty:
            return
        last = event.steps.iloc[-1].to_dict()
        best = {key: json_number(last.get(key)) for key in ("best_mean", "best_ci_low", "best_ci_high")}
        best["step"] = event.step
        self.best = best

    def _take_standing(self, standing: OptimizationStanding) -> None:
        """Show where the optimization stands; its totals are counted from here on (see :meth:`_totals`)."""
        now = time.monotonic()
        self._standing = standing
        self._trial_sums_then = (self._lm_calls, self._input_tokens + self._output_tokens, self._cost)
        if standing.step is not None:
            self._step_times.setdefault(standing.step, now)
        with self.hold_sync():
            self.step = standing.step
            self.planned_steps = standing.planned_steps
            self.screened = standing.screened
            self.validated = standing.validated
            self.budget = {name: json_number(limit) for name, limit in standing.budget.items()}
            if standing.best_id is not None:
                self.best = {
                    "best_id": standing.best_id,
                    "best_mean": json_number(standing.best_mean),
                    "best_ci_low": json_number(standing.best_ci_low),
                    "best_ci_high": json_number(standing.best_ci_high),
                    "ci_method": standing.best_ci_method,
                    "n": standing.best_n,
                    "step": standing.step,
                }
            self._publish(done=self.done, now=now)

    def _totals(self) -> tuple[int, int, float | None]:
        """Return the LM calls, tokens and dollars to show (dollars None: unknown, an unpriced model).

        An evaluation's are the sums of its trials. An optimization's are its last standing's, which
        counts what no trial carries (rule proposals, DSPy's compile), plus the trials finished since.
        """
        calls, tokens, cost = self._lm_calls, self._input_tokens + self._output_tokens, self._cost
        standing = self._standing
        if standing is None:
            return calls, tokens, cost if calls else None
        calls_then, tokens_then, cost_then = self._trial_sums_then
        dollars = None if standing.cost is None else standing.cost + (cost - cost_then)
        return standing.lm_calls + calls - calls_then, standing.tokens + tokens - tokens_then, dollars

    def _run_eta(self, now: float, spent: dict[str, float | None]) -> tuple[float | None, str]:
        """Return an optimization's time left and what it is based on, or (None, "") when there is no basis.

        Two estimates, the sooner one wins: the steps left at the pace of the search steps so far (step 0,
        the baseline, apart: it screens nothing), and, for each limit of the budget, the time until it is
        spent at the run's spending pace so far. A run may end sooner (patience) and then runs its
        confirmation, which neither counts.
        """
        standing = self._standing
        elapsed = now - self._begun
        if standing is None or elapsed <= 0:
            return None, ""
        estimates: list[tuple[float, str]] = []
        step, times = standing.step, self._step_times
        planned = standing.planned_steps
        if step is not None and planned is not None and 0 < step < planned and 0 in times and step in times:
            per_step = (times[step] - times[0]) / step
            left = planned - step
            estimates.append((max(per_step * left - (now - times[step]), 0.0), f"{left} more steps at this pace"))
        for name, limit in standing.budget.items():
            used = spent.get(name)
            if used and used < limit:
                estimates.append(((limit - used) * elapsed / used, f"until the budget's {name}={limit:g} is spent"))
        return min(estimates) if estimates else (None, "")

    def _add_spending(self, result: Any) -> None:
        # Kept here and sent with the rest at the next refresh: one comm message per refresh, not per trial.
        self._input_tokens += int(result.input_tokens or 0)
        self._output_tokens += int(result.output_tokens or 0)
        self._lm_calls += int(result.lm_calls or 0)
        if result.cost is not None:
            self._cost += float(result.cost)
        if result.unpriced_models:
            self._unpriced.update(_model_names(result.unpriced_models))
        elif result.cost is None and result.lm_calls:
            self._unpriced.add("unknown model")

    def _publish(self, *, done: int, now: float) -> None:
        elapsed = now - self._started
        remaining = self.total - done
        rate = (done - self.already_done) / elapsed if elapsed > 0 else 0.0
        with self.hold_sync():
            self.done = done
            self.n_scored = self._n_scored
            self.n_errors = sum(self._error_types.values())
            self.errors = dict(self._error_types.most_common())
            if self._scores:
                # The rule every view shares (dx.stats.score_interval over per-example means), never re-derived.
                means = [total / count for total, count in self._scores.values()]
                interval = score_interval(means)
                self.mean = json_number(sum(means) / len(means))
                self.ci_low = json_number(interval.low)
                self.ci_high = json_number(interval.high)
                self.ci_method = interval.method if self.ci_low is not None else ""
            self.input_tokens = self._input_tokens
            self.output_tokens = self._output_tokens
            calls, tokens, cost = self._totals()
            self.lm_calls, self.tokens = calls, tokens
            # The priced calls' sum; unpriced models are listed beside it, so an unpriced run never reads $0.
            self.cost = json_number(cost) if cost is not None else None
            if cost is None and calls and not self._unpriced:
                self._unpriced.add("unknown model")  # the optimization's counter met a model with no price
            self.unpriced_models = sorted(self._unpriced)
            if self._standing is not None and self._spanning:
                self.elapsed = now - self._begun
                self.eta, self.eta_basis = self._run_eta(now, {"lm_calls": calls, "tokens": tokens, "usd": cost})
            else:
                self.elapsed = elapsed
                self.eta = remaining / rate if rate > 0 and remaining > 0 else None


def _model_names(text: str) -> list[str]:
    # The runner stores the models of a trial's unpriced calls comma-separated.
    return [name.strip() for name in text.split(",") if name.strip()]


def show_run_progress(kind: str, *, display: Callable[[Any], Any] | None = None) -> RunProgress:
    """Create a :class:`RunProgress`, display it in the notebook, and return it (``progress=True``'s display).

    Args:
        kind: what runs (``"evaluation"`` or ``"optimization"``), the title until the run names itself.
        display: shows the widget (default: ``IPython.display.display``).

    Raises:
        ExecutionError: ``kind`` is empty.
    """
    if not kind:
        raise ExecutionError("show_run_progress needs the kind of run it shows (evaluation or optimization)")
    widget = RunProgress(title=kind)
    if display is None:
        from IPython.display import display
    display(widget)
    return widget
