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
        skill_error_rates: the chance of a slip per solution step of each skill
            (``groups``, ``addition``, ``subtraction``, ``scaling``, ``division``)
            when reasoning is written out at temperature 0, before the demo and
            instruction effects (the accuracy knobs of the model; see
            ``docs/lab_world.md``).
        direct_answer_penalty: how many times more likely a slip is when the
            model must answer without a reasoning field (``dspy.Predict``).
        diagnosis_accuracy: the chance that the model names the right skill when
            it diagnoses a slip for an optimizer (feedback and instruction proposals).
        nominal_latency_seconds: the latency a real model of this class would
            have. Documentation only: the engine sleeps exactly the
            ``latency`` it is given, so benchmarks stay exact.
        description: one line for humans.
    """

    name: str
    input_price_per_million: float
    output_price_per_million: float
    skill_error_rates: tuple[tuple[str, float], ...]
    direct_answer_penalty: float
    diagnosis_accuracy: float
    nominal_latency_seconds: float
    description: str

    def base_rates(self, skills: tuple[str, ...]) -> tuple[float, ...]:
        """Return the base slip rates of ``skills``, in that order."""
        rates = dict(self.skill_error_rates)
        return tuple(rates[skill] for skill in skills)


LAB_MODELS: dict[str, LabModelProfile] = {
    "lab/small": LabModelProfile(
        name="lab/small",
        input_price_per_million=0.15,
        output_price_per_million=0.60,
        skill_error_rates=(
            ("groups", 0.31),
            ("addition", 0.035),
            ("subtraction", 0.045),
            ("scaling", 0.08),
            ("division", 0.10),
        ),
        direct_answer_penalty=1.8,
        diagnosis_accuracy=0.6,
        nominal_latency_seconds=0.4,
        description="cheap, fast, often adds the group count and size instead of multiplying",
    ),
    "lab/large": LabModelProfile(
        name="lab/large",
        input_price_per_million=2.50,
        output_price_per_million=10.00,
        skill_error_rates=(
            ("groups", 0.11),
            ("addition", 0.015),
            ("subtraction", 0.02),
            ("scaling", 0.03),
            ("division", 0.04),
        ),
        direct_answer_penalty=1.8,
        diagnosis_accuracy=0.9,
        nominal_latency_seconds=1.2,
        description="about 16x the price of lab/small, about 40% of its slips, better at diagnosing them",
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
