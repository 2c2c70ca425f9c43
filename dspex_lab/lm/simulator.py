"""The offline lab engine: a simulated LM behind DSPy 3.4's custom engine interface.

:class:`LabEngine` implements ``complete(Request) -> Response`` (plus
``stream`` and ``close``); :class:`AsyncLabEngine` is its awaitable twin. An
engine reads the adapter's prompt, answers in the requested format (ChatAdapter
sections or a JSON object), reports a deterministic token usage, and can
inject faults (errors, rate limits, hangs) and latency for exercising a trial
runner. See :mod:`dspex_lab.lm.solver` for the one task it can actually solve.

Randomness: every draw is a BLAKE2b hash of the call's identity, so the same
prompt, temperature, rollout and model give the same completion in every
process and under any thread interleaving.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from dspy import lm15
from dspy.lm15 import Message, Response, TextPart, Usage, response_to_events

from dspex_lab.lm import generic
from dspex_lab.lm._feedback import REASONING_NAMES, answer_feedback, answer_proposal
from dspex_lab.lm._judge import answer_judgement
from dspex_lab.lm._pipeline import (
    PipelineStage,
    answer_plan,
    answer_value,
    answer_verify,
    pipeline_stage,
    solve_with_plan,
)
from dspex_lab.lm._skills import (
    NO_DEMOS,
    SKILLS,
    DemoEvidence,
    demo_evidence,
    parse_integer,
    read_demo,
    slip_probabilities,
)
from dspex_lab.lm.profiles import LAB_MODELS, LabModelProfile
from dspex_lab.lm.prompt import TEXT_FORMAT, OutputField, PromptView, read_prompt
from dspex_lab.lm.solver import Draws, solve
from dspex_lab.tasks.arithmetic import ArithmeticProblem, parse_problem

__all__ = [
    "AsyncLabEngine",
    "LabEngine",
    "LabLMError",
    "LabRateLimitError",
]

_REASONING_NAMES = REASONING_NAMES
_NUMERIC_TYPES = frozenset({"int", "float"})
_CHARACTERS_PER_TOKEN = 4
_LEDGER_LIMIT = 65536


class LabLMError(lm15.ProviderError):
    """A simulated provider failure that is not worth retrying (injected by ``error_rate``).

    DSPy surfaces it as ``dspy.utils.exceptions.LMProviderError`` (not retryable).
    """

    default_code = "lab_error"


class LabRateLimitError(lm15.RateLimitError):
    """A simulated HTTP 429 (injected by ``rate_limit_rate``).

    DSPy surfaces it as ``dspy.utils.exceptions.LMRateLimitError``, which is retryable.
    """


class _AttemptLedger:
    """Count how often each exact call was seen, so a retry draws fresh faults.

    Keyed by the call's identity rather than a global call counter, so the
    outcome of a call does not depend on what other threads did meanwhile.
    """

    def __init__(self) -> None:
        self._counts: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def next_attempt(self, key: str) -> int:
        with self._lock:
            attempt = self._counts.pop(key, 0)
            self._counts[key] = attempt + 1
            if len(self._counts) > _LEDGER_LIMIT:
                self._counts.popitem(last=False)
        return attempt


@dataclass(frozen=True)
class _Outcome:
    """What one call will do, computed before any sleeping."""

    response: Response | None
    delay_seconds: float
    failure: Exception | None
    fail_before_delay: bool = False


def _text_of(system: Any) -> str:
    if system is None:
        return ""
    if isinstance(system, str):
        return system
    return "".join(getattr(part, "text", "") or "" for part in system)


def _tokens(text: str) -> int:
    return len(text) // _CHARACTERS_PER_TOKEN + 1


def _check_rate(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def _check_seconds(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name} must be a non-negative number of seconds, got {value!r}")
    return float(value)


class LabEngine:
    """A simulated LM engine (DSPy 3.4 custom engine: ``complete(Request) -> Response``).

    The model profile comes from ``request.model`` (``lab/small`` or
    ``lab/large``), so ``LabLM.copy(model="lab/large")`` switches model.

    Args:
        latency: seconds slept per call (exactly; zero means no sleep).
        error_rate: probability that a call raises :class:`LabLMError`.
        rate_limit_rate: probability that a call raises :class:`LabRateLimitError`.
        hang_rate: probability that a call sleeps ``hang_seconds`` before answering.
        hang_seconds: the length of a hang.
        seed: seeds the fault draws (not the answers: the answers are the
            model's, like a provider's, and depend on the prompt, temperature
            and rollout only).
        rollout_id: a rollout bound to this engine (see :meth:`with_rollout`).
    """

    def __init__(
        self,
        *,
        latency: float = 0.0,
        error_rate: float = 0.0,
        rate_limit_rate: float = 0.0,
        hang_rate: float = 0.0,
        hang_seconds: float = 30.0,
        seed: int = 0,
        rollout_id: Any = None,
        _ledger: _AttemptLedger | None = None,
    ) -> None:
        self.latency = _check_seconds("latency", latency)
        self.error_rate = _check_rate("error_rate", error_rate)
        self.rate_limit_rate = _check_rate("rate_limit_rate", rate_limit_rate)
        self.hang_rate = _check_rate("hang_rate", hang_rate)
        self.hang_seconds = _check_seconds("hang_seconds", hang_seconds)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.seed = seed
        self.rollout_id = rollout_id
        self._ledger = _ledger if _ledger is not None else _AttemptLedger()

    def __repr__(self) -> str:
        return (
            f"LabEngine(latency={self.latency}, error_rate={self.error_rate}, "
            f"rate_limit_rate={self.rate_limit_rate}, hang_rate={self.hang_rate}, seed={self.seed}, "
            f"rollout_id={self.rollout_id!r})"
        )

    def with_rollout(self, rollout_id: Any) -> LabEngine:
        """Return an engine like this one bound to ``rollout_id`` (sharing the attempt ledger)."""
        return LabEngine(
            latency=self.latency,
            error_rate=self.error_rate,
            rate_limit_rate=self.rate_limit_rate,
            hang_rate=self.hang_rate,
            hang_seconds=self.hang_seconds,
            seed=self.seed,
            rollout_id=rollout_id,
            _ledger=self._ledger,
        )

    # -- DSPy engine interface ---------------------------------------------------

    def complete(self, request: lm15.Request) -> Response:
        """Answer one request (one attempt; DSPy owns retries)."""
        outcome = self._prepare(request)
        if outcome.failure is not None and outcome.fail_before_delay:
            raise outcome.failure
        if outcome.delay_seconds > 0:
            time.sleep(outcome.delay_seconds)
        if outcome.failure is not None:
            raise outcome.failure
        return outcome.response

    def stream(self, request: lm15.Request) -> Iterator[Any]:
        """Stream the completion as lm15 events (the whole text in one delta)."""
        yield from response_to_events(self.complete(request))

    def close(self) -> None:
        """Release nothing: the engine holds no connections."""

    def dump_state(self) -> dict[str, Any]:
        """Return the JSON-serializable configuration (for ``dspy.LM.dump_state``)."""
        rollout = (
            self.rollout_id
            if isinstance(self.rollout_id, (int, str, float)) or self.rollout_id is None
            else repr(self.rollout_id)
        )
        return {
            "latency": self.latency,
            "error_rate": self.error_rate,
            "rate_limit_rate": self.rate_limit_rate,
            "hang_rate": self.hang_rate,
            "hang_seconds": self.hang_seconds,
            "seed": self.seed,
            "rollout_id": rollout,
        }

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> LabEngine:
        """Rebuild an engine from :meth:`dump_state` output."""
        return cls(**state)

    # -- simulation --------------------------------------------------------------

    def _rollout_key(self, request: lm15.Request) -> str:
        parts = []
        # DSPy strips rollout_id from the request an engine gets: LabLM.copy(rollout_id=) binds it here.
        if self.rollout_id is not None:
            parts.append(f"bound={self.rollout_id!r}")
        if request.config.seed is not None:
            parts.append(f"seed={request.config.seed!r}")
        return "|".join(parts)

    def _prepare(self, request: lm15.Request) -> _Outcome:
        system = _text_of(request.system)
        messages = [(message.role, message.text or "") for message in request.messages]
        prompt_text = system + "\x1e" + "\x1f".join(f"{role}\x1d{text}" for role, text in messages)
        prompt_digest = hashlib.blake2b(prompt_text.encode(), digest_size=16).hexdigest()
        rollout_key = self._rollout_key(request)
        profile = LAB_MODELS.get(request.model)
        if profile is None:
            raise lm15.UnsupportedModelError(
                f"{request.model!r} is not a lab model; choose one of {sorted(LAB_MODELS)}", provider="lab"
            )

        failure, delay = None, self.latency
        if self.error_rate or self.rate_limit_rate or self.hang_rate:
            attempt = self._ledger.next_attempt(f"{prompt_digest}|{rollout_key}")
            faults = Draws(f"fault|{self.seed}|{prompt_digest}|{rollout_key}|{attempt}")
            rate_limit_draw, hang_draw, error_draw = faults.uniform(), faults.uniform(), faults.uniform()
            if rate_limit_draw < self.rate_limit_rate:
                # A real 429 comes back at once, without the generation latency.
                return _Outcome(
                    None,
                    0.0,
                    LabRateLimitError(f"{request.model}: simulated rate limit", provider="lab", status=429),
                    fail_before_delay=True,
                )
            if hang_draw < self.hang_rate:
                delay += self.hang_seconds
            if error_draw < self.error_rate:
                # Raised after the latency: a provider fails after working on the request.
                failure = LabLMError(f"{request.model}: simulated provider error", provider="lab")

        temperature = request.config.temperature or 0.0
        # At temperature 0 the model is greedy: the rollout cannot change the answer.
        answer_rollout = rollout_key if temperature > 0 else ""
        draws = Draws(f"answer|{request.model}|{temperature:.2f}|{answer_rollout}|{prompt_digest}")
        view = read_prompt(system, messages)
        text = _compose(view, profile, temperature=temperature, draws=draws, rollout=answer_rollout)

        finish_reason = "stop"
        maximum_tokens = request.config.max_tokens
        if maximum_tokens is not None and _tokens(text) > maximum_tokens:
            text = text[: maximum_tokens * _CHARACTERS_PER_TOKEN]
            finish_reason = "length"
        response = Response(
            id=f"lab-{prompt_digest[:16]}",
            model=request.model,
            message=Message.assistant((TextPart(text),)),
            finish_reason=finish_reason,
            usage=Usage(input_tokens=_tokens(prompt_text), output_tokens=_tokens(text)),
        )
        return _Outcome(response, delay, failure)


class AsyncLabEngine:
    """The awaitable twin of a :class:`LabEngine` (same draws; sleeps without blocking the loop)."""

    def __init__(self, engine: LabEngine) -> None:
        self.engine = engine

    def __repr__(self) -> str:
        return f"AsyncLabEngine({self.engine!r})"

    def with_rollout(self, rollout_id: Any) -> AsyncLabEngine:
        """Return an async engine bound to ``rollout_id``."""
        return AsyncLabEngine(self.engine.with_rollout(rollout_id))

    async def complete(self, request: lm15.Request) -> Response:
        """Answer one request."""
        outcome = self.engine._prepare(request)
        if outcome.failure is not None and outcome.fail_before_delay:
            raise outcome.failure
        if outcome.delay_seconds > 0:
            await asyncio.sleep(outcome.delay_seconds)
        if outcome.failure is not None:
            raise outcome.failure
        return outcome.response

    async def stream(self, request: lm15.Request) -> AsyncIterator[Any]:
        """Stream the completion as lm15 events."""
        for event in response_to_events(await self.complete(request)):
            yield event

    async def aclose(self) -> None:
        """Release nothing."""

    def dump_state(self) -> dict[str, Any]:
        """Return the wrapped engine's state."""
        return {"engine": self.engine.dump_state()}

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> AsyncLabEngine:
        """Rebuild an async engine from :meth:`dump_state` output."""
        return cls(LabEngine.load_state(state.get("engine", {})))


