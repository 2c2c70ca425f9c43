"""The immutable :class:`Dataset` of ``dspy.Example`` with stable ids and seeded splits."""

from __future__ import annotations

import hashlib
import html
import math
import numbers
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any, overload

import dspy
import pandas

from dspex_lab.data._allocation import make_generator, normalize_fractions, partition
from dspex_lab.data._canonical import canonical_json, content_hash, example_fields, file_sha256
from dspex_lab.errors import DatasetError

__all__ = ["Dataset", "normalize_inputs"]

_FINGERPRINT_FORMAT = "dspex_lab.dataset/1"
_ID_FIELD = "id"
_ID_HASH_LENGTH = 16
_DEFAULT_NAME = "dataset"
_HTML_ROWS = 5
_HTML_CELL_WIDTH = 80


def normalize_inputs(inputs: str | Iterable[str]) -> tuple[str, ...]:
    """Check input field names and return them as a tuple.

    Args:
        inputs: one field name or several.

    Returns:
        The names, in the given order.

    Raises:
        DatasetError: no names, a name that is not a non-empty string, or a repeated name.
    """
    names = (inputs,) if isinstance(inputs, str) else tuple(inputs)
    if not names:
        raise DatasetError("inputs must name at least one field, e.g. inputs=['question']")
    for field in names:
        if not isinstance(field, str) or not field:
            raise DatasetError(f"input field names must be non-empty strings, got {field!r}")
    if len(set(names)) != len(names):
        raise DatasetError(f"input field names must be distinct, got {list(names)}")
    return names


