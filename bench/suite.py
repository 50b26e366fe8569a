"""The headline benchmarks: what each measures, on which servers, with which content.

Servers (started on first use, see bench/servers.py):
  moorage         Moorage, auth off                       | moorage-auth   Moorage, auth on (token)
  distribution    Distribution 2.8                        | sendfile       nginx/os.sendfile over Moorage's blob dir
  bare-aiohttp    a bare aiohttp app on uvloop answering Moorage's manifest and small blob from memory, as many
                  processes as Moorage's workers (the reference line of the manifest and small-blob GETs)
  nginx-static    nginx serving the same bytes as static files, as many worker processes (the machine's floor)
  upstream        Distribution with its access log on: the local upstream of both caches
  moorage-cache   Moorage with a pull-through rule `hub` -> upstream
  distribution-proxy  Distribution in proxy mode -> upstream
  upstream-wan    bench/wan.py's relay to upstream, a round trip of RTT_MS away (a real upstream's distance)
  moorage-cache-wan, distribution-proxy-wan  the two caches again, in front of upstream-wan

Runs are interleaved (run 1 on every server, then run 2 ...) so drift in the machine's load hits all alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bench.content import ACCEPT, Image, MiB, digest_of, write_image, write_random_file
from bench.load import Skopeo, Wrk, WrkResult, blob_gets, check_get, upload_file
from bench.report import (
    BARE,
    DISTRIBUTION,
    DISTRIBUTION_TIMES,
    MOORAGE,
    MOORAGE_AUTH,
    NGINX_STATIC,
    PUSH_TIMES,
    REFERENCES,
    Results,
    Row,
    Table,
    Target,
    ratio_target,
)
from bench.rss import process_tree, sampling, status_mib
from bench.servers import (
    BareAiohttp,
    BenchError,
    Distribution,
    Lab,
    Moorage,
    NginxStatic,
    SendfileBaseline,
    Served,
    Server,
    served,
)
from bench.wan import RTT_MS, WanLink

HEADLINE = (MOORAGE, MOORAGE_AUTH, DISTRIBUTION)
CACHE_PREFIX = "hub"


def cache_config(upstream_url: str) -> str:
    """The config of a Moorage pull-through cache: the rule `hub` -> the upstream (on loopback)."""
    return (
        '[pull_through]\nallowed_upstreams = ["127.0.0.1"]\n[[pull_through.rules]]\n'
        f'ecr_repository_prefix = "{CACHE_PREFIX}"\nupstream_registry_url = "{upstream_url}"\n'
    )


@dataclass(frozen=True)
class Plan:
    runs: int
    wrk_seconds: float
    connections: int
    small_layer: int
    large_blob: int
    large_seconds: float
    pt_layers: tuple[int, ...]
    fanout: int
    rss_blob: int
    rss_flat_mib: float
    curve_connections: tuple[int, ...]
    curve_seconds: float
    repo_steps: tuple[int, ...]
    tag_steps: tuple[int, ...]
    scale_wrk_seconds: float
    seed_concurrency: int
    seed_budget: float  # seconds for one seeding step, per server
    fleet_layer: int = 4 * 1024 * 1024  # the fleet benchmark: 5 images of 4 layers this size
    fleet_clients: tuple[int, ...] = (20, 50)
    # bench/instructions.py: GETs per counted window (per server and route, `runs` windows), warm-up GETs per route,
    # seconds each server is watched idle
    instr_requests: int = 2000
    instr_warm: int = 300
    instr_idle: float = 10.0

    @classmethod
    def full(cls, runs: int) -> Plan:
        return cls(
            runs=runs,
            wrk_seconds=10,
            connections=16,
            small_layer=3 * 1024,
            large_blob=256 * MiB,
            large_seconds=10,
            pt_layers=(16 * MiB,) * 4,
            fanout=6,
            rss_blob=1024 * MiB,
            rss_flat_mib=64,
            curve_connections=(1, 4, 16, 64),
            curve_seconds=5,
            repo_steps=(10, 100, 1_000, 10_000),
            tag_steps=(1_000, 10_000, 100_000),
            scale_wrk_seconds=5,
            seed_concurrency=16,
            seed_budget=1800,
        )

    @classmethod
    def quick(cls, runs: int) -> Plan:
        return cls(
            runs=runs,
            wrk_seconds=1,
            connections=16,
            small_layer=3 * 1024,
            large_blob=16 * MiB,
            large_seconds=1,
            pt_layers=(1 * MiB,) * 3,
            fanout=6,
            rss_blob=64 * MiB,
            rss_flat_mib=16,
            curve_connections=(1, 4, 16, 64),
            curve_seconds=1,
            repo_steps=(10, 100),
            tag_steps=(100, 1_000),
            scale_wrk_seconds=1,
            seed_concurrency=8,
            seed_budget=120,
            fleet_layer=256 * 1024,
            fleet_clients=(20,),
            instr_requests=300,
            instr_warm=100,
            instr_idle=2.0,
        )


class Bench:
    """The lab, the clients, the content (made once, pushed where needed) and the results."""

    def __init__(self, workdir: Path, plan: Plan, results: Results) -> None:
        self.workdir = workdir
        self.plan = plan
        self.results = results
        self.lab = Lab(workdir)
        self.wrk = Wrk(workdir)
        self.skopeo = Skopeo(workdir)
        self._images: dict[str, Image] = {}
        self.pushed: set[tuple[str, str]] = set()  # (server label, repo)
        self._answers: tuple[Served, Served] | None = None
        lab = self.lab
        lab.define(MOORAGE, lambda: Moorage(MOORAGE, workdir / MOORAGE))
        lab.define(MOORAGE_AUTH, lambda: Moorage(MOORAGE_AUTH, workdir / MOORAGE_AUTH, auth=True))
        # Both servers as shipped: each writes its access log (Moorage's [log] access = true, Distribution's
        # accesslog enabled), so neither is measured without the per-request work it normally does.
        lab.define(DISTRIBUTION, lambda: Distribution(DISTRIBUTION, workdir / DISTRIBUTION, access_log=True))
        lab.define("upstream", lambda: Distribution("upstream", workdir / "upstream", access_log=True))
        lab.define(
            "moorage-cache",
            lambda: Moorage("moorage-cache", workdir / "moorage-cache", extra_config=cache_config(self.upstream.url)),
        )
        lab.define(
            "distribution-proxy",
            lambda: Distribution(
                "distribution-proxy", workdir / "distribution-proxy", proxy_url=self.upstream.url, access_log=True
            ),
        )
        lab.define("upstream-wan", lambda: WanLink("upstream-wan", workdir / "upstream-wan", self.upstream, RTT_MS))
        lab.define(
            "moorage-cache-wan",
            lambda: Moorage(
                "moorage-cache-wan",
                workdir / "moorage-cache-wan",
                extra_config=cache_config(self.server("upstream-wan").url),
            ),
        )
        lab.define(
            "distribution-proxy-wan",
            lambda: Distribution(
                "distribution-proxy-wan",
                workdir / "distribution-proxy-wan",
                proxy_url=self.server("upstream-wan").url,
                access_log=True,
            ),
        )
        lab.define(
            "sendfile",
            lambda: SendfileBaseline(self.moorage.data_dir / "blobs", workdir / "sendfile"),
        )
        # The reference lines: Moorage's own answers, as many processes as Moorage runs.
        lab.define(
            BARE, lambda: BareAiohttp(BARE, workdir / BARE, *self.answers(), tag="v1", processes=self.processes())
        )
        lab.define(
            NGINX_STATIC,
            lambda: NginxStatic(NGINX_STATIC, workdir / NGINX_STATIC, list(self.answers()), workers=self.processes()),
        )

    def server(self, label: str) -> Server:
        return self.lab.get(label)

    @property
    def moorage(self) -> Moorage:
        server = self.server(MOORAGE)
        assert isinstance(server, Moorage)
        return server

    @property
    def upstream(self) -> Distribution:
        server = self.server("upstream")
        assert isinstance(server, Distribution)
        return server

    def close(self) -> None:
        """Record each server's lifetime peak RSS (VmHWM), then stop them all."""
        rows = []
        for label, server in self.lab.servers.items():
            hwm, rss = status_mib(server.pid, "VmHWM"), status_mib(server.pid, "VmRSS")
            if hwm is not None and rss is not None:
                rows.append([label, f"{hwm:.0f}", f"{rss:.0f}"])
        if rows:
            self.results.tables.append(
                Table("Server processes at the end (VmHWM: lifetime peak)", ["server", "VmHWM MiB", "VmRSS MiB"], rows)
            )
        self.lab.close()

    # -- content ------------------------------------------------------------------------------------------
    def image(self, name: str, layers: list[int]) -> Image:
        if name not in self._images:
            self._images[name] = write_image(self.workdir / "content" / name, "v1", layers, name)
        return self._images[name]

    def small(self) -> Image:
        return self.image("small", [self.plan.small_layer])

    def push(self, server: Server, image: Image, repo: str) -> float | None:
        """skopeo-push `image` to `repo:v1` unless done already; the seconds it took (None: already there)."""
        if (server.label, repo) in self.pushed:
            return None
        # Each push starts with no dirty page cache: what the bench just wrote (the image) or a server that does
        # not fsync (Distribution) left behind would otherwise be written back by the next server's fsyncs.
        os.sync()
        seconds = self.skopeo.copy(image.ref, f"docker://{server.host}/{repo}:v1", dest_creds=server.creds)
        self.pushed.add((server.label, repo))
        return seconds

    def small_on(self, label: str) -> tuple[Server, Image]:
        server = self.server(label)
        image = self.small()
        self.push(server, image, "bench/small")
        return server, image

    def processes(self) -> int:
        """How many processes serve in Moorage as the bench runs it (`workers = 0`: one per usable CPU, up to 4, by
        its own rule), checked against the running server's process tree (a supervisor and its workers)."""
        from registry.config import ServerConfig

        count = ServerConfig(workers=0).worker_count
        moorage = self.moorage
        tree = process_tree(moorage.pid) if moorage.pid is not None else []
        running = len(tree) - 1 if len(tree) > 1 else len(tree)
        self.results.samples["reference_processes"] = count
        if running != count:
            self.results.note(f"Moorage runs {running} serving processes, not the {count} its rule gives")
        return count

    def answers(self) -> tuple[Served, Served]:
        """Moorage's answers to the manifest GET by tag and the small-blob GET, as the reference servers repeat them."""
        if self._answers is None:
            server, image = self.small_on(MOORAGE)
            manifest = served(server, "/v2/bench/small/manifests/v1", {"Accept": ACCEPT})
            digest = image.layer_digests[0]
            blob = served(server, f"/v2/bench/small/blobs/{digest}", {})
            if manifest.body != image.manifest or digest_of(blob.body) != digest:
                raise BenchError("Moorage's manifest or small blob is not what was pushed")
            self._answers = (manifest, blob)
        return self._answers

    def references(self, row: Row, path: str) -> dict[str, str]:
        """The reference servers that started, each GETting `path`; one that did not is noted, not fatal."""
        paths = {}
        for label in REFERENCES:
            try:
                self.server(label)
                paths[label] = path
            except BenchError as e:
                row.notes.append(f"{label} not measured")
                self.results.note(f"{row.key}: {label} not measured: {e}")
        return paths

    def wrk_rows(
        self, row: Row, path_for: dict[str, str], connections: int, duration: float
    ) -> dict[str, list[WrkResult]]:
        """wrk req/s of GET <path> on each server, `runs` times, interleaved; every run's wrk result per server
        (its bytes per response go to the JSON)."""
        targets = {}
        for label, path in path_for.items():
            server = self.server(label)
            headers = {"Accept": ACCEPT, **server.headers}
            check_get(server.url + path, headers)
            targets[label] = (server, server.url + path, headers)
        results: dict[str, list[WrkResult]] = {}
        for _ in range(self.plan.runs):
            for label, (server, url, headers) in targets.items():
                with sampling(server) as rss:
                    result = self.wrk.run(url, duration=duration, connections=connections, headers=headers)
                row.add(label, result.rps, rss.peak.get(server.label))
                results.setdefault(label, []).append(result)
        sizes = {label: round(r[-1].bytes / r[-1].requests) for label, r in results.items()}
        self.results.samples.setdefault("bytes_per_response", {})[row.key] = sizes  # type: ignore[index]
        return results


