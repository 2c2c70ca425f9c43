import os
import pickle
import subprocess
import sys
from pathlib import Path

import dspy
import pytest

from dspex_lab.data import Dataset
from dspex_lab.errors import DatasetError

ROOT = Path(__file__).resolve().parents[2]


def make_records(count: int) -> list[dict]:
    return [
        {"question": f"q{index}", "answer": str(index % 3), "tags": {"b": index, "a": [index]}}
        for index in range(count)
    ]


def test_accepts_a_list_of_dspy_examples_and_infers_inputs():
    examples = [dspy.Example(question="q1", context="c", answer="a").with_inputs("question", "context")]
    dataset = Dataset(examples)
    assert dataset.inputs == ("question", "context")
    assert isinstance(dataset[0], dspy.Example)
    assert dataset[0].inputs().toDict() == {"question": "q1", "context": "c"}
    assert len(dataset) == 1
    assert dataset.examples == (dataset[0],)


def test_examples_are_copied_so_caller_mutation_does_not_leak():
    example = dspy.Example(question="q", answer="a").with_inputs("question")
    dataset = Dataset([example])
    example["answer"] = "changed"
    assert dataset[0].answer == "a"


def test_without_inputs_information_asks_for_inputs():
    with pytest.raises(DatasetError, match=r"inputs=\[\.\.\.\]"):
        Dataset([{"question": "q"}])
    with pytest.raises(DatasetError, match=r"inputs=\[\.\.\.\]"):
        Dataset([dspy.Example(question="q")])


def test_missing_input_field_is_an_error():
    with pytest.raises(DatasetError, match="example 1 is missing input field"):
        Dataset([{"question": "a"}, {"answer": "b"}], inputs=["question"])


def test_sequence_behaviour_and_slicing_keeps_ids():
    dataset = Dataset(make_records(10), inputs=["question"], name="toy")
    part = dataset[2:8:2]
    assert isinstance(part, Dataset)
    assert [example.question for example in part] == ["q2", "q4", "q6"]
    assert part.example_ids == dataset.example_ids[2:8:2]
    assert part.name == "toy[2:8:2]"
    assert dataset[-1].question == "q9"
    assert dataset.example_id(-1) == dataset.example_ids[9]
    with pytest.raises(IndexError):
        dataset[10]
    with pytest.raises(TypeError):
        dataset["question"]


def test_ids_use_id_field_else_content_hash_and_are_unique():
    records = [
        {"id": 7, "question": "a"},
        {"question": "b"},
        {"question": "b"},
        {"question": "b"},
        {"id": "7", "question": "c"},
    ]
    dataset = Dataset(records, inputs=["question"])
    ids = dataset.example_ids
    assert ids[0] == "7"
    assert ids[4] == "7#2"
    assert len(ids[1]) == 16 and all(character in "0123456789abcdef" for character in ids[1])
    assert ids[2] == ids[1] + "#2" and ids[3] == ids[1] + "#3"
    assert len(set(ids)) == len(ids)
    assert list(dataset[1].keys()) == ["question"]


def test_ids_do_not_depend_on_field_order_or_dspy_bookkeeping():
    first = Dataset([{"question": "a", "answer": "b"}], inputs=["question"])
    second = Dataset([dspy.Example(answer="b", question="a", dspy_uuid="random").with_inputs("question")])
    assert first.example_ids == second.example_ids
    assert first.fingerprint == second.fingerprint


def test_fingerprint_changes_with_content_order_and_inputs():
    dataset = Dataset(make_records(5), inputs=["question"])
    assert len(dataset.fingerprint) == 64
    assert Dataset(make_records(5), inputs=["question"]).fingerprint == dataset.fingerprint
    assert Dataset(list(reversed(make_records(5))), inputs=["question"]).fingerprint != dataset.fingerprint
    assert Dataset(make_records(5), inputs=["question", "answer"]).fingerprint != dataset.fingerprint
    changed = make_records(5)
    changed[3]["answer"] = "other"
    assert Dataset(changed, inputs=["question"]).fingerprint != dataset.fingerprint


