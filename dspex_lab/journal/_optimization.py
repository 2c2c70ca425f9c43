"""Optimization runs: the candidates a run made, its steps, and the experiments nested in it.

An optimization run is an experiment; its candidate evaluations are experiments nested in it
(``parent_id``), and its candidates and steps have tables of their own, keyed by the run's id.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from dspex_lab.journal._base import _TOUCH_EXPERIMENT, DuckDBStore, _is_dead, _json, _now

__all__ = ["OptimizationQueries"]


class OptimizationQueries(DuckDBStore):
    """Record an optimization run's candidates and steps, end its children, and read them back."""

    def record_candidates(self, run_id: str, candidates: Sequence[dict[str, Any]]) -> None:
        """Insert an optimization run's new candidates (one already recorded is left as it was).

        Each dict has ``candidate_id``, ``step``, ``parent_id``, ``strategy``, ``rationale``,
        ``values`` and ``program_spec`` (JSON values) and ``fingerprint``.
        """
        if not candidates:
            return
        now = _now()
        with self._connect(write=True) as connection:
            connection.executemany(
                """INSERT OR IGNORE INTO optimization_candidates (run_id, candidate_id, step, parent_id, strategy,
                   rationale, "values", program_spec, fingerprint, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                [
                    [
                        run_id,
                        item["candidate_id"],
                        item["step"],
                        item.get("parent_id"),
                        item["strategy"],
                        item.get("rationale"),
                        _json(item["values"]),
                        _json(item["program_spec"]),
                        item["fingerprint"],
                        now,
                    ]
                    for item in candidates
                ],
            )
            connection.execute(_TOUCH_EXPERIMENT, [now, now, run_id])

    def record_step(self, run_id: str, step: dict[str, Any]) -> None:
        """Insert or replace one step of an optimization run (a step is written when it starts and when it ends).

        ``step`` has the columns of ``optimization_steps`` but ``run_id``; ``minibatch``,
        ``screening`` and ``evaluations`` are JSON values.
        """
        now = _now()
        columns = (
            "step", "status", "incumbent_id", "accepted_id", "minibatch", "screening", "evaluations", "best_mean",
            "best_ci_low", "best_ci_high", "lm_calls", "tokens", "cost", "detail",
        )  # fmt: skip
        values = [
            _json(step.get(name)) if name in ("minibatch", "screening", "evaluations") else step.get(name)
            for name in columns
        ]
        finished = now if step["status"] != "running" else None
        with self._connect(write=True) as connection:
            started = connection.execute(
                "SELECT started_at FROM optimization_steps WHERE run_id = ? AND step = ?", [run_id, step["step"]]
            ).fetchall()
            connection.execute(
                f"""INSERT OR REPLACE INTO optimization_steps (run_id, {", ".join(columns)}, started_at, finished_at)
                    VALUES (?, {", ".join("?" for _ in columns)}, ?, ?)""",
                [run_id, *values, started[0][0] if started else now, finished],
            )
            connection.execute(_TOUCH_EXPERIMENT, [now, now, run_id])

    def finish_children(self, run_id: str, *, status: str) -> None:
        """Mark the still-running experiments nested in ``run_id`` (its ``parent_id`` children) as ended.

        Each child ended when its last trial finished (an evaluation is over long before its run is);
        a child without a trial ends now.
        """
        now = _now()
        with self._connect(write=True) as connection:
            connection.execute(
                """UPDATE experiments SET status = ?, updated_at = ?, heartbeat_at = ?,
                          finished_at = coalesce(
                              (SELECT max(t.finished_at) FROM trials t WHERE t.experiment_id = experiments.id), ?)
                   WHERE parent_id = ? AND status = 'running'""",
                [status, now, now, now, run_id],
            )

    def children_trial_rows(self, parent_id: str) -> list[dict[str, Any]]:
        """Return the trials of every experiment nested in ``parent_id`` (NULL as None), by experiment then example.

        An optimization run reads back all its evaluations' trials with this when it resumes.
        """
        if not self._exists():
            return []
        return self._rows(
            """SELECT t.* FROM trials t JOIN experiments e ON e.id = t.experiment_id WHERE e.parent_id = ?
               ORDER BY t.experiment_id, t.example_index, t.repeat, t.trial_id""",
            [parent_id],
        )

    def child_timeline(self, parent_id: str) -> list[dict[str, Any]]:
        """Return when each experiment nested in ``parent_id`` ran, and how it ended, oldest first (then by id).

        Each dict has ``experiment_id``, ``name``, ``role``, ``status`` (a running one whose process is
        gone reads ``interrupted``), ``candidate`` and ``phase`` (from its config; None when absent),
        ``n_planned``, ``n_trials``, ``n_errors``, ``mean_score`` (None without a scored trial),
        ``first_trial_at`` and ``last_trial_at`` (when its first trial started and its last one finished:
        when it really ran; None without a trial), ``started_at`` (its record's creation, which a run's
        writer may make after the first trials ran), ``finished_at`` (None while running; a run ends its
        children when it ends, so this is often the run's end) and ``last_seen_at`` (its last write or
        heartbeat). Times are UTC, naive.
        """
        if not self._exists():
            return []
        rows = self._rows(_CHILD_TIMELINE_SQL, [parent_id, parent_id])
        for row in rows:
            host, pid, heartbeat = row.pop("host"), row.pop("pid"), row.pop("heartbeat_at")
            if row["status"] == "running" and _is_dead(host, pid, heartbeat):
                row["status"] = "interrupted"
        return rows

    def candidate_rows(self, run_id: str) -> list[dict[str, Any]]:
        """Return an optimization run's candidates in the order they were made (JSON columns decoded)."""
        rows = self._rows(
            "SELECT * FROM optimization_candidates WHERE run_id = ? ORDER BY step, created_at, candidate_id", [run_id]
        )
        for row in rows:
            for column in ("values", "program_spec"):
                if isinstance(row.get(column), str):
                    row[column] = json.loads(row[column])
        return rows

    def step_rows(self, run_id: str) -> list[dict[str, Any]]:
        """Return an optimization run's steps in order (JSON columns decoded)."""
        rows = self._rows("SELECT * FROM optimization_steps WHERE run_id = ? ORDER BY step", [run_id])
        for row in rows:
            for column in ("minibatch", "screening", "evaluations"):
                if isinstance(row.get(column), str):
                    row[column] = json.loads(row[column])
        return rows


_CHILD_TIMELINE_SQL = """
SELECT e.id AS experiment_id, e.name, e.role, e.status,
       json_extract_string(e.config, '$.candidate') AS candidate, json_extract_string(e.config, '$.phase') AS phase,
       e.n_planned, coalesce(t.n_trials, 0) AS n_trials, coalesce(t.n_errors, 0) AS n_errors,
       t.score_sum / nullif(t.n_scored, 0) AS mean_score, times.first_trial_at, times.last_trial_at,
       e.created_at AS started_at, e.finished_at, greatest(e.updated_at, coalesce(e.heartbeat_at, e.updated_at)) AS
       last_seen_at, e.heartbeat_at, e.host, e.pid
FROM experiments e LEFT JOIN experiment_stats t ON t.experiment_id = e.id
LEFT JOIN (
    SELECT experiment_id, min(started_at) AS first_trial_at, max(finished_at) AS last_trial_at FROM trials
    WHERE experiment_id IN (SELECT id FROM experiments WHERE parent_id = ?) GROUP BY experiment_id
) times ON times.experiment_id = e.id
WHERE e.parent_id = ?
ORDER BY e.created_at, e.id"""
