"""Fixtures of the multi-replica suite: three replicas on PostgreSQL + S3 behind nginx (tests/replicas/cluster.py).

`cluster` is one per test module (a fresh schema and S3 prefix, three replicas, nginx); tests isolate themselves
by repository name. Modules that need another config call `shared_cluster` with their extra settings.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.replicas.cluster import Cluster
from tests.shared_storage import Target, provision, remove


@contextmanager
def shared_cluster(request: pytest.FixtureRequest, extra: str = "", replicas: int = 3) -> Iterator[Cluster]:
    """A started cluster on a fresh PostgreSQL schema and S3 prefix, stopped and removed afterwards."""
    target: Target = provision(request, "postgresql+s3")
    root = request.getfixturevalue("tmp_path_factory").mktemp("cluster")
    cluster = Cluster(root, target.toml(), extra, replicas)
    cluster.target = target
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        remove(target)


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    with shared_cluster(request) as started:
        yield started
