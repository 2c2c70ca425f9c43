"""The offline lab LM: a documented simulator that runs DSPy programs without a network.

``lab_lm()`` returns a real ``dspy.LM`` subclass whose custom engine answers
any signature in the adapter's format, solves the bundled arithmetic task with
configuration-dependent mistakes, reports token usage, and can inject latency
and faults. It is a SIMULATOR: its accuracies are a model of how real LMs
respond to temperature, reasoning, demos and instructions, not a measurement.
"""

from __future__ import annotations

from dspex_lab.lm.client import LabLM, lab_lm, resolve_lm
from dspex_lab.lm.engine import AsyncLabEngine, LabEngine, LabLMError, LabRateLimitError, current_rollout
from dspex_lab.lm.profiles import LAB_MODELS, LabModelProfile, lm_cost

__all__ = [
    "LAB_MODELS",
    "AsyncLabEngine",
    "LabEngine",
    "LabLM",
    "LabLMError",
    "LabModelProfile",
    "LabRateLimitError",
    "current_rollout",
    "lab_lm",
    "lm_cost",
    "resolve_lm",
]
