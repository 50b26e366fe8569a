"""The headline benchmarks on Moorage's shared backend, PostgreSQL + S3, beside its default, SQLite + filesystem,
and the performance issue's targets on it, against Distribution on the same S3.

Servers (started on first use, besides suite.py's):
  postgres                a PostgreSQL cluster of the run's own (fsync on)
  seaweedfs               SeaweedFS (`weed server -s3`) with one bucket
  moorage-pg-s3           Moorage on both: metadata in PostgreSQL, blobs in the bucket; blob GETs streamed
  moorage-pg-s3-auth      another replica on the same database and bucket, auth on (a token on every request)
  moorage-pg-s3-redirect  another replica on the same database and bucket, `[storage.s3] redirect = true`
  distribution-s3         Distribution on its s3 storage driver, same bucket (its own root directory), streamed
  moorage-pg-s3-cache     a Moorage pull-through cache (rule `hub` -> upstream) on a database of its own in the
                          same cluster and its own prefix of the bucket
  distribution-proxy-s3   Distribution in proxy mode -> upstream, on its s3 driver (its own root directory)

Benchmarks (group `backends`, part of `headline`):
  backend-manifest    hot manifest GET (wrk, as `manifest`) on moorage, moorage-pg-s3, moorage-pg-s3-auth,
                      distribution-s3 and bare-aiohttp: PG + S3 ≥ 0.8x of the SQLite backend, per replica; and the
                      issue's targets on PG + S3 (≥ 70% of bare-aiohttp, ≥ 10x distribution-s3, auth ≥ 90% of off)
  backend-small-blob  the same for the small blob GET
  backend-blob        large blob GET (the large-blob client): SQLite + filesystem (sendfile), PG + S3 streamed, and
                      redirected (the client follows the 307 to SeaweedFS, end to end); SeaweedFS alone in the notes
  backend-push        skopeo push of a one-layer image (256 MiB), a new layer each run, on both backends and on
                      distribution-s3 (target on PG + S3: ≥ 1.3x distribution-s3)
  backend-pull-through  pullthrough.py's `pull-through` on moorage-pg-s3-cache and distribution-proxy-s3
  backend-pull-lean     pullthrough.py's `pull-lean` on them (target: ≥ 1.5x)

Runs are interleaved, as in suite.py.
"""

from __future__ import annotations

from bench.content import ACCEPT, MiB
from bench.load import blob_gets, check_get
from bench.pullthrough import lean_pulls, lean_rows, skopeo_pulls
from bench.report import (
    BARE,
    DIST_PROXY_S3,
    DIST_S3,
    MOORAGE,
    PG_S3,
    PG_S3_AUTH,
    PG_S3_CACHE,
    PG_S3_REDIRECT,
    Row,
    Target,
)
from bench.rss import sampling
from bench.servers import (
    BenchError,
    Distribution,
    Moorage,
    Postgres,
    SeaweedFS,
    Served,
    Server,
    served,
    shared_backend_config,
)
from bench.suite import Bench, _push_image, cache_config

MANIFEST_TARGET = 0.8  # the PostgreSQL + S3 backend's hot manifest GET, as a share of SQLite's


def _define(b: Bench) -> None:
    """The shared backends' servers, defined in the lab on first use."""
    lab = b.lab
    if lab.defines(PG_S3):
        return
    lab.define("postgres", Postgres)
    lab.define("seaweedfs", lambda: SeaweedFS(b.workdir / "seaweedfs"))

    def services() -> tuple[Postgres, SeaweedFS]:
        postgres, s3 = lab.get("postgres"), lab.get("seaweedfs")
        assert isinstance(postgres, Postgres) and isinstance(s3, SeaweedFS)
        return postgres, s3

    def replica(label: str, redirect: bool, auth: bool = False) -> Moorage:
        config = shared_backend_config(*services(), redirect=redirect)
        return Moorage(label, b.workdir / label, auth=auth, extra_config=config)

    def cache() -> Moorage:
        postgres, s3 = services()
        dsn = postgres.create_database("moorage_cache")  # its rule and cached repositories apart from the replicas'
        config = shared_backend_config(postgres, s3, redirect=False, dsn=dsn, prefix="pull-through")
        return Moorage(PG_S3_CACHE, b.workdir / PG_S3_CACHE, extra_config=config + cache_config(b.upstream.url))

    def distribution(label: str, rootdirectory: str, proxy: bool) -> Distribution:
        storage = services()[1].distribution_storage_at(rootdirectory)
        proxy_url = b.upstream.url if proxy else None
        return Distribution(label, b.workdir / label, proxy_url=proxy_url, access_log=True, storage=storage)

    lab.define(PG_S3, lambda: replica(PG_S3, False))
    lab.define(PG_S3_AUTH, lambda: replica(PG_S3_AUTH, False, auth=True))
    lab.define(PG_S3_REDIRECT, lambda: replica(PG_S3_REDIRECT, True))
    # As shipped, as `distribution`: its access log on.
    lab.define(DIST_S3, lambda: distribution(DIST_S3, "/distribution", proxy=False))
    lab.define(PG_S3_CACHE, cache)
    lab.define(DIST_PROXY_S3, lambda: distribution(DIST_PROXY_S3, "/proxy", proxy=True))


def _server(b: Bench, label: str) -> Server:
    _define(b)
    return b.server(label)