# == the benchmarks ==========================================================================================


def manifest_get(b: Bench) -> None:
    row = b.results.row(
        "manifest",
        f"manifest GET by tag (wrk -c{b.plan.connections})",
        "req/s",
        target=ratio_target(DISTRIBUTION_TIMES),
    )
    path = "/v2/bench/small/manifests/v1"
    paths = {}
    for label in HEADLINE:
        b.small_on(label)
        paths[label] = path
    b.wrk_rows(row, {**paths, **b.references(row, path)}, b.plan.connections, b.plan.wrk_seconds)


def small_blob_get(b: Bench) -> None:
    image = b.small()
    size = image.layer_sizes[0]
    row = b.results.row(
        "small-blob",
        f"small blob GET, {size / 1024:.1f} KiB (wrk -c{b.plan.connections})",
        "req/s",
        target=ratio_target(DISTRIBUTION_TIMES),
    )
    path = f"/v2/bench/small/blobs/{image.layer_digests[0]}"
    paths = {}
    for label in HEADLINE:
        b.small_on(label)
        paths[label] = path
    b.wrk_rows(row, {**paths, **b.references(row, path)}, b.plan.connections, b.plan.wrk_seconds)


def _push_image(b: Bench, i: int) -> Image:
    return b.image(f"push-{i}", [b.plan.large_blob])


