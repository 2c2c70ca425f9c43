"""SIMBA-C's ``mutate`` drawing its moves from an Optuna sampler (``SimbaC(move_sampler=...)``)."""

from __future__ import annotations

from pathlib import Path

import dspy
import numpy as np
import pytest

import dspex_lab as dx
from dspex_lab.errors import OptimizerError
from dspex_lab.optimization._move_sampler import MoveSampler, Observation
from dspex_lab.optimization._simba_c import SimbaCRun
from dspex_lab.optimization._space import lift, mutable_variables

pytest.importorskip("optuna")

CHOICES = {
    "rigor": ("relaxed", "standard", "strict"),
    "model_plan": ("lab/small", "lab/large"),
    "model_solve": ("lab/small", "lab/large"),
    "model_verify": ("lab/small", "lab/large"),
}
# Jumps only: every candidate of these runs is a sampled configuration of the pipeline's typed variables.
JUMPS = dict(strategies=("mutate",), max_steps=3, patience=3, bsize=8, num_candidates=3, num_sources=2, full_evals=1)


@pytest.fixture
def data() -> list[dspy.Example]:
    return list(dx.datasets.arithmetic(90, seed=23))


@pytest.fixture
def lifted() -> tuple[dx.Program, list[str]]:
    program, slots = lift(dx.tasks.pipeline_program(), lm=dx.lab_lm("lab/small"), max_demos=4)
    return program, mutable_variables(program, slots)


def run(data: list[dspy.Example], *, seed: int, resume: str | None = None, **options) -> dx.OptimizationResult:
    return dx.optimize(
        dx.tasks.pipeline_program(), data[:30], data[30:90], metric=dx.metrics.exact_match,
        optimizer=dx.SimbaC(**{**JUMPS, **options}), seed=seed, resume=resume, progress=False,
    )  # fmt: skip


def _observations() -> list[Observation]:
    """Twelve configurations drawn at random, scored high exactly when ``lab/large`` verifies."""
    draw = np.random.default_rng(0)
    found = []
    for number in range(12):
        values = {name: choices[int(draw.integers(len(choices)))] for name, choices in CHOICES.items()}
        score = 0.75 + (0.15 if values["model_verify"] == "lab/large" else 0.0) + float(draw.normal(0, 0.01))
        found.append(Observation(f"c{number}", values, score))
    return found


def test_a_bad_move_sampler_is_one_clear_error() -> None:
    for bad in ("cmaes", "TPE", True, 1):
        with pytest.raises(OptimizerError, match=r"SimbaC\(move_sampler=.*\): one of 'tpe', 'random' or None"):
            dx.SimbaC(move_sampler=bad)


def test_config_records_the_sampler_when_it_is_set() -> None:
    assert dx.SimbaC(move_sampler="tpe").config()["move_sampler"] == "tpe"
    # Unset, the config is what it was before the option existed: runs journaled then still resume.
    assert "move_sampler" not in dx.SimbaC().config()


def test_a_number_without_bounds_is_refused_before_any_lm_call(data) -> None:
    program = dx.Program(
        "dspy.Predict", signature="question -> answer", name="qa", variables={"temperature": dx.Float(0.3, low=0.0)}
    )
    with (
        dx.Context(lm=dx.lab_lm("lab/small"), journal=False, threads=2),
        pytest.raises(OptimizerError, match="'temperature' has no low= and high="),
    ):
        dx.optimize(
            program, data[:30], data[30:90], metric=dx.metrics.exact_match,
            optimizer=dx.SimbaC(move_sampler="tpe", **JUMPS), progress=False,
        )  # fmt: skip


def test_a_jump_is_a_valid_new_configuration_and_the_same_for_the_same_seed(lifted) -> None:
    program, names = lifted
    sampler = MoveSampler("tpe", program, names)
    assert sorted(sampler.space) == sorted(CHOICES)
    jumps = [sampler.jump(program, _observations(), np.random.default_rng(seed), seen=set()) for seed in range(12)]
    for moved, rationale in jumps:  # type: ignore[misc]
        changed = [name for name in CHOICES if moved.values[name] != program.values[name]]
        assert changed and all(moved.values[name] in CHOICES[name] for name in CHOICES)
        assert moved.fingerprint == program.with_values(**{name: moved.values[name] for name in changed}).fingerprint
        assert rationale.startswith("sampled jump of ") and all(f"sets {name}:" in rationale for name in changed)
    again = sampler.jump(program, _observations(), np.random.default_rng(3), seen=set())
    assert again is not None and again[0].fingerprint == jumps[3][0].fingerprint  # type: ignore[index]
    assert len({moved.fingerprint for moved, _ in jumps}) > 1  # type: ignore[misc]


def test_tpe_follows_the_evidence_where_the_random_control_does_not(lifted) -> None:
    program, names = lifted
    picked = {}
    for kind in ("tpe", "random"):
        sampler = MoveSampler(kind, program, names)
        jumps = [sampler.jump(program, _observations(), np.random.default_rng(seed), seen=set()) for seed in range(30)]
        picked[kind] = sum(made[0].values["model_verify"] == "lab/large" for made in jumps if made is not None)
    assert picked["tpe"] >= 27
    assert picked["random"] < picked["tpe"]


