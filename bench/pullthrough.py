"""The pull-through benchmarks: pulls through each cache of images only the upstream has, cold then warm.

Caches (both in front of `upstream`, a Distribution with its access log on; suite.py defines them):
  moorage-cache       Moorage with a pull-through rule `hub` -> upstream
  distribution-proxy  Distribution in proxy mode -> upstream
and, for the PostgreSQL + S3 backend, backends.py's `moorage-pg-s3-cache` and `distribution-proxy-s3`.

The floor of a warm pull (`nginx-static-pull`): nginx serving one image of the same shape read-only, as static
files at a registry's paths (`/v2/` answering 200, the manifest by tag with Moorage's Content-Type and
Docker-Content-Digest, the blobs): the fastest any registry could make that pull, so the report can say what
share of the possible gain over Distribution a cache reaches.

Benchmarks:
  pull-through  skopeo copies to a directory: the cold pull, then warm (the median of 3 per run); the floor's warm
                pull; upstream blob GETs per blob
  pull-lean     warm pulls by bench/lean.py's client (manifest, then config and layers 3 at once, bodies read into a
                4 MiB buffer; digests verified on the first pull only): the median of 5 pulls per run, then 8
                such clients pulling at once (wall, the median of 3 per run); also from the floor
  pull-wan      pull-lean through both caches in front of the upstream behind bench/wan.py's relay, RTT_MS (20 ms)
                away, as a real upstream is
  fanout        6 skopeo pulls at once of an image new to the cache: upstream blob GETs per blob, slowest pull
"""

from __future__ import annotations

import shutil
import statistics
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from bench.content import ACCEPT, Image, MiB, digest_of
from bench.lean import LeanClient, fleet_pull, verify_first
from bench.report import DISTRIBUTION, FLOOR, MOORAGE, PULL_TIMES, Row, Target, gain_share, ratio_target
from bench.rss import sampling
from bench.servers import BenchError, Moorage, NginxStatic, Served, Server, served
from bench.suite import CACHE_PREFIX, Bench
from bench.wan import RTT_MS

WARM_PULLS = 3  # skopeo warm pulls per run; the run's value is their median
LEAN_PULLS = 5  # lean warm pulls per run; the run's value is their median
FLEET_CLIENTS = 8  # lean clients pulling at once
FLEET_PULLS = 3  # rounds of them per run; the run's value is their median
FLOOR_REPO = "pt/floor"

Cache = tuple[str, str]  # (the column it fills in the rows, the server's label)


def _pt_name(server: Server, repo: str) -> str:
    return f"{CACHE_PREFIX}/{repo}" if isinstance(server, Moorage) else repo


def _caches() -> list[Cache]:
    return [(MOORAGE, "moorage-cache"), (DISTRIBUTION, "distribution-proxy")]


def _shape(b: Bench) -> str:
    return f"{len(b.plan.pt_layers)} layers, {sum(b.plan.pt_layers) / MiB:.0f} MiB"


def _pull(b: Bench, server: Server, name: str, dest: Path) -> float:
    try:
        return b.skopeo.copy(f"docker://{server.host}/{name}:v1", f"dir:{dest}", src_creds=server.creds)
    finally:
        shutil.rmtree(dest, ignore_errors=True)


# -- the floor ----------------------------------------------------------------------------------------------


class PullFloor(NginxStatic):
    """nginx-static with a registry's `/v2/` (200, `{}`) beside the image's manifest and blobs: enough for a pull."""

    def __init__(self, label: str, workdir: Path, answers: list[Served], workers: int) -> None:
        super().__init__(label, workdir, answers, workers)
        self.extra_locations = (
            "        location = /v2/ { default_type application/json; "
            'add_header Docker-Distribution-Api-Version "registry/2.0"; return 200 "{}"; }\n'
        )


