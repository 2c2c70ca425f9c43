"""A script without ``if __name__ == "__main__":`` on a process pool: refused in one line, no stray experiments."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import dspex_lab as dx

SCRIPT = textwrap.dedent(
    """
    import dspex_lab as dx
    from dspex_lab.engine import ProcessExecutor

    data = dx.Dataset(dx.datasets.arithmetic(4, seed=1), name="a4")
    program = dx.Program("dspy.Predict", signature="question -> answer", name="p")
    with dx.Context(lm="lab/small", journal="j.duckdb", executor=ProcessExecutor(workers=1, threads_per_worker=2)):
        dx.evaluate(program, data, metric=dx.metrics.exact_match, progress=False)
    """
)


def test_a_run_restarted_by_a_workers_reimport_is_refused_and_leaves_nothing(tmp_path: Path):
    script = tmp_path / "unguarded.py"
    script.write_text(SCRIPT)
    completed = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode != 0
    last = completed.stderr.strip().splitlines()[-1]
    assert "re-ran" in last and str(script) in last and 'if __name__ == "__main__":' in last, completed.stderr[-2000:]
    # Only the user's own run is journaled, ended as failed with the reason; the worker started nothing.
    (only,) = dx.open_journal(tmp_path / "j.duckdb").experiment_summaries()
    assert only.status == "failed" and 'if __name__ == "__main__":' in only.status_detail
    assert only.n_trials == 0
