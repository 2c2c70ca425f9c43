"""Interrupting a notebook kernel mid-run, as a user does with the stop button.

A real IPython kernel (jupyter_client, as JupyterLab and nbclient drive it) runs an evaluation
and an optimization on a slow lab LM; the test sends the kernel an interrupt. The run must stop
within 2 seconds, the cell must end with KeyboardInterrupt naming the id to resume, every trial
finished before the interrupt must be in the journal, and the kernel must stay usable.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
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
    while reply["parent_header"].get("msg_id") != message_id:  # a reply to an earlier request
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
    assert reply["content"]["ename"] == "RunInterrupted"  # a KeyboardInterrupt naming the experiment to resume
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
trials = []

def started(step):  # "started" once the baseline is journaled and the search runs, however long set-up took
    if not trials:
        trials.append(step)
        print("started", flush=True)

with context:
    dx.optimize(program, problems[:60], problems[60:], metric=dx.metrics.exact_match,
                optimizer=dx.SimbaC(bsize=16, max_steps=3), progress=False, subscribers=[started])
"""
    reply, _, stopped_in = run_cell(client, setup, interrupt_after=0.5, manager=manager)

    assert reply["content"]["ename"] == "RunInterrupted"  # a KeyboardInterrupt naming the experiment to resume
    assert stopped_in is not None and stopped_in < 2.0
    run_id = reply["content"]["evalue"].split("resume=")[1].strip(" '\"")
    opened = dx.open_journal(journal)
    assert opened.experiment(run_id)["status"] == "interrupted"
    assert len(opened.children_trial_rows(run_id)) > 0  # its evaluations' finished trials are kept


# The process and Dask executors: the interrupt reaches the kernel's process group; process workers
# ignore it, and the driver cancels their trials and returns, keeping every trial delivered before.
# The Dask cluster runs outside the kernel, as a shared cluster does (a LocalCluster made inside the
# kernel shares its process group, and Dask's workers die of the interrupt), and the kernel connects
# by address. Each kernel warms its workers up first, so trials finish before the interrupt.
@pytest.fixture
def remote_setup(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "process":
        yield "executor = 'process'"
        return
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=4, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        yield f"executor = {cluster.scheduler_address.replace('tcp://', 'dask://')!r}"


@pytest.mark.parametrize("remote_setup", ["process", "dask"], indirect=True)
def test_a_kernel_interrupt_stops_a_process_or_dask_evaluation_fast(kernel, tmp_path: Path, remote_setup: str) -> None:
    kind = "dask" if "dask://" in remote_setup else "process"
    manager, client = kernel
    journal = tmp_path / f"interrupt-{kind}.duckdb"
    setup = f"""
import dspex_lab as dx
{remote_setup}
problems = dx.datasets.arithmetic(160, seed=0)
program = dx.Program("dspy.ChainOfThought", signature="question -> answer", name="slow-{kind}")
context = dx.Context(lm=dx.lab_lm("lab/small", latency=0.2), journal={str(journal)!r}, threads=8, executor=executor)
with dx.Context(lm=dx.lab_lm("lab/small"), journal=False, threads=8, executor=context.executor):
    dx.evaluate(program, problems[:16], metric=dx.metrics.exact_match, progress=False)
"""
    reply, _, _ = run_cell(client, setup, timeout=300)  # starts and warms the workers: slow on a busy machine
    assert reply["content"]["status"] == "ok", reply["content"]
    run = """
print("started", flush=True)
with context:
    dx.evaluate(program, problems, metric=dx.metrics.exact_match, progress=False)
"""
    reply, output, stopped_in = run_cell(client, run, interrupt_after=1.5, manager=manager)

    # dspex_lab.session.RunInterrupted: a KeyboardInterrupt that carries the experiment to resume.
    assert reply["content"].get("ename") == "RunInterrupted", (reply["content"], output)
    assert "resume" in reply["content"]["evalue"]
    assert stopped_in is not None and stopped_in < 2.0
    record = dx.open_journal(journal).experiments().iloc[0]
    assert record["status"] == "interrupted"
    assert 0 < record["n_trials"] < 160
    resume = f"""
with context:
    result = dx.evaluate(program, problems, metric=dx.metrics.exact_match, progress=False, resume={record["id"]!r})
print(result.n_trials, result.trials["trial_id"].is_unique)
"""
    reply, output, _ = run_cell(client, resume)
    assert reply["content"]["status"] == "ok", reply["content"]
    assert output.strip().endswith("160 True")
