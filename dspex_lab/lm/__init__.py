"""The offline lab LM: a documented simulator that runs DSPy programs without a network.

``lab_lm()`` returns a real ``dspy.LM`` subclass whose custom engine answers
any signature in the adapter's format, solves the bundled arithmetic task with
configuration-dependent mistakes, reports token usage, and can inject latency
and faults. It is a SIMULATOR: its accuracies are a model of how real LMs
respond to temperature, reasoning, demos and instructions, not a measurement.

``metering()`` counts the tokens, calls and dollars of any LM's calls (lab or
real) per trial, preferring the cost DSPy reports and saying "unpriced" when
no price is known; ``is_priced()`` tells before the first call.
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
from dspex_lab.lm.client import ENDPOINT_FIELDS, LabLM, credentials_in_url, lab_lm, resolve_lm
from dspex_lab.lm.engine import AsyncLabEngine, LabEngine, LabLMError, LabRateLimitError, current_rollout
from dspex_lab.lm.profiles import LAB_MODELS, LabModelProfile, lm_cost

__all__ = [
    "ENDPOINT_FIELDS",
    "HOSTED_PRICES",
    "HOSTED_PRICES_AS_OF",
    "LAB_MODELS",
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
    "current_rollout",
    "is_priced",
    "lab_lm",
    "lm_cost",
    "metering",
    "model_price",
    "resolve_lm",
]
