"""Trial rows as ``TrialResult.to_row()`` gives them, for journal tests that write rows directly."""

from __future__ import annotations

import time
from typing import Any


def trial_row(example_id: str, index: int, *, repeat: int = 0, status: str = "ok", score: float | None = 1.0,
              **extra: Any) -> dict[str, Any]:  # fmt: skip
    """Return a row of example ``example_id``: one LM call, 3 tokens in and 1 out, finished now; ``extra`` overrides."""
    now = time.time()
    row: dict[str, Any] = dict(
        index=index,
        example_id=example_id,
        repeat=repeat,
        status=status,
        score=score,
        prediction="{}",
        error_type=None if status == "ok" else "ValueError",
        error_message=None,
        error_stage=None,
        traceback=None,
        latency=0.01,
        input_tokens=3,
        output_tokens=1,
        cost=0.0,
        lm_calls=1,
        attempts=1,
        started_at=now,
        finished_at=now,
        trial_id=f"{example_id}/r{repeat}",
    )
    row.update(extra)
    return row
