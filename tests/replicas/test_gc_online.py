"""Garbage collection on one replica while the others take pushes.

Garbage (deleted images) is in the shared storage; pushers on replicas 2 and 3 push images that share a layer
with that garbage, while `moorage gc` runs again and again with replica 1's config and a 1 ms grace period, the
harshest setting. Every push the registry acknowledged is whole afterwards (each blob's bytes match its
digest), the re-pushed shared layer survives, and the garbage nobody re-pushed is gone from the bucket.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest

from tests.oci import (
    ALL_MANIFEST_TYPES,
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    Client,
    Image,
    assert_pulls,
    descriptor,
    digest_of,
    error_codes,
    make_image,
    random_blob,
)
from tests.replicas.cluster import Cluster
from tests.replicas.conftest import shared_cluster
from tests.server import moorage_cli

GC_RUNS = 4
BARELY_GRACE = (
    '[gc]\ngrace_period = "1ms"\ninterval = "24h"\n'  # only the command collects, and next to nothing is spared
)


@pytest.fixture(scope="module")
def collecting(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    with shared_cluster(request, extra=BARELY_GRACE) as started:
        yield started


def image_with(layers: list[bytes]) -> Image:
    """An image of a fresh config and these layers."""
    config = make_image(0).config
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER, layer) for layer in layers],
    }
    return Image(config, layers, json.dumps(doc).encode(), OCI_MANIFEST)


def push_retrying(client: Client, repo: str, tag: str, image: Image, attempts: int = 6) -> bool:
    """Push as a client does, blobs then the manifest, starting over when the registry says a collection got in
    the way: a blob collected while it was uploaded (BLOB_UPLOAD_INVALID, "retry"), or a manifest whose blob was
    collected meanwhile (MANIFEST_BLOB_UNKNOWN). True once the registry acknowledged the manifest."""
    for _ in range(attempts):
        if all(_push_blob(client, repo, blob) for blob in image.blobs):
            r = client.put(
                f"/v2/{repo}/manifests/{tag}", data=image.manifest, headers={"Content-Type": image.media_type}
            )
            if r.status_code == 201:
                return True
            assert r.status_code == 400 and "MANIFEST_BLOB_UNKNOWN" in error_codes(r), (r.status_code, r.text)
    return False


def _push_blob(client: Client, repo: str, blob: bytes) -> bool:
    """A monolithic blob upload: True when stored, False when a collection claimed it meanwhile."""
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest_of(blob)}, data=blob)
    if r.status_code == 400 and error_codes(r) == ["BLOB_UPLOAD_INVALID"] and "retry" in r.text:
        return False
    assert r.status_code == 201, (r.status_code, r.text)
    return True


def test_gc_on_one_replica_during_pushes_on_the_others(collecting: Cluster) -> None:
    auth = ("AWS", collecting.password())
    one, two, three = (Client(r.url, auth) for r in collecting.replicas)
    shared = random_blob(128 * 1024)
    garbage = [image_with([random_blob(32 * 1024), shared]) for _ in range(4)]
    for i, image in enumerate(garbage):
        one.push_image("gc/old", f"v{i}", image)
        assert one.delete(f"/v2/gc/old/manifests/{image.digest}").status_code == 202
    doomed = {digest_of(layer) for image in garbage for layer in image.layers if layer != shared}

    acknowledged: list[tuple[Client, str, str, Image]] = []
    stop = threading.Event()
    failures: list[BaseException] = []

    def pusher(client: Client, repo: str) -> None:
        n = 0
        try:
            while not stop.is_set():
                image = image_with([random_blob(64 * 1024), shared])
                if push_retrying(client, repo, f"t{n}", image):
                    acknowledged.append((client, repo, f"t{n}", image))
                n += 1
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=pusher, args=(c, f"gc/new-{i}")) for i, c in enumerate((two, three))]
    for t in threads:
        t.start()
    replica_one = collecting.replicas[0]
    try:
        for _ in range(GC_RUNS):
            p = moorage_cli("gc", "--config", replica_one.config_path, "--data-dir", replica_one.data_dir, timeout=120)
            assert p.returncode == 0, p.stderr
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not failures, failures
    assert len(acknowledged) >= 4, f"only {len(acknowledged)} pushes were acknowledged during the collections"

    p = moorage_cli("gc", "--config", replica_one.config_path, "--data-dir", replica_one.data_dir, timeout=120)
    assert p.returncode == 0, p.stderr
    for _, repo, tag, image in acknowledged:  # read back from replica 1, the collector's
        assert_pulls(one, repo, tag, image)
        r = one.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": ALL_MANIFEST_TYPES})
        assert r.headers["Docker-Content-Digest"] == image.digest
    assert collecting.target is not None
    stored = set(collecting.target.objects())
    for digest in doomed:
        assert one.get(f"/v2/gc/old/blobs/{digest}").status_code == 404
        assert not any(digest.split(":")[1] in key for key in stored), f"{digest} left in the bucket"
    assert any(digest_of(shared).split(":")[1] in key for key in stored), "the re-pushed shared layer is stored"
