"""What the dashboard's pages show, as plain frames and records built from the journal (no panel here).

Each page of the dashboard is a thin drawing over one function of this module, so the values a
page shows can be checked against the journal without a browser and timed by
``bench/bench_dashboard.py``. Every query goes through the journal's reader methods
(``leaderboard``, ``trial_page``, ``paired_scores``); a file journal opens its file read-only for one
transaction, so a kernel writing to the same journal is never blocked for long.
"""

from __future__ import annotations

import html
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dspex_lab.errors import JournalError

# The statistics (scipy) and the trace pages' formatting (its pricing loads DSPy) are imported by the functions
# that use them: a session that shows only the experiments page starts without either.
if TYPE_CHECKING:
    from collections.abc import Mapping

    from dspex_lab.journal import JournalReader, JournalStore
    from dspex_lab.notebook._trace_data import ExampleFields
    from dspex_lab.optimization import OptimizationResult
    from dspex_lab.stats import PairedTest
    from dspex_lab.trace.tree import TraceNode

__all__ = [
    "ComparisonView",
    "JournalSignature",
    "board_note",
    "comparison_view",
    "experiment_label",
    "journal_signature",
    "leaderboard_frame",
    "nested_html",
    "trace_html",
    "trace_rows",
    "trial_frame",
    "trial_table",
    "why_frame",
]

# 0/1 scores are spread this far (at most) around their value, so overlapping points show as a cloud.
_JITTER = 0.08
# The trial columns the trace page reads (its table shows them as TRIAL_TABLE_COLUMNS).
TRIAL_COLUMNS = (
    "trial_id", "example_id", "repeat", "status", "score", "prediction", "error_type", "error_message", "latency",
    "input_tokens", "output_tokens", "cost", "unpriced_models",
)  # fmt: skip
# The trace page's trial table, in order: what a researcher reads of a trial.
TRIAL_TABLE_COLUMNS = (
    "trial", "question", "expected", "answer", "score", "label", "status", "error", "tokens", "cost", "latency",
)  # fmt: skip


def experiment_label(name: Any, experiment_id: str) -> str:
    """Return how an experiment is named in the dashboard's menus: its name and its id."""
    return f"{name} · {experiment_id}"


def leaderboard_frame(
    journal: JournalReader,
    *,
    name: str | None = None,
    kind: str | None = None,
    status: str | None = None,
    limit: int = 500,
    children: bool = False,
) -> pd.DataFrame:
    """Return the experiments page's rows: one per experiment, newest first, with the journal's mean and interval.

    Args:
        journal: the journal.
        name: keep experiments whose name contains this text (an empty text keeps all).
        kind: keep this kind only (``evaluation``, ``comparison``, ``optimization``).
        status: keep this status only (``running``, ``finished``, ``interrupted``...).
        limit: at most this many rows.
        children: include nested experiments (an optimization's candidate evaluations, with their
            ``parent_id`` and ``role``), each right after its run; without it only top-level experiments,
            each counting its nested ones in ``n_children``.

    Returns:
        The journal's leaderboard columns plus ``label`` (name and id, as in the menus).
    """
    board = journal.leaderboard(
        name=name or None, kind=kind or None, status=status or None, limit=limit, children=children
    )
    board = board.reset_index(drop=True)
    board["label"] = [experiment_label(*pair) for pair in zip(board["name"], board["experiment_id"], strict=True)]
    return board


def board_note(journal: JournalReader, board: pd.DataFrame) -> str:
    """Say what the experiments page shows of the journal: ``2 of 8 experiments shown · 160 nested ...``.

    Counts the experiments in ``board`` (a :func:`leaderboard_frame`, filtered or not) against every
    top-level experiment of the journal, and the nested ones (an optimization's candidate evaluations)
    shown against all of them, so a filter never leaves a count of what it hid.
    """
    summaries = journal.experiment_summaries(children=True)
    nested = sum(1 for summary in summaries if summary.parent_id is not None)
    runs = len({summary.parent_id for summary in summaries if summary.parent_id is not None})
    inner = board["parent_id"].notna() if "parent_id" in board else pd.Series(False, index=board.index)
    total = len(summaries) - nested
    note = f"{int((~inner).sum())} of {total} experiment{'' if total == 1 else 's'} shown"
    if nested:
        note += f" · {int(inner.sum())} of {nested} nested in {runs} run{'' if runs == 1 else 's'} shown"
        if not inner.any():
            note += " (expand a run's row, or tick Show nested runs)"
    return note


