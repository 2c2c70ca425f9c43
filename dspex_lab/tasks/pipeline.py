"""The lab's three-module task: plan, then solve with the plan, then verify the proposed answer.

:class:`PlanSolveVerify` is registered as ``lab.PlanSolveVerify``, so a program spec can
name it (``dx.Program("lab.PlanSolveVerify")``). Its predictors are named ``plan``,
``solve`` and ``verify``; it answers in the field ``answer``, so
``dx.metrics.exact_match`` scores it on ``dx.datasets.arithmetic`` and on the null
variant ``dx.datasets.null_arithmetic``. How the lab LM answers each stage, and what
there is to find in it, is ``docs/lab_world.md``, section 10.

``solve`` and ``verify`` write a ``reasoning`` field before their answer (they are
chain-of-thought predictors) as plain ``dspy.Predict`` over signatures that hold the field,
so that each stage is one predictor named as the stage (``dspy.ChainOfThought`` would name
it ``solve.predict``).
"""

from __future__ import annotations

from typing import Any

import dspy

from dspex_lab.program import Choice, Demos, Program, register

__all__ = ["RIGOR", "STAGES", "Plan", "PlanSolveVerify", "Solve", "Verify", "pipeline_program"]

#: The pipeline's predictors, in the order they run.
STAGES = ("plan", "solve", "verify")
#: The shared ``rigor`` variable's values: each stage's temperature and the prefix of its instructions.
RIGOR: dict[str, tuple[float, str]] = {
    "relaxed": (0.7, "Be quick and lenient: trust the given work and change only clear errors."),
    "standard": (0.3, ""),
    "strict": (0.0, "Be strict: double-check every step and distrust any result you have not verified."),
}


class Plan(dspy.Signature):
    """Read the word problem and write a numbered plan: one line per clause, naming the operation it needs."""

    question: str = dspy.InputField()
    plan: str = dspy.OutputField(desc="one numbered line per clause: '<clause>: <operation>'")


class Solve(dspy.Signature):
    """Solve the word problem, using the plan, and give the final number."""

    question: str = dspy.InputField()
    plan: str = dspy.InputField()
    reasoning: str = dspy.OutputField(desc="the worked steps")
    answer: str = dspy.OutputField()


class Verify(dspy.Signature):
    """Check the proposed solution of the word problem and give the final answer, correcting it if it is wrong."""

    question: str = dspy.InputField()
    solution: str = dspy.InputField(desc="the worked steps of the proposed solution")
    proposed_answer: str = dspy.InputField()
    reasoning: str = dspy.OutputField(desc="what the check found")
    answer: str = dspy.OutputField()


@register("lab.PlanSolveVerify")
class PlanSolveVerify(dspy.Module):
    """Plan the steps, solve with the plan, then verify the proposed answer (three predictors).

    Example:
        >>> import dspex_lab as dx
        >>> [name for name, _ in PlanSolveVerify().named_predictors()]
        ['plan', 'solve', 'verify']
    """

    def __init__(self) -> None:
        super().__init__()
        self.plan = dspy.Predict(Plan)
        self.solve = dspy.Predict(Solve)
        self.verify = dspy.Predict(Verify)

    def forward(self, question: str, **_: Any) -> dspy.Prediction:
        """Answer ``question``; the prediction carries the plan and the draft too, for inspection."""
        plan = self.plan(question=question).plan
        draft = self.solve(question=question, plan=plan)
        checked = self.verify(question=question, solution=draft.reasoning, proposed_answer=draft.answer)
        return dspy.Prediction(answer=checked.answer, plan=plan, draft_answer=draft.answer, reasoning=checked.reasoning)


def pipeline_program(*, name: str = "plan-solve-verify") -> Program:
    """Return a ready ``dx.Program`` of :class:`PlanSolveVerify` with the lab world's variables.

    ``rigor`` is shared by every stage through a semantic binding: each value sets every stage's
    temperature and instruction prefix (:data:`RIGOR`). ``model_plan``, ``model_solve`` and
    ``model_verify`` choose each stage's lab model; ``demos_plan``, ``demos_solve`` and
    ``demos_verify`` hold each stage's few-shot demos. The defaults are the baseline of
    ``docs/lab_world.md``, section 10 (``lab/small`` everywhere, standard rigor, no demos).

    Example:
        >>> program = pipeline_program()
        >>> program.values["rigor"], sorted(program.variables)[:3]
        ('standard', ['demos_plan', 'demos_solve', 'demos_verify'])
    """
    binding = {
        value: {stage: {"temperature": temperature, "prefix": prefix} for stage in STAGES}
        for value, (temperature, prefix) in RIGOR.items()
    }
    variables: dict[str, Any] = {"rigor": Choice("standard", choices=tuple(RIGOR), binding=binding)}
    for stage in STAGES:
        variables[f"model_{stage}"] = Choice("lab/small", choices=("lab/small", "lab/large"), target=f"model:{stage}")
        variables[f"demos_{stage}"] = Demos((), max=8, target=f"demos:{stage}")
    return Program("lab.PlanSolveVerify", name=name, variables=variables)