def _share_target(minimum: float) -> Target:
    def check(row: Row, label: str) -> bool | None:
        r = row.ratio(label, MOORAGE)
        return None if r is None else r >= minimum

    return Target(f"≥ {minimum:g}x of SQLite", check)


PER_REQUEST = {"x-request-id"}  # header fields whose value is each answer's own (bare-aiohttp repeats one)
GETS = (MOORAGE, PG_S3, PG_S3_AUTH, DIST_S3)  # measured by the manifest and small-blob GET rows, with bare-aiohttp


def _small_everywhere(b: Bench) -> None:
    _define(b)
    for label in (MOORAGE, PG_S3, DIST_S3):
        b.small_on(label)
    b.pushed.add((PG_S3_AUTH, "bench/small"))  # on the database and bucket it shares with moorage-pg-s3


def _same_answer(row: Row, sqlite: Served, shared: Served) -> bool:
    """Whether PostgreSQL + S3 answered as SQLite + filesystem did, whose answer bare-aiohttp repeats."""
    fields = sorted(
        k
        for k in {*sqlite.headers, *shared.headers}
        if sqlite.headers.get(k) != shared.headers.get(k) and k.lower() not in PER_REQUEST
    )
    if shared.body == sqlite.body and not fields:
        return True
    differ = ", ".join((["the body"] if shared.body != sqlite.body else []) + fields)
    row.notes.append(f"**PG + S3's answer differs from SQLite's** (which bare-aiohttp repeats): {differ}")
    return False


def _gets(b: Bench, row: Row, path: str, answer: int) -> None:
    """wrk GET `path` on GETS and on bare-aiohttp (when PG + S3 answers with the bytes it repeats), interleaved; the
    bytes per response of moorage-pg-s3, its auth replica and bare-aiohttp checked equal."""
    _small_everywhere(b)
    paths = dict.fromkeys(GETS, path)
    sqlite = b.answers()[answer]
    shared = served(b.server(PG_S3), path, {"Accept": ACCEPT})
    if _same_answer(row, sqlite, shared):
        try:
            b.server(BARE)
            paths[BARE] = path
        except BenchError as e:
            row.notes.append(f"{BARE} not measured")
            b.results.note(f"{row.key}: {BARE} not measured: {e}")
    results = b.wrk_rows(row, paths, b.plan.connections, b.plan.wrk_seconds)
    sizes = {label: round(r[-1].bytes / r[-1].requests) for label, r in results.items()}
    if BARE in sizes and not sizes[PG_S3] == sizes[PG_S3_AUTH] == sizes[BARE]:
        row.notes.append(
            f"**bytes per response differ**: {PG_S3} {sizes[PG_S3]}, {PG_S3_AUTH} {sizes[PG_S3_AUTH]}, "
            f"{BARE} {sizes[BARE]}"
        )


def backend_manifest(b: Bench) -> None:
    row = b.results.row(
        "backend-manifest",
        f"manifest GET by tag, one replica (wrk -c{b.plan.connections})",
        "req/s",
        target=_share_target(MANIFEST_TARGET),
        section="backends",
    )
    _gets(b, row, "/v2/bench/small/manifests/v1", 0)


def backend_small_blob(b: Bench) -> None:
    size = b.small().layer_sizes[0]
    row = b.results.row(
        "backend-small-blob",
        f"small blob GET, {size / 1024:.1f} KiB, one replica (wrk -c{b.plan.connections})",
        "req/s",
        section="backends",
    )
    _gets(b, row, f"/v2/bench/small/blobs/{b.small().layer_digests[0]}", 1)


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
    servers = [b.server(MOORAGE), _server(b, PG_S3), _server(b, DIST_S3)]
    for i in range(b.plan.runs):
        image = b.image(f"backend-push-{i}", [b.plan.large_blob])  # a new layer each run, on both servers
        for server in servers:
            with sampling(server) as rss:
                seconds = b.push(server, image, f"bench/backend-push-{i}")
            if seconds is None:
                continue
            row.add(server.label, seconds, rss.peak.get(server.label))
            print(f"  push {i} to {server.label}: {seconds:.2f} s", flush=True)


def _pg_caches(b: Bench) -> list[tuple[str, str]]:
    _define(b)
    return [(PG_S3_CACHE, PG_S3_CACHE), (DIST_PROXY_S3, DIST_PROXY_S3)]


def backend_pull_through(b: Bench) -> None:
    shape = f"{len(b.plan.pt_layers)} layers, {sum(b.plan.pt_layers) / MiB:.0f} MiB"
    cold = b.results.row(
        "pg-pt-cold", f"pull-through cold pull ({shape})", "s", better="lower", fmt=".2f", section="pg"
    )
    warm = b.results.row(
        "pg-pt-warm", f"pull-through warm pull ({shape})", "s", better="lower", fmt=".2f", section="pg"
    )
    skopeo_pulls(b, _pg_caches(b), cold, warm)


def backend_pull_lean(b: Bench) -> None:
    lean, fleet = lean_rows(b, "pg-pt-lean", section="pg")
    lean_pulls(b, _pg_caches(b), lean, fleet)


BENCHMARKS = {
    "backend-manifest": backend_manifest,
    "backend-small-blob": backend_small_blob,
    "backend-blob": backend_blob,
    "backend-push": backend_push,
    "backend-pull-through": backend_pull_through,
    "backend-pull-lean": backend_pull_lean,
}
