"""A ``%%dspex program`` cell is read within bounds: no YAML alias bomb, deep nesting or huge integer gets through.

Driven through IPython's test shell as the other magic tests are. The alias bomb runs in a child
process under CPU-time and address-space limits, so a regression is a killed child and a failed
test, not a hung or swapping test run.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from IPython.core.error import UsageError

import dspex_lab as dx


def alias_bomb() -> str:
    """A few hundred bytes of YAML whose aliases unfold into 9**9 (387 million) strings under ``init``."""
    body = "module: dspy.Predict\ninit:\n a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n"
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True):
        body += f" {name}: &{name} [{','.join([f'*{previous}'] * 9)}]\n"
    return body


def test_the_alias_bomb_is_refused_at_once_under_cpu_and_memory_limits():
    body = alias_bomb()
    assert len(body.encode()) <= 364
    child = textwrap.dedent(
        f"""
        import resource
        # Importing dspy takes a few CPU-seconds; expanding the bomb takes minutes and gigabytes.
        resource.setrlimit(resource.RLIMIT_CPU, (30, 30))
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
        from IPython.core.error import UsageError
        from IPython.core.interactiveshell import InteractiveShell

        shell = InteractiveShell.instance()
        shell.run_line_magic("load_ext", "dspex_lab")
        try:
            shell.run_cell_magic("dspex", "program qa", {body!r})
        except UsageError as error:
            print("REFUSED", error)
        else:
            print("ACCEPTED")
        """
    )
    completed = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip().splitlines()[-1] == (
        "REFUSED ProgramSpecError: line 3 of the %%dspex program cell: YAML anchors and aliases "
        "(&name, *name, <<: *name) are not allowed in a program spec; write each value out"
    )


def test_a_merge_key_is_refused_as_an_alias(shell):
    body = "module: dspy.Predict\ninit:\n  base: &base {k: 1}\n  other:\n    <<: *base\n"
    with pytest.raises(UsageError, match="line 3 of the %%dspex program cell: YAML anchors and aliases"):
        shell.run_cell_magic("dspex", "program qa", body)
    assert "qa" not in shell.user_ns


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "module: dspy.Predict\ninit:\n  x: " + "[" * 5000 + "]" * 5000 + "\n",
            "ProgramSpecError: line 3 of the %%dspex program cell: nested more than 64 levels deep",
        ),
        (
            "module: dspy.Predict\nname: " + "9" * 5000 + "\n",
            "ProgramSpecError: line 2 of the %%dspex program cell: an integer literal of 5,000 characters",
        ),
        (
            "module: dspy.Predict\nsignature: question -> answer\nvariables:\n  t: {type: float, value: 0.5}\n"
            "constraints: ['max() > t']\n",
            "ProgramSpecError: constraint 'max() > t': max() takes at least 1 argument, got 0",
        ),
        (
            "module: dspy.Predict\nsignature: question -> answer\nvariables:\n  t: {type: float, value: 0.5}\n"
            "constraints: ['len(t) > 1']\n",
            "ProgramSpecError: constraint 'len(t) > 1' cannot be evaluated with {'t': 0.5}: TypeError",
        ),
        (
            "module: dspy.Predict\nvariables:\n  t: {type: float, value: 0.5, target: 7}\n",
            "ProgramSpecError (variable 't', line 3 of the cell): variable 't' (float): Float: target must be",
        ),
    ],
    ids=["deep-nesting", "5000-digit-integer", "max-without-arguments", "len-of-a-float", "target-not-a-string"],
)
def test_malformed_cells_get_one_usage_line_saying_what_and_where(shell, body, message):
    with pytest.raises(UsageError) as caught:
        shell.run_cell_magic("dspex", "program qa", body)
    assert str(caught.value).startswith(message), str(caught.value)
    assert "qa" not in shell.user_ns


def test_a_plain_cell_still_defines_its_program(shell):
    body = "module: dspy.Predict\nsignature: question -> answer\nvariables:\n  t: {type: float, value: 0.5}\n"
    assert isinstance(shell.run_cell_magic("dspex", "program qa", body), dx.Program)