class Dataset(Sequence[dspy.Example]):
    """An immutable, ordered collection of ``dspy.Example`` with stable example ids.

    Every example has an id: its ``id`` field (as a string) when it has one, else
    the first 16 hex characters of the SHA-256 of its canonical JSON. A repeated id
    gets a deterministic suffix (``#2``, ``#3``, ...). Ids are kept beside the
    examples, never added to them, and every derived dataset (slice, split, sample,
    fold, filter, selection) keeps the original ids, so results on a subset can be
    matched to the full set.

    Subset operations (slices, ``split``, ``sample``, ``k_folds``, ``filter``) keep
    the dataset's order; ``shuffle``, ``minibatches`` and ``select`` use the order
    they produce or are given. All randomness comes from an explicit ``seed``.

    The examples are copied on construction, so later changes to the caller's
    objects do not reach the dataset. Do not mutate the examples it hands out:
    ids and the fingerprint are computed from their content.

    Args:
        examples: ``dspy.Example`` objects or mappings of field name to value.
        inputs: the input field names; when omitted, the examples' own
            ``with_inputs`` keys are used (they must agree).
        name: a display name; defaults to the source file's stem or ``"dataset"``.
        source: the file the examples came from, if any.
        ids: explicit example ids (distinct strings, one per example).

    Raises:
        DatasetError: inputs cannot be determined, an example lacks an input field,
            or the ids are invalid.
        TypeError: an example is neither a ``dspy.Example`` nor a mapping.

    Example:
        >>> dataset = Dataset([{"question": "2+2?", "answer": "4"}], inputs=["question"])
        >>> train, dev = dataset.split(0.5, 0.5, seed=0)
    """

    __slots__ = (
        "_examples",
        "_fingerprint",
        "_ids",
        "_inputs",
        "_name",
        "_query",
        "_source",
        "_source_sha256",
    )

    def __init__(
        self,
        examples: Iterable[dspy.Example | Mapping[str, Any]],
        *,
        inputs: str | Iterable[str] | None = None,
        name: str | None = None,
        source: str | os.PathLike[str] | None = None,
        ids: Iterable[str] | None = None,
    ) -> None:
        if ids is None and isinstance(examples, Dataset):
            ids = examples.example_ids
        source_text = None if source is None else os.fspath(source)
        source_sha256 = file_sha256(source_text) if source_text is not None and os.path.isfile(source_text) else None
        self._setup(
            examples,
            inputs=inputs,
            name=name,
            source=source_text,
            ids=ids,
            source_sha256=source_sha256,
            query=None,
        )

    @classmethod
    def _build(
        cls,
        examples: Iterable[dspy.Example | Mapping[str, Any]],
        *,
        inputs: Iterable[str],
        name: str,
        source: str | None = None,
        source_sha256: str | None = None,
        query: str | None = None,
    ) -> Dataset:
        """Create a dataset for a loader, which has already hashed the source bytes it read."""
        dataset = cls.__new__(cls)
        dataset._setup(
            examples, inputs=inputs, name=name, source=source, ids=None, source_sha256=source_sha256, query=query
        )
        return dataset

    def _setup(
        self,
        examples: Iterable[dspy.Example | Mapping[str, Any]],
        *,
        inputs: str | Iterable[str] | None,
        name: str | None,
        source: str | None,
        ids: Iterable[str] | None,
        source_sha256: str | None,
        query: str | None,
    ) -> None:
        records = list(examples)
        input_names = _infer_inputs(records) if inputs is None else normalize_inputs(inputs)
        converted = tuple(_to_example(record, input_names, position) for position, record in enumerate(records))
        for position, example in enumerate(converted):
            missing = [field for field in input_names if field not in example]
            if missing:
                raise DatasetError(
                    f"example {position} is missing input field(s) {missing}; fields present: {example.keys()}"
                )
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string, got {type(name).__name__}")
        self._examples = converted
        self._inputs = input_names
        self._ids = _assign_ids(converted) if ids is None else _check_ids(ids, len(converted))
        self._name = name or (Path(source).stem if source else _DEFAULT_NAME)
        self._source = source
        self._source_sha256 = source_sha256
        self._query = query
        self._fingerprint: str | None = None

    def _derive(self, positions: Iterable[int], *, name: str) -> Dataset:
        """Return the dataset of the given positions, sharing examples, ids and provenance."""
        chosen = list(positions)
        dataset = Dataset.__new__(Dataset)
        dataset._examples = tuple(self._examples[position] for position in chosen)
        dataset._ids = tuple(self._ids[position] for position in chosen)
        dataset._inputs = self._inputs
        dataset._name = name
        dataset._source = self._source
        dataset._source_sha256 = self._source_sha256
        dataset._query = self._query
        dataset._fingerprint = None
        return dataset

    @classmethod
    def from_pandas(cls, frame: pandas.DataFrame, *, inputs: str | Iterable[str], name: str | None = None) -> Dataset:
        """Create a dataset from a DataFrame, one example per row.

        The index is ignored; missing values (NaN, NaT, None, pandas.NA) become None.

        Args:
            frame: the rows; column names must be distinct strings.
            inputs: the input column names.
            name: a display name, ``"dataframe"`` by default.

        Returns:
            The dataset.

        Raises:
            DatasetError: a column name is not a string or repeats, or an input column is missing.
        """
        if not isinstance(frame, pandas.DataFrame):
            raise TypeError(f"from_pandas expects a pandas.DataFrame, got {type(frame).__name__}")
        input_names = normalize_inputs(inputs)
        columns = list(frame.columns)
        if not all(isinstance(column, str) for column in columns):
            raise DatasetError(f"column names must be strings, got {columns}")
        if len(set(columns)) != len(columns):
            raise DatasetError(f"column names must be distinct, got {columns}")
        for field in input_names:
            if field not in columns:
                raise DatasetError(f"missing input column {field!r}; columns present: {columns}")
        records = [
            {column: _none_if_missing(value) for column, value in record.items()}
            for record in frame.to_dict(orient="records")
        ]
        return cls._build(records, inputs=input_names, name=name or "dataframe")

    @classmethod
    def from_journal(cls, journal: Any, run_id: str, *, where: str | None = None, name: str | None = None) -> Dataset:
        """Return the examples a run was evaluated on, read from its journal and filtered by their annotations.

        People's annotations of the run's trials (``journal.annotate``, ``dspex journal annotate``) pick
        the examples and fix their gold: an example's annotation in force is the latest one of any of
        its trials, and its ``corrected_gold`` fields replace the example's. The ids are the run's, so
        results on the new dataset match the run's trials.

        A run with evaluations nested in it (an optimization, a DSPy compile ``dx.autolog()``
        journaled) has its trials, and so its annotations, there: its examples are those of its own
        dataset and of every nested evaluation's (a valset, a confirmation set...), each once, in
        that order, with the annotations of all their trials.

        Args:
            journal: a journal, or the path of a journal file.
            run_id: the run (an experiment id) whose examples to read; they are stored with the run (or
                with its first evaluation on them) for datasets of up to 20,000 examples.
            where: which examples to keep, e.g. ``"label = 'wrong gold'"``, ``"label IN ('a', 'b')"``,
                ``"annotated and not corrected"``, ``"not annotated or label != 'ok'"``: ``label`` with
                ``=``, ``!=``, ``in (...)`` and ``not in (...)``, ``annotated``, ``corrected``, joined
                with ``and``, ``or``, ``not`` and parentheses; labels single-quoted. It is parsed, never
                passed to SQL. A label comparison is false for an example without a label. Default:
                every example.
            name: the dataset's name (default: the run's dataset's).

        Raises:
            DatasetError: a ``where`` outside the grammar (the message says where), a run whose
                examples were not stored, or a run whose datasets hold different examples under one id
                (read one nested evaluation instead).
            JournalError: no such run, or a journal that cannot be read.

        Example:
            >>> wrong = Dataset.from_journal("dspex.duckdb", run_id, where="label = 'wrong gold'")  # doctest: +SKIP
        """
        from dspex_lab.data._from_journal import dataset_from_journal

        return dataset_from_journal(journal, run_id, where=where, name=name)

    # -- sequence protocol -------------------------------------------------------

    def __len__(self) -> int:
        return len(self._examples)

    def __iter__(self) -> Iterator[dspy.Example]:
        return iter(self._examples)

    @overload
    def __getitem__(self, index: int) -> dspy.Example: ...

    @overload
    def __getitem__(self, index: slice) -> Dataset: ...

    def __getitem__(self, index: int | slice) -> dspy.Example | Dataset:
        if isinstance(index, slice):
            positions = range(len(self._examples))[index]
            return self._derive(positions, name=f"{self._name}[{_slice_text(index)}]")
        if isinstance(index, numbers.Integral) and not isinstance(index, bool):
            return self._examples[index]
        raise TypeError(f"Dataset indices must be integers or slices, not {type(index).__name__}; use select()")

    # -- properties --------------------------------------------------------------

    @property
    def examples(self) -> tuple[dspy.Example, ...]:
        """The examples, in order."""
        return self._examples

    @property
    def name(self) -> str:
        """The display name."""
        return self._name

    @property
    def inputs(self) -> tuple[str, ...]:
        """The input field names."""
        return self._inputs

    @property
    def source(self) -> str | None:
        """The file the examples were read from, if any."""
        return self._source

    @property
    def example_ids(self) -> tuple[str, ...]:
        """The example ids, parallel to :attr:`examples`."""
        return self._ids

    def example_id(self, index: int) -> str:
        """Return the id of the example at a position.

        Args:
            index: the position (negative counts from the end).

        Returns:
            The example's id.
        """
        return self._ids[index]

    @property
    def fingerprint(self) -> str:
        """The SHA-256 hex digest of the content: input names plus every example's fields, in order.

        Field order inside an example, the Python hash seed and dspy's ``dspy_*``
        bookkeeping fields do not affect it; example order and values do. Ids and
        the name do not take part.
        """
        if self._fingerprint is None:
            digest = hashlib.sha256()
            header = {"format": _FINGERPRINT_FORMAT, "inputs": sorted(self._inputs)}
            digest.update(canonical_json(header).encode("utf-8") + b"\n")
            for position, example in enumerate(self._examples):
                fields = example_fields(example)
                try:
                    line = canonical_json(fields)
                except TypeError as error:
                    raise DatasetError(f"example {position} ({self._ids[position]}): {error}") from error
                digest.update(line.encode("utf-8") + b"\n")
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    # -- derived datasets --------------------------------------------------------

    def with_name(self, name: str) -> Dataset:
        """Return the same examples under another name.

        Args:
            name: the new display name.

        Returns:
            The renamed dataset.
        """
        return self._derive(range(len(self._examples)), name=name)

    def split(self, *fractions: float, seed: int, stratify: str | None = None) -> tuple[Dataset, ...]:
        """Randomly split into disjoint parts covering every example.

        Part sizes follow the largest-remainder method, so they sum to ``len(self)``.
        With ``stratify``, each value of that field is divided in the same
        proportions (each stratum's count per part is the floor or ceiling of its
        quota) while part sizes stay the same as without stratification.

        Args:
            *fractions: one fraction per part, summing to 1 (within 1e-9).
            seed: the random seed; the same seed gives the same parts.
            stratify: a field whose values should be spread proportionally.

        Returns:
            The parts, each in the dataset's order, named ``"{name}[split i/k]"``.

        Raises:
            DatasetError: bad fractions, or an example lacks the ``stratify`` field.
        """
        exact = normalize_fractions(fractions)
        generator = make_generator(seed)
        parts = partition(self._strata(stratify), exact, generator=generator)
        count = len(parts)
        return tuple(
            self._derive(part, name=f"{self._name}[split {number}/{count}]") for number, part in enumerate(parts)
        )

    def sample(self, k: int, *, seed: int) -> Dataset:
        """Return ``k`` examples drawn without replacement, in the dataset's order.

        Args:
            k: the number of examples, between 0 and ``len(self)``.
            seed: the random seed.

        Returns:
            The sample.

        Raises:
            DatasetError: ``k`` is out of range.
        """
        size = _check_count("k", k, low=0, high=len(self._examples))
        generator = make_generator(seed)
        positions = sorted(int(position) for position in generator.choice(len(self._examples), size, replace=False))
        return self._derive(positions, name=f"{self._name}[sample {size}]")

    def shuffle(self, *, seed: int) -> Dataset:
        """Return the examples in a seeded random order.

        Args:
            seed: the random seed.

        Returns:
            The shuffled dataset.
        """
        generator = make_generator(seed)
        permutation = generator.permutation(len(self._examples))
        return self._derive((int(position) for position in permutation), name=f"{self._name}[shuffled]")

    def minibatches(self, batch_size: int, *, seed: int, drop_last: bool = False) -> Iterator[Dataset]:
        """Iterate over one epoch of seeded random minibatches.

        Each example appears in exactly one batch (unless dropped with ``drop_last``).

        Args:
            batch_size: examples per batch, at least 1; the last batch may be smaller.
            seed: the random seed; the same seed gives the same batches.
            drop_last: drop a final batch smaller than ``batch_size``.

        Returns:
            An iterator of datasets named ``"{name}[batch i]"``.

        Raises:
            DatasetError: ``batch_size`` is less than 1.
        """
        size = _check_count("batch_size", batch_size, low=1, high=None)
        generator = make_generator(seed)
        permutation = [int(position) for position in generator.permutation(len(self._examples))]
        return self._iterate_batches(permutation, size, drop_last=drop_last)

    def _iterate_batches(self, permutation: list[int], batch_size: int, *, drop_last: bool) -> Iterator[Dataset]:
        for number, start in enumerate(range(0, len(permutation), batch_size)):
            batch = permutation[start : start + batch_size]
            if drop_last and len(batch) < batch_size:
                return
            yield self._derive(batch, name=f"{self._name}[batch {number}]")

    def k_folds(self, k: int, *, seed: int, stratify: str | None = None) -> list[tuple[Dataset, Dataset]]:
        """Split into ``k`` disjoint folds and pair each with the rest.

        Fold sizes differ by at most one; with ``stratify`` each fold keeps the
        field's proportions (as in :meth:`split`).

        Args:
            k: the number of folds, between 2 and ``len(self)``.
            seed: the random seed.
            stratify: a field whose values should be spread proportionally.

        Returns:
            ``k`` pairs ``(train, validation)``; the validation sets are disjoint and
            cover the dataset, and each train set is everything else.

        Raises:
            DatasetError: ``k`` is out of range, or an example lacks the ``stratify`` field.
        """
        fold_count = _check_count("k", k, low=2, high=None)
        if fold_count > len(self._examples):
            raise DatasetError(f"k_folds needs at least k={fold_count} examples, the dataset has {len(self)}")
        generator = make_generator(seed)
        folds = partition(self._strata(stratify), [Fraction(1, fold_count)] * fold_count, generator=generator)
        pairs = []
        for number, fold in enumerate(folds):
            held_out = set(fold)
            train = [position for position in range(len(self._examples)) if position not in held_out]
            pairs.append(
                (
                    self._derive(train, name=f"{self._name}[fold {number}/{fold_count} train]"),
                    self._derive(fold, name=f"{self._name}[fold {number}/{fold_count} validation]"),
                )
            )
        return pairs

    def filter(self, predicate: Callable[[dspy.Example], bool]) -> Dataset:
        """Return the examples for which ``predicate`` is true, in order.

        Args:
            predicate: called with each example.

        Returns:
            The filtered dataset.
        """
        positions = [position for position, example in enumerate(self._examples) if predicate(example)]
        return self._derive(positions, name=f"{self._name}[filtered]")

    def select(self, indices: Iterable[int]) -> Dataset:
        """Return the examples at the given positions, in the given order.

        Args:
            indices: distinct positions (negative counts from the end).

        Returns:
            The selection.

        Raises:
            IndexError: a position is out of range.
            DatasetError: a position repeats (ids would no longer be unique).
        """
        size = len(self._examples)
        positions = []
        for index in indices:
            if isinstance(index, bool) or not isinstance(index, numbers.Integral):
                raise TypeError(f"select expects integer positions, got {index!r}")
            if not -size <= index < size:
                raise IndexError(f"position {index} is out of range for a dataset of {size} examples")
            positions.append(int(index) % size)
        if len(set(positions)) != len(positions):
            raise DatasetError("select positions must be distinct so example ids stay unique")
        return self._derive(positions, name=f"{self._name}[select {len(positions)}]")

    def _strata(self, field: str | None) -> list[list[int]]:
        if field is None:
            return [list(range(len(self._examples)))]
        groups: dict[str, list[int]] = {}
        for position, example in enumerate(self._examples):
            if field not in example:
                raise DatasetError(f"cannot stratify on {field!r}: example {self._ids[position]!r} has no such field")
            try:
                key = canonical_json(example[field])
            except TypeError as error:
                raise DatasetError(f"cannot stratify on {field!r}: {error}") from error
            # Dicts keep insertion order, so strata come in order of first appearance.
            groups.setdefault(key, []).append(position)
        return list(groups.values())

    # -- export and display ------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        """Return a JSON-ready description for reproducibility records.

        Returns:
            A dict with ``name``, ``n``, ``inputs``, ``fields``, ``fingerprint``,
            ``source`` (path or None), ``source_sha256`` (SHA-256 of the source file's
            bytes as read, or None) and ``query`` (the DuckDB query, or None).
        """
        return {
            "name": self._name,
            "n": len(self._examples),
            "inputs": list(self._inputs),
            "fields": self._field_names(),
            "fingerprint": self.fingerprint,
            "source": self._source,
            "source_sha256": self._source_sha256,
            "query": self._query,
        }

    def to_pandas(self) -> pandas.DataFrame:
        """Return the examples as a DataFrame indexed by example id.

        Returns:
            One row per example, one column per field (first-seen order), index ``example_id``.
        """
        columns = self._field_names()
        rows = [example_fields(example) for example in self._examples]
        return pandas.DataFrame(rows, columns=columns, index=pandas.Index(self._ids, name="example_id"))

    def _field_names(self) -> list[str]:
        seen: dict[str, None] = {}
        for example in self._examples:
            # keys(), unlike iteration, leaves out dspy's dspy_* bookkeeping fields.
            for field in example.keys():  # noqa: SIM118
                seen.setdefault(field, None)
        return list(seen)

    def __repr__(self) -> str:
        parts = [f"name={self._name!r}", f"n={len(self._examples)}", f"inputs={self._inputs!r}"]
        if self._source is not None:
            parts.append(f"source={os.path.basename(self._source)!r}")
        return f"Dataset({', '.join(parts)})"

    def _repr_html_(self) -> str:
        columns = self._field_names()
        header = "".join(
            f"<th>{html.escape(column)}{' <small>(input)</small>' if column in self._inputs else ''}</th>"
            for column in columns
        )
        rows = []
        for position in range(min(_HTML_ROWS, len(self._examples))):
            example = self._examples[position]
            cells = "".join(
                f"<td>{html.escape(_shorten(example.get(column)))}</td>" if column in example else "<td></td>"
                for column in columns
            )
            rows.append(f"<tr><td><code>{html.escape(self._ids[position])}</code></td>{cells}</tr>")
        remaining = len(self._examples) - _HTML_ROWS
        footer = f"<p>… {remaining} more</p>" if remaining > 0 else ""
        return (
            f"<div><p><b>Dataset</b> {html.escape(self._name)} · {len(self._examples)} examples · "
            f"inputs: {html.escape(', '.join(self._inputs))}</p>"
            f"<table><thead><tr><th>id</th>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
            f"{footer}</div>"
        )


def _infer_inputs(records: list[Any]) -> tuple[str, ...]:
    """Return the input keys the examples were tagged with via ``with_inputs``."""
    needed = "pass inputs=[...] naming the input fields"
    if not records:
        raise DatasetError(f"cannot infer input fields from an empty list of examples; {needed}")
    keys = set()
    for position, record in enumerate(records):
        input_keys = getattr(record, "_input_keys", None) if isinstance(record, dspy.Example) else None
        if not input_keys:
            raise DatasetError(f"example {position} has no input fields marked with with_inputs(); {needed}")
        keys.add(frozenset(input_keys))
    if len(keys) > 1:
        raise DatasetError(f"examples disagree on their input fields {sorted(sorted(k) for k in keys)}; {needed}")
    (input_keys,) = keys
    first = records[0]
    # Input keys are a set (ordered by hash seed); use the first example's field order instead.
    ordered = [field for field in first.keys(include_dspy=True) if field in input_keys]
    ordered += sorted(input_keys - set(ordered))
    return tuple(ordered)


def _to_example(record: Any, inputs: tuple[str, ...], position: int) -> dspy.Example:
    if isinstance(record, dspy.Example):
        return record.with_inputs(*inputs)
    if isinstance(record, Mapping):
        for key in record:
            if not isinstance(key, str):
                raise DatasetError(f"example {position} has a non-string field name {key!r}")
        return dspy.Example(dict(record)).with_inputs(*inputs)
    raise TypeError(f"example {position} is a {type(record).__name__}, expected a dspy.Example or a mapping")


def _assign_ids(examples: Sequence[dspy.Example]) -> tuple[str, ...]:
    """Return one unique id per example: its ``id`` field, else a content hash, then ``#n`` suffixes."""
    ids: list[str] = []
    used: set[str] = set()
    next_suffix: dict[str, int] = {}
    for position, example in enumerate(examples):
        raw = example.get(_ID_FIELD)
        if _none_if_missing(raw) is None:
            base = content_hash(example_fields(example), position=position)[:_ID_HASH_LENGTH]
        else:
            base = str(raw)
        candidate = base
        while candidate in used:
            suffix = next_suffix.get(base, 2)
            next_suffix[base] = suffix + 1
            candidate = f"{base}#{suffix}"
        used.add(candidate)
        ids.append(candidate)
    return tuple(ids)


