"""The pull-through benchmarks: pulls through each cache of images only the upstream has, cold then warm.

Caches (both in front of `upstream`, a Distribution with its access log on; suite.py defines them):
  moorage-cache       Moorage with a pull-through rule `hub` -> upstream
  distribution-proxy  Distribution in proxy mode -> upstream

Benchmarks:
  pull-through  skopeo copies to a directory: the cold pull, then warm (the median of 3 per run); upstream blob GETs
                per blob
  fanout        6 skopeo pulls at once of an image new to the cache: upstream blob GETs per blob, slowest pull
"""

from __future__ import annotations

import shutil
import statistics
from collections import Counter
from pathlib import Path

from bench.content import MiB
from bench.report import DISTRIBUTION, MOORAGE, Row, Target, ratio_target
from bench.rss import sampling
from bench.servers import Moorage, Server
from bench.suite import CACHE_PREFIX, Bench

WARM_PULLS = 3  # warm pulls per run; the run's value is their median


def _pt_name(server: Server, repo: str) -> str:
    return f"{CACHE_PREFIX}/{repo}" if isinstance(server, Moorage) else repo


def _caches() -> list[tuple[str, str]]:
    return [(MOORAGE, "moorage-cache"), (DISTRIBUTION, "distribution-proxy")]


def _pull(b: Bench, server: Server, name: str, dest: Path) -> float:
    try:
        return b.skopeo.copy(f"docker://{server.host}/{name}:v1", f"dir:{dest}", src_creds=server.creds)
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def pull_through(b: Bench) -> None:
    total = sum(b.plan.pt_layers) / MiB
    shape = f"{len(b.plan.pt_layers)} layers, {total:.0f} MiB"
    cold = b.results.row("pt-cold", f"pull-through cold pull ({shape})", "s", better="lower", fmt=".2f")
    warm = b.results.row(
        "pt-warm", f"pull-through warm pull ({shape})", "s", better="lower", fmt=".2f", target=ratio_target(1)
    )
    upstream = b.upstream
    fetches: dict[str, list[float]] = {}
    for i in range(b.plan.runs):
        image = b.image(f"pt-{i}", list(b.plan.pt_layers))
        repo = f"pt/img-{i}"
        b.push(upstream, image, repo)
        for column, label in _caches():
            server = b.server(label)
            name = _pt_name(server, repo)
            offset = upstream.log_size()
            with sampling(server) as rss:
                seconds = _pull(b, server, name, b.workdir / "pulled")
            cold.add(column, seconds, rss.peak.get(label))
            gets = [a for a in upstream.accesses_since(offset) if a[0] == "GET" and f"/{repo}/blobs/" in a[1]]
            fetches.setdefault(column, []).append(len(gets) / len(image.blob_digests))
            with sampling(server) as rss:  # a warm pull is short and skopeo-bound: the median of a few
                seconds = statistics.median(_pull(b, server, name, b.workdir / "pulled") for _ in range(WARM_PULLS))
            warm.add(column, seconds, rss.peak.get(label))
    warm.notes.append(f"each run: the median of {WARM_PULLS} warm pulls")
    cold.notes.append("upstream blob GETs per blob: " + ", ".join(f"{c} {max(v):.2f}" for c, v in fetches.items()))
    b.results.samples["pt_cold_upstream_gets_per_blob"] = fetches


def fanout(b: Bench) -> None:
    n = b.plan.fanout

    def exactly_one(row: Row, label: str) -> bool | None:
        values = row.values.get(label)
        return None if not values else all(v == 1.0 for v in values)

    row = b.results.row(
        "fanout-fetches",
        f"upstream blob GETs per blob, {n} concurrent cold pulls",
        "count",
        better="lower",
        fmt=".2f",
        target=Target("exactly 1", exactly_one),
    )
    wall = b.results.row("fanout-time", f"{n} concurrent cold pulls, slowest", "s", better="lower", fmt=".2f")
    upstream = b.upstream
    details: list[dict[str, object]] = []
    worst: dict[str, int] = {}
    manifests_most: dict[str, int] = {}
    for i in range(b.plan.runs):
        image = b.image(f"fan-{i}", list(b.plan.pt_layers))
        repo = f"pt/fan-{i}"
        b.push(upstream, image, repo)
        for column, label in _caches():
            server = b.server(label)
            name = _pt_name(server, repo)
            offset = upstream.log_size()
            dests = [b.workdir / f"fan-{j}" for j in range(n)]
            jobs = [(f"docker://{server.host}/{name}:v1", f"dir:{d}", server.creds) for d in dests]
            try:
                with sampling(server) as rss:
                    times = b.skopeo.copy_concurrently(jobs)
            finally:
                for d in dests:
                    shutil.rmtree(d, ignore_errors=True)
            accesses = upstream.accesses_since(offset)
            blob_gets = Counter(
                a[1].rsplit("/", 1)[1] for a in accesses if a[0] == "GET" and f"/v2/{repo}/blobs/" in a[1]
            )
            heads = sum(1 for a in accesses if a[0] == "HEAD" and f"/v2/{repo}/blobs/" in a[1])
            manifests = sum(1 for a in accesses if f"/v2/{repo}/manifests/" in a[1])
            missing = [d for d in image.blob_digests if d not in blob_gets]
            per_blob = sum(blob_gets[d] for d in image.blob_digests) / len(image.blob_digests)
            row.add(column, per_blob, rss.peak.get(label))
            wall.add(column, max(times), rss.peak.get(label))
            worst[column] = max(worst.get(column, 0), max(blob_gets.values(), default=0))
            manifests_most[column] = max(manifests_most.get(column, 0), manifests)
            details.append(
                {
                    "run": i,
                    "server": label,
                    "blob_gets": dict(blob_gets),
                    "blob_heads": heads,
                    "manifest_requests": manifests,
                    "never_fetched": missing,
                }
            )
            print(
                f"  {label}: {sum(blob_gets.values())} blob GETs for {len(image.blob_digests)} blobs "
                f"(max {max(blob_gets.values(), default=0)} per blob), {heads} blob HEADs, "
                f"{manifests} manifest requests upstream",
                flush=True,
            )
    b.results.samples["fanout"] = details
    for column in worst:
        row.notes.append(f"{column}: max {worst[column]} GETs for one blob, {manifests_most[column]} manifest requests")


BENCHMARKS = {
    "pull-through": pull_through,
    "fanout": fanout,
}
