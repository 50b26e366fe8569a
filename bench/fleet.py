"""A CI fleet's cold start through each cache: N clients start at once, each pulling the same 5 images (4
layers each) that the cache has never seen, then again warm.

Both caches sit in front of the same upstream Distribution (`upstream`, access log on): Moorage with its rule
`hub` (`moorage-cache`, workers as shipped) and Distribution in proxy mode (`distribution-proxy`). Every run
pushes new images to the upstream (random bytes, raw HTTP), so each cold pull is really cold for both. The
clients are the cold-start tests' own (tests/fleet.py): async HTTP, a manifest GET then every blob, each digest
verified as it streams.

Measured per cache and fleet size: wall time of the whole fleet, p50 / p99 of one image pull, failed pulls,
and how often the upstream was asked for each blob (from its access log).
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
from collections import Counter

from bench.pullthrough import _caches, _pt_name
from bench.report import DISTRIBUTION, MOORAGE, Table
from bench.rss import sampling
from bench.suite import Bench
from tests.fleet import run_fleet
from tests.upstreams import push_image

IMAGES = 5
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _desc(media_type: str, data: bytes) -> dict[str, object]:
    return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}


def _push_images(b: Bench, prefix: str, layer_size: int) -> list[str]:
    """Five new images (config + 4 random layers) in the upstream; their repository names."""
    repos = []
    for k in range(IMAGES):
        config = json.dumps({"architecture": "amd64", "os": "linux", "nonce": os.urandom(8).hex()}).encode()
        layers = [os.urandom(layer_size) for _ in range(4)]

        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": _desc("application/vnd.oci.image.config.v1+json", config),
                "layers": [_desc("application/vnd.oci.image.layer.v1.tar", layer) for layer in layers],
            }
        ).encode()
        repo = f"{prefix}/img{k}"
        push_image(
            b.upstream.url, repo, "v1", manifest, "application/vnd.oci.image.manifest.v1+json", [config, *layers]
        )
        repos.append(repo)
    return repos


def fleet(b: Bench) -> None:
    layer = b.plan.fleet_layer
    table = Table(
        f"CI fleet cold start: N clients each pull the same {IMAGES} new images (4 x {layer / 2**20:g} MiB layers)",
        [
            "clients",
            "cache",
            "cold wall s",
            "cold pull p50 / p99 s",
            "warm wall s",
            "warm pull p50 / p99 s",
            "upstream GETs per blob (max)",
            "failed pulls",
        ],
        note=(
            f"Medians of {b.plan.runs} run(s); each run pushes new images to the upstream, so both caches start "
            "cold. A pull is one client's manifest GET and all its blobs, digests verified (tests/fleet.py)."
        ),
    )
    b.results.tables.append(table)
    upstream = b.upstream
    samples: list[dict[str, object]] = []
    for n in b.plan.fleet_clients:
        cold_row = b.results.row(
            f"fleet-cold-{n}", f"fleet cold start, {n} clients x {IMAGES} images: wall", "s", better="lower", fmt=".2f"
        )
        warm_row = b.results.row(
            f"fleet-warm-{n}", f"fleet warm, {n} clients x {IMAGES} images: wall", "s", better="lower", fmt=".2f"
        )
        per_cache: dict[str, list[dict[str, float]]] = {}
        for i in range(b.plan.runs):
            repos = _push_images(b, f"fleet/n{n}-r{i}", layer)
            for column, label in _caches():
                server = b.server(label)
                pulls = [(_pt_name(server, repo), "v1") for repo in repos]
                offset = upstream.log_size()
                with sampling(server) as rss:
                    cold = run_fleet(server.url, pulls, n, server.headers)
                accesses = upstream.accesses_since(offset)
                gets = Counter(p for m, p, _ in accesses if m == "GET" and "/blobs/" in p)
                with sampling(server):
                    warm = run_fleet(server.url, pulls, n, server.headers)
                cold_row.add(column, cold.wall_seconds, rss.peak.get(label))
                warm_row.add(column, warm.wall_seconds)
                blobs = IMAGES * 5
                sample = {
                    "cold_wall": cold.wall_seconds,
                    "cold_p50": cold.percentile(50),
                    "cold_p99": cold.percentile(99),
                    "warm_wall": warm.wall_seconds,
                    "warm_p50": warm.percentile(50),
                    "warm_p99": warm.percentile(99),
                    "gets_per_blob": sum(gets.values()) / blobs,
                    "max_gets": max(gets.values(), default=0),
                    "errors": len(cold.errors) + len(warm.errors),
                }
                per_cache.setdefault(column, []).append(sample)
                samples.append({"clients": n, "run": i, "cache": label, **sample, "error_examples": cold.errors[:3]})
                print(
                    f"  fleet {n} clients, {label}: cold {cold.wall_seconds:.2f} s, warm {warm.wall_seconds:.2f} s, "
                    f"{sample['gets_per_blob']:.2f} upstream GETs per blob (max {sample['max_gets']}), "
                    f"{sample['errors']} failed pulls",
                    flush=True,
                )
        for column in (MOORAGE, DISTRIBUTION):
            runs = per_cache.get(column, [])
            if not runs:
                continue

            def med(key: str, runs: list[dict[str, float]] = runs) -> float:
                return statistics.median(r[key] for r in runs)

            table.rows.append(
                [
                    str(n),
                    "Moorage" if column == MOORAGE else "Distribution proxy",
                    f"{med('cold_wall'):.2f}",
                    f"{med('cold_p50'):.2f} / {med('cold_p99'):.2f}",
                    f"{med('warm_wall'):.2f}",
                    f"{med('warm_p50'):.2f} / {med('warm_p99'):.2f}",
                    f"{med('gets_per_blob'):.2f} ({max(int(r['max_gets']) for r in runs)})",
                    str(sum(int(r["errors"]) for r in runs)),
                ]
            )
    b.results.samples["fleet"] = samples


BENCHMARKS = {"fleet": fleet}
