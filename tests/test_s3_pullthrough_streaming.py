"""A pull-through download on S3 goes to the bucket while it arrives (storage/s3/writers.py's `S3Writer` with the
digest known up front, as registry/proxy/fill.py's `Download` opens it): once a part's worth has landed in the
scratch file, it is sent as the next part of a multipart upload of the blob's own key, so the commit has only
the last part left. The upload is completed only once the digest is verified and no blob is stored under the
key already; a wrong digest, a download cut short or a blob there first leave no multipart upload behind, and
nothing under the key but the right bytes. A blob of one part or less stays one PutObject at the commit.

Against the session's SeaweedFS: the store's writer directly (as tests/test_s3_streaming.py does for upload
sessions), then a registry with a pull-through rule on it, whose upstream stalls half way through a layer.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
from aiohttp import web

from registry.app import create_app
from registry.config.loading import load
from registry.web.context import BLOBS
from storage.errors import DigestMismatch
from storage.s3 import S3BlobStore
from tests import test_s3_store
from tests.helpers import wait_for
from tests.oci import OCI_MANIFEST, get_blob, get_manifest, make_image
from tests.server import MoorageServer, free_port
from tests.services import seaweedfs
from tests.shared_storage import Target
from tests.test_pull_through import blob_gets, cache_config, rule_toml, unique
from tests.test_s3_store import BUCKET, Bucket, MiB, content, digest, join, run
from tests.test_s3_streaming import multipart_uploads
from tests.upstreams import MisbehavingUpstream

bucket = test_s3_store.bucket  # (the fixture: a prefix of the session's bucket)
PIECE = 256 << 10  # what the download hands the writer at a time (registry.proxy.fill.CHUNK)


async def receive(writer: Any, data: bytes, *, pause_at: int | None = None, then: Any = None) -> None:
    """Write `data` a piece at a time, as a download does; at `pause_at` bytes, let the parts in flight land and
    run `then()` (its checks) before going on."""
    for i in range(0, len(data), PIECE):
        await writer.write(data[i : i + PIECE])
        if pause_at is not None and i + PIECE == pause_at:
            await asyncio.sleep(0.3)
            await then()


def test_a_download_with_its_digest_known_sends_parts_while_it_arrives(bucket: Bucket):
    data = content("a layer from upstream", 20 * MiB + 7)
    d = digest(data)

    async def case() -> None:
        store = bucket.store()
        try:

            async def midway() -> None:
                assert store.calls["upload_part"] == 2, "the parts that have landed are sent before the end"
                assert multipart_uploads(bucket) == [bucket.key(d)], "a multipart upload of the blob's own key"
                assert bucket.keys("blobs/") == [], "nothing is visible under the key before the commit"

            async with store.writer(shared="pull k", size=len(data), expected=d) as writer:
                await receive(writer, data, pause_at=17 * MiB, then=midway)
                sent_while_arriving = store.calls["upload_part"]
                assert await writer.commit(d) == len(data)
            assert store.calls["upload_part"] == sent_while_arriving + 1, "only the last part is left at the end"
            assert store.calls["complete_multipart_upload"] == 1 and store.calls["put_object"] == 0
            assert store.calls["head_object"] == 2, "one look while the bytes arrive, one beside the last part"
            assert multipart_uploads(bucket) == []
            assert await join(store.read(d)) == data
        finally:
            await store.close()

    run(case())


def test_a_blob_of_one_part_is_one_put_at_the_commit(bucket: Bucket):
    data = content("a small layer", 8 * MiB)  # exactly one part

    async def case() -> None:
        store = bucket.store()
        try:
            async with store.writer(shared="pull k", size=len(data), expected=digest(data)) as writer:
                await receive(writer, data)
                assert store.calls["create_multipart_upload"] == 0
                assert await writer.commit(digest(data)) == len(data)
            assert store.calls["put_object"] == 1 and store.calls["create_multipart_upload"] == 0
            assert store.calls["head_object"] == 1, "the look made while the bytes arrived is the only one"
            assert await join(store.read(digest(data))) == data
        finally:
            await store.close()

    run(case())


def test_a_wrong_digest_leaves_no_object_and_no_multipart_upload(bucket: Bucket):
    data = content("not what the manifest says", 18 * MiB)
    claimed = digest(b"the layer the manifest lists")

    async def case() -> None:
        store = bucket.store()
        try:
            with pytest.raises(DigestMismatch) as raised:
                async with store.writer(shared="pull k", size=len(data), expected=claimed) as writer:
                    await receive(writer, data)
                    assert store.calls["upload_part"] >= 1, "parts went out while the bytes arrived"
                    await writer.commit(claimed)
            assert raised.value.actual == digest(data)
            assert store.calls["complete_multipart_upload"] == 0 and store.calls["abort_multipart_upload"] == 1
            assert multipart_uploads(bucket) == []
            assert bucket.keys("blobs/") == [], "no blob appears"
            assert list(store._scratch.iterdir()) == [], "nor a scratch file"
        finally:
            await store.close()

    run(case())


@pytest.mark.parametrize("how", ["failed", "cancelled"])
def test_a_download_cut_short_leaves_nothing(bucket: Bucket, how: str):
    data = content(f"cut short {how}", 20 * MiB)

    async def case() -> None:
        store = bucket.store()
        midway = asyncio.Event()
        try:

            async def download() -> None:
                async with store.writer(shared="pull k", size=len(data), expected=digest(data)) as writer:
                    await receive(writer, data[: 17 * MiB])
                    await asyncio.sleep(0.3)
                    assert multipart_uploads(bucket) == [bucket.key(digest(data))]
                    midway.set()
                    if how == "failed":
                        raise ConnectionResetError("the upstream went away")
                    await asyncio.sleep(30)

            task = asyncio.ensure_future(download())
            await asyncio.wait({task, asyncio.ensure_future(midway.wait())}, return_when=asyncio.FIRST_COMPLETED)
            assert midway.is_set(), task
            task.cancel()  # (a failed one is over already)
            with pytest.raises((ConnectionResetError, asyncio.CancelledError)):
                await task
            assert multipart_uploads(bucket) == [], "the multipart upload is aborted"
            assert bucket.keys("blobs/") == []
        finally:
            await store.close()

    run(case())


def test_a_blob_stored_before_the_download_is_not_sent_again(bucket: Bucket):
    data = content("stored already", 20 * MiB)

    async def case() -> None:
        other, store = bucket.store(), bucket.store()
        try:
            await test_s3_store.store_blob(other, data)  # (another way the same bytes got there)
            async with store.writer(shared="pull k", size=len(data), expected=digest(data)) as writer:
                await receive(writer, data)
                assert await writer.commit(digest(data)) == len(data)
            assert store.calls["create_multipart_upload"] + store.calls["upload_part"] + store.calls["put_object"] == 0
            assert multipart_uploads(bucket) == []
            assert await join(store.read(digest(data))) == data
        finally:
            await other.close()
            await store.close()

    run(case())


def test_a_blob_stored_during_the_download_wins(bucket: Bucket):
    """The same blob installed another way while the download's parts were going out: the commit finds it and
    aborts its own multipart upload rather than replacing the object."""
    data = content("stored meanwhile", 20 * MiB)
    d = digest(data)

    async def case() -> None:
        store, s3 = bucket.store(), bucket.service.client()
        try:

            async def midway() -> None:
                assert store.calls["upload_part"] == 2
                s3.put_object(Bucket=BUCKET, Key=bucket.key(d), Body=data)  # one PUT: an ETag without "-<parts>"

            async with store.writer(shared="pull k", size=len(data), expected=d) as writer:
                await receive(writer, data, pause_at=17 * MiB, then=midway)
                assert await writer.commit(d) == len(data)
            assert store.calls["complete_multipart_upload"] == 0 and store.calls["abort_multipart_upload"] == 1
            assert multipart_uploads(bucket) == []
            assert "-" not in s3.head_object(Bucket=BUCKET, Key=bucket.key(d))["ETag"], "the object there first stays"
            assert await join(store.read(d)) == data
        finally:
            await store.close()

    run(case())


def test_a_commit_of_another_digest_never_completes_the_parts(bucket: Bucket):
    """The digest told up front is a hint: a commit that names another one installs under that one, and the
    parts sent to the hint's key are aborted."""
    data = content("hinted wrongly", 18 * MiB)
    hint = digest(b"something else")

    async def case() -> None:
        store = bucket.store()
        try:
            async with store.writer(size=len(data), expected=hint) as writer:
                await receive(writer, data)
                assert store.calls["upload_part"] >= 1
                assert await writer.commit(digest(data)) == len(data)
            assert multipart_uploads(bucket) == []
            assert bucket.keys("blobs/") == [bucket.key(digest(data))]
            assert await join(store.read(digest(data))) == data
        finally:
            await store.close()

    run(case())


