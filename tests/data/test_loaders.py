import hashlib
import json
from pathlib import Path

import duckdb
import pandas
import pyarrow
import pyarrow.parquet
import pytest

from dspex_lab.data import Dataset, dataset_from_query, load_dataset
from dspex_lab.errors import DatasetError

RECORDS = [
    {"question": "What is 2+2?", "answer": "4", "topic": "math"},
    {"question": "Agent code?", "answer": "007", "topic": "trivia"},
    {"question": "Capital of France?", "answer": "Paris", "topic": "geo"},
]


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_round_trip_keeps_fields_inputs_and_file_digest(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [json.dumps(record) for record in RECORDS])
    dataset = load_dataset(path, inputs=["question"])
    assert [example.toDict() for example in dataset] == RECORDS
    assert dataset.inputs == ("question",)
    assert dataset[0].inputs().toDict() == {"question": "What is 2+2?"}
    assert dataset.name == "qa"
    manifest = dataset.manifest()
    assert manifest["source_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert manifest["source"] == str(path.resolve())
    assert manifest["n"] == 3
    assert manifest["fingerprint"] == Dataset(RECORDS, inputs=["question"]).fingerprint


def test_jsonl_skips_blank_lines_and_respects_limit_and_fields(tmp_path):
    lines = [json.dumps(RECORDS[0]), "", "   ", json.dumps(RECORDS[1]), json.dumps(RECORDS[2]), "{broken"]
    path = write_jsonl(tmp_path / "qa.ndjson", lines)
    dataset = load_dataset(path, inputs="question", fields=["answer"], limit=2)
    assert [example.toDict() for example in dataset] == [
        {"question": RECORDS[0]["question"], "answer": "4"},
        {"question": RECORDS[1]["question"], "answer": "007"},
    ]


def test_malformed_jsonl_line_reports_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "broken.jsonl", [json.dumps(RECORDS[0]), "", '{"question": "unterminated'])
    with pytest.raises(DatasetError) as caught:
        load_dataset(path, inputs=["question"])
    assert caught.value.line == 3
    assert caught.value.path == str(path)
    assert "broken.jsonl:3:" in str(caught.value)
    assert "invalid JSON" in str(caught.value)


def test_jsonl_line_that_is_not_an_object_is_rejected(tmp_path):
    path = write_jsonl(tmp_path / "list.jsonl", [json.dumps(RECORDS[0]), "[1, 2]"])
    with pytest.raises(DatasetError, match="expected a JSON object") as caught:
        load_dataset(path, inputs=["question"])
    assert caught.value.line == 2


def test_jsonl_record_missing_input_names_the_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [json.dumps(RECORDS[0]), json.dumps({"answer": "x"})])
    with pytest.raises(DatasetError) as caught:
        load_dataset(path, inputs=["question"])
    assert caught.value.line == 2
    assert "'question'" in str(caught.value)
    assert "qa.jsonl:2:" in str(caught.value)


def test_json_list_round_trip(tmp_path):
    path = tmp_path / "qa.json"
    path.write_text(json.dumps(RECORDS), encoding="utf-8")
    dataset = load_dataset(path, inputs=["question"])
    assert [example.toDict() for example in dataset] == RECORDS


def test_csv_round_trip_keeps_text_values(tmp_path):
    path = tmp_path / "qa.csv"
    pandas.DataFrame(RECORDS).to_csv(path, index=False)
    dataset = load_dataset(path, inputs=["question"])
    assert [example.toDict() for example in dataset] == RECORDS
    assert dataset[1].answer == "007"
    assert dataset.manifest()["source_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_csv_empty_cell_is_none_and_quoted_empty_is_empty_string_and_hash_is_data(tmp_path):
    path = tmp_path / "edge.csv"
    path.write_text('question,answer\n#1,\nq2,""\n', encoding="utf-8")
    dataset = load_dataset(path, inputs=["question"])
    assert [example.toDict() for example in dataset] == [
        {"question": "#1", "answer": None},
        {"question": "q2", "answer": ""},
    ]


def test_csv_missing_input_column_lists_columns(tmp_path):
    path = tmp_path / "qa.csv"
    pandas.DataFrame(RECORDS).to_csv(path, index=False)
    with pytest.raises(DatasetError) as caught:
        load_dataset(path, inputs=["prompt"])
    message = str(caught.value)
    assert "'prompt'" in message
    assert "['question', 'answer', 'topic']" in message
    assert caught.value.path == str(path)


def test_csv_row_refused_by_duckdb_surfaces_message_and_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('question,answer\nq1,a\nq2,"x,y",extra\nq3,c\n', encoding="utf-8")
    with pytest.raises(DatasetError) as caught:
        load_dataset(path, inputs=["question"])
    assert caught.value.line == 3
    assert "Expected Number of Columns" in str(caught.value)


def test_parquet_round_trip_keeps_types(tmp_path):
    path = tmp_path / "qa.parquet"
    table = pyarrow.table(
        {
            "question": ["a", "b"],
            "answer": ["007", "x"],
            "score": [1, 2],
            "tags": [["p", "q"], []],
        }
    )
    pyarrow.parquet.write_table(table, path)
    dataset = load_dataset(path, inputs=["question"], limit=1)
    assert [example.toDict() for example in dataset] == [
        {"question": "a", "answer": "007", "score": 1, "tags": ["p", "q"]}
    ]


def test_parquet_missing_input_column(tmp_path):
    path = tmp_path / "qa.parquet"
    duckdb.sql(f"COPY (SELECT 'q' AS question) TO '{path}' (FORMAT parquet)")
    with pytest.raises(DatasetError, match=r"missing column 'answer'; columns present: \['question'\]"):
        load_dataset(path, inputs=["question", "answer"])


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "absent.jsonl"
    with pytest.raises(DatasetError) as caught:
        load_dataset(path, inputs=["question"])
    assert caught.value.path == str(path)
    assert str(path) in str(caught.value)


def test_unsupported_extension(tmp_path):
    path = tmp_path / "qa.xml"
    path.write_text("<qa/>")
    with pytest.raises(DatasetError, match="unsupported file extension"):
        load_dataset(path, inputs=["question"])


def test_dataset_from_query_over_a_file(tmp_path):
    path = tmp_path / "qa.parquet"
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(RECORDS), path)
    sql = f"SELECT question, answer FROM read_parquet('{path}') WHERE topic <> 'geo' ORDER BY question"
    dataset = dataset_from_query(sql, inputs=["question"])
    assert [example.answer for example in dataset] == ["007", "4"]
    assert dataset.manifest()["query"] == sql


def test_dataset_from_query_errors_are_dataset_errors():
    with pytest.raises(DatasetError, match="DuckDB query failed"):
        dataset_from_query("SELECT * FROM no_such_table", inputs=["question"])
    with pytest.raises(DatasetError, match="missing column 'question'"):
        dataset_from_query("SELECT 1 AS other", inputs=["question"])


def test_pandas_round_trip_keeps_ids_and_maps_nan_to_none():
    frame = pandas.DataFrame({"question": ["a", "b"], "score": [1.5, float("nan")]})
    dataset = Dataset.from_pandas(frame, inputs=["question"])
    assert dataset[1].score is None
    exported = dataset.to_pandas()
    assert list(exported.index) == list(dataset.example_ids)
    assert list(exported["question"]) == ["a", "b"]
    assert Dataset.from_pandas(exported, inputs=["question"]).example_ids == dataset.example_ids