def nested_html(board: pd.DataFrame) -> str:
    """Render a run's nested experiments (``leaderboard(parent=...)``) as the table its expanded row shows."""
    if board.empty:
        return '<div class="dspex-nested-none">no nested experiments</div>'
    body = []
    for row in board.to_dict("records"):
        mean = "-" if _missing(row["mean"]) else f"{row['mean']:.3f}"
        interval = "" if _missing(row["ci_low"]) else f" [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
        body.append(
            f'<tr class="dspex-nested-row"><td>{html.escape(str(row["name"]))}<br><code>'
            f"{html.escape(str(row['experiment_id']))}</code></td><td>{html.escape(str(row['role'] or ''))}</td>"
            f"<td>{html.escape(str(row['status']))}</td><td>{int(row['n_trials'])}</td><td>{int(row['n_errors'])}</td>"
            f"<td>{mean}{interval}</td></tr>"
        )
    return (
        "<style>.dspex-nested{border-collapse:collapse;width:100%;font-size:12px}.dspex-nested th,"
        ".dspex-nested td{text-align:left;padding:1px 8px;border-bottom:1px solid #8884}</style>"
        '<table class="dspex-nested"><thead><tr><th>nested experiment</th><th>role</th><th>status</th>'
        "<th>trials</th><th>errors</th><th>mean [95% CI]</th></tr></thead><tbody>" + "".join(body) + "</tbody></table>"
    )


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def trial_frame(
    journal: JournalReader,
    experiment_id: str,
    *,
    status: str | None = None,
    sort: str = "example_index",
    descending: bool = False,
    limit: int = 100,
    offset: int = 0,
) -> tuple[pd.DataFrame, int]:
    """Return one page of an experiment's trials for the trace page's table, and how many match.

    Raises:
        JournalError: an unknown sort column, or a journal that cannot be read.
    """
    page, total = journal.trial_page(
        experiment_id, status=status or None, sort=sort, descending=descending, limit=limit, offset=offset
    )
    shown = [column for column in TRIAL_COLUMNS if column in page.columns]
    return page[shown].reset_index(drop=True), int(total)


@dataclass(frozen=True)
class ComparisonView:
    """A paired comparison of two stored experiments, as the compare page draws it.

    Attributes:
        a: the baseline experiment's id.
        b: the other experiment's id.
        pairs: one row per example scored in both: ``example_id``, ``score_a``, ``score_b`` (mean over
            repeats) and ``x``/``y``, the scores jittered when both are 0/1 so ties stay visible.
        test: the paired test of ``b - a`` (chosen as :func:`dspex_lab.stats.paired_test` does), or None
            with fewer than two pairs.
    """

    a: str
    b: str
    pairs: pd.DataFrame
    test: PairedTest | None

    @property
    def mean_a(self) -> float:
        """The baseline's mean over the paired examples."""
        return float(self.pairs["score_a"].mean()) if len(self.pairs) else math.nan

    @property
    def mean_b(self) -> float:
        """The other experiment's mean over the paired examples."""
        return float(self.pairs["score_b"].mean()) if len(self.pairs) else math.nan


def comparison_view(journal: JournalReader, a: str, b: str, *, confidence: float = 0.95) -> ComparisonView:
    """Compare two stored experiments example by example.

    Args:
        journal: the journal.
        a: the baseline experiment's id.
        b: the other experiment's id.
        confidence: the interval's confidence level.

    Returns:
        The pairs and the paired test of ``b - a``.

    Raises:
        JournalError: ``a`` and ``b`` are the same experiment, or the journal cannot be read.
    """
    from dspex_lab.stats import is_binary, paired_test

    if a == b:
        raise JournalError(f"compare needs two different experiments; both are {a!r}")
    pairs = journal.paired_scores(a, b).reset_index(drop=True)
    pairs = pairs[["example_id", "score_a", "score_b"]].astype({"score_a": float, "score_b": float})
    first, second = pairs["score_a"].to_numpy(), pairs["score_b"].to_numpy()
    x, y = first.copy(), second.copy()
    if len(pairs) and is_binary(first) and is_binary(second):
        # Seeded by the pair, so the cloud does not move at each refresh.
        generator = np.random.default_rng(zlib.crc32(f"{a}\n{b}".encode()))
        x += generator.uniform(-_JITTER, _JITTER, len(pairs))
        y += generator.uniform(-_JITTER, _JITTER, len(pairs))
    pairs = pairs.assign(x=x, y=y)
    test = paired_test(first, second, confidence=confidence) if len(pairs) >= 2 else None
    return ComparisonView(a=a, b=b, pairs=pairs, test=test)


@dataclass(frozen=True)
class JournalSignature:
    """What changes when anyone writes the journal.

    For a journal file, the sizes and modification times of its files; for a journal kept in memory,
    each experiment's id, status and trial count.
    """

    stamps: tuple[tuple[Any, ...], ...]


