"""The offline lab LM: a documented simulator that runs DSPy programs without a network.

``lab_lm()`` returns a real ``dspy.LM`` subclass whose custom engine answers
any signature in the adapter's format, solves the bundled arithmetic task with
configuration-dependent mistakes, reports token usage, and can inject latency
and faults. It is a SIMULATOR: its accuracies are a model of how real LMs
respond to temperature, reasoning, demos and instructions, not a measurement.

``metering()`` counts the tokens, calls and dollars of any LM's calls (lab or
real) per trial, preferring the cost DSPy reports and saying "unpriced" when
no price is known; ``is_priced()`` tells before the first call.

``for_repeat()`` gives repeat r of a trial its own DSPy ``rollout_id`` on every LM that samples,
so repeats are distinct requests to any provider (and distinct draws of the lab LM).
"""

from __future__ import annotations

from dspex_lab.lm._cost import (
    HOSTED_PRICES,
    HOSTED_PRICES_AS_OF,
    Meter,
    MeteredCall,
    ModelPrice,
    Usage,
    call_cost,
    current_meter,
    is_priced,
    metering,
    model_price,
)
from dspex_lab.lm._rollout import ROLLOUT_STRIDE, for_repeat, lm_samples, repeat_rollout_id, repeats_can_differ
from dspex_lab.lm.client import ENDPOINT_FIELDS, LabLM, credentials_in_url, lab_lm, resolve_lm
from dspex_lab.lm.engine import AsyncLabEngine, LabEngine, LabLMError, LabRateLimitError
from dspex_lab.lm.profiles import LAB_MODELS, LabModelProfile, lm_cost

__all__ = [
    "ENDPOINT_FIELDS",
    "HOSTED_PRICES",
    "HOSTED_PRICES_AS_OF",
    "LAB_MODELS",
    "ROLLOUT_STRIDE",
    "AsyncLabEngine",
    "LabEngine",
    "LabLM",
    "LabLMError",
    "LabModelProfile",
    "LabRateLimitError",
    "Meter",
    "MeteredCall",
    "ModelPrice",
    "Usage",
    "call_cost",
    "credentials_in_url",
    "current_meter",
    "for_repeat",
    "is_priced",
    "lab_lm",
    "lm_cost",
    "lm_samples",
    "metering",
    "model_price",
    "repeat_rollout_id",
    "repeats_can_differ",
    "resolve_lm",
]
