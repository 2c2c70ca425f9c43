"""``dspex journal annotate`` and the annotations in ``dspex journal trials`` (sized to the terminal)."""

from __future__ import annotations

import re

import pytest

import dspex_lab as dx
from dspex_lab import cli
from dspex_lab.cli import main


@pytest.fixture
def evaluated(tmp_path, capsys) -> tuple[list[str], str]:
    """A journal with an evaluation of six arithmetic problems by the lab LM: (--journal option, its id)."""
    journal = tmp_path / "j.duckdb"
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=journal, threads=2):
        result = dx.evaluate(
            dx.Program("dspy.Predict", signature="question -> answer", name="arith"),
            dx.Dataset(dx.datasets.arithmetic(6, seed=3), name="six"),
            metric=dx.metrics.exact_match, name="plain", progress=False,
        )  # fmt: skip
    capsys.readouterr()
    return ["--journal", str(journal)], str(result.experiment_id)


def trial_lines(output: str) -> dict[str, str]:
    return {line.split()[0]: line for line in output.splitlines() if "/r0" in line}


def test_annotating_from_the_command_line_shows_in_the_trial_list(evaluated, capsys):
    where, run = evaluated
    assert main(["journal", "trials", "plain", *where]) == 0
    before = capsys.readouterr().out
    assert "label" not in before.splitlines()[1].split()  # no annotation yet: the list is as it always was
    first, second = list(trial_lines(before))[:2]

    assert main(["journal", "annotate", "plain", first, "--label", "wrong gold", "--gold", "99", *where]) == 0
    said = capsys.readouterr().out
    assert f'annotated trial {first} of {run} with label \'wrong gold\', gold {{"answer": "99"}}' in said
    assert main(["journal", "annotate", run, second, "--note", "ambiguous wording", "--author", "ana", *where]) == 0
    capsys.readouterr()

    assert main(["journal", "trials", "plain", *where]) == 0
    after = capsys.readouterr().out
    header = after.splitlines()[1].split()
    assert header[-2:] == ["label", "error"]
    lines = trial_lines(after)
    assert "wrong gold" in lines[first] and "(note)" in lines[second]
    assert sum("wrong gold" in line or "(note)" in line for line in lines.values()) == 2
    rows = dx.open_journal(where[1]).annotation_rows(run)
    assert [(row["trial_id"], row["corrected_gold"], row["note"]) for row in rows] == [
        (first, {"answer": "99"}, None),
        (second, None, "ambiguous wording"),
    ]
    assert rows[1]["author"] == "ana"


def test_a_gold_given_as_json_and_the_errors_of_annotate(evaluated, capsys):
    where, run = evaluated
    trial = dx.open_journal(where[1]).trial_rows(run, columns=["trial_id"])[0]["trial_id"]
    assert main(["journal", "annotate", "plain", trial, "--gold", '{"answer": "7"}', *where]) == 0
    assert 'gold {"answer": "7"}' in capsys.readouterr().out
    assert main(["journal", "annotate", "plain", "no-such/r0", "--label", "x", *where]) == 2
    assert "no trial 'no-such/r0' in experiment" in capsys.readouterr().err
    assert main(["journal", "annotate", "plain", trial, *where]) == 2
    assert "is empty: give a label, a note or a corrected gold" in capsys.readouterr().err
    assert main(["journal", "annotate", "plain", trial, "--gold", '{"question": "1+1?"}', *where]) == 2
    assert "names the input field(s) ['question']" in capsys.readouterr().err
    assert main(["journal", "annotate", "plain", trial, "--label", "x" * 101, *where]) == 2
    assert "label is 101 characters; at most 100" in capsys.readouterr().err
    assert len(dx.open_journal(where[1]).annotation_rows(run)) == 1


def questions_at(width: int, where: list[str], capsys, monkeypatch) -> tuple[list[str], int]:
    """The question cells of the trial list on a terminal ``width`` wide, and its longest table line."""
    monkeypatch.setattr(cli, "_terminal_width", lambda: width)
    assert main(["journal", "trials", "plain", *where]) == 0
    lines = list(trial_lines(capsys.readouterr().out).values())
    return [re.split(r"\s{2,}", line)[6] for line in lines], max(map(len, lines))


