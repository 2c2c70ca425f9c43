"""The offline lab LM: a documented simulator that runs DSPy programs without a network.

``lab_lm()`` returns a real ``dspy.LM`` subclass whose custom engine answers
any signature in the adapter's format, solves the bundled arithmetic task with
configuration-dependent mistakes, reports token usage, and can inject latency
and faults. It is a SIMULATOR: its accuracies are a model of how real LMs
respond to temperature, reasoning, demos and instructions, not a measurement
(``docs/lab_world.md``).

What any LM's calls cost, repeats as distinct rollouts and which LM a name means are not
the simulator's business: they live in :mod:`dspex_lab.providers`.
"""

from __future__ import annotations

from dspex_lab.lm.client import DEFAULT_LM, LM_ENVIRONMENT_VARIABLE, LabLM, lab_lm
from dspex_lab.lm.profiles import LAB_MODELS, LabModelProfile, lm_cost
from dspex_lab.lm.simulator import AsyncLabEngine, LabEngine, LabLMError, LabRateLimitError

__all__ = [
    "DEFAULT_LM",
    "LAB_MODELS",
    "LM_ENVIRONMENT_VARIABLE",
    "AsyncLabEngine",
    "LabEngine",
    "LabLM",
    "LabLMError",
    "LabModelProfile",
    "LabRateLimitError",
    "lab_lm",
    "lm_cost",
]
