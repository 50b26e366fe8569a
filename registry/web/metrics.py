"""Prometheus metrics on /metrics (prometheus-client), from a registry owned by the app (no global state)."""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from registry.proxy.pullthrough import PullThrough
from registry.web.context import PULL_THROUGH

METRICS_REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)

_RULE_COUNTERS = {
    "hits": "Pulls served from the cache without asking the upstream",
    "misses": "Pulls of content not cached yet (fetched from the upstream)",
    "upstream_requests": "Requests made to the upstream registry",
    "upstream_bytes": "Bytes received from the upstream registry",
    "stale_serves": "Cached content served because the upstream failed or was not asked (offline, recent failure)",
    "single_flight_joins": "Requests that joined an upstream fetch already in progress",
}


class PullThroughCollector:
    def __init__(self, pull_through: PullThrough) -> None:
        self.pull_through = pull_through

    def collect(self) -> Iterator[Metric]:
        for name, doc in _RULE_COUNTERS.items():
            family = CounterMetricFamily(f"moorage_pull_through_{name}", doc, labels=["rule"])
            for prefix, counters in sorted(self.pull_through.metrics.items()):
                family.add_metric([prefix], getattr(counters, name))
            yield family


def setup(app: web.Application) -> None:
    registry = CollectorRegistry(auto_describe=True)
    app[METRICS_REGISTRY] = registry

    async def register(app: web.Application) -> None:
        registry.register(PullThroughCollector(app[PULL_THROUGH]))

    app.on_startup.append(register)
    app.router.add_get("/metrics", metrics)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS_REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
