"""Interrupting a notebook kernel mid-run, as a user does with the stop button.

A real IPython kernel (jupyter_client, as JupyterLab and nbclient drive it) runs an evaluation
and an optimization on a slow lab LM; the test sends the kernel an interrupt. The run must stop
within 2 seconds, the cell must end with KeyboardInterrupt naming the id to resume, every trial
finished before the interrupt must be in the journal, and the kernel must stay usable.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

jupyter_client = pytest.importorskip("jupyter_client")
from jupyter_client.manager import start_new_kernel  # noqa: E402

import dspex_lab as dx  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture
def kernel():
    manager, client = start_new_kernel(kernel_name="python3")
    try:
        yield manager, client
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def run_cell(client, code: str, *, interrupt_after: float | None = None, manager=None, timeout: float = 120):
    """Execute ``code``, interrupting the kernel once it printed 'started' if asked.

    Returns:
        The execute reply, the cell's stdout, and the seconds from the interrupt to the kernel going idle.
    """
    message_id = client.execute(code)
    stdout, interrupted_at, stopped_in = [], None, None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            message = client.get_iopub_msg(timeout=0.1)
        except Exception:
            message = None
        if message is not None and message["parent_header"].get("msg_id") == message_id:
            kind = message["msg_type"]
            if kind == "stream":
                stdout.append(message["content"]["text"])
            elif kind == "status" and message["content"]["execution_state"] == "idle":
                if interrupted_at is not None:
                    stopped_in = time.monotonic() - interrupted_at
                break
        if interrupt_after is not None and interrupted_at is None and "started" in "".join(stdout):
            time.sleep(interrupt_after)
            manager.interrupt_kernel()
            interrupted_at = time.monotonic()
    reply = client.get_shell_msg(timeout=10)
    return reply, "".join(stdout), stopped_in


def test_a_kernel_interrupt_stops_an_evaluation_fast_and_keeps_every_finished_trial(kernel, tmp_path: Path) -> None:
    manager, client = kernel
    journal = tmp_path / "interrupt.duckdb"
    setup = f"""
import dspex_lab as dx
problems = dx.datasets.arithmetic(400, seed=0)
program = dx.Program("dspy.ChainOfThought", signature="question -> answer", name="slow")
context = dx.Context(lm=dx.lab_lm("lab/small", latency=0.2), journal={str(journal)!r}, threads=8)
print("started", flush=True)
with context:
    dx.evaluate(program, problems, metric=dx.metrics.exact_match, progress=False)
"""
    reply, _, stopped_in = run_cell(client, setup, interrupt_after=1.5, manager=manager)

    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert "resume" in reply["content"]["evalue"]
    assert stopped_in is not None and stopped_in < 2.0
    record = dx.open_journal(journal).experiments().iloc[0]
    assert record["status"] == "interrupted"
    assert 0 < record["n_trials"] < 400
    # The kernel is still usable, and the run resumes from where it stopped.
    resume = f"""
with context:
    result = dx.evaluate(program, problems, metric=dx.metrics.exact_match, progress=False, resume={record["id"]!r})
print(result.n_trials)
"""
    reply, output, _ = run_cell(client, resume.replace("latency=0.2", "latency=0"))
    assert reply["content"]["status"] == "ok"
    assert output.strip().endswith("400")


def test_a_kernel_interrupt_stops_an_optimization_fast_and_it_resumes(kernel, tmp_path: Path) -> None:
    manager, client = kernel
    journal = tmp_path / "optimize.duckdb"
    setup = f"""
import dspex_lab as dx
problems = dx.datasets.arithmetic(200, seed=1)
program = dx.Program("dspy.ChainOfThought", signature="question -> answer", name="slow-opt")
context = dx.Context(lm=dx.lab_lm("lab/small", latency=0.05), journal={str(journal)!r}, threads=8)
print("started", flush=True)
with context:
    dx.optimize(program, problems[:60], problems[60:], metric=dx.metrics.exact_match,
                optimizer=dx.SimbaC(bsize=16, max_steps=3), progress=False)
"""
    reply, _, stopped_in = run_cell(client, setup, interrupt_after=2.0, manager=manager)

    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert stopped_in is not None and stopped_in < 2.0
    run_id = reply["content"]["evalue"].split("resume=")[1].strip(" '\"")
    opened = dx.open_journal(journal)
    assert opened.experiment(run_id)["status"] == "interrupted"
    recorded = int(
        opened.sql("select count(*) as n from trials where starts_with(experiment_id, ?)", [run_id + "/"])["n"][0]
    )
    assert recorded > 0
