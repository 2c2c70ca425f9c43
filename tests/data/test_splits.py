import random
from collections import Counter
from fractions import Fraction

import pytest

from dspex_lab.data import Dataset
from dspex_lab.data._allocation import allocate, largest_remainder
from dspex_lab.errors import DatasetError


def make_dataset(count: int = 100) -> Dataset:
    return Dataset([{"question": f"q{index}", "answer": str(index)} for index in range(count)], inputs=["question"])


def make_stratified() -> Dataset:
    labels = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    random.Random(7).shuffle(labels)
    records = [{"question": f"q{index}", "label": label} for index, label in enumerate(labels)]
    return Dataset(records, inputs=["question"])


def ids_of(parts):
    return [part.example_ids for part in parts]


def test_split_is_deterministic_for_a_seed_and_varies_with_it():
    dataset = make_dataset()
    assert ids_of(dataset.split(0.7, 0.3, seed=3)) == ids_of(dataset.split(0.7, 0.3, seed=3))
    assert ids_of(dataset.split(0.7, 0.3, seed=3)) != ids_of(dataset.split(0.7, 0.3, seed=4))


def test_split_sizes_sum_to_n_by_largest_remainder_and_parts_are_disjoint():
    dataset = make_dataset(10)
    parts = dataset.split(1 / 3, 1 / 3, 1 / 3, seed=0)
    assert [len(part) for part in parts] == [4, 3, 3]
    all_ids = [example_id for part in parts for example_id in part.example_ids]
    assert sorted(all_ids) == sorted(dataset.example_ids)
    assert parts[1].name == "dataset[split 1/3]"
    # Parts keep the dataset's order.
    positions = {example_id: position for position, example_id in enumerate(dataset.example_ids)}
    assert all(
        [positions[i] for i in part.example_ids] == sorted(positions[i] for i in part.example_ids) for part in parts
    )


@pytest.mark.parametrize("count", [0, 1, 7, 99, 101])
def test_split_sizes_always_sum_to_n(count):
    parts = make_dataset(count).split(0.6, 0.25, 0.15, seed=1)
    assert sum(len(part) for part in parts) == count


def test_stratified_split_preserves_proportions_exactly():
    dataset = make_stratified()
    parts = dataset.split(0.6, 0.2, 0.2, seed=11, stratify="label")
    assert [len(part) for part in parts] == [60, 20, 20]
    expected = [{"a": 36, "b": 18, "c": 6}, {"a": 12, "b": 6, "c": 2}, {"a": 12, "b": 6, "c": 2}]
    assert [dict(Counter(example.label for example in part)) for part in parts] == expected


