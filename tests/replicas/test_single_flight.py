"""One upstream fetch per blob across all replicas.

A CI fleet's cold start spread over three replicas (and the balancer): every puller gets every image with every
digest verified, and the upstream (a real CNCF Distribution, counted from its access log) sees one GET per blob
and per manifest, whichever replica each client asked. A Distribution proxy fetches once per replica.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Iterator

import pytest

from tests.fleet import FleetResult, fleet
from tests.oci import OCI_MANIFEST, random_image
from tests.replicas.cluster import Cluster
from tests.replicas.conftest import shared_cluster
from tests.upstreams import MOORAGE_USER_AGENT, DistributionRegistry, push_image

MiB = 1 << 20
PULLERS_PER_REPLICA = 12
REPOS = [f"sf/img{i}" for i in range(3)]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DistributionRegistry]:
    reg = DistributionRegistry(tmp_path_factory.mktemp("distribution")).start()
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def caching(request: pytest.FixtureRequest, upstream: DistributionRegistry) -> Iterator[Cluster]:
    rule = (
        '[pull_through]\nallowed_upstreams = ["127.0.0.1"]\n'
        f'[[pull_through.rules]]\necr_repository_prefix = "hub"\nupstream_registry_url = "{upstream.url}"\n'
    )
    with shared_cluster(request, extra=rule) as started:
        yield started


def _upstream_gets(upstream: DistributionRegistry, what: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    repos = "|".join(re.escape(r) for r in REPOS)
    for a in upstream.accesses(rf"^GET /v2/(?:{repos})/{what}/", agent=MOORAGE_USER_AGENT):
        counts[a.path] = counts.get(a.path, 0) + 1
    return counts


def test_a_cold_fleet_on_three_replicas_fetches_each_blob_once(
    caching: Cluster, upstream: DistributionRegistry
) -> None:
    for repo in REPOS:
        manifest, blobs = random_image([256 * 1024] * 3 + [4 * MiB])
        push_image(upstream.url, repo, "v1", manifest, OCI_MANIFEST, blobs)
    basic = base64.b64encode(f"AWS:{caching.password()}".encode()).decode()
    headers = {"Authorization": f"Basic {basic}"}
    pulls = [(f"hub/{repo}", "v1") for repo in REPOS]
    bases = [r.url for r in caching.replicas] + [caching.url]

    async def everyone() -> list[FleetResult]:
        return await asyncio.gather(*(fleet(base, pulls, PULLERS_PER_REPLICA, headers) for base in bases))

    results = asyncio.run(everyone())

    errors = [e for result in results for e in result.errors]
    assert errors == [], f"{len(errors)} failed pulls, e.g. {errors[:5]}"
    assert [len(r.pull_seconds) for r in results] == [PULLERS_PER_REPLICA * len(REPOS)] * len(bases)
    blobs, manifests = _upstream_gets(upstream, "blobs"), _upstream_gets(upstream, "manifests")
    assert sorted(blobs.values()) == [1] * (5 * len(REPOS)), blobs
    assert sorted(manifests.values()) == [1] * len(REPOS), manifests
