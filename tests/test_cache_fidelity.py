"""Fidelity of the pull-through cache (issue 20, items 1 and 2), against a real CNCF Distribution upstream.

1. Offline means no upstream contact at all: with `[pull_through] offline = true`, ValidatePullThroughCacheRule
   answers at once that the cache is offline (ECR's `failure` field) without a connection, and no pull (cached
   tag due for a re-check, uncached tag, uncached blob) reaches the upstream. Proven by its access log.
2. Cache counters that add up: `moorage_pull_through_hits_total` and `misses_total` count manifests and blobs
   alike (label `kind`); every rule's series exist from the start at 0; exact values after a cold pull, a warm
   pull and a pull with the upstream down.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import pytest
import requests

from tests.helpers import wait_for
from tests.oci import ALL_MANIFEST_TYPES, OCI_MANIFEST, digest_of, make_image
from tests.server import AUTH_OFF, MoorageServer, ecr_client
from tests.upstreams import MOORAGE_USER_AGENT, DistributionRegistry, push_image

KINDS = ("manifest", "blob")


@pytest.fixture
def upstream(tmp_path) -> Iterator[DistributionRegistry]:
    reg = DistributionRegistry(tmp_path / "distribution").start()
    yield reg
    reg.stop()


def _config(upstream: DistributionRegistry, **settings: object) -> str:
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
    return (
        AUTH_OFF
        + '[pull_through]\nallowed_upstreams = ["127.0.0.1"]\n'
        + lines
        + f'[[pull_through.rules]]\necr_repository_prefix = "hub"\nupstream_registry_url = "{upstream.url}"\n'
        + f'[[pull_through.rules]]\necr_repository_prefix = "idle"\nupstream_registry_url = "{upstream.url}"\n'
    )


def _pull(srv: MoorageServer, repo: str, ref: str, blobs: list[bytes]) -> None:
    r = requests.get(f"{srv.url}/v2/{repo}/manifests/{ref}", headers={"Accept": ALL_MANIFEST_TYPES}, timeout=30)
    assert r.status_code == 200, r.text
    for blob in blobs:
        b = requests.get(f"{srv.url}/v2/{repo}/blobs/{digest_of(blob)}", timeout=30)
        assert b.status_code == 200 and b.content == blob


def _samples(srv: MoorageServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    r = requests.get(f"{srv.url}/metrics", timeout=10)
    assert r.status_code == 200
    out = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            m = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
            assert m, line
            out[(m.group(1), frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or "")))] = float(m.group(3))
    return out


def _counts(srv: MoorageServer, rule: str = "hub") -> dict[str, float]:
    """hits/misses per kind, as /metrics says; a missing series is an error, not a 0."""
    samples = _samples(srv)
    out = {}
    for name in ("hits", "misses"):
        for kind in KINDS:
            key = (f"moorage_pull_through_{name}_total", frozenset({("rule", rule), ("kind", kind)}))
            assert key in samples, f"no {key} series in /metrics"
            out[f"{kind}_{name}"] = samples[key]
    return out


def _settle(srv: MoorageServer, expected: dict[str, float]) -> None:
    """Wait until the counters equal `expected` (they reach /metrics within a second)."""
    wait_for(lambda: _counts(srv) == expected, 5, f"the counters {expected}", details=lambda: str(_counts(srv)))


def test_hit_and_miss_counters_count_manifests_and_blobs_alike(make_server, upstream: DistributionRegistry):
    img = make_image(2, 2000)
    push_image(upstream.url, "team/app", "v1", img.manifest, OCI_MANIFEST, img.blobs)
    srv: MoorageServer = make_server(_config(upstream, failure_retry_interval="1h", tag_refresh_interval="1s"))
    n = len(img.blobs)

    # Every rule's series exist from the start, at 0.
    zero = dict.fromkeys(("manifest_hits", "blob_hits", "manifest_misses", "blob_misses"), 0.0)
    _settle(srv, zero)
    assert _counts(srv, "idle") == zero

    _pull(srv, "hub/team/app", "v1", img.blobs)  # cold: everything is a miss
    cold = {"manifest_hits": 0.0, "blob_hits": 0.0, "manifest_misses": 1.0, "blob_misses": float(n)}
    _settle(srv, cold)

    _pull(srv, "hub/team/app", "v1", img.blobs)  # warm: everything is a hit (the tag was checked just now)
    warm = {"manifest_hits": 1.0, "blob_hits": float(n), "manifest_misses": 1.0, "blob_misses": float(n)}
    _settle(srv, warm)

    upstream.stop()
    time.sleep(1.1)  # the tag is due for a re-check now, and the upstream is down: served at once, still a hit
    _pull(srv, "hub/team/app", "v1", img.blobs)
    down = {"manifest_hits": 2.0, "blob_hits": float(2 * n), "manifest_misses": 1.0, "blob_misses": float(n)}
    _settle(srv, down)
    wait_for(lambda: "the upstream check failed" in srv.log(), 30, "the background check to find the upstream down")
    r = requests.get(f"{srv.url}/v2/hub/team/app/manifests/v1", headers={"Accept": OCI_MANIFEST}, timeout=30)
    assert r.status_code == 200 and r.content == img.manifest  # a stale serve: a hit too
    down["manifest_hits"] += 1
    _settle(srv, down)
    r = requests.get(f"{srv.url}/v2/hub/team/other/manifests/v1", headers={"Accept": OCI_MANIFEST}, timeout=30)
    # Not cached and the upstream is down: a miss, answered 502.
    assert r.status_code == 502 and r.json()["errors"][0]["code"] == "UNKNOWN", r.text
    down["manifest_misses"] += 1
    _settle(srv, down)
    samples = _samples(srv)
    assert samples[("moorage_pull_through_stale_serves_total", frozenset({("rule", "hub")}))] == 1.0
    ratio = (down["manifest_hits"] + down["blob_hits"]) / sum(down.values())
    assert ratio == pytest.approx((3 + 2 * n) / (5 + 3 * n))
    assert _counts(srv, "idle") == zero


def test_offline_means_no_upstream_contact_at_all(make_server, upstream: DistributionRegistry):
    img, uncached = make_image(2, 1000), make_image(1, 1000)
    push_image(upstream.url, "team/app", "v1", img.manifest, OCI_MANIFEST, img.blobs)
    push_image(upstream.url, "team/app", "v2", uncached.manifest, OCI_MANIFEST, uncached.blobs)
    srv: MoorageServer = make_server(_config(upstream, tag_refresh_interval="1s"))
    _pull(srv, "hub/team/app", "v1", img.blobs)
    # A partially cached image: its manifest, not its blobs.
    r = requests.get(f"{srv.url}/v2/hub/team/app/manifests/v2", headers={"Accept": OCI_MANIFEST}, timeout=30)
    assert r.status_code == 200
    srv.stop()
    srv.config_path.write_text(_config(upstream, tag_refresh_interval="1s", offline=True))
    srv.start()
    before = len(upstream.accesses(agent=MOORAGE_USER_AGENT))
    time.sleep(1.1)  # v1 is due for its re-check, which offline mode skips

    ecr = ecr_client(srv)
    started = time.monotonic()
    validated = ecr.validate_pull_through_cache_rule(ecrRepositoryPrefix="hub")
    assert time.monotonic() - started < 2
    assert validated["isValid"] is False and "offline" in validated["failure"], validated

    _pull(srv, "hub/team/app", "v1", img.blobs)  # cached: served
    r = requests.get(f"{srv.url}/v2/hub/team/app/manifests/v3", headers={"Accept": OCI_MANIFEST}, timeout=10)
    assert r.status_code == 404 and "offline" in r.text
    b = requests.get(f"{srv.url}/v2/hub/team/app/blobs/{digest_of(uncached.layers[0])}", timeout=10)
    assert b.status_code == 404 and "offline" in b.text

    assert len(upstream.accesses(agent=MOORAGE_USER_AGENT)) == before, upstream.accesses(agent=MOORAGE_USER_AGENT)