def test_stratified_split_with_uneven_quotas_keeps_margins():
    labels = ["a"] * 7 + ["b"] * 5 + ["c"] * 3 + ["d"]
    dataset = Dataset(
        [{"question": str(index), "label": label} for index, label in enumerate(labels)], inputs=["question"]
    )
    parts = dataset.split(0.5, 0.5, seed=2, stratify="label")
    assert [len(part) for part in parts] == [8, 8]
    for label, size in Counter(labels).items():
        counts = [sum(example.label == label for example in part) for part in parts]
        assert all(count in (size // 2, -(-size // 2)) for count in counts)


def test_allocation_keeps_margins_and_floor_or_ceiling_cells_on_random_cases():
    generator = random.Random(0)
    for _ in range(300):
        sizes = [generator.randint(0, 12) for _ in range(generator.randint(1, 8))]
        weights = [generator.randint(0, 9) for _ in range(generator.randint(1, 5))]
        if sum(weights) == 0:
            continue
        fractions = [Fraction(weight, sum(weights)) for weight in weights]
        counts = allocate(sizes, fractions)
        assert [sum(row) for row in counts] == sizes
        assert [sum(column) for column in zip(*counts, strict=True)] == largest_remainder(sum(sizes), fractions)
        for size, row in zip(sizes, counts, strict=True):
            for fraction, count in zip(fractions, row, strict=True):
                quota = size * fraction
                assert quota - 1 < count < quota + 1


def test_fractions_must_sum_to_one():
    dataset = make_dataset(10)
    with pytest.raises(DatasetError, match="sum to 1"):
        dataset.split(0.5, 0.4, seed=0)
    with pytest.raises(DatasetError, match=r"\[0, 1\]"):
        dataset.split(1.5, -0.5, seed=0)
    assert len(dataset.split(0.5, 0.5 + 1e-12, seed=0)) == 2


def test_seed_is_required_and_checked():
    dataset = make_dataset(10)
    with pytest.raises(TypeError):
        dataset.split(0.5, 0.5)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="seed must be an int"):
        dataset.shuffle(seed=1.5)  # type: ignore[arg-type]


def test_stratify_on_a_missing_field_is_an_error():
    with pytest.raises(DatasetError, match="cannot stratify on 'label'"):
        make_dataset(10).split(0.5, 0.5, seed=0, stratify="label")


def test_minibatches_cover_each_example_once_per_epoch_deterministically():
    dataset = make_dataset(23)
    batches = list(dataset.minibatches(5, seed=9))
    assert [len(batch) for batch in batches] == [5, 5, 5, 5, 3]
    flattened = [example_id for batch in batches for example_id in batch.example_ids]
    assert sorted(flattened) == sorted(dataset.example_ids)
    assert len(set(flattened)) == 23
    assert ids_of(dataset.minibatches(5, seed=9)) == ids_of(batches)
    assert ids_of(dataset.minibatches(5, seed=10)) != ids_of(batches)
    assert [len(batch) for batch in dataset.minibatches(5, seed=9, drop_last=True)] == [5, 5, 5, 5]
    with pytest.raises(DatasetError):
        dataset.minibatches(0, seed=9)


def test_k_folds_are_disjoint_covering_and_pair_with_the_rest():
    dataset = make_dataset(23)
    folds = dataset.k_folds(5, seed=4)
    validation_ids = [set(validation.example_ids) for _, validation in folds]
    assert sorted(len(ids) for ids in validation_ids) == [4, 4, 5, 5, 5]
    assert set().union(*validation_ids) == set(dataset.example_ids)
    assert sum(len(ids) for ids in validation_ids) == 23
    for train, validation in folds:
        assert set(train.example_ids).isdisjoint(validation.example_ids)
        assert len(train) + len(validation) == 23
    assert [v.example_ids for _, v in dataset.k_folds(5, seed=4)] == [v.example_ids for _, v in folds]
    with pytest.raises(DatasetError):
        dataset.k_folds(1, seed=0)
    with pytest.raises(DatasetError):
        make_dataset(3).k_folds(4, seed=0)


def test_stratified_k_folds_keep_proportions():
    dataset = make_stratified()
    for _, validation in dataset.k_folds(5, seed=1, stratify="label"):
        assert Counter(example.label for example in validation) == {"a": 12, "b": 6, "c": 2}


def test_sample_and_shuffle_are_seeded_and_keep_ids():
    dataset = make_dataset(50)
    sample = dataset.sample(10, seed=5)
    assert len(sample) == 10 and len(set(sample.example_ids)) == 10
    assert set(sample.example_ids) <= set(dataset.example_ids)
    assert sample.example_ids == dataset.sample(10, seed=5).example_ids
    assert sample.example_ids != dataset.sample(10, seed=6).example_ids
    shuffled = dataset.shuffle(seed=5)
    assert sorted(shuffled.example_ids) == sorted(dataset.example_ids)
    assert shuffled.example_ids != dataset.example_ids
    assert [example.question for example in shuffled] == [
        dataset[dataset.example_ids.index(example_id)].question for example_id in shuffled.example_ids
    ]
    with pytest.raises(DatasetError):
        dataset.sample(51, seed=0)


def test_subsets_of_subsets_keep_original_ids():
    dataset = make_dataset(40)
    train, _ = dataset.split(0.5, 0.5, seed=0)
    inner, _ = train.split(0.5, 0.5, seed=0)
    original = dict(zip(dataset.example_ids, dataset.examples, strict=True))
    assert all(original[example_id] is example for example_id, example in zip(inner.example_ids, inner, strict=True))
