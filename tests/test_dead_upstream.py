"""Never wait on a dead upstream (issue 12, item 2).

The usual air gap: the upstream's port accepts connections and never answers (a firewall dropping packets, a
half-dead proxy). A cached tag due for its re-check is served at once from the cache, and the check runs in
the background (one per tag at a time); an uncached tag fails within `[pull_through] upstream_response_timeout`
with a 504 whose body says which upstream did not answer and for how long, and docker prints that status.

The upstream is a real CNCF Distribution first (to cache an image), then a black hole on the same port: a
listener that accepts and never sends a byte.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.dockerd import Dockerd
from tests.layouts import write_single_image
from tests.oci import ALL_MANIFEST_TYPES, error_codes
from tests.server import AUTH_OFF, MoorageServer
from tests.skopeo import Skopeo, isolated_skopeo
from tests.upstreams import DISTRIBUTION_BIN, DistributionRegistry

pytestmark = pytest.mark.skipif(
    not os.path.exists(DISTRIBUTION_BIN), reason="docker-registry (Distribution) is not installed"
)
RESPONSE_TIMEOUT = 2.0  # [pull_through] upstream_response_timeout in these tests


class BlackHole:
    """Accepts connections on a port and never answers (until closed)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self.sock.settimeout(0.2)
        self.held: list[socket.socket] = []
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.held.append(conn)
            self.accepted += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def skopeo(tmp_path: Path) -> Skopeo:
    cfg = tmp_path / "skopeo"
    cfg.mkdir()
    return isolated_skopeo(cfg)


@pytest.fixture
def cached_then_dead(make_server, tmp_path: Path, skopeo: Skopeo) -> Iterator[tuple[MoorageServer, BlackHole]]:
    """A Moorage that cached team/app:v1 from Distribution; then the upstream's port becomes a black hole."""
    upstream = DistributionRegistry(tmp_path / "distribution").start()
    write_single_image(tmp_path / "layout", "v1", n_layers=2)
    skopeo("copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'layout'}:v1", f"docker://{upstream.host}/team/app:v1")
    settings = {
        "allowed_upstreams": ["127.0.0.1"],
        "tag_refresh_interval": "1s",
        "failure_retry_interval": "2s",
        "upstream_response_timeout": f"{RESPONSE_TIMEOUT:g}s",
    }
    srv = make_server(
        AUTH_OFF
        + "[pull_through]\n"
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
        + f'[[pull_through.rules]]\necr_repository_prefix = "hub"\nupstream_registry_url = "{upstream.url}"\n'
    )
    skopeo("copy", "--src-tls-verify=false", f"docker://{srv.host}/hub/team/app:v1", f"dir:{tmp_path / 'warm'}")
    upstream.stop()
    hole = BlackHole(upstream.port)
    yield srv, hole
    hole.close()


def _timed_get(srv: MoorageServer, ref: str) -> tuple[requests.Response, float]:
    started = time.monotonic()
    r = requests.get(f"{srv.url}/v2/hub/team/app/manifests/{ref}", headers={"Accept": ALL_MANIFEST_TYPES}, timeout=60)
    return r, time.monotonic() - started


def test_cached_tags_never_wait_and_misses_fail_fast(cached_then_dead: tuple[MoorageServer, BlackHole]):
    srv, hole = cached_then_dead
    time.sleep(1.1)  # v1 is due for its re-check, and the upstream is a black hole now
    times = []
    for _ in range(3):
        r, elapsed = _timed_get(srv, "v1")
        assert r.status_code == 200, (r.status_code, r.text)
        times.append(elapsed)
    time.sleep(2.2)  # past failure_retry_interval: due again, checked again in the background
    for _ in range(2):
        r, elapsed = _timed_get(srv, "v1")
        assert r.status_code == 200, (r.status_code, r.text)
        times.append(elapsed)
    assert max(times) < RESPONSE_TIMEOUT / 2, f"a cached pull waited on the dead upstream: {times}"
    deadline = time.monotonic() + 2 * RESPONSE_TIMEOUT + 5
    while hole.accepted == 0:  # the background check did go out (and found nobody answering)
        assert time.monotonic() < deadline, "no background check reached the upstream"
        time.sleep(0.1)

    r, elapsed = _timed_get(srv, "v9")  # not cached
    assert r.status_code == 504 and error_codes(r) == ["UNAVAILABLE"], (r.status_code, r.text)
    message = r.json()["errors"][0]["message"]
    assert f"did not answer within {RESPONSE_TIMEOUT:g}s" in message and "hub/team/app:v9" in message, message
    assert RESPONSE_TIMEOUT * 0.9 <= elapsed < RESPONSE_TIMEOUT + 3, f"the miss took {elapsed:.1f}s"
    print(f"cached pulls with a black-holed upstream: {[round(t, 3) for t in times]} s; a miss: {elapsed:.2f} s")


def test_docker_pulls_cached_at_once_and_prints_why_a_miss_failed(
    cached_then_dead: tuple[MoorageServer, BlackHole], dockerd: Dockerd
):
    srv, _ = cached_then_dead
    time.sleep(1.1)
    started = time.monotonic()
    dockerd.run("pull", f"{srv.host}/hub/team/app:v1")
    cached = time.monotonic() - started
    started = time.monotonic()
    p = dockerd.run("pull", f"{srv.host}/hub/team/app:v9", check=False)
    missed = time.monotonic() - started
    assert p.returncode != 0
    assert "504 Gateway Timeout" in p.stderr or "did not answer" in p.stderr, p.stderr
    assert missed < RESPONSE_TIMEOUT + 10, f"docker's failed pull took {missed:.1f}s"
    print(f"docker: cached pull {cached:.2f} s; failed pull {missed:.2f} s: {p.stderr.strip()}")
    dockerd.run("rmi", f"{srv.host}/hub/team/app:v1", check=False)