def _check_ids(ids: Iterable[str], count: int) -> tuple[str, ...]:
    checked = tuple(ids)
    if len(checked) != count:
        raise DatasetError(f"ids has {len(checked)} entries for {count} examples")
    for example_id in checked:
        if not isinstance(example_id, str) or not example_id:
            raise DatasetError(f"example ids must be non-empty strings, got {example_id!r}")
    if len(set(checked)) != count:
        raise DatasetError("example ids must be distinct")
    return checked


def _none_if_missing(value: Any) -> Any:
    """Map pandas/NumPy missing scalars (NaN, NaT, pandas.NA) to None, leaving containers alone."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if pandas.api.types.is_scalar(value) and not isinstance(value, str | bytes):
        try:
            if pandas.isna(value):
                return None
        except (TypeError, ValueError):
            return value
    return value


def _check_count(label: str, value: int, *, low: int, high: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{label} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        upper = "" if high is None else f" and {high}"
        raise DatasetError(
            f"{label} must be between {low}{upper}, got {value}"
            if upper
            else f"{label} must be at least {low}, got {value}"
        )
    return int(value)


def _slice_text(index: slice) -> str:
    text = f"{'' if index.start is None else index.start}:{'' if index.stop is None else index.stop}"
    return text if index.step is None else f"{text}:{index.step}"


def _shorten(value: Any) -> str:
    text = str(value)
    return text if len(text) <= _HTML_CELL_WIDTH else text[: _HTML_CELL_WIDTH - 1] + "…"