def test_on_a_terminal_the_trial_list_fits_its_width(evaluated, capsys, monkeypatch):
    where, run = evaluated
    first = dx.open_journal(where[1]).trial_rows(run, columns=["trial_id"])[0]["trial_id"]
    assert main(["journal", "annotate", "plain", first, "--label", "checked", *where]) == 0
    capsys.readouterr()
    narrow, narrow_line = questions_at(130, where, capsys, monkeypatch)
    wide, wide_line = questions_at(1000, where, capsys, monkeypatch)
    assert narrow_line <= 130 and all(question.endswith("…") for question in narrow)
    # A wider terminal shows more of each question: here all of it.
    assert not any(question.endswith("…") for question in wide) and wide_line <= 1000
    assert all(whole.startswith(cut[:-1]) and len(whole) > len(cut) for cut, whole in zip(narrow, wide, strict=True))


def test_into_a_pipe_the_trial_list_keeps_its_fixed_widths(evaluated, capsys):
    where, _ = evaluated
    assert cli._terminal_width() is None  # pytest captures the output: not a terminal
    assert main(["journal", "trials", "plain", *where]) == 0
    questions = [re.split(r"\s{2,}", line)[6] for line in trial_lines(capsys.readouterr().out).values()]
    assert len(questions) == 6 and all(len(question) <= cli._TEXT_CHARACTERS["question"] for question in questions)
    assert any(len(question) == cli._TEXT_CHARACTERS["question"] and question.endswith("…") for question in questions)


def test_the_annotations_in_force_and_their_history(evaluated, capsys):
    where, run = evaluated
    trial = dx.open_journal(where[1]).trial_rows(run, columns=["trial_id"])[0]["trial_id"]
    assert main(["journal", "annotate", "plain", trial, "--label", "wrong gold", "--gold", "5", *where]) == 0
    assert main(["journal", "annotate", "plain", trial, "--label", "fine after all", "--author", "bo", *where]) == 0
    capsys.readouterr()
    assert main(["journal", "annotations", "plain", *where]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"Annotations in force of {run}" and lines[1].split() == [
        "trial_id", "label", "note", "gold", "author", "created",
    ]  # fmt: skip
    assert len(lines) == 4 and "fine after all" in lines[3] and "bo" in lines[3].split()
    assert main(["journal", "annotations", run, "--history", *where]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"Every annotation of {run}" and len(lines) == 5
    assert "wrong gold" in lines[3] and '{"answer": "5"}' in lines[3] and "fine after all" in lines[4]


def test_withdrawing_a_trials_annotation_from_the_command_line(evaluated, capsys):
    where, run = evaluated
    trial = dx.open_journal(where[1]).trial_rows(run, columns=["trial_id"])[0]["trial_id"]
    assert main(["journal", "annotate", "plain", trial, "--label", "wrong gold", *where]) == 0
    capsys.readouterr()

    assert main(["journal", "annotate", "plain", trial, "--withdraw", "--author", "bo", *where]) == 0
    said = capsys.readouterr().out
    assert said.startswith(f"withdrew the annotation of trial {trial} of {run}: it has none in force (withdrawal ")
    # The trial list has no label column again; the annotations in force are none; the history shows who withdrew.
    assert main(["journal", "trials", "plain", *where]) == 0
    assert "label" not in capsys.readouterr().out.splitlines()[1].split()
    assert main(["journal", "annotations", "plain", *where]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3  # the title, the header, the rule: no row
    assert main(["journal", "annotations", "plain", "--history", *where]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "wrong gold" in lines[3] and "(withdrawn)" in lines[4] and "bo" in lines[4].split()

    assert main(["journal", "annotate", "plain", trial, "--withdraw", *where]) == 2
    assert (
        "has its annotation withdrawn already: there is no annotation in force to withdraw" in capsys.readouterr().err
    )
    assert main(["journal", "annotate", "plain", trial, "--withdraw", "--label", "x", "--gold", "3", *where]) == 2
    assert f"--withdraw takes no --label, --gold: withdraw first, then annotate trial {trial} again" in (
        capsys.readouterr().err
    )
    assert len(dx.open_journal(where[1]).annotation_rows(run)) == 2
