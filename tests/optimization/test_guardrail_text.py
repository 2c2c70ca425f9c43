"""Guardrails written as text (`dspex optimize --guardrail`, `%dspex optimize --guardrail`); the front in words."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import pytest

import dspex_lab as dx
from dspex_lab.errors import ExecutionError, OptimizerError
from dspex_lab.optimization import GUARDRAIL_SYNTAX, PARETO_COLUMNS, pareto_text, parse_objective
from dspex_lab.optimization._objective import parse_guardrail


def strict(example: Any, prediction: Any) -> float:
    return float(example.answer == prediction.answer)


@pytest.mark.parametrize(
    ("text", "config"),
    [
        ("cost<=0.0005", {"quantity": "cost", "name": "cost", "at_most": 0.0005}),
        (" latency_p95 <= 1 ", {"quantity": "latency_p95", "name": "latency_p95", "at_most": 1.0}),
        ("error_rate<=5e-2", {"quantity": "error_rate", "name": "error_rate", "at_most": 0.05}),
        ("metric:f1>=0.6", {"quantity": "metric", "name": "metric:dspex_lab.metrics.f1", "at_least": 0.6}),
        ("metric:exact_match<=0.9", {"quantity": "metric", "name": "metric:dspex_lab.metrics.exact_match",
                                     "at_most": 0.9}),
    ],
)  # fmt: skip
def test_each_quantity_reads_into_the_guardrail_python_would_build(text: str, config: dict[str, Any]) -> None:
    guardrail = parse_guardrail(text)
    assert guardrail.config() == config
    if guardrail.quantity == "metric":
        assert guardrail.metric is getattr(dx.metrics, config["name"].rsplit(".", 1)[1])


def test_a_second_metric_is_found_by_the_faces_own_rule() -> None:
    asked: list[str] = []

    def find(name: str) -> Any:
        asked.append(name)
        return strict

    guardrail = parse_guardrail("metric:mylab:Graders.strict >= 0.25", metric=find)
    assert asked == ["mylab:Graders.strict"]  # everything after the first colon, module:qualname included
    assert guardrail.metric is strict and guardrail.side == "at_least" and guardrail.bound == 0.25

    def unknown(name: str) -> Any:
        raise ExecutionError(f"metric {name!r}: no such function")

    with pytest.raises(OptimizerError) as raised:
        parse_guardrail("metric:nope>=0.5", option="--guardrail", metric=unknown)
    assert str(raised.value) == "--guardrail 'metric:nope>=0.5': metric 'nope': no such function"


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("cost", "no comparison (<= or >=)"),
        ("cost<0.001", "'<' is not a bound's comparison (<= or >=)"),
        ("cost=<0.001", "'=<' is not a bound's comparison (<= or >=)"),
        ("costs<=1", "'costs' is not a quantity (cost, latency_p95, error_rate, or metric:NAME for a second metric)"),
        ("<=1", "no quantity before the comparison"),
        ("metric<=1", "'metric' is not a quantity"),
        ("cost:x<=1", "'cost:x' is not a quantity"),
        ("metric:>=0.5", "metric: needs the second metric's name"),
        ("cost>=0.001", "cost is bounded from above only (cost<=NUMBER)"),
        ("cost<=cheap", "the bound 'cheap' is not a number"),
        ("cost<=", "no bound after the comparison"),
        ("cost<=-1", "Guardrail('cost', at_most=-1.0): must be above 0"),
        ("error_rate<=5", "must be a fraction in (0, 1)"),
        ("latency_p95<=inf", "the bound must be a finite number"),
    ],
)
def test_bad_text_is_one_line_naming_the_option_what_is_wrong_and_the_syntax(text: str, what: str) -> None:
    with pytest.raises(OptimizerError) as raised:
        parse_guardrail(text, option="%dspex optimize --guardrail")
    message = str(raised.value)
    assert message.startswith(f"%dspex optimize --guardrail {text!r}: ")
    assert what in message
    assert message.endswith(f"; write {GUARDRAIL_SYNTAX}") and "\n" not in message


def test_an_unknown_lab_metric_lists_the_known_ones() -> None:
    known = r"\(exact_match, numeric_match, contains, f1, answer_exact_match"
    with pytest.raises(OptimizerError, match=r"no metric 'exact' in dx.metrics " + known):
        parse_guardrail("metric:exact>=0.5")


def test_several_texts_make_one_objective_and_a_quantity_bounded_twice_is_refused() -> None:
    objective = parse_objective(["cost<=0.0005", "latency_p95<=1.0", "error_rate<=0.05"])
    assert objective == dx.Objective(
        guardrails=[
            dx.Guardrail("cost", at_most=0.0005),
            dx.Guardrail("latency_p95", at_most=1.0),
            dx.Guardrail("error_rate", at_most=0.05),
        ]
    )
    assert parse_objective([]) is None
    with pytest.raises(OptimizerError) as raised:
        parse_objective(["cost<=0.1", "error_rate<=0.1", "cost<=0.2"], option="--guardrail")
    assert str(raised.value) == "--guardrail: cost is bounded twice; give one --guardrail for each quantity"


def test_the_clis_help_says_the_syntax_the_parser_reads() -> None:
    from dspex_lab.cli import _GUARDRAIL_HELP

    assert GUARDRAIL_SYNTAX.startswith(_GUARDRAIL_HELP)


# -- the front in words --------------------------------------------------------------------------------


def points(*rows: tuple[str, float, float, bool, bool]) -> pd.DataFrame:
    """A Pareto frame of (candidate, quality, cost, best, on_front) rows; intervals +-0.1 and +-10%."""
    records = [
        {
            **dict.fromkeys(PARETO_COLUMNS),
            "candidate_id": key,
            "quality": quality,
            "quality_ci_low": quality - 0.1,
            "quality_ci_high": quality + 0.1,
            "n": 50,
            "cost": cost,
            "cost_ci_low": cost * 0.9,
            "cost_ci_high": cost * 1.1,
            "best": best,
            "on_front": on_front,
        }
        for key, quality, cost, best, on_front in rows
    ]
    return pd.DataFrame(records, columns=list(PARETO_COLUMNS))


def test_the_front_in_words_lists_the_cheapest_front_points_and_a_best_off_it() -> None:
    frame = points(
        ("c0", 0.5, 1e-4, False, True),
        ("c2", 0.6, 2e-4, False, True),
        ("c5", 0.55, 3e-4, True, False),
        ("c3", 0.7, 4e-4, False, True),
    )
    lines = pareto_text(frame, shown=2).splitlines()
    assert lines[0] == "Pareto front (validation mean vs cost per example; 3 of 4 candidates evaluated on the valset):"
    assert lines[1] == "  c0  0.500 [0.400, 0.600] at $0.0001 [$9e-05, $0.00011] (n = 50)"
    assert lines[2].startswith("  c2  0.600 [0.500, 0.700] at $0.0002 ")
    assert lines[3] == "  and 1 more on the front (all of them: run.pareto())"
    assert lines[4].startswith("  the best, c5, is not on the front: 0.550 [0.450, 0.650] at $0.0003 ")


def test_without_points_or_costs_the_front_says_why_there_is_none() -> None:
    assert pareto_text(points()) == "Pareto front: no candidate was evaluated on the valset yet."
    unpriced = points(("c0", 0.5, math.nan, True, False), ("c1", 0.6, math.nan, False, False))
    assert pareto_text(unpriced) == (
        "Pareto front: none; the cost of the 2 candidates evaluated is unknown (an unpriced model)."
    )