def floor(b: Bench, source: str) -> tuple[Server, bytes]:
    """The floor server (started on first use, with the answers of the cache `source` to a pull of an image of the
    benchmark's shape) and the manifest it serves."""
    if not b.lab.defines(FLOOR):

        def make() -> Server:
            from registry.config import ServerConfig

            image = b.image("pt-floor", list(b.plan.pt_layers))
            b.push(b.upstream, image, FLOOR_REPO)
            cache = b.server(source)
            name = _pt_name(cache, FLOOR_REPO)
            manifest = served(cache, f"/v2/{name}/manifests/v1", {"Accept": ACCEPT})
            if manifest.body != image.manifest:
                raise BenchError(f"{source} did not answer the manifest pushed upstream")
            answers = [Served(f"/v2/{FLOOR_REPO}/manifests/v1", manifest.body, manifest.headers)]
            for digest in image.blob_digests:
                blob = served(cache, f"/v2/{name}/blobs/{digest}", {})
                if digest_of(blob.body) != digest:
                    raise BenchError(f"{source}: blob {digest} arrived as {digest_of(blob.body)}")
                answers.append(Served(f"/v2/{FLOOR_REPO}/blobs/{digest}", blob.body, blob.headers))
            workers = ServerConfig(workers=0).worker_count  # as many as Moorage's, as nginx-static
            return PullFloor(FLOOR, b.workdir / FLOOR, answers, workers)

        b.lab.define(FLOOR, make)
    server = b.server(FLOOR)
    assert isinstance(server, PullFloor)
    return server, server.answers[0].body


def new_images(b: Bench, name: str, repo: str) -> Iterator[tuple[Image, str]]:
    """Per run: a new image (`name-i`) pushed to the upstream as `repo-i`, which no cache has seen; the image and
    the repository."""
    upstream = b.upstream
    for i in range(b.plan.runs):
        image = b.image(f"{name}-{i}", list(b.plan.pt_layers))
        b.push(upstream, image, f"{repo}-{i}")
        yield image, f"{repo}-{i}"


def floor_note(row: Row, moorage: str, distribution: str) -> None:
    """The floor's median and the share of the possible gain over Distribution the Moorage column reaches."""
    m, d, f = row.median(moorage), row.median(distribution), row.median(FLOOR)
    if f is None:
        return
    share = gain_share(m, d, f)
    gain = "Distribution within 10% of it" if share is None else f"Moorage has {share:.0%} of the possible gain"
    row.notes.append(f"floor (nginx serving the image): {f:{row.fmt}} s; {gain}")


# -- skopeo --------------------------------------------------------------------------------------------------


def skopeo_pulls(b: Bench, caches: list[Cache], cold: Row, warm: Row) -> None:
    """Each run: a new image in the upstream; per cache its cold pull, then warm ones; then the floor's."""
    upstream = b.upstream
    fetches: dict[str, list[float]] = {}
    for image, repo in new_images(b, "pt", "pt/img"):
        for column, label in caches:
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
        server, _ = floor(b, caches[0][1])
        with sampling(server) as rss:
            seconds = statistics.median(_pull(b, server, FLOOR_REPO, b.workdir / "pulled") for _ in range(WARM_PULLS))
        warm.add(FLOOR, seconds, rss.peak.get(FLOOR))
    warm.notes.append(f"each run: the median of {WARM_PULLS} warm pulls")
    floor_note(warm, caches[0][0], caches[1][0])
    cold.notes.append("upstream blob GETs per blob: " + ", ".join(f"{c} {max(v):.2f}" for c, v in fetches.items()))
    b.results.samples[f"{cold.key.replace('-', '_')}_upstream_gets_per_blob"] = fetches


def pull_through(b: Bench) -> None:
    shape = _shape(b)
    cold = b.results.row("pt-cold", f"pull-through cold pull ({shape})", "s", better="lower", fmt=".2f")
    warm = b.results.row(
        "pt-warm", f"pull-through warm pull ({shape})", "s", better="lower", fmt=".2f", target=ratio_target(PULL_TIMES)
    )
    skopeo_pulls(b, _caches(), cold, warm)


# -- the lean client -----------------------------------------------------------------------------------------


def lean_rows(b: Bench, key: str, section: str = "", where: str = "") -> tuple[Row, Row]:
    """The lean pull's rows; the target is the main table's (Moorage vs Distribution columns) when `section` is.
    `where`: what the title adds (the upstream's distance)."""
    lean = b.results.row(
        key,
        f"pull-through warm pull, lean client ({_shape(b)}; 3 blobs at once{where})",
        "s",
        better="lower",
        fmt=".3f",
        target=None if section else ratio_target(PULL_TIMES),
        section=section,
    )
    fleet = b.results.row(
        f"{key}-{FLEET_CLIENTS}",
        f"pull-through warm pull, {FLEET_CLIENTS} lean clients at once{where}: wall",
        "s",
        better="lower",
        fmt=".3f",
        section=section,
    )
    return lean, fleet