# -- through a registry ------------------------------------------------------------------------------------


@pytest.fixture
def stalling_upstream(tmp_path: Path) -> Iterator[MisbehavingUpstream]:
    up = MisbehavingUpstream(tmp_path / "upstream").start()
    yield up
    up.stop()


def _bucket_state(target: Target) -> tuple[list[str], dict[str, int]]:
    """The multipart uploads under the target's blobs, and its blob objects."""
    assert seaweedfs.RUNNING is not None
    listing = seaweedfs.RUNNING.client().list_multipart_uploads(Bucket=BUCKET, Prefix=f"{target.prefix}/blobs/")
    return [u["Key"] for u in listing.get("Uploads", ())], target.objects("blobs/")


def test_a_pull_through_download_streams_to_the_bucket_and_a_failed_one_leaves_nothing(
    make_server: Callable[..., MoorageServer],
    make_target: Callable[[str], Target],
    stalling_upstream: MisbehavingUpstream,
):
    """The upstream sends half of a 20 MiB layer, then stalls: the first part is in the bucket's multipart
    upload of the blob's key by then (nothing visible under it); when the upstream drops the connection, the
    upload is aborted. Once the upstream behaves, the blob is cached whole."""
    target = make_target("sqlite+s3")
    up = stalling_upstream
    repo = unique("streamed")
    img = make_image(1, layer_size=20 * MiB + 3)
    for blob in img.blobs:
        up.put_blob(blob)
    up.put_manifest(repo, "v1", img.manifest, OCI_MANIFEST)
    layer = img.layers[0]
    d = digest(layer)
    key = f"blobs/sha256/{d[7:9]}/{d[7:]}"
    srv = make_server(cache_config(rule_toml("up", up.url)) + target.toml())
    assert get_manifest(srv, f"up/{repo}", "v1").status_code == 200

    up.set_blob_mode(d, "stall", delay=4)
    failed: list[BaseException] = []

    def pull() -> None:
        try:
            get_blob(srv, f"up/{repo}", d, timeout=30)
        except requests.RequestException as e:  # the body is cut short: expected
            failed.append(e)

    client = threading.Thread(target=pull, daemon=True)
    client.start()
    uploads, objects = wait_for(
        lambda: (state := _bucket_state(target))[0] and state, 10, "a multipart upload while the layer arrives"
    )
    assert uploads == [f"{target.prefix}/{key}"] and objects == {}, (uploads, objects)
    client.join(30)
    wait_for(lambda: _bucket_state(target) == ([], {}), 15, "the failed download's upload to be aborted")

    up.set_blob_mode(d, "ok")
    r = get_blob(srv, f"up/{repo}", d)
    assert r.status_code == 200 and r.content == layer
    assert blob_gets(up, repo, d) == 2
    assert _bucket_state(target) == ([], {key: len(layer)})


