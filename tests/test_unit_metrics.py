"""Request metrics added up per process and moved into their Prometheus series (registry/web/metrics.py): the
series read as if every request had been observed one by one."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, generate_latest

from registry.web.metrics import LATENCY_BUCKETS, Metrics


def _requests_text(metrics: Metrics) -> list[str]:
    return [line for line in generate_latest(metrics.registry).decode().splitlines() if "moorage_http_" in line]


def _numbers(lines: list[str]) -> list[tuple[str, float]]:
    """Each sample's name and labels, and its value to 6 places (sums added in another order differ in the
    last bits); not the series' creation times."""
    samples = (x.rsplit(" ", 1) for x in lines if x[0] != "#" and "_created" not in x)
    return [(name, round(float(value), 6)) for name, value in samples]


def test_flushed_sums_equal_observations_one_by_one():
    rng = random.Random(7)
    batched, direct = Metrics(registry=CollectorRegistry()), Metrics(registry=CollectorRegistry())
    samples = [
        (
            rng.choice(["/v2/{name}/manifests/{reference}", "/v2/{name}/blobs/{digest}"]),
            rng.choice(["GET", "HEAD"]),
            rng.choice([200, 404]),
            rng.choice([*LATENCY_BUCKETS, rng.random() * 70, 0.0]),
            rng.randrange(3) * 100,
            rng.randrange(5000),
        )
        for _ in range(2000)
    ]
    for i, (route, method, status, seconds, bytes_in, bytes_out) in enumerate(samples):
        batched.observe(route, method, status, seconds, bytes_in, bytes_out)
        if i % 500 == 0:
            batched.flush()  # flushes in between change nothing either
        direct.requests.labels(route, method, str(status)).inc()
        direct.latency.labels(route, method).observe(seconds)
        if bytes_in:
            direct.bytes_in.labels(route).inc(bytes_in)
        if bytes_out:
            direct.bytes_out.labels(route).inc(bytes_out)
    batched.flush()
    got, want = _requests_text(batched), _requests_text(direct)
    assert any("_bucket{" in line for line in want)
    assert _numbers(got) == _numbers(want)


def test_nothing_is_in_the_series_before_a_flush():
    metrics = Metrics(registry=CollectorRegistry())
    metrics.observe("/v2/", "GET", 200, 0.001, 0, 2)
    assert not any("moorage_http_requests_total{" in line for line in _requests_text(metrics))
    metrics.flush()
    assert any("moorage_http_requests_total{" in line for line in _requests_text(metrics))


def test_the_fast_lane_count_moves_by_what_it_answered():
    metrics = Metrics(registry=CollectorRegistry())
    answered = [0]
    metrics.follow(metrics.fast_lane, lambda: answered[0])
    answered[0] = 5
    metrics.flush()
    answered[0] = 7
    metrics.flush()
    assert "moorage_http_fast_lane_requests_total 7.0" in _requests_text(metrics)
