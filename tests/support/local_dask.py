"""A Dask cluster of worker processes on 127.0.0.1 for executor tests (a plain module of the suite)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import distributed


def local_cluster(workers: int, threads: int) -> Iterator[Any]:
    """Yield a client of a LocalCluster of ``workers`` processes (with nannies) x ``threads``; close both after."""
    cluster = distributed.LocalCluster(
        n_workers=workers, threads_per_worker=threads, processes=True, host="127.0.0.1", dashboard_address=None
    )
    client = distributed.Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
