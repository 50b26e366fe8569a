"""Prometheus metrics on /metrics (prometheus-client), from a registry owned by the app (no global state).

Request metrics are recorded by the access-log middleware; pull-through counters are copied from the cache's
own tallies every second; storage gauges are read from the metadata store when scraped; lifecycle and GC runs
are counted by the jobs.

With several workers (`[server] workers`), each process keeps its values in prometheus-client's multiprocess
files (the supervisor sets PROMETHEUS_MULTIPROC_DIR) and a scrape, whichever worker answers it, sums them all.

Request metrics are added up in plain counters as requests end (a Prometheus child's `inc` and `observe` take a
lock, and in multiprocess mode write a file mapping, several times per request) and moved into the Prometheus
series every SYNC_INTERVAL and before each scrape: the answering process's values are exact, another worker's
at most SYNC_INTERVAL old.

`[metrics] require_auth = true` (with auth on) makes a scrape present a registry token (Bearer, or Basic
`AWS:<token>`) of a principal allowed the action `moorage:GetMetrics` (an admin's `*` is enough); otherwise the
answer is /v2's 401 challenge, or 403 naming the action. Off by default: the values name no repository,
principal or tag (routes are templates; pull-through rules appear by prefix), and scrapers rarely carry
credentials.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

from registry.proxy.pullthrough import PullThrough
from registry.web.auth import condition_keys, realm, registry_principal
from registry.web.context import ACCESS, CONFIG, META, PULL_THROUGH

# Manifests and blobs alike (label kind): every manifest or blob request on a cache repository is exactly one hit
# or one miss, so hits / (hits + misses) is the cache's hit ratio.
_KIND_COUNTERS = {
    "hits": "Manifest and blob requests served from the cache (kind: manifest or blob); stale serves count here too",
    "misses": "Manifest and blob requests for content not cached yet (kind: manifest or blob): fetched from the "
    "upstream, joined a fetch in flight, or refused (offline, denied, upstream down)",
}
KINDS = ("manifest", "blob")
_RULE_COUNTERS = {
    "upstream_requests": "Requests made to the upstream registry",
    "upstream_bytes": "Bytes received from the upstream registry",
    "stale_serves": "Cached content served because the upstream failed or was not asked (offline, recent failure)",
    "single_flight_joins": "Requests that joined an upstream fetch already in progress",
}
GET_METRICS = "moorage:GetMetrics"  # the action a principal needs to scrape when [metrics] require_auth is on
SYNC_INTERVAL = 1.0  # seconds between copies of the pull-through tallies into their counters
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass(slots=True)
class StorageGauges:
    """Values read from the store just before a scrape (collectors are synchronous)."""

    uploads_in_progress: int = 0
    blobs: int = 0
    blob_bytes: int = 0
    repositories: int = 0
    images: int = 0


def multiprocess_dir() -> str | None:
    """Where worker processes keep their values (set by the supervisor), or None in a single process."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))
    storage: StorageGauges = field(default_factory=StorageGauges)
    multiprocess: str | None = None

    def __post_init__(self) -> None:
        multiprocess = self.multiprocess
        self._children: dict[tuple[str, str, int], tuple[Any, Any, Any, Any]] = {}
        # (route, method, status) -> [requests, seconds, bytes in, bytes out, latency bucket counts]
        self._pending: dict[tuple[str, str, int], list[Any]] = {}
        self._pull_through: PullThrough | None = None
        self._synced: dict[tuple[str, str], int] = {}
        registry = self.registry
        self.requests = Counter(
            "moorage_http_requests", "HTTP requests served", ["route", "method", "status"], registry=registry
        )
        self.latency = Histogram(
            "moorage_http_request_duration_seconds",
            "Time to serve a request",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.bytes_in = Counter(
            "moorage_http_request_bytes", "Request body bytes received", ["route"], registry=registry
        )
        self.bytes_out = Counter(
            "moorage_http_response_bytes", "Response body bytes sent", ["route"], registry=registry
        )
        self.fast_lane = Counter(
            "moorage_http_fast_lane_requests",
            "Requests answered by the fast lane (manifest and small-blob reads from memory); counted in "
            "moorage_http_requests too",
            registry=registry,
        )
        self.local_copies = Counter(
            "moorage_blob_local_copy_reads",
            "Blob reads answered from this replica's verified local copy of an S3 blob, without the bucket "
            "([storage.s3] local_cache)",
            registry=registry,
        )
        # Counters that copy a count kept elsewhere (the fast lane's, the blob store's): (counter, source, synced)
        self._followed: list[tuple[Any, Callable[[], int], list[int]]] = []
        self.lifecycle_runs = Counter("moorage_lifecycle_runs", "Lifecycle sweeps run", registry=registry)
        self.lifecycle_images = Counter(
            "moorage_lifecycle_images_expired", "Images expired by lifecycle policies", registry=registry
        )
        self.lifecycle_archived = Counter(
            "moorage_lifecycle_images_archived",
            "Images moved to the archive storage class by lifecycle policies",
            registry=registry,
        )
        self.lifecycle_bytes = Counter(
            "moorage_lifecycle_bytes_expired", "Image bytes expired by lifecycle policies", registry=registry
        )
        self.gc_runs = Counter("moorage_gc_runs", "Garbage collection runs", registry=registry)
        self.gc_blobs = Counter("moorage_gc_blobs_removed", "Blobs removed by garbage collection", registry=registry)
        self.gc_bytes = Counter("moorage_gc_bytes_removed", "Bytes removed by garbage collection", registry=registry)
        self.evictions = Counter(
            "moorage_pull_through_evictions", "Cached images evicted to stay under max_cache_bytes", registry=registry
        )
        self.pull_through_counters = {
            name: Counter(f"moorage_pull_through_{name}", doc, ["rule"], registry=registry)
            for name, doc in _RULE_COUNTERS.items()
        }
        self.pull_through_kind_counters = {
            name: Counter(f"moorage_pull_through_{name}", doc, ["rule", "kind"], registry=registry)
            for name, doc in _KIND_COUNTERS.items()
        }
        if multiprocess is None:
            self.exposition = registry
        else:  # every worker's files, summed; the storage gauges are read from the shared database anyway
            self.exposition = CollectorRegistry()
            MultiProcessCollector(self.exposition, multiprocess)
        self.exposition.register(_StorageCollector(self.storage))

    def follow(self, counter: Any, count: Callable[[], int]) -> None:
        """Keep `counter` at what `count()` says, from each flush on (a count that only grows)."""
        self._followed.append((counter, count, [0]))

    def attach(self, pull_through: PullThrough) -> None:
        self._pull_through = pull_through

    async def sync_pull_through(self) -> None:
        """Add what the pull-through cache counted since the last copy to its counters."""
        if self._pull_through is None:
            return
        for prefix, tallies in list(self._pull_through.metrics.items()):
            for name, counter in self.pull_through_counters.items():
                self._add(counter.labels(prefix), (prefix, name), getattr(tallies, name))
            for name, counter in self.pull_through_kind_counters.items():
                for kind in KINDS:
                    tally = f"{kind}_{name}"  # RuleMetrics.manifest_hits, .blob_misses, ...
                    self._add(counter.labels(prefix, kind), (prefix, tally), getattr(tallies, tally))

    def _add(self, child: Any, key: tuple[str, str], value: int) -> None:
        """Bring a counter up to the tally `value`. Labelling the child creates the series at 0, so every rule's
        series exists from the start and a hit ratio can be drawn before the first pull."""
        delta = value - self._synced.get(key, 0)
        if delta > 0:
            child.inc(delta)
            self._synced[key] = value

    def observe(self, route: str, method: str, status: int, seconds: float, bytes_in: int, bytes_out: int) -> None:
        pending = self._pending.get((route, method, status))
        if pending is None:
            pending = self._pending[(route, method, status)] = [0, 0.0, 0, 0, [0] * (len(LATENCY_BUCKETS) + 1)]
        pending[0] += 1
        pending[1] += seconds
        pending[2] += bytes_in
        pending[3] += bytes_out
        pending[4][bisect_left(LATENCY_BUCKETS, seconds)] += 1  # (a bucket's bound is inclusive: le)

    def flush(self) -> None:
        """Move the requests observed since the last flush into their Prometheus series."""
        for counter, source, synced in self._followed:
            value = source()
            if value > synced[0]:
                counter.inc(value - synced[0])
                synced[0] = value
        pending, self._pending = self._pending, {}
        for key, (count, seconds, bytes_in, bytes_out, buckets) in pending.items():
            children = self._children.get(key)
            if children is None:  # resolve the labelled children once per (route, method, status)
                route, method, status = key
                children = self._children[key] = (
                    self.requests.labels(route, method, str(status)),
                    self.latency.labels(route, method),
                    self.bytes_in.labels(route),
                    self.bytes_out.labels(route),
                )
            requests, latency, received, sent = children
            requests.inc(count)
            _add_observations(latency, seconds, buckets)
            if bytes_in:
                received.inc(bytes_in)
            if bytes_out:
                sent.inc(bytes_out)

    async def sync(self) -> None:
        """Every SYNC_INTERVAL: the requests observed, and the pull-through cache's tallies."""
        self.flush()
        await self.sync_pull_through()


def _add_observations(histogram: Any, seconds: float, buckets: list[int]) -> None:
    """Add observations counted per bucket (`buckets[i]` of them at most LATENCY_BUCKETS[i], the last over all)
    totalling `seconds` to a histogram child. prometheus-client has no public call for adding many at once;
    its child keeps a sum and a non-cumulative count per bucket, each with `inc` (checked by the unit tests)."""
    histogram._sum.inc(seconds)
    for i, n in enumerate(buckets):
        if n:
            histogram._buckets[i].inc(n)


class _StorageCollector:
    def __init__(self, gauges: StorageGauges) -> None:
        self.gauges = gauges

    def collect(self) -> Iterator[Metric]:
        gauges = self.gauges
        yield GaugeMetricFamily(
            "moorage_uploads_in_progress", "Open blob upload sessions", value=gauges.uploads_in_progress
        )
        yield GaugeMetricFamily("moorage_storage_blobs", "Blobs stored (each once)", value=gauges.blobs)
        yield GaugeMetricFamily("moorage_storage_bytes", "Bytes of blobs stored", value=gauges.blob_bytes)
        yield GaugeMetricFamily("moorage_repositories", "Repositories", value=gauges.repositories)
        yield GaugeMetricFamily("moorage_images", "Images (manifests) in all repositories", value=gauges.images)


METRICS = web.AppKey("metrics", Metrics)


def setup(app: web.Application, metrics: Metrics) -> None:
    app[METRICS] = metrics

    async def register(app: web.Application) -> None:
        metrics.attach(app[PULL_THROUGH])

    app.on_startup.append(register)
    app.router.add_get("/metrics", serve_metrics)


async def serve_metrics(request: web.Request) -> web.Response:
    if request.app[CONFIG].metrics.require_auth:
        access = request.app[ACCESS]
        principal = registry_principal(request) if access.enabled else None
        access.check(
            principal,
            (GET_METRICS,),
            None,
            condition_keys=condition_keys(request, principal),
            realm=realm(request),
        )
    metrics = request.app[METRICS]
    metrics.flush()
    for name, value in (await request.app[META].storage_stats()).items():
        setattr(metrics.storage, name, value)
    await metrics.sync_pull_through()
    body = generate_latest(metrics.exposition)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
