"""ExampleFields.corrected_gold: the one reader of a typed corrected gold (the CLI's --gold and the views' box)."""

from __future__ import annotations

from typing import Any

import pytest

from dspex_lab.errors import JournalError
from dspex_lab.notebook import ExampleFields


class _Examples:
    """A journal reader holding the stored examples of one dataset, which is all ExampleFields reads."""

    def __init__(self, stored: list[tuple[str, dict[str, Any]]]) -> None:
        self.stored = stored

    def dataset_examples(self, fingerprint: str) -> list[tuple[str, dict[str, Any]]]:
        return self.stored if fingerprint == "data" else []


def fields(*gold_names: str) -> ExampleFields:
    """Example ``e1`` with input ``question`` and the given gold fields, the program's outputs unknown."""
    example = {"question": "1+1?", **{name: "2" for name in gold_names}}
    stored = [("e1", {"fields": example, "inputs": ["question"]})]
    return ExampleFields(_Examples(stored), {"dataset_fingerprint": "data"})  # type: ignore[arg-type]


def test_a_json_object_is_taken_as_given_and_a_plain_value_is_the_one_gold_fields():
    assert fields("answer").corrected_gold("e1", '{"answer": "1"}', '{"other": 3}') == {"other": 3}
    assert fields("answer").corrected_gold("e1", '{"answer": "1"}', "42") == {"answer": "42"}
    # The prediction may come as a dict (an in-memory journal) or as text that is not JSON.
    assert fields("answer").corrected_gold("e1", {"answer": "1"}, "42") == {"answer": "42"}
    assert fields("answer").corrected_gold("e1", "not json", "42") == {"answer": "42"}


def test_a_plain_value_that_could_land_in_several_fields_or_none_is_refused_naming_where_it_came_from():
    with pytest.raises(JournalError, match=r"^corrected gold '42' does not say .*\['answer', 'unit'\].*\{\"answer\""):
        fields("answer", "unit").corrected_gold("e1", '{"answer": "1", "unit": "m"}', "42")
    with pytest.raises(JournalError, match=r"^--gold '7' does not say .*not stored.*'\{\"answer\": \"42\"\}'$"):
        fields("answer").corrected_gold("missing", None, "7", option="--gold")