def test_a_jump_never_remakes_a_candidate_and_gives_up_when_every_draw_would(lifted) -> None:
    program, _ = lifted
    sampler = MoveSampler("random", program, ["model_verify"])
    # One variable of two values: the only new configuration is lab/large verifying.
    made = sampler.jump(program, [], np.random.default_rng(1), seen={program.fingerprint})
    assert made is not None and made[0].values["model_verify"] == "lab/large"
    assert sampler.jump(program, [], np.random.default_rng(1), seen={made[0].fingerprint}) is None


def test_a_run_proposes_sampled_jumps_and_is_the_same_run_for_the_same_seed(data) -> None:
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False, threads=2):
        first = run(data, seed=4, move_sampler="tpe")
        second = run(data, seed=4, move_sampler="tpe")
        other = run(data, seed=5, move_sampler="tpe")
    jumps = first.candidates[first.candidates["strategy"] == "mutate"]
    assert len(jumps) >= 3
    assert jumps["rationale"].str.startswith("sampled jump of ").all()
    assert jumps["rationale"].str.contains("at once").any()  # some jumps move several variables
    for values in jumps["values"]:
        assert all(values[name] in CHOICES[name] for name in CHOICES)
    columns = ["candidate_id", "strategy", "rationale", "screen_mean", "val_mean", "accepted"]
    assert first.candidates[columns].equals(second.candidates[columns])
    assert not first.candidates[columns].equals(other.candidates[columns])


def test_a_run_interrupted_before_a_step_proposes_resumes_to_the_uninterrupted_run(
    tmp_path: Path, data, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = dict(seed=4, move_sampler="tpe")
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=tmp_path / "whole.duckdb", threads=2):
        whole = run(data, **options)
    assert (whole.candidates["step"] == 3).any()  # the step cut below proposes a jump
    propose = SimbaCRun._propose

    def crashing(self, step, *arguments):  # type: ignore[no-untyped-def]
        if step == 3:  # steps 1 and 2 journaled and finished; step 3's jumps never made
            raise KeyboardInterrupt
        return propose(self, step, *arguments)

    with dx.Context(lm=dx.lab_lm("lab/small"), journal=tmp_path / "cut.duckdb", threads=2) as active:
        monkeypatch.setattr(SimbaCRun, "_propose", crashing)
        with pytest.raises(KeyboardInterrupt):
            run(data, **options)
        monkeypatch.setattr(SimbaCRun, "_propose", propose)
        run_id = str(active.journal.sql("select id from experiments where kind = 'optimization'")["id"].iloc[0])
        assert [row["step"] for row in active.journal.step_rows(run_id) if row["status"] == "finished"] == [0, 1, 2]
        assert active.journal.experiment(run_id)["config"]["optimizer_config"]["move_sampler"] == "tpe"
        # The resumed run re-proposes step 3 from evidence it rebuilt by replaying steps 1 and 2.
        resumed = run(data, resume=run_id, **options)
    columns = ["candidate_id", "step", "parent_id", "strategy", "rationale", "screen_mean", "val_mean", "accepted"]
    assert resumed.candidates[columns].equals(whole.candidates[columns])
    clock = ["started_at", "finished_at"]
    assert resumed.steps.drop(columns=clock, errors="ignore").equals(whole.steps.drop(columns=clock, errors="ignore"))


def test_the_evidence_is_each_configurations_validation_level_plus_its_unselected_gain(
    data, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[Observation]] = []
    jump = MoveSampler.jump

    def recording(self, program, observations, *arguments, **keywords):  # type: ignore[no-untyped-def]
        seen.append(list(observations))
        return jump(self, program, observations, *arguments, **keywords)

    monkeypatch.setattr(MoveSampler, "jump", recording)
    mixed = dict(strategies=("demo", "rule", "mutate", "merge"), max_steps=4, patience=4, full_evals=2)
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False, threads=2):
        result = run(data, seed=6, move_sampler="tpe", **mixed)
    table = result.candidates.set_index("candidate_id")
    accepted = set(table.index[table["accepted"].fillna(False).astype(bool)])
    observed = {item.candidate_id: item.score for item in seen[-1]}
    assert observed["c0"] == pytest.approx(table.loc["c0", "val_mean"])
    for candidate_id, score in observed.items():
        row = table.loc[candidate_id]
        if candidate_id == "c0":
            continue
        parent = table.loc[row["parent_id"]]
        # A rule or demo child speaks for its prompt, not its variables: only moves and incumbents are evidence.
        assert row["strategy"] in ("mutate", "merge") or candidate_id in accepted
        if row["val_mean"] == row["val_mean"]:  # validated: the validation gain, not the screening that chose it
            assert score == pytest.approx(row["val_mean"])
        else:
            gain = row["screen_mean"] - row["incumbent_screen_mean"]
            assert score == pytest.approx(parent["val_mean"] + gain)
    children = set(table.index[table["strategy"].isin(["demo", "rule"])]) - accepted
    assert children and not children & set(observed)
    assert any(table.loc[key, "strategy"] == "mutate" for key in observed)
