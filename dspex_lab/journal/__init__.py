"""The journal: a durable record of every experiment and trial, in DuckDB.

This layer owns the storage schema and its migrations, concurrent access from
several processes, streaming trial writes, and the queries that read
experiments and trials back as pandas DataFrames.
"""

from dspex_lab.journal._duckdb import DuckDBJournal, ExperimentRecord, TrialWriter, open_journal
from dspex_lab.journal._schema import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "DuckDBJournal", "ExperimentRecord", "TrialWriter", "open_journal"]
