"""Real LMs through DSPy: which LM a name means, what its calls cost, and repeats as distinct rollouts.

Everything here holds for any ``dspy.BaseLM``, the lab LM included (it is one more provider, with
a price table of its own):

- :func:`resolve_lm` turns a name into an LM (``lab/...`` for the simulator, anything else for
  ``dspy.LM`` with DSPy's defaults) and refuses an endpoint URL that carries credentials
  (:func:`credentials_in_url`);
- :func:`metering` counts the tokens, calls and dollars of an LM's calls per trial, preferring the
  cost DSPy reports and saying "unpriced" when no price is known; :func:`is_priced` tells before
  the first call;
- :func:`for_repeat` gives repeat r of a trial its own DSPy ``rollout_id`` on every LM that
  samples, so repeats are distinct requests to any provider (and distinct draws of the lab LM).
"""

from __future__ import annotations

from dspex_lab.providers._metering import (
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
from dspex_lab.providers._resolve import ENDPOINT_FIELDS, credentials_in_url, resolve_lm
from dspex_lab.providers._rollout import (
    ROLLOUT_STRIDE,
    for_repeat,
    lm_samples,
    repeat_rollout_id,
    repeats_can_differ,
)

__all__ = [
    "ENDPOINT_FIELDS",
    "HOSTED_PRICES",
    "HOSTED_PRICES_AS_OF",
    "ROLLOUT_STRIDE",
    "Meter",
    "MeteredCall",
    "ModelPrice",
    "Usage",
    "call_cost",
    "credentials_in_url",
    "current_meter",
    "for_repeat",
    "is_priced",
    "lm_samples",
    "metering",
    "model_price",
    "repeat_rollout_id",
    "repeats_can_differ",
    "resolve_lm",
]
