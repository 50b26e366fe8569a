"""The headline benchmarks on Moorage's shared backend, PostgreSQL + S3, beside its default, SQLite + filesystem.

Servers (started on first use, besides suite.py's):
  postgres                a PostgreSQL cluster of the run's own (fsync on)
  seaweedfs               SeaweedFS (`weed server -s3`) with one bucket
  moorage-pg-s3           Moorage on both: metadata in PostgreSQL, blobs in the bucket; blob GETs streamed
  moorage-pg-s3-redirect  another replica on the same database and bucket, `[storage.s3] redirect = true`

Benchmarks (group `backends`, part of `headline`):
  backend-manifest  hot manifest GET, one replica (wrk, as `manifest`): target ≥ 0.8x of the SQLite backend
  backend-blob      large blob GET (the large-blob client): SQLite + filesystem (sendfile), PG + S3 streamed, and
                    redirected (the client follows the 307 to SeaweedFS, end to end); SeaweedFS alone in the notes
  backend-push      skopeo push of a one-layer image (256 MiB), a new layer each run, on both backends

Runs are interleaved, as in suite.py.
"""

from __future__ import annotations

from bench.content import ACCEPT, MiB
from bench.load import blob_gets, check_get
from bench.report import MOORAGE, PG_S3, PG_S3_REDIRECT, Row, Target
from bench.rss import sampling
from bench.servers import BenchError, Moorage, Postgres, SeaweedFS, Server, shared_backend_config
from bench.suite import Bench, _push_image

MANIFEST_TARGET = 0.8  # the PostgreSQL + S3 backend's hot manifest GET, as a share of SQLite's


def _define(b: Bench) -> None:
    """The shared backends' servers, defined in the lab on first use."""
    lab = b.lab
    if lab.defines(PG_S3):
        return
    lab.define("postgres", Postgres)
    lab.define("seaweedfs", lambda: SeaweedFS(b.workdir / "seaweedfs"))

    def replica(label: str, redirect: bool) -> Moorage:
        postgres, s3 = lab.get("postgres"), lab.get("seaweedfs")
        assert isinstance(postgres, Postgres) and isinstance(s3, SeaweedFS)
        config = shared_backend_config(postgres, s3, redirect=redirect)
        return Moorage(label, b.workdir / label, extra_config=config)

    lab.define(PG_S3, lambda: replica(PG_S3, False))
    lab.define(PG_S3_REDIRECT, lambda: replica(PG_S3_REDIRECT, True))


def _server(b: Bench, label: str) -> Server:
    _define(b)
    return b.server(label)


def _share_target(minimum: float) -> Target:
    def check(row: Row, label: str) -> bool | None:
        r = row.ratio(label, MOORAGE)
        return None if r is None else r >= minimum

    return Target(f"≥ {minimum:g}x of SQLite", check)


def backend_manifest(b: Bench) -> None:
    row = b.results.row(
        "backend-manifest",
        f"manifest GET by tag, one replica (wrk -c{b.plan.connections})",
        "req/s",
        target=_share_target(MANIFEST_TARGET),
        section="backends",
    )
    _define(b)
    paths = {}
    for label in (MOORAGE, PG_S3):
        b.small_on(label)
        paths[label] = "/v2/bench/small/manifests/v1"
    b.wrk_rows(row, paths, b.plan.connections, b.plan.wrk_seconds)


def backend_blob(b: Bench) -> None:
    mib = b.plan.large_blob / MiB
    row = b.results.row(
        "backend-blob",
        f"large blob GET, {mib:.0f} MiB (1 connection, GETs for {b.plan.large_seconds:g} s)",
        "GB/s",
        fmt=".2f",
        section="backends",
    )
    image = _push_image(b, 0)
    digest = image.layer_digests[0]
    sqlite, shared = b.server(MOORAGE), _server(b, PG_S3)
    b.push(sqlite, image, "bench/push-0")
    b.push(shared, image, "bench/push-0")  # the redirecting replica shares its database and bucket
    b.pushed.add((PG_S3_REDIRECT, "bench/push-0"))
    redirect = _server(b, PG_S3_REDIRECT)
    path = f"/v2/bench/push-0/blobs/{digest}"
    for server in (sqlite, shared):
        check_get(server.url + path, {"Accept": ACCEPT})
    # The 307's Location: SeaweedFS alone serving the same object (valid for 20 minutes: the whole benchmark).
    location = _redirect_location(redirect.url + path)
    s3 = _server(b, "seaweedfs")
    targets: list[tuple[str, Server, str, bool]] = [
        (MOORAGE, sqlite, sqlite.url + path, False),
        (PG_S3, shared, shared.url + path, False),
        (PG_S3_REDIRECT, redirect, redirect.url + path, True),
        ("s3-direct", s3, location, False),
    ]
    for _ in range(b.plan.runs):
        for label, server, url, follow in targets:
            with sampling(server) as rss:
                size, seconds, _ = blob_gets(url, duration=b.plan.large_seconds, follow=follow)
            if size % image.layer_sizes[0]:
                raise BenchError(f"{label}: {size} bytes is not a whole number of {image.layer_sizes[0]}-byte bodies")
            row.add(label, size / seconds / 1e9, rss.peak.get(server.label))
    direct = row.median("s3-direct")
    if direct:
        row.notes.append(f"SeaweedFS alone (a presigned GET, no Moorage): {direct:.2f} GB/s")
    row.notes.append("redirect: the 307 and the GET it names, both timed")


def _redirect_location(url: str) -> str:
    import requests

    try:
        r = requests.get(url, allow_redirects=False, timeout=30)
    except requests.RequestException as e:
        raise BenchError(f"GET {url}: {e}") from None
    if r.status_code != 307 or "Location" not in r.headers:
        raise BenchError(f"GET {url}: {r.status_code}, expected 307 with a Location (redirect = true)")
    return str(r.headers["Location"])


def backend_push(b: Bench) -> None:
    mib = b.plan.large_blob / MiB
    row = b.results.row(
        "backend-push",
        f"push (skopeo) of a {mib:.0f} MiB layer image",
        "s",
        better="lower",
        fmt=".2f",
        section="backends",
    )
    servers = [b.server(MOORAGE), _server(b, PG_S3)]
    for i in range(b.plan.runs):
        image = b.image(f"backend-push-{i}", [b.plan.large_blob])  # a new layer each run, on both servers
        for server in servers:
            with sampling(server) as rss:
                seconds = b.push(server, image, f"bench/backend-push-{i}")
            if seconds is None:
                continue
            row.add(server.label, seconds, rss.peak.get(server.label))
            print(f"  push {i} to {server.label}: {seconds:.2f} s", flush=True)


BENCHMARKS = {
    "backend-manifest": backend_manifest,
    "backend-blob": backend_blob,
    "backend-push": backend_push,
}
