"""Datasets: loading, identity and seeded splitting of ``dspy.Example`` collections.

This layer owns :class:`Dataset` (an immutable sequence of ``dspy.Example`` with
stable per-example ids and a content fingerprint), the readers that build one from
JSONL, JSON, CSV, Parquet files, DataFrames and DuckDB queries, and every seeded
subset operation (``split``, ``sample``, ``shuffle``, ``minibatches``, ``k_folds``).
Malformed data raises :class:`dspex_lab.errors.DatasetError` with the file and line.
"""

from dspex_lab.data._dataset import Dataset
from dspex_lab.data._loaders import dataset_from_query, load_dataset

__all__ = ["Dataset", "dataset_from_query", "load_dataset"]