def push(b: Bench) -> None:
    mib = b.plan.large_blob / MiB
    row = b.results.row(
        "push",
        f"push (skopeo) of a {mib:.0f} MiB layer image",
        "s",
        better="lower",
        fmt=".2f",
        target=ratio_target(PUSH_TIMES),
    )
    servers = [b.server(label) for label in HEADLINE]
    for i in range(b.plan.runs):
        image = _push_image(b, i)  # a new layer each run: no registry has it yet
        for server in servers:
            if (server.label, f"bench/push-{i}") in b.pushed:
                continue
            with sampling(server) as rss:
                seconds = b.push(server, image, f"bench/push-{i}")
            assert seconds is not None
            row.add(server.label, seconds, rss.peak.get(server.label))
            print(f"  push {i} to {server.label}: {seconds:.2f} s", flush=True)


def _large_blob_check(row: Row, label: str) -> bool | None:
    ratio, moorage, limit = row.ratio(label), row.median(label), row.median("sendfile")
    if ratio is None or moorage is None or limit is None:
        return None
    return ratio >= 0.9 and moorage >= 0.9 * limit


def large_blob_get(b: Bench) -> None:
    mib = b.plan.large_blob / MiB
    row = b.results.row(
        "large-blob",
        f"large blob GET, {mib:.0f} MiB (1 connection, GETs for {b.plan.large_seconds:g} s)",
        "GB/s",
        fmt=".2f",
        target=Target("≥ 0.9x and ≥ 90% of sendfile", _large_blob_check),
    )
    image = _push_image(b, 0)
    digest = image.layer_digests[0]
    targets = {}
    for label in HEADLINE:
        server = b.server(label)
        b.push(server, image, "bench/push-0")
        targets[label] = (server, f"{server.url}/v2/bench/push-0/blobs/{digest}", server.headers)
    baseline = b.server("sendfile")
    assert isinstance(baseline, SendfileBaseline)
    path = b.moorage.blob_path(digest)
    if not path.exists():
        raise BenchError(f"Moorage's blob file {path} is missing: cannot serve it with the baseline")
    targets["sendfile"] = (baseline, baseline.url_for(path), {})
    for _, url, headers in targets.values():
        check_get(url, headers)
    for _ in range(b.plan.runs):
        for label, (server, url, headers) in targets.items():
            with sampling(server) as rss:
                size, seconds, _ = blob_gets(url, headers, duration=b.plan.large_seconds)
            row.add(label, size / seconds / 1e9, rss.peak.get(server.label))
    limit = row.median("sendfile")
    moorage = row.median(MOORAGE)
    if limit:
        row.notes.append(f"sendfile limit ({baseline.kind}): {limit:.2f} GB/s")
        if moorage:
            row.notes.append(f"Moorage at {100 * moorage / limit:.0f}% of it")


