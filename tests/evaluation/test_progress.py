"""The progress bar's live mean is the mean of the trials scored so far in the run it shows."""

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