# -- composing the answer -----------------------------------------------------------


def _field_draw(draws: Draws) -> int:
    return draws.integer(1 << 30)


def _demo_evidence(view: PromptView, answer_name: str, reasoning_name: str | None) -> DemoEvidence:
    """Read the prompt's demos: the skills their questions show and whether their answers are right."""
    if not view.demos:
        return NO_DEMOS
    readings = []
    for demo in view.demos:
        question = next((value for value in demo.inputs.values() if parse_problem(value) is not None), "")
        answer = demo.outputs.get(answer_name)
        reasoning = demo.outputs.get(reasoning_name, "") if reasoning_name else ""
        readings.append(read_demo(question, answer, reasoning))
    return demo_evidence(tuple(readings))


def _fill(values: dict[str, Any], view: PromptView, fields: tuple[OutputField, ...], draws: Draws) -> str:
    """Render ``values``, filling the fields left at None with generic values."""
    for field in fields:
        if values.get(field.name) is None:
            values[field.name] = generic.value_for_field(field, view.inputs, draw=_field_draw(draws))
    return generic.render(values, view.system.response_format)


def _staged(
    view: PromptView,
    stage: PipelineStage,
    *,
    fields: tuple[OutputField, ...],
    problem: ArithmeticProblem,
    profile: LabModelProfile,
    temperature: float,
    draws: Draws,
    luck_key: str,
) -> str:
    """Answer a pipeline's plan or verify request (docs/lab_world.md, section 10)."""
    if stage.kind == "plan":
        plan = answer_plan(view, fields, problem, profile, temperature=temperature, draws=draws, luck_key=luck_key)
        return _fill(plan, view, fields, draws)
    answer_field = next(field for field in fields if field.name == "answer")
    index = fields.index(answer_field)
    reasoning_field = next((field for field in fields[:index] if field.name in _REASONING_NAMES), None)
    verdict = answer_verify(
        view,
        stage,
        problem,
        profile,
        temperature=temperature,
        reasoning=reasoning_field is not None,
        answer_name=answer_field.name,
        draws=draws,
        luck_key=luck_key,
    )
    values: dict[str, Any] = {}
    if reasoning_field is not None:
        values[reasoning_field.name] = verdict.reasoning
    if verdict.answer is not None:
        values[answer_field.name] = answer_value(answer_field, problem, verdict.answer)
    else:
        kept = verdict.kept or ""
        values[answer_field.name] = parse_integer(kept) if answer_field.type_name in _NUMERIC_TYPES else kept
    return _fill(values, view, fields, draws)