_SUBPROCESS_SCRIPT = """
from dspex_lab.data import Dataset
records = [
    {"question": f"q{index}", "answer": str(index % 3), "tags": {"b": index, "a": [index]}} for index in range(50)
]
records.append({"question": "set", "answer": {"z", "y", "x"}})
dataset = Dataset(records, inputs=["question"])
print(dataset.fingerprint, ",".join(dataset.example_ids))
"""


@pytest.mark.slow
def test_fingerprint_and_ids_are_identical_across_processes_and_hash_seeds():
    outputs = []
    processes = []
    for hash_seed in ("1", "12345"):
        environment = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
        processes.append(
            subprocess.Popen(
                [sys.executable, "-c", _SUBPROCESS_SCRIPT], env=environment, stdout=subprocess.PIPE, text=True
            )
        )
    for process in processes:
        stdout, _ = process.communicate(timeout=120)
        assert process.returncode == 0
        outputs.append(stdout.strip())
    records = [*make_records(50), {"question": "set", "answer": {"z", "y", "x"}}]
    local = Dataset(records, inputs=["question"])
    assert outputs[0] == outputs[1] == f"{local.fingerprint} {','.join(local.example_ids)}"


def test_filter_select_and_with_name_keep_ids():
    dataset = Dataset(make_records(6), inputs=["question"], name="toy")
    even = dataset.filter(lambda example: int(example.question[1:]) % 2 == 0)
    assert even.example_ids == dataset.example_ids[0::2]
    chosen = dataset.select([5, 0, -2])
    assert chosen.example_ids == (dataset.example_ids[5], dataset.example_ids[0], dataset.example_ids[4])
    assert dataset.with_name("train").name == "train"
    with pytest.raises(DatasetError, match="distinct"):
        dataset.select([1, 1])
    with pytest.raises(IndexError):
        dataset.select([6])


def test_explicit_ids_are_validated_and_kept_by_reconstruction():
    dataset = Dataset(make_records(2), inputs=["question"], ids=["x", "y"])
    assert dataset.example_ids == ("x", "y")
    assert Dataset(dataset, inputs=["question", "answer"]).example_ids == ("x", "y")
    with pytest.raises(DatasetError, match="distinct"):
        Dataset(make_records(2), inputs=["question"], ids=["x", "x"])
    with pytest.raises(DatasetError, match="2 examples"):
        Dataset(make_records(2), inputs=["question"], ids=["x"])


def test_manifest_for_in_memory_dataset_and_repr():
    dataset = Dataset(make_records(3), inputs=["question"], name="toy")
    manifest = dataset.manifest()
    assert manifest["name"] == "toy"
    assert manifest["n"] == 3
    assert manifest["inputs"] == ["question"]
    assert manifest["fields"] == ["question", "answer", "tags"]
    assert manifest["source"] is None and manifest["source_sha256"] is None
    assert manifest["fingerprint"] == dataset.fingerprint
    assert repr(dataset) == "Dataset(name='toy', n=3, inputs=('question',))"


def test_html_repr_shows_at_most_five_escaped_rows():
    records = [{"question": f"<b>{index}</b>", "answer": "a"} for index in range(8)]
    html_text = Dataset(records, inputs=["question"])._repr_html_()
    assert html_text.count("<tr>") == 1 + 5
    assert "&lt;b&gt;4&lt;/b&gt;" in html_text
    assert "&lt;b&gt;5&lt;/b&gt;" not in html_text
    assert "3 more" in html_text


def test_pickle_round_trip_keeps_everything():
    dataset = Dataset(make_records(4), inputs=["question"], name="toy")
    restored = pickle.loads(pickle.dumps(dataset))
    assert restored.example_ids == dataset.example_ids
    assert restored.fingerprint == dataset.fingerprint
    assert restored.name == "toy"


def test_unrepresentable_values_are_reported():
    with pytest.raises(DatasetError, match="no deterministic representation"):
        Dataset([{"question": "q", "answer": object()}], inputs=["question"])
