"""The progress bar's live mean is the mean of the trials scored so far in the run it shows."""

import io
import re
import time
from typing import ClassVar

import pytest

from dspex_lab.engine import RunFinished, RunStarted, TrialFinished
from dspex_lab.engine._trial import TrialResult
from dspex_lab.evaluation._progress import TqdmProgress


class RecordingBar:
    """Stands in for tqdm: keeps every postfix it is given."""

    bars: ClassVar[list["RecordingBar"]] = []

    def __init__(self, **options):
        self.options = options
        self.postfixes: list[dict] = []
        self.updates = 0
        RecordingBar.bars.append(self)

    def update(self, count):
        self.updates += count

    def set_postfix(self, refresh=True, **values):
        self.postfixes.append(values)

    def close(self):
        pass


@pytest.fixture
def bars(monkeypatch):
    import tqdm.auto

    RecordingBar.bars = []
    monkeypatch.setattr(tqdm.auto, "tqdm", RecordingBar)
    return RecordingBar.bars


def trial(index, score):
    status = "ok" if score is not None else "error"
    return TrialResult(
        index=index,
        example_id=f"e{index}",
        repeat=0,
        status=status,
        score=score,
        prediction=None,
        error_type=None if score is not None else "ValueError",
    )


def run(progress, run_id, scores):
    progress(RunStarted(run_id=run_id, name=run_id, total=len(scores)))
    errors = 0
    for done, score in enumerate(scores, start=1):
        errors += score is None
        progress(TrialFinished(run_id=run_id, result=trial(done, score), done=done, total=len(scores), n_errors=errors))
    progress(
        RunFinished(
            run_id=run_id, status="finished", done=len(scores), total=len(scores), n_errors=errors, wall_seconds=1.0
        )
    )


def test_the_live_mean_is_the_running_mean_of_scored_trials(bars):
    progress = TqdmProgress(refresh_seconds=-1.0)  # refresh on every trial
    run(progress, "a", [1.0, 0.0, None, 0.5])
    means = [postfix["mean"] for postfix in bars[0].postfixes]
    assert means == ["1.000", "0.500", "0.500", "0.500", "0.500"]
    assert bars[0].postfixes[-1]["errors"] == 1 and bars[0].updates == 4


def test_each_run_starts_its_mean_afresh(bars):
    progress = TqdmProgress(refresh_seconds=-1.0)
    run(progress, "first", [1.0, 1.0])
    run(progress, "second", [0.0, 0.0])
    assert bars[1].postfixes[-1]["mean"] == "0.000"


def shown_lines(stream) -> list[tuple[int, str]]:
    """Return (trials counted, mean shown) for every redraw of a text bar that shows a mean."""
    found = []
    for line in stream.getvalue().replace("\r", "\n").splitlines():
        counted = re.search(r"\| (\d+)/\d+ \[", line)
        mean = re.search(r"mean=([0-9.]+|nan)", line)
        if counted and mean:
            found.append((int(counted.group(1)), mean.group(1)))
    return found


def test_every_redraw_of_a_text_bar_shows_the_mean_of_the_trials_it_counts():
    # Bursts of trials, as threads finish them: the bar used to show the mean set at an earlier redraw,
    # which was often the first trial's alone (mean=0.000 at 50/200).
    scores = [0.0] * 3 + [1.0, 0.0, 1.0, 1.0] * 12
    stream = io.StringIO()
    progress = TqdmProgress(refresh_seconds=0.02, file=stream)
    progress(RunStarted(run_id="r", name="r", total=len(scores)))
    for done, score in enumerate(scores, start=1):
        if done % 10 == 1:
            time.sleep(0.03)  # a pause between bursts: the next trial redraws the bar
        progress(TrialFinished(run_id="r", result=trial(done, score), done=done, total=len(scores), n_errors=0))
    progress(RunFinished(run_id="r", status="finished", done=51, total=51, n_errors=0, wall_seconds=1.0))
    shown = shown_lines(stream)
    assert len({counted for counted, _ in shown}) >= 5  # several redraws in the middle of the run, not only the last
    for counted, mean in shown:
        assert mean == f"{sum(scores[:counted]) / counted:.3f}", f"at {counted}/{len(scores)}"
    assert shown[-1] == (len(scores), f"{sum(scores) / len(scores):.3f}")


def test_the_mean_after_n_trials_is_the_running_mean_when_every_trial_redraws():
    scores = [0.0, 1.0, 1.0, 0.5, None, 1.0]
    stream = io.StringIO()
    run(TqdmProgress(refresh_seconds=0, file=stream), "r", scores)
    scored = [score for score in scores if score is not None]
    means = dict(shown_lines(stream))
    for counted in range(1, len(scores) + 1):
        seen = [score for score in scores[:counted] if score is not None]
        assert means[counted] == f"{sum(seen) / len(seen):.3f}"
    assert means[len(scores)] == f"{sum(scored) / len(scored):.3f}"
