"""kill -9 of a replica in the middle of pushes.

Pushers upload images in chunks through replica 2 while it is killed (the whole process group, SIGKILL). Every
push it acknowledged is whole on the other replicas at once; no blob is half visible (every blob any replica
says it has, it serves whole, its bytes matching its digest); the balancer keeps serving from the survivors;
and replica 2, started again, serves what it acknowledged and takes new pushes.
"""

from __future__ import annotations

import threading
import time

import requests

from tests.oci import Client, Image, assert_pulls, digest_of, location, make_image
from tests.replicas.cluster import Cluster

MiB = 1 << 20
PUSHERS = 4


def chunked_push(client: Client, repo: str, tag: str, image: Image) -> None:
    """Each blob in two PATCHes then a PUT, then the manifest; raises on any failure (a refused or lost
    connection included)."""
    for blob in image.blobs:
        r = client.post(f"/v2/{repo}/blobs/uploads/")
        assert r.status_code == 202, r.text
        url, half = location(r), len(blob) // 2
        for start, part in ((0, blob[:half]), (half, blob[half:])):
            headers = {"Content-Type": "application/octet-stream", "Content-Range": f"{start}-{start + len(part) - 1}"}
            r = client.patch(url, data=part, headers=headers)
            assert r.status_code == 202, r.text
            url = location(r)
        r = client.put(url, params={"digest": digest_of(blob)})
        assert r.status_code == 201, r.text
    r = client.put(f"/v2/{repo}/manifests/{tag}", data=image.manifest, headers={"Content-Type": image.media_type})
    assert r.status_code == 201, r.text


def test_kill_9_of_a_replica_during_pushes_loses_nothing_acknowledged(cluster: Cluster) -> None:
    auth = ("AWS", cluster.password())
    survivor, victim, other = cluster.replicas[0], cluster.replicas[1], cluster.replicas[2]
    acknowledged: list[tuple[str, str, Image]] = []
    attempted: list[tuple[str, Image]] = []
    lock = threading.Lock()

    def pusher(i: int) -> None:
        client = Client(victim.url, auth)
        for n in range(1000):  # bounded; the kill ends it long before
            image = make_image(3, 1 * MiB + n)
            with lock:
                attempted.append((f"crash/p{i}", image))
            try:
                chunked_push(client, f"crash/p{i}", f"t{n}", image)
            except (requests.RequestException, AssertionError):
                return  # the replica died under this push: not acknowledged
            with lock:
                acknowledged.append((f"crash/p{i}", f"t{n}", image))

    threads = [threading.Thread(target=pusher, args=(i,)) for i in range(PUSHERS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acknowledged) < 2 * PUSHERS and time.monotonic() < deadline:
        time.sleep(0.05)
    victim.kill()  # SIGKILL, every process of it, mid-push
    for t in threads:
        t.join(60)
    assert len(acknowledged) >= 2 * PUSHERS, f"only {len(acknowledged)} pushes acknowledged before the kill"
    assert len(attempted) > len(acknowledged), "the kill interrupted no push"

    survivors = [Client(survivor.url, auth), Client(other.url, auth)]
    for repo, tag, image in acknowledged:  # acknowledged: whole, on every other replica, at once
        for client in survivors:
            assert_pulls(client, repo, tag, image)
    for repo, image in attempted:  # no half-visible blob: a blob either replica has, it serves whole
        for blob in image.blobs:
            for client in survivors:
                got = client.get(f"/v2/{repo}/blobs/{digest_of(blob)}")
                assert got.status_code == 404 or got.content == blob, (repo, digest_of(blob), got.status_code)
    lb = Client(cluster.url, auth)  # nginx routes around the dead replica
    for repo, tag, image in acknowledged[:3]:
        assert_pulls(lb, repo, tag, image)

    victim.start()
    again = Client(victim.url, auth)
    for repo, tag, image in acknowledged:
        assert_pulls(again, repo, tag, image)
    chunked_push(again, "crash/after", "1", image := make_image(2, 256 * 1024))
    assert_pulls(Client(survivor.url, auth), "crash/after", "1", image)