def test_a_cold_blob_costs_two_looks_and_one_put_in_the_bucket(
    tmp_path: Path, make_target: Callable[[str], Target], stalling_upstream: MisbehavingUpstream
):
    """A registry in this process (so that its blob store's calls can be counted) fetches a layer nobody has
    cached: the bucket sees one look while the bytes arrive, the PutObject, and the look after the link (which
    catches a garbage collection that finished just before it). Whether this upstream's bytes are stored is
    asked of the database first: a blob not fetched yet costs no look in the bucket before the download."""
    target = make_target("sqlite+s3")
    up = stalling_upstream
    repo = unique("counted")
    img = make_image(1, layer_size=3 * MiB)
    for blob in img.blobs:
        up.put_blob(blob)
    up.put_manifest(repo, "v1", img.manifest, OCI_MANIFEST)
    port = free_port()
    config = tmp_path / "moorage.toml"
    config.write_text(
        f'[server]\ndata_dir = "{tmp_path / "data"}"\nlisten = "127.0.0.1:{port}"\n[log]\naccess = false\n'
        + cache_config(rule_toml("up", up.url))
        + target.toml()
    )
    layer = img.layers[0]

    async def case() -> None:
        app = create_app(load(config))
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", port).start()
            base = f"http://127.0.0.1:{port}/v2/up/{repo}"
            store = app[BLOBS]
            assert isinstance(store, S3BlobStore)
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{base}/manifests/v1", headers={"Accept": OCI_MANIFEST}) as r:
                    assert r.status == 200
                store.calls.clear()
                async with session.get(f"{base}/blobs/{digest(layer)}") as r:
                    assert r.status == 200 and await r.read() == layer
            assert (store.calls["head_object"], store.calls["put_object"]) == (2, 1), store.calls
        finally:
            await runner.cleanup()

    run(case())
