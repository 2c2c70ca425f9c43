"""Experiments and hypotheses: what a run is, how it stands, and the claims registered before it.

Experiments are created running, owned by the creating process (its host and pid, and a heartbeat
every write refreshes), and ended with a status and a summary; a running experiment whose process
is gone reads ``interrupted``. Hypotheses are registered once and decided once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import duckdb

from dspex_lab._records import ExperimentRecord
from dspex_lab.errors import JournalError
from dspex_lab.journal._base import DuckDBStore, _is_dead, _json, _now
from dspex_lab.journal._store import ExperimentSummary

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ExperimentQueries"]


class ExperimentQueries(DuckDBStore):
    """Create, claim and finish experiments and read them back; register and decide hypotheses."""

    def create_experiment(self, record: ExperimentRecord) -> str:
        """Insert a new running experiment (and its small dataset's examples) and return its id."""
        now = _now()
        with self._connect(write=True) as connection:
            self._mark_dead_experiments(connection)
            if record.examples:
                import pyarrow as pa  # loaded on the first write, so reading a journal does not pay for it

                connection.register(
                    "incoming_examples",
                    pa.table(
                        {
                            "dataset_fingerprint": [record.dataset_fingerprint] * len(record.examples),
                            "position": list(range(len(record.examples))),
                            "example_id": [example_id for example_id, _ in record.examples],
                            "record": [_json(fields) for _, fields in record.examples],
                        }
                    ),
                )
                connection.execute("INSERT OR IGNORE INTO dataset_examples SELECT * FROM incoming_examples")
                connection.unregister("incoming_examples")
            connection.execute(
                """INSERT OR IGNORE INTO experiments (id, kind, name, status, program_name, program_fingerprint,
                   program_spec, dataset_name, dataset_fingerprint, dataset_manifest, metric, config, environment,
                   n_planned, host, pid, created_at, updated_at, heartbeat_at, parent_id, role)
                   VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                [
                    record.id,
                    record.kind,
                    record.name,
                    record.program_name,
                    record.program_fingerprint,
                    _json(record.program_spec),
                    record.dataset_name,
                    record.dataset_fingerprint,
                    _json(record.dataset_manifest),
                    record.metric,
                    _json(record.config),
                    _json(record.environment),
                    record.n_planned,
                    socket.gethostname(),
                    os.getpid(),
                    now,
                    now,
                    now,
                    record.parent_id,
                    record.role,
                ],
            )
        return record.id

    def claim_experiment(self, experiment_id: str) -> None:
        """Mark an existing experiment as running again in this process (resume)."""
        now = _now()
        with self._connect(write=True) as connection:
            connection.execute(
                """UPDATE experiments SET status = 'running', status_detail = NULL, host = ?, pid = ?,
                   updated_at = ?, heartbeat_at = ?, finished_at = NULL WHERE id = ?""",
                [socket.gethostname(), os.getpid(), now, now, experiment_id],
            )

    def finish_experiment(
        self, experiment_id: str, *, status: str, detail: str | None = None, summary: dict[str, Any] | None = None
    ) -> None:
        """Record how an experiment ended, with its summary."""
        now = _now()
        with self._connect(write=True) as connection:
            connection.execute(
                """UPDATE experiments SET status = ?, status_detail = ?, summary = ?, updated_at = ?,
                   heartbeat_at = ?, finished_at = ? WHERE id = ?""",
                [status, detail, _json(summary), now, now, now, experiment_id],
            )

    def _mark_dead_experiments(self, connection: duckdb.DuckDBPyConnection) -> None:
        rows = connection.execute(
            "SELECT id, host, pid, heartbeat_at FROM experiments WHERE status = 'running'"
        ).fetchall()
        dead = [row[0] for row in rows if _is_dead(row[1], row[2], row[3])]
        for experiment_id in dead:
            connection.execute(
                "UPDATE experiments SET status = 'interrupted', status_detail = 'process ended without finishing', "
                "updated_at = ? WHERE id = ?",
                [_now(), experiment_id],
            )

    def experiment_summaries(self, *, children: bool = True) -> list[ExperimentSummary]:
        """Return every experiment, newest first (then by id), with trial counts, errors and mean score.

        A running experiment whose process is gone (or whose heartbeat is stale) is reported as
        ``interrupted``. An absent journal file has no experiments.

        Args:
            children: include nested experiments (an optimization's candidate evaluations); without
                it only top-level experiments (no ``parent_id``) are returned.
        """
        if not isinstance(children, bool):
            raise JournalError(f"experiment_summaries(children=...) must be True or False, got {children!r}")
        if not self._exists():
            return []
        where = "" if children else "WHERE e.parent_id IS NULL"
        return self._summaries(_SUMMARY_SQL.format(where=where, order="e.created_at DESC, e.id"))

    def children(self, experiment_id: str, *, role: str | None = None) -> list[ExperimentSummary]:
        """Return the experiments nested in ``experiment_id``, oldest first (then by id).

        Args:
            experiment_id: the parent (e.g. an optimization run).
            role: only children of this role (see :data:`~dspex_lab.journal.EXPERIMENT_ROLES`).
        """
        if role is not None and not isinstance(role, str):
            raise JournalError(f"children(role=...) must be text or None, got {role!r}")
        if not self._exists():
            return []
        where, parameters = "WHERE e.parent_id = ?", [experiment_id]
        if role is not None:
            where += " AND e.role = ?"
            parameters.append(role)
        return self._summaries(_SUMMARY_SQL.format(where=where, order="e.created_at, e.id"), parameters)

    def parent(self, experiment_id: str) -> str | None:
        """Return the id of the experiment ``experiment_id`` is nested in, or None for a top-level one.

        Raises:
            JournalError: no such experiment.
        """
        rows = []
        if self._exists():
            rows = self._rows("SELECT parent_id FROM experiments WHERE id = ?", [experiment_id])
        if not rows:
            raise JournalError(f"no experiment {experiment_id!r} in {self.location}")
        return rows[0]["parent_id"]

    def ended_summaries(self) -> dict[str, dict[str, Any]]:
        """Return the summary each ended experiment stored when it finished, decoded, by experiment id.

        An experiment is in it once it was finished (any status but ``running`` is stored) with a
        summary that is a JSON object; one still running, or whose process died before it finished
        (read as ``interrupted``), stored none and is left out, as is one finished without a summary.
        Ordered by id. An absent journal file has none.
        """
        if not self._exists():
            return {}
        rows = self._rows(
            "SELECT id, summary FROM experiments WHERE status <> 'running' AND summary IS NOT NULL ORDER BY id"
        )
        summaries = {}
        for row in rows:
            summary = json.loads(row["summary"]) if isinstance(row["summary"], str) else row["summary"]
            if isinstance(summary, dict):
                summaries[row["id"]] = summary
        return summaries

    def _summaries(self, query: str, parameters: Sequence[Any] = ()) -> list[ExperimentSummary]:
        rows = self._rows(query, parameters)
        summaries = []
        for row in rows:
            host, pid, heartbeat = row.pop("host"), row.pop("pid"), row.pop("heartbeat_at")
            if row["status"] == "running" and _is_dead(host, pid, heartbeat):
                row["status"] = "interrupted"
            summaries.append(ExperimentSummary(**row))
        return summaries

    def experiments(self, *, children: bool = False) -> pd.DataFrame:
        """Return the experiments as a DataFrame, newest first (see :meth:`experiment_summaries`).

        Args:
            children: include nested experiments (an optimization's candidate evaluations, dozens per
                run, which would bury the researcher's own); by default only top-level experiments.
                Each one's ``parent_id`` names the experiment it is nested in (see :meth:`children`).
        """
        import pandas as pd

        if not isinstance(children, bool):
            raise JournalError(f"experiments(children=...) must be True or False, got {children!r}")
        columns = [item.name for item in dataclasses.fields(ExperimentSummary)]
        summaries = self.experiment_summaries(children=children)
        return pd.DataFrame([dataclasses.astuple(summary) for summary in summaries], columns=columns)

    def experiment(self, experiment_id: str) -> dict[str, Any]:
        """Return one experiment as a dict (JSON columns decoded)."""
        rows = self._rows("SELECT * FROM experiments WHERE id = ?", [experiment_id])
        if not rows:
            raise JournalError(f"no experiment {experiment_id!r} in {self.location}")
        row = rows[0]
        for column in ("program_spec", "dataset_manifest", "config", "environment", "summary"):
            if isinstance(row.get(column), str):
                row[column] = json.loads(row[column])
        if row["status"] == "running" and _is_dead(row["host"], row["pid"], row["heartbeat_at"]):
            row["status"] = "interrupted"
        return row

    def dataset_examples(self, fingerprint: str) -> list[tuple[str, dict[str, Any]]]:
        """Return the stored (example id, fields) of a dataset, in order (empty if it was not stored)."""
        rows = self._rows(
            "SELECT example_id, record FROM dataset_examples WHERE dataset_fingerprint = ? ORDER BY position",
            [fingerprint],
        )
        return [(row["example_id"], json.loads(row["record"])) for row in rows]

    # -- hypotheses ----------------------------------------------------------------------------

    def register_hypothesis(self, record: dict[str, Any]) -> str:
        """Insert a pre-registered hypothesis (status ``registered``) and return its id.

        Idempotent, as every write the journal service may retry: registering the same hypothesis
        again changes nothing. A pre-registration is never rewritten: the same id with another
        statement, metric, arms, direction, minimum effect or alpha is a :class:`JournalError`.
        """
        registered = [
            record["statement"],
            record.get("metric"),
            record["baseline"],
            record["treatment"],
            record["direction"],
            record["min_effect"],
            record["alpha"],
        ]
        with self._connect(write=True) as connection:
            connection.execute(
                """INSERT OR IGNORE INTO hypotheses (id, statement, metric, baseline, treatment, direction, min_effect,
                   alpha, status, registered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'registered', ?)""",
                [record["id"], *registered, _now()],
            )
            stored = connection.execute(
                """SELECT statement, metric, baseline, treatment, direction, min_effect, alpha FROM hypotheses
                   WHERE id = ?""",
                [record["id"]],
            ).fetchone()
        if stored is None or list(stored) != registered:
            raise JournalError(
                f"hypothesis {record['id']!r:.80} is already registered in {self.location} with other terms; "
                "a pre-registration is never changed: register the new claim under a new id"
            )
        return str(record["id"])

    def decide_hypothesis(self, hypothesis_id: str, *, status: str, verdict: dict[str, Any]) -> None:
        """Record a hypothesis' verdict."""
        with self._connect(write=True) as connection:
            connection.execute(
                "UPDATE hypotheses SET status = ?, verdict = ?, decided_at = ? WHERE id = ?",
                [status, _json(verdict), _now(), hypothesis_id],
            )

    def hypothesis_rows(self) -> list[dict[str, Any]]:
        """Return every hypothesis as a dict (verdict decoded), oldest first (then by id)."""
        if not self._exists():
            return []
        rows = self._rows("SELECT * FROM hypotheses ORDER BY registered_at, id")
        for row in rows:
            if isinstance(row.get("verdict"), str):
                row["verdict"] = json.loads(row["verdict"])
        return rows

    def hypotheses(self) -> pd.DataFrame:
        """Return every hypothesis as a DataFrame, oldest first (the verdict as stored JSON text)."""
        if not self._exists():
            import pandas as pd

            return pd.DataFrame(columns=["id", "statement", "status", "registered_at"])
        return self.sql("SELECT * FROM hypotheses ORDER BY registered_at, id")


# The experiment list's lines (ExperimentSummary), from the totals the writes keep; ``{where}`` and
# ``{order}`` are fixed text chosen by the caller, never user input.
_SUMMARY_SQL = """
SELECT e.id, e.name, e.kind, e.status, e.status_detail, e.program_name, e.program_fingerprint,
       e.dataset_name, e.dataset_fingerprint, e.metric, e.n_planned,
       coalesce(t.n_trials, 0) AS n_trials, coalesce(t.n_errors, 0) AS n_errors,
       t.score_sum / nullif(t.n_scored, 0) AS mean_score,
       e.created_at, e.finished_at, e.parent_id, e.role, e.heartbeat_at, e.host, e.pid
FROM experiments e LEFT JOIN experiment_stats t ON t.experiment_id = e.id
{where}
ORDER BY {order}"""
