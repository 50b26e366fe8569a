"""A CI fleet's cold start through the cache (issue 22).

Fifty pullers start at once, each pulling the same five images through a pull-through rule that has never
seen them, against a real CNCF Distribution upstream and a two-worker Moorage. Every pull must succeed with
every digest verified, and the upstream must see one GET per manifest and per blob, however the requests
spread over the workers. The same holds for different tags of one repository, and for an index and its
children pulled concurrently.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator

import pytest

from tests.fleet import run_fleet
from tests.oci import OCI_INDEX, OCI_MANIFEST, descriptor, digest_of, random_image
from tests.server import AUTH_OFF, MoorageServer
from tests.upstreams import MOORAGE_USER_AGENT, DistributionRegistry, push_image

MakeServer = Callable[..., MoorageServer]
PULLERS = 50


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DistributionRegistry]:
    reg = DistributionRegistry(tmp_path_factory.mktemp("distribution")).start()
    yield reg
    reg.stop()


def _image(layers: int = 4, layer_size: int = 128 * 1024) -> tuple[bytes, list[bytes]]:
    return random_image([layer_size] * layers)


def _config(prefix: str, upstream: DistributionRegistry) -> str:
    return (
        AUTH_OFF
        + '[pull_through]\nallowed_upstreams = ["127.0.0.1"]\n'
        + f'[[pull_through.rules]]\necr_repository_prefix = "{prefix}"\nupstream_registry_url = "{upstream.url}"\n'
    )


def _upstream_gets(upstream: DistributionRegistry, what: str, repos: list[str]) -> dict[str, int]:
    """Moorage's upstream GETs of each manifest or blob path of `repos`, keyed by path."""
    counts: dict[str, int] = {}
    alternatives = "|".join(re.escape(r) for r in repos)
    for a in upstream.accesses(rf"^GET /v2/(?:{alternatives})/{what}/", agent=MOORAGE_USER_AGENT):
        counts[a.path] = counts.get(a.path, 0) + 1
    return counts


@pytest.mark.parametrize("round_", range(3))
def test_fleet_cold_start_through_the_cache(make_server: MakeServer, upstream: DistributionRegistry, round_: int):
    repos = [f"fleet{round_}/img{i}" for i in range(5)]
    images = {repo: _image() for repo in repos}
    for repo, (manifest, blobs) in images.items():
        push_image(upstream.url, repo, "v1", manifest, OCI_MANIFEST, blobs)
    srv = make_server(_config("hub", upstream), workers=2)

    errors = run_fleet(srv.url, [(f"hub/{repo}", "v1") for repo in repos], PULLERS).errors

    assert errors == [], f"{len(errors)} failed pulls, e.g. {errors[:5]}"
    manifests, blobs = _upstream_gets(upstream, "manifests", repos), _upstream_gets(upstream, "blobs", repos)
    assert sorted(manifests.values()) == [1] * len(repos), manifests
    assert sorted(blobs.values()) == [1] * (5 * len(repos)), blobs


def test_fleet_cold_start_of_many_tags_and_an_index(make_server: MakeServer, upstream: DistributionRegistry):
    """Different tags of one repository, and an index whose children are pulled by digest at the same time."""
    tags_repo, index_repo = "fleet-tags/app", "fleet-index/app"
    tag_images = {f"t{i}": _image(2) for i in range(6)}
    for tag, (manifest, blobs) in tag_images.items():
        push_image(upstream.url, tags_repo, tag, manifest, OCI_MANIFEST, blobs)
    children = [_image(2) for _ in range(3)]
    for manifest, blobs in children:
        push_image(upstream.url, index_repo, digest_of(manifest), manifest, OCI_MANIFEST, blobs)
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {**descriptor(OCI_MANIFEST, m), "platform": {"architecture": arch, "os": "linux"}}
                for (m, _), arch in zip(children, ["amd64", "arm64", "s390x"], strict=True)
            ],
        }
    ).encode()
    push_image(upstream.url, index_repo, "multi", index, OCI_INDEX, [])
    srv = make_server(_config("hub", upstream), workers=2)

    pulls = [(f"hub/{tags_repo}", tag) for tag in tag_images]
    pulls += [(f"hub/{index_repo}", "multi")] + [(f"hub/{index_repo}", digest_of(m)) for m, _ in children]
    errors = run_fleet(srv.url, pulls, PULLERS).errors

    assert errors == [], f"{len(errors)} failed pulls, e.g. {errors[:5]}"
    manifests = _upstream_gets(upstream, "manifests", [tags_repo, index_repo])
    blobs = _upstream_gets(upstream, "blobs", [tags_repo, index_repo])
    assert sorted(manifests.values()) == [1] * (len(tag_images) + 1 + len(children)), manifests
    assert sorted(blobs.values()) == [1] * (3 * len(tag_images) + 3 * len(children)), blobs