def _lean(
    b: Bench, server: Server, name: str, manifest: bytes, column: str, rows: tuple[Row, Row], repo: str | None = None
) -> tuple[float, float | None]:
    """Lean pulls of `name:v1` from `server`: the first verified (for a cache, its cold fill) and one more untimed,
    then LEAN_PULLS timed, then FLEET_PULLS rounds of FLEET_CLIENTS at once. The first pull's seconds, and (given
    the upstream `repo`) the upstream requests for it per warm pull."""
    lean, fleet = rows
    clients = [LeanClient(server.url, name, "v1", server.headers)]
    try:
        first = verify_first(clients[0], manifest)
        offset = b.upstream.log_size() if repo else 0
        clients[0].pull()  # untimed: whatever the first pull left behind (a cache storing a blob) is finished
        with sampling(server) as rss:
            times = [clients[0].pull() for _ in range(LEAN_PULLS)]
        lean.add(column, statistics.median(times), rss.peak.get(server.label))
        clients += [LeanClient(server.url, name, "v1", server.headers) for _ in range(FLEET_CLIENTS - 1)]
        with sampling(server) as rss:
            walls = [fleet_pull(clients) for _ in range(FLEET_PULLS)]
        fleet.add(column, statistics.median(walls), rss.peak.get(server.label))
    finally:
        for client in clients:
            client.close()
    asked = None
    if repo:
        pulls = 1 + LEAN_PULLS + FLEET_PULLS * FLEET_CLIENTS
        asked = sum(1 for a in b.upstream.accesses_since(offset) if f"/v2/{repo}/" in a[1]) / pulls
    print(
        f"  {server.label}: lean pull {min(times):.3f}-{max(times):.3f} s (first {first:.3f} s), "
        f"{FLEET_CLIENTS} at once {min(walls):.3f}-{max(walls):.3f} s"
        + ("" if asked is None else f", {asked:.2f} upstream requests per warm pull"),
        flush=True,
    )
    return first, asked


def lean_pulls(b: Bench, caches: list[Cache], lean: Row, fleet: Row) -> None:
    """Each run: a new image in the upstream, pulled through each cache by the lean client (cold, then warm), then
    the floor's image from the floor. Upstream requests during the warm pulls are counted."""
    firsts: dict[str, list[float]] = {}
    asked: dict[str, list[float]] = {}
    for image, repo in new_images(b, "lean", "pt/lean"):
        for column, label in caches:
            server = b.server(label)
            first, requests = _lean(b, server, _pt_name(server, repo), image.manifest, column, (lean, fleet), repo)
            firsts.setdefault(column, []).append(first)
            asked.setdefault(column, []).append(requests or 0.0)
        server, manifest = floor(b, caches[0][1])
        _lean(b, server, FLOOR_REPO, manifest, FLOOR, (lean, fleet))
    lean.notes.append(f"each run: the median of {LEAN_PULLS} warm pulls on one client's 3 keep-alive connections")
    fleet.notes.append(f"each run: the median of {FLEET_PULLS} rounds; every client pulls once per round")
    for row in (lean, fleet):
        floor_note(row, caches[0][0], caches[1][0])
    lean.notes.append(
        "upstream requests per warm pull: " + ", ".join(f"{c} {statistics.median(v):.2f}" for c, v in asked.items())
    )
    b.results.samples[f"{lean.key.replace('-', '_')}_first_pull_s"] = firsts
    b.results.samples[f"{lean.key.replace('-', '_')}_upstream_requests_per_warm_pull"] = asked


def pull_lean(b: Bench) -> None:
    lean, fleet = lean_rows(b, "pt-lean")
    lean_pulls(b, _caches(), lean, fleet)


def pull_wan(b: Bench) -> None:
    """The lean pulls again, through both caches in front of the upstream a round trip of RTT_MS away (as a real
    upstream is): a warm pull that asks the upstream pays the distance."""
    lean, fleet = lean_rows(b, "pt-lean-wan", where=f"; upstream {RTT_MS:g} ms away")
    lean_pulls(b, [(MOORAGE, "moorage-cache-wan"), (DISTRIBUTION, "distribution-proxy-wan")], lean, fleet)


# -- fan-out -------------------------------------------------------------------------------------------------


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
    for i, (image, repo) in enumerate(new_images(b, "fan", "pt/fan")):
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
    "pull-lean": pull_lean,
    "pull-wan": pull_wan,
    "fanout": fanout,
}
