"""Files exported from Hugging Face read as datasets: the dataset viewer's rows, and Dataset.to_json's lines."""

from __future__ import annotations

import json

import pytest

import dspex_lab as dx
from dspex_lab.errors import DatasetError

RECORDS = [{"question": f"What is {n}+1?", "answer": str(n + 1)} for n in range(4)]


def test_the_dataset_viewers_rows_are_unwrapped(tmp_path):
    rows = [{"row_idx": index, "row": record, "truncated_cells": []} for index, record in enumerate(RECORDS)]
    path = tmp_path / "rows.json"
    path.write_text(json.dumps({"features": [], "rows": rows, "num_rows_total": 4, "partial": False}))
    data = dx.load_dataset(path, inputs="question", limit=3)
    assert [example.toDict() for example in data] == RECORDS[:3]


def test_plain_objects_under_rows_and_json_lines_in_a_json_file_are_read(tmp_path):
    (tmp_path / "plain.json").write_text(json.dumps({"rows": RECORDS}))
    (tmp_path / "to_json.json").write_text("".join(json.dumps(record) + "\n" for record in RECORDS))
    for name in ("plain.json", "to_json.json"):
        data = dx.load_dataset(tmp_path / name, inputs="question")
        assert [example.toDict() for example in data] == RECORDS, name


def test_another_json_object_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "object.json"
    path.write_text(json.dumps({"data": RECORDS}))
    with pytest.raises(DatasetError, match=r'object\.json: expected a JSON list of objects or \{"rows": \[\.\.\.\]\}'):
        dx.load_dataset(path, inputs="question")
    (tmp_path / "broken.json").write_text('{"question": "1?", "answer": "2"}\n{"question": ')
    with pytest.raises(DatasetError, match=r"broken\.json:2: "):
        dx.load_dataset(tmp_path / "broken.json", inputs="question")