def _plain_reply(
    view: PromptView,
    problem: ArithmeticProblem | None,
    *,
    profile: LabModelProfile,
    temperature: float,
    draws: Draws,
    luck_key: str,
) -> str:
    """Answer a prompt without output fields (``lm("...")``): worked reasoning for a problem, else an excerpt."""
    if problem is not None:
        probabilities = slip_probabilities(
            profile.base_rates(SKILLS),
            profile.direct_answer_penalty,
            temperature=temperature,
            reasoning=True,
            demos=NO_DEMOS,
            instructions="",
        )
        return solve(problem, slip_probabilities=probabilities, draws=draws, luck_key=luck_key).reasoning
    return f"({profile.name} simulated reply) {generic.excerpt(view.inputs, words=24)}"


def _compose(view: PromptView, profile: LabModelProfile, *, temperature: float, draws: Draws, rollout: str = "") -> str:
    fields = view.system.output_fields
    judged = answer_judgement(view, fields)
    if judged is not None:  # a judge's request: gold and prediction compared, deterministically (lm/_judge.py)
        return _fill(judged, view, fields, draws)
    base_rates = profile.base_rates(SKILLS)
    if fields and "module_names" in view.inputs:
        feedback = answer_feedback(view, fields, profile, draws)
        if feedback is not None:
            return _fill(feedback, view, fields, draws)
    if fields and any("instruction" in field.name for field in fields):
        proposal = answer_proposal(view, fields, profile, draws)
        if proposal is not None:
            return _fill(proposal, view, fields, draws)

    problem, luck_key = None, ""
    for value in view.inputs.values():
        problem = parse_problem(value)
        if problem is not None:
            # The question's own luck, shared across prompts, models and temperatures (solver.solve).
            luck_key = f"luck|{rollout}|{value.strip()}"
            break

    if not fields:
        return _plain_reply(view, problem, profile=profile, temperature=temperature, draws=draws, luck_key=luck_key)

    if problem is not None:
        # A plan -> solve -> verify pipeline's requests (docs/lab_world.md, section 10); None: none of them.
        stage = pipeline_stage(view, fields)
        if stage is not None and stage.kind != "solve":
            return _staged(
                view,
                stage,
                fields=fields,
                problem=problem,
                profile=profile,
                temperature=temperature,
                draws=draws,
                luck_key=luck_key,
            )
        names = [field.name for field in fields]
        answer_field = (
            next((field for field in fields if field.name == "answer"), None)
            or next((field for field in fields if field.type_name in _NUMERIC_TYPES), None)
            or next((field for field in reversed(fields) if field.name not in _REASONING_NAMES), None)
        )
        if answer_field is not None:
            answer_index = names.index(answer_field.name)
            reasoning_field = next((field for field in fields[:answer_index] if field.name in _REASONING_NAMES), None)
            probabilities = slip_probabilities(
                base_rates,
                profile.direct_answer_penalty,
                temperature=temperature,
                reasoning=reasoning_field is not None,
                demos=_demo_evidence(view, answer_field.name, reasoning_field.name if reasoning_field else None),
                instructions=view.system.instructions,
            )
            solution = (
                solve_with_plan(
                    problem, stage.plan, profile, slip_probabilities=probabilities, draws=draws, luck_key=luck_key
                )
                if stage is not None
                else solve(problem, slip_probabilities=probabilities, draws=draws, luck_key=luck_key)
            )
            values: dict[str, Any] = {}
            for field in fields:
                if field is answer_field:
                    values[field.name] = answer_value(field, problem, solution.answer)
                elif field is reasoning_field:
                    values[field.name] = solution.reasoning
                else:
                    values[field.name] = generic.value_for_field(field, view.inputs, draw=_field_draw(draws))
            return generic.render(values, view.system.response_format)

    values = {field.name: generic.value_for_field(field, view.inputs, draw=_field_draw(draws)) for field in fields}
    if view.system.response_format == TEXT_FORMAT:
        return generic.render(values, "chat")
    return generic.render(values, view.system.response_format)