def rss_large(b: Bench) -> None:
    """RSS before/while/after one GET of a `rss_blob`-sized blob: flat means no whole-blob buffering."""
    mib = b.plan.rss_blob / MiB
    flat = b.plan.rss_flat_mib

    def check(row: Row, label: str) -> bool | None:
        values = row.values.get(label)
        return None if not values else max(values) <= flat

    upload = b.results.row(
        "upload-big",
        f"monolithic upload (PUT) of a {mib:.0f} MiB blob",
        "s",
        better="lower",
        fmt=".2f",
    )
    row = b.results.row(
        "rss-big",
        f"RSS growth during one {mib:.0f} MiB blob GET",
        "MiB",
        better="none",
        fmt=".1f",
        target=Target(f"flat (≤ {flat:g} MiB)", check),
    )
    path = b.workdir / "content" / "big.bin"
    if not path.exists():
        digest = write_random_file(path, b.plan.rss_blob)
        b.results.samples["big_digest"] = digest
    digest = str(b.results.samples["big_digest"])
    speeds: dict[str, list[float]] = {}
    path_of: dict[str, str] = {}
    for label in (MOORAGE, DISTRIBUTION):
        server = b.server(label)
        if (label, "bench/big") not in b.pushed:
            with sampling(server) as rss:
                seconds = upload_file(server.url, "bench/big", path, digest, server.headers)
            b.pushed.add((label, "bench/big"))
            upload.add(label, seconds, rss.peak.get(label))
            upload.notes.append(f"{label}: RSS +{rss.peak.get(label, 0) - rss.before.get(label, 0):.0f} MiB")
        url = f"{server.url}/v2/bench/big/blobs/{digest}"
        for _ in range(b.plan.runs):
            with sampling(server) as rss:
                size, seconds, _ = blob_gets(url, server.headers)
            if size != b.plan.rss_blob:
                raise BenchError(f"{label}: got {size} of {b.plan.rss_blob} bytes")
            growth = rss.peak.get(label, 0.0) - rss.before.get(label, 0.0)
            row.add(label, max(growth, 0.0), rss.peak.get(label))
            speeds.setdefault(label, []).append(size / seconds / 1e9)
            path_of[label] = (
                f"{label} {rss.before.get(label, 0):.0f} → {rss.peak.get(label, 0):.0f} → {rss.after.get(label, 0):.0f}"
            )
            print(
                f"  {label}: RSS {rss.before.get(label, 0):.0f} -> peak {rss.peak.get(label, 0):.0f} -> "
                f"{rss.after.get(label, 0):.0f} MiB, {size / seconds / 1e9:.2f} GB/s",
                flush=True,
            )
    row.notes.append("RSS MiB before → peak → after the last GET: " + ", ".join(path_of.values()))
    row.notes.append("speed of that GET: " + ", ".join(f"{lb} {max(v):.2f} GB/s" for lb, v in speeds.items()))


BENCHMARKS = {
    "manifest": manifest_get,
    "small-blob": small_blob_get,
    "push": push,
    "large-blob": large_blob_get,
    "rss": rss_large,
}
