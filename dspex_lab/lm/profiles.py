"""The simulated lab models: prices, accuracy parameters and nominal speed."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LAB_MODELS", "LabModelProfile", "lm_cost"]


@dataclass(frozen=True)
class LabModelProfile:
    """What distinguishes one simulated lab model from another.

    Attributes:
        name: the model string (``lab/small``).
        input_price_per_million: simulated US dollars per 1M input tokens.
        output_price_per_million: simulated US dollars per 1M output tokens.
        step_error_rate: the chance of an arithmetic slip per solution step
            when reasoning is written out at temperature 0, before the
            demo/instruction adjustments (the accuracy knob of the model).
        direct_answer_penalty: how many times more likely a slip is when the
            model must answer without a reasoning field (``dspy.Predict``).
        nominal_latency_seconds: the latency a real model of this class would
            have. Documentation only: the engine sleeps exactly the
            ``latency`` it is given, so benchmarks stay exact.
        description: one line for humans.
    """

    name: str
    input_price_per_million: float
    output_price_per_million: float
    step_error_rate: float
    direct_answer_penalty: float
    nominal_latency_seconds: float
    description: str


LAB_MODELS: dict[str, LabModelProfile] = {
    "lab/small": LabModelProfile(
        name="lab/small",
        input_price_per_million=0.15,
        output_price_per_million=0.60,
        step_error_rate=0.085,
        direct_answer_penalty=2.2,
        nominal_latency_seconds=0.4,
        description="cheap, fast, makes arithmetic slips fairly often",
    ),
    "lab/large": LabModelProfile(
        name="lab/large",
        input_price_per_million=2.50,
        output_price_per_million=10.00,
        step_error_rate=0.04,
        direct_answer_penalty=2.2,
        nominal_latency_seconds=1.2,
        description="about 16x the price of lab/small, roughly half the slips",
    ),
}


def lm_cost(model: str, input_tokens: int, output_tokens: int) -> float | None:
    """Return the simulated price in US dollars of one call, from the lab price table.

    Args:
        model: a lab model name such as ``"lab/small"``.
        input_tokens: prompt tokens of the call.
        output_tokens: completion tokens of the call.

    Returns:
        The cost, or None when ``model`` is not a lab model (its price is unknown here).
    """
    profile = LAB_MODELS.get(model)
    if profile is None:
        return None
    return (input_tokens * profile.input_price_per_million + output_tokens * profile.output_price_per_million) / 1e6