def journal_signature(journal: JournalStore) -> JournalSignature:
    """Return what changes when the journal is written, read as cheaply as the journal allows.

    A file journal's write lands in the write-ahead log (``<journal>.wal``) or the file itself, so
    its signature is read without opening the database, in two ``stat`` calls. A journal kept in
    memory has no file: its signature is one query of its experiments (it is this process's own).
    An unchanged signature means there is nothing new to query.
    """
    from dspex_lab.journal import DuckDBJournal

    if not isinstance(journal, DuckDBJournal):
        summaries = journal.experiment_summaries(children=True)
        return JournalSignature(tuple((summary.id, summary.status, summary.n_trials) for summary in summaries))
    path = Path(journal.path)
    stamps = []
    for candidate in (path, path.with_name(path.name + ".wal")):
        try:
            info = os.stat(candidate)
        except FileNotFoundError:
            stamps.append((-1, -1))
            continue
        stamps.append((info.st_size, info.st_mtime_ns))
    return JournalSignature(tuple(stamps))


def trial_table(page: pd.DataFrame, fields: ExampleFields, labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Return a page of :func:`trial_frame` as the trace page's table shows it (:data:`TRIAL_TABLE_COLUMNS`).

    The question is the example's inputs and "expected" its gold fields (see :class:`ExampleFields`);
    "label" is the trial's label in force (``labels``, by trial id: see ``current_labels``);
    tokens carry thousands separators, cost is in dollars (``unpriced`` when a model has no price, never
    $0) and latency in ms or s. Texts are cut to one line; the rows keep the page's order.
    """
    from dspex_lab.notebook._trace_data import count, format_cost, format_latency, format_tokens, number, shorten

    rows = []
    for trial in page.to_dict("records"):
        texts = fields.row(str(trial.get("example_id") or ""), trial.get("prediction"))
        tokens = [count(trial.get("input_tokens")), count(trial.get("output_tokens"))]
        message = trial.get("error_message")
        error = f"{trial.get('error_type') or 'error'}: {message}" if isinstance(message, str) else ""
        unpriced = isinstance(trial.get("unpriced_models"), str) and bool(trial["unpriced_models"])
        rows.append(
            {
                "trial": str(trial["trial_id"]),
                **{name: shorten(text) for name, text in texts.items()},
                "score": number(trial.get("score")),
                "label": shorten((labels or {}).get(str(trial["trial_id"]), "")),
                "status": trial.get("status"),
                "error": shorten(error, 200),
                "tokens": "" if tokens == [None, None] else format_tokens(sum(part or 0 for part in tokens)),
                "cost": format_cost(number(trial.get("cost")), unpriced=unpriced),
                "latency": format_latency(number(trial.get("latency"))),
            }
        )
    return pd.DataFrame(rows, columns=list(TRIAL_TABLE_COLUMNS))


def trace_rows(journal: JournalReader, experiment_id: str, trial_id: str) -> list[dict[str, Any]]:
    """Return one trial's spans as rows in tree order (depth first), for the trace page.

    Each row has ``span_id``, ``depth``, ``kind``, ``name``, ``status``, ``start_ms`` (from the trial's first
    span), ``duration_ms``, ``tokens``, ``cost``, ``unpriced`` and ``error``. An LM span's cost is the one its
    provider reported, else its tokens at the model's price, else None with ``unpriced`` set.

    Raises:
        JournalError: the trial has no stored spans (it was not traced) or the journal cannot be read.
    """
    from dspex_lab.notebook._trace_data import Prices, lm_columns

    tree = journal.trace(experiment_id, trial_id)
    nodes: list[TraceNode] = list(tree.walk())
    start = min((node.span.start_ns for node in nodes), default=0)
    rows = []
    prices = Prices()
    for node in nodes:
        span = node.span
        usage = lm_columns(span.json_attributes, prices) if span.kind == "lm" else {}
        tokens_in, tokens_out = usage.get("tokens_in"), usage.get("tokens_out")
        tokens = None if tokens_in is None and tokens_out is None else (tokens_in or 0) + (tokens_out or 0)
        rows.append(
            {
                "span_id": span.span_id,
                "depth": node.depth,
                "kind": span.kind,
                "name": span.name,
                "status": span.status,
                "start_ms": (span.start_ns - start) / 1e6,
                "duration_ms": (span.end_ns - span.start_ns) / 1e6,
                "tokens": tokens,
                "cost": usage.get("cost"),
                "unpriced": bool(usage.get("unpriced")),
                "error": span.error,
            }
        )
    return rows


def trace_html(rows: list[dict[str, Any]]) -> str:
    """Render :func:`trace_rows` as an HTML table: the span tree indented, a timing bar per span."""
    from dspex_lab.notebook._trace_data import format_cost, format_latency, format_tokens

    total = max((row["start_ms"] + row["duration_ms"] for row in rows), default=0.0) or 1.0
    body = []
    for row in rows:
        left = 100 * row["start_ms"] / total
        width = max(100 * row["duration_ms"] / total, 0.5)
        error = f'<div class="dspex-span-error">{html.escape(row["error"])}</div>' if row["error"] else ""
        tokens = format_tokens(row["tokens"])
        cost = format_cost(row["cost"], unpriced=bool(row.get("unpriced")))
        duration = format_latency(row["duration_ms"] / 1000)
        body.append(
            f'<tr class="dspex-span dspex-status-{html.escape(row["status"])}">'
            f'<td style="padding-left:{0.4 + 1.2 * row["depth"]:.1f}em">'
            f"<b>{html.escape(row['kind'])}</b> {html.escape(row['name'])}{error}</td>"
            f"<td>{duration}</td><td>{tokens}</td><td>{html.escape(cost)}</td>"
            f"<td>{html.escape(row['status'])}</td>"
            f'<td class="dspex-waterfall"><div style="margin-left:{left:.2f}%;width:{width:.2f}%"></div></td></tr>'
        )
    return (
        "<style>.dspex-trace{border-collapse:collapse;width:100%;font-size:13px}"
        ".dspex-trace th,.dspex-trace td{text-align:left;padding:2px 8px;border-bottom:1px solid #8884;"
        "vertical-align:top}.dspex-status-error td{color:#c0392b}.dspex-status-timeout td,"
        ".dspex-status-cancelled td{color:#b9770e}.dspex-span-error{font-size:12px;white-space:pre-wrap;"
        "overflow-wrap:anywhere}.dspex-waterfall{width:30%}.dspex-waterfall div{height:10px;"
        "background:#4a90d9;border-radius:2px}</style>"
        '<table class="dspex-trace"><thead><tr><th>span</th><th>duration</th><th>tokens</th><th>cost</th>'
        "<th>status</th><th>timeline</th></tr></thead><tbody>" + "".join(body) + "</tbody></table>"
    )


# The optimization page's "why" table, in order: each candidate, what was decided about it and on what evidence.
WHY_COLUMNS = (
    "step", "candidate", "parent", "strategy", "decision", "rationale", "screen difference", "validation mean",
    "validation difference", "p", "p (Holm)", "step outcome",
)  # fmt: skip


def why_frame(result: OptimizationResult) -> pd.DataFrame:
    """Return what ``result.why(candidate)`` says of every candidate, as a table: one row per candidate.

    ``decision`` is ``accepted``, ``rejected`` (validated, its test not significant after Holm's
    correction), ``not validated`` (screened, but another was chosen to validate or it did not beat the
    incumbent on the mini-batch) or ``baseline``. The differences are the candidate's mean minus the
    incumbent's: on the mini-batch, and on the validation set (from its paired test); ``p`` is the
    one-sided p of "the candidate is better" and ``p (Holm)`` the same after the step's correction;
    ``step outcome`` is what its step decided (``accepted c3: ...``, ``rejected: ...``).
    """
    outcomes = dict(zip(result.steps["step"], result.steps["detail"], strict=True))
    # Each validated candidate's paired difference, as its step recorded it.
    differences = {
        str(item.get("candidate")): _finite(item.get("difference"))
        for step in result.journal.step_rows(result.run_id)
        for item in step.get("evaluations") or []
    }
    rows = []
    for row in result.candidates.to_dict("records"):
        candidate = str(row["candidate_id"])
        validated = not math.isnan(_finite(row.get("p_value")))
        decision = (
            "baseline" if row.get("strategy") == "baseline"
            else "accepted" if row.get("accepted")
            else "rejected" if validated
            else "not validated"
        )  # fmt: skip
        rows.append(
            {
                "step": int(row["step"]),
                "candidate": candidate,
                "parent": row.get("parent_id") if isinstance(row.get("parent_id"), str) else "",
                "strategy": row.get("strategy"),
                "decision": decision,
                "rationale": row.get("rationale") or "",
                "screen difference": _finite(row.get("screen_mean")) - _finite(row.get("incumbent_screen_mean")),
                "validation mean": _finite(row.get("val_mean")),
                "validation difference": differences.get(candidate, math.nan),
                "p": _finite(row.get("p_value")),
                "p (Holm)": _finite(row.get("p_adjusted")),
                "step outcome": outcomes.get(row["step"]) or "",
            }
        )
    return pd.DataFrame(rows, columns=list(WHY_COLUMNS))


def _finite(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
