"""The S3 blob store's own promises, beyond the storage contract (tests/contract runs that on `sqlite+s3`):
multipart uploads, sessions across replicas, server-side copies, integrity on read, presigned redirects, an
unreachable endpoint, the scratch disk filling up, and leftovers; then a registry configured with it. Against
the session's SeaweedFS.

Each case runs in its own event loop (`run`), on a bucket prefix of its own, removed afterwards.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests

import storage.s3.common
import storage.s3.store
import storage.scratch
from storage.blobs import ByteStream, RedirectURL
from storage.errors import BlobCorrupt, DigestMismatch, StorageFull, StorageUnavailable
from storage.factory import S3Options, open_stores
from storage.local import LocalLocks, ProcessLocks
from storage.s3 import S3BlobStore
from tests.oci import Client, location
from tests.server import AUTH_OFF, free_port
from tests.services.seaweedfs import ACCESS_KEY, BUCKET, REGION, SECRET_KEY, SeaweedFS

MiB = 1 << 20


def digest(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def content(label: str, size: int) -> bytes:
    """Distinct bytes of `size` (distinct labels: distinct digests), quickly even for tens of MiB."""
    block = hashlib.sha512(label.encode()).digest() * 2048  # 128 KiB
    return (block * (size // len(block) + 1))[:size]


def run(case: Coroutine[Any, Any, None], timeout: float = 60.0) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(timeout):
            await case

    asyncio.run(bounded())


async def join(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


class Bucket:
    """A prefix of the session's bucket for one case, and the stores ("replicas") on it."""

    def __init__(self, service: SeaweedFS, tmp_path: Path) -> None:
        self.service = service
        self.tmp_path = tmp_path
        self.prefix = f"s3-tests/{uuid.uuid4().hex[:12]}"
        self.options = S3Options(service.endpoint_url, REGION, ACCESS_KEY, SECRET_KEY, redirect=True)
        self.locks = ProcessLocks(tmp_path / "locks")  # shared by this process's replicas, as PostgreSQL's are
        self._replicas = 0

    def store(self, *, options: S3Options | None = None) -> S3BlobStore:
        """Another replica: a store with its own scratch space."""
        self._replicas += 1
        scratch = self.tmp_path / f"replica{self._replicas}"
        scratch.mkdir()
        return S3BlobStore(BUCKET, self.prefix, options or self.options, scratch=scratch, locks=LocalLocks(self.locks))

    def key(self, digest: str) -> str:
        alg, _, hexpart = digest.partition(":")
        return f"{self.prefix}/blobs/{alg}/{hexpart[:2]}/{hexpart}"

    def keys(self, under: str = "") -> list[str]:
        pages = self.service.client().get_paginator("list_objects_v2")
        found = []
        for page in pages.paginate(Bucket=BUCKET, Prefix=f"{self.prefix}/{under}"):
            found += [item["Key"] for item in page.get("Contents", ())]
        return found


@pytest.fixture
def bucket(seaweedfs: SeaweedFS, tmp_path: Path) -> Iterator[Bucket]:
    b = Bucket(seaweedfs, tmp_path)
    yield b
    seaweedfs.delete_prefix(b.prefix)
    b.locks.close()


async def store_blob(store: S3BlobStore, data: bytes) -> str:
    d = digest(data)
    async with store.writer() as writer:
        await writer.write(data)
        assert await writer.commit(d) == len(data)
    return d


# -- writing -------------------------------------------------------------------------------------------------


def test_a_large_blob_is_uploaded_in_parts_and_round_trips(bucket: Bucket):
    data = content("large", 40 * MiB + 12345)

    async def case() -> None:
        store = bucket.store()
        try:
            d = digest(data)
            async with store.writer() as writer:
                for i in range(0, len(data), MiB):
                    await writer.write(data[i : i + MiB])
                assert await writer.commit(d) == len(data)
            assert store.calls["create_multipart_upload"] == 1, "a 40 MiB blob is a multipart upload"
            assert store.calls["upload_part"] == 6, "of 8 MiB parts (and the rest)"
            assert store.calls["complete_multipart_upload"] == 1
            assert store.calls["put_object"] == 0, "not a single PutObject"
            info = await store.stat(d)
            assert info is not None and info.size == len(data)
            assert await join(store.read(d)) == data, "the multipart object reads back whole (and verified)"
            assert await join(store.read(d, 8 * MiB - 10, 20)) == data[8 * MiB - 10 : 8 * MiB + 10], "across parts"
            assert list((bucket.tmp_path / "replica1" / "uploads").iterdir()) == [], "no scratch file is left"
        finally:
            await store.close()

    run(case())


def test_a_small_blob_is_one_put_and_a_stored_one_is_not_uploaded_again(bucket: Bucket):
    data = content("small", 1000)

    async def case() -> None:
        store = bucket.store()
        try:
            d = await store_blob(store, data)
            assert (store.calls["put_object"], store.calls["create_multipart_upload"]) == (1, 0)
            await store_blob(store, data)
            assert store.calls["put_object"] == 1, "the same content, already stored, is not uploaded again"
            assert bucket.keys("blobs/") == [bucket.key(d)], "the layout: blobs/<alg>/<2 hex>/<hex>"
        finally:
            await store.close()

    run(case())


def test_a_full_scratch_disk_fails_a_write_and_cuts_off_a_sessions_chunk(
    bucket: Bucket, monkeypatch: pytest.MonkeyPatch
):
    real_write_all = storage.scratch.write_all
    full = False

    def write_all(fd: int, data: bytes) -> None:
        if full:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write_all(fd, data)

    monkeypatch.setattr(storage.scratch, "write_all", write_all)

    async def case() -> None:
        nonlocal full
        store = bucket.store()
        scratch = bucket.tmp_path / "replica1" / "uploads"
        try:
            await store.create_upload("u1")
            async with store.resume_upload("u1") as writer:
                await writer.write(b"a" * 100)
            full = True
            with pytest.raises(StorageFull):
                async with store.resume_upload("u1") as writer:
                    await writer.write(b"b" * (2 * MiB))  # over the write buffer: it reaches the disk
                    await writer.write(b"b")
            assert await store.upload_size("u1") == 100, "the chunk that found the disk full is cut off"
            assert len(bucket.keys("uploads/u1/")) == 2, "the marker and the first chunk, no other"
            with pytest.raises(StorageFull):
                async with store.writer() as fresh:
                    await fresh.write(b"c" * (2 * MiB))
                    await fresh.commit(digest(b"c" * (2 * MiB)))
            assert list(scratch.iterdir()) == [], "no scratch file is left"
            full = False
            async with store.resume_upload("u1") as writer:
                assert writer.size == 100, "the session goes on from where it was"
                await writer.write(b"d" * 50)
                assert await writer.commit(digest(b"a" * 100 + b"d" * 50)) == 150
        finally:
            await store.close()

    run(case())


# -- upload sessions -----------------------------------------------------------------------------------------


def test_a_session_written_by_two_replicas_commits(bucket: Bucket):
    pieces = [content("one", 3000), content("two", 10 * MiB + 7), content("three", 1), content("four", 5000)]
    data = b"".join(pieces)

    async def case() -> None:
        # Two replicas, each with its own database, data dir and scratch space: only the bucket is shared.
        a = open_stores(bucket.tmp_path / "a", blobs=f"s3://{BUCKET}/{bucket.prefix}", s3=bucket.options)
        b = open_stores(bucket.tmp_path / "b", blobs=f"s3://{BUCKET}/{bucket.prefix}", s3=bucket.options)
        await a.open()
        await b.open()
        try:
            await a.blobs.create_upload("u1")
            written = 0
            for replica, piece in zip([a, b, a, b], pieces, strict=True):
                assert await replica.blobs.upload_size("u1") == written, "every replica sees every chunk"
                async with replica.blobs.resume_upload("u1") as writer:
                    assert writer.size == written
                    await writer.write(piece)
                written += len(piece)
                for data_dir in ("a", "b"):
                    left = list((bucket.tmp_path / data_dir / "uploads").iterdir())
                    assert left == [], f"replica {data_dir} keeps nothing of the session between requests: {left}"
            offsets = [sum(len(p) for p in pieces[:i]) for i in range(len(pieces))]
            names = sorted(k.rpartition("/")[2] for k in bucket.keys("uploads/u1/"))
            streamed = f"{offsets[1]:020d}.sha256"  # the 10 MiB block went in parts: its hash lies beside it
            assert names == sorted([*(f"{offset:020d}" for offset in offsets), streamed, "session"]), (
                "a chunk per block, the marker, and the hash of the chunk sent in parts"
            )
            async with a.blobs.resume_upload("u1") as writer:
                assert await writer.commit(digest(data)) == len(data), "the chunks of both replicas make the blob"
            assert await join(b.blobs.read(digest(data))) == data
            assert bucket.keys("uploads/") == [], "a committed session leaves nothing in the bucket"
        finally:
            await a.close()
            await b.close()

    run(case())


def test_a_single_chunk_session_commits_by_a_server_side_copy(bucket: Bucket):
    data = content("whole layer", 2 * MiB)

    async def case() -> None:
        store = bucket.store()
        try:
            await store.create_upload("u1")
            async with store.resume_upload("u1") as writer:  # PATCH with the whole blob
                await writer.write(data)
            store.calls.clear()
            async with store.resume_upload("u1") as writer:  # PUT ?digest= without a body
                assert await writer.commit(digest(data)) == len(data)
            assert store.calls["copy_object"] == 1, "the chunk is copied into the blob's key"
            assert store.calls["get_object"] == 0, "its bytes are not read back (its recorded hash decides)"
            assert store.calls["put_object"] + store.calls["upload_part"] == 0, "nor uploaded again"
            assert await join(store.read(digest(data))) == data

            await store.create_upload("u2")
            async with store.resume_upload("u2") as writer:
                await writer.write(data)
            store.calls.clear()
            with pytest.raises(DigestMismatch) as raised:
                async with store.resume_upload("u2") as writer:
                    await writer.commit(digest(b"something else"))
            assert raised.value.actual == digest(data), "the recorded hash names the content"
            assert store.calls["get_object"] + store.calls["copy_object"] == 0, "decided without reading or copying"
            assert bucket.keys("uploads/") == [], "both sessions are gone"
        finally:
            await store.close()

    run(case())


def test_a_chunk_over_the_copy_limit_is_copied_in_parts(bucket: Bucket, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(storage.s3.store, "COPY_LIMIT", 1 * MiB)  # 5 GiB in production
    monkeypatch.setattr(storage.s3.store, "COPY_PART", 5 * MiB)
    data = content("huge layer", 12 * MiB)

    async def case() -> None:
        store = bucket.store()
        try:
            await store.create_upload("u1")
            async with store.resume_upload("u1") as writer:
                await writer.write(data)
            store.calls.clear()
            async with store.resume_upload("u1") as writer:
                assert await writer.commit(digest(data)) == len(data)
            assert (store.calls["upload_part_copy"], store.calls["copy_object"]) == (3, 0)
            assert await join(store.read(digest(data))) == data
        finally:
            await store.close()

    run(case())


def test_a_shared_write_is_followed_on_its_replica_only(bucket: Bucket):
    async def case() -> None:
        here, there = bucket.store(), bucket.store()
        try:
            async with here.writer(shared="k", size=10) as writer:
                await writer.write(b"0123")
                view = await here.follow("k")
                assert view is not None and await view.available() == 4
                await view.close()
                assert await there.follow("k") is None, "another replica's scratch space is out of reach"
                await writer.write(b"456789")
                await writer.commit(digest(b"0123456789"))
            assert await join(there.read(digest(b"0123456789"))) == b"0123456789"
        finally:
            await here.close()
            await there.close()

    run(case())


# -- reading -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [100, 3 * MiB], ids=["one-piece", "many-pieces"])
@pytest.mark.parametrize("how", ["read", "open"])
def test_a_corrupt_object_is_never_served_whole(bucket: Bucket, size: int, how: str):
    data = content("intact", size)
    client = bucket.service.client()

    async def case() -> None:
        store = bucket.store(options=S3Options(bucket.service.endpoint_url, REGION, ACCESS_KEY, SECRET_KEY))
        try:
            d = await store_blob(store, data)
            for corrupt in (content("rotten", size), data[:-1], data + b"x"):  # flipped, short, long
                await asyncio.to_thread(client.put_object, Bucket=BUCKET, Key=bucket.key(d), Body=corrupt)
                served = bytearray()
                with pytest.raises(BlobCorrupt):
                    if how == "read":
                        chunks = store.read(d)
                    else:
                        body = await store.open(d, redirect=True)  # redirects not configured: a stream
                        assert isinstance(body, ByteStream)
                        chunks = body.chunks
                    async for chunk in chunks:
                        served += chunk
                assert len(served) < len(corrupt), "the stream is cut before its last bytes"
            # A range is served as stored (it cannot be checked alone); the whole blob never is.
            assert await join(store.read(d, 1, 10)) == corrupt[1:11]
        finally:
            await store.close()

    run(case())


def test_a_redirect_is_a_presigned_url_a_plain_client_fetches(bucket: Bucket):
    data = content("redirected", 5000)

    async def case() -> None:
        store = bucket.store()
        plain = bucket.store(options=S3Options(bucket.service.endpoint_url, REGION, ACCESS_KEY, SECRET_KEY))
        try:
            d = await store_blob(store, data)
            body = await store.open(d, 100, 50, redirect=True)
            assert isinstance(body, RedirectURL), "redirect allowed and configured: a presigned URL"
            assert time.time() + 60 < body.expires_at <= time.time() + storage.s3.common.REDIRECT_TTL + 1
            assert ACCESS_KEY in body.url and SECRET_KEY not in body.url
            async with aiohttp.ClientSession() as session:
                async with session.get(body.url) as response:
                    assert response.status == 200
                    assert await response.read() == data
                async with session.get(body.url, headers={"Range": "bytes=100-149"}) as response:
                    assert response.status == 206
                    assert await response.read() == data[100:150]
                async with session.get(body.url.replace("X-Amz-Signature=", "X-Amz-Signature=0")) as response:
                    assert response.status == 403, "the signature is checked"
            assert isinstance(await store.open(d, redirect=False), ByteStream), "not allowed: no redirect"
            assert isinstance(await plain.open(d, redirect=True), ByteStream), "not configured: no redirect"
        finally:
            await store.close()
            await plain.close()

    run(case())


# -- the endpoint down, leftovers ----------------------------------------------------------------------------


def test_an_unreachable_endpoint_is_reported_and_raises_storage_unavailable(bucket: Bucket):
    down = S3Options(f"http://127.0.0.1:{free_port()}", REGION, ACCESS_KEY, SECRET_KEY)  # nobody listens there

    async def case() -> None:
        store, healthy = bucket.store(options=down), bucket.store()
        try:
            assert await healthy.health() == []
            started = time.monotonic()
            problems = await store.health()
            assert time.monotonic() - started < storage.s3.common.HEALTH_TIMEOUT, "health() answers before its timeout"
            assert len(problems) == 1 and "127.0.0.1" in problems[0], problems
            assert "could not connect" in problems[0].lower(), "a refused connection is said at once"
            with pytest.raises(StorageUnavailable):  # after botocore's retries (a few seconds)
                await store.stat(digest(b"x"))
            with pytest.raises(StorageUnavailable):
                await store_blob(store, b"x")
        finally:
            await store.close()
            await healthy.close()

    run(case())


def test_remove_leftovers_removes_stale_multipart_uploads_and_ended_sessions_chunks(
    bucket: Bucket, monkeypatch: pytest.MonkeyPatch
):
    client = bucket.service.client()

    async def case() -> None:
        store = bucket.store()
        try:
            await store.create_upload("live")
            await store.create_upload("ended")
            for upload_id in ("live", "ended"):
                async with store.resume_upload(upload_id) as writer:
                    await writer.write(b"chunk")
            # A crash between removing a session's marker and its chunks; a multipart upload nobody completed.
            await asyncio.to_thread(client.delete_object, Bucket=BUCKET, Key=f"{bucket.prefix}/uploads/ended/session")
            await asyncio.to_thread(client.create_multipart_upload, Bucket=BUCKET, Key=f"{bucket.prefix}/blobs/x")
            assert await store.remove_leftovers() == 0, "nothing is stale yet"
            monkeypatch.setattr(storage.s3.store, "STALE_UPLOAD_AGE", -60.0)  # everything is, now
            assert await store.remove_leftovers() == 2, "the multipart upload and the ended session's chunk"
            assert await store.upload_size("live") == 5, "a live session is not a leftover"
            assert sorted(bucket.keys("uploads/")) == [
                f"{bucket.prefix}/uploads/live/00000000000000000000",
                f"{bucket.prefix}/uploads/live/session",
            ]
            uploads = await asyncio.to_thread(client.list_multipart_uploads, Bucket=BUCKET, Prefix=bucket.prefix)
            assert not uploads.get("Uploads")
        finally:
            await store.close()

    run(case())


# -- a registry on S3 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("redirect", [True, False], ids=["redirect", "stream"])
def test_a_registry_on_s3_serves_pushes_and_pulls(bucket: Bucket, make_server: Callable[..., Any], redirect: bool):
    service = bucket.service
    config = AUTH_OFF + (
        f'[storage]\nblobs = "s3://{BUCKET}/{bucket.prefix}"\n'
        f'[storage.s3]\nendpoint_url = "{service.endpoint_url}"\nregion = "{REGION}"\n'
        f'access_key_id = "{ACCESS_KEY}"\nsecret_access_key = "{SECRET_KEY}"\nredirect = {str(redirect).lower()}\n'
        'local_cache = "0"\n'  # every read from the bucket (tests/test_s3_local_cache.py: with copies)
    )
    srv = make_server(config)
    client = Client(srv.url)
    data = content("layer", 3 * MiB)
    d = client.push_blob("t/app", data)
    blob = f"{srv.url}/v2/t/app/blobs/{d}"
    r = requests.get(blob, allow_redirects=False, timeout=30)
    if redirect:
        assert r.status_code == 307 and r.headers["Location"].startswith(service.endpoint_url), r.headers
    else:
        assert r.status_code == 200 and r.content == data
    r = requests.get(blob, timeout=30)
    assert (r.status_code, r.content == data) == (200, True), "the blob, from the bucket or through the registry"
    r = requests.get(blob, headers={"Range": "bytes=10-19"}, timeout=30)
    assert (r.status_code, r.content) == (206, data[10:20])
    assert requests.get(f"{srv.url}/readyz", timeout=30).status_code == 200

    chunked = content("chunked", 100_000)
    r = client.post("/v2/t/app/blobs/uploads/")
    for start, end in ((0, 40_000), (40_000, len(chunked))):
        headers = {"Content-Type": "application/octet-stream", "Content-Range": f"{start}-{end - 1}"}
        r = client.patch(location(r), data=chunked[start:end], headers=headers)
        assert r.status_code == 202, r.text
    separator = "&" if "?" in location(r) else "?"
    assert client.put(f"{location(r)}{separator}digest={digest(chunked)}").status_code == 201
    assert requests.get(f"{srv.url}/v2/t/app/blobs/{digest(chunked)}", timeout=30).content == chunked

    if not redirect:  # a corrupt object is cut short, never served whole
        service.client().put_object(Bucket=BUCKET, Key=bucket.key(d), Body=content("rotten", 3 * MiB))
        received = bytearray()
        with pytest.raises(requests.RequestException):
            with requests.get(blob, stream=True, timeout=30) as r:
                assert r.status_code == 200
                for piece in r.iter_content(65536):
                    received += piece
        assert len(received) < len(data)


def test_a_registry_whose_bucket_cannot_be_reached_answers_503(make_server: Callable[..., Any]):
    config = AUTH_OFF + (
        f'[storage]\nblobs = "s3://{BUCKET}/down"\n'
        f'[storage.s3]\nendpoint_url = "http://127.0.0.1:{free_port()}"\n'  # nobody listens there
        f'access_key_id = "{ACCESS_KEY}"\nsecret_access_key = "{SECRET_KEY}"\n'
    )
    srv = make_server(config)
    r = requests.get(f"{srv.url}/readyz", timeout=30)
    assert r.status_code == 503 and "127.0.0.1" in r.text, r.text
    r = requests.post(f"{srv.url}/v2/t/app/blobs/uploads/", timeout=30)
    assert r.status_code == 503, r.text
    assert r.headers.get("Retry-After") and "UNAVAILABLE" in r.text, "a registry error the client may retry"
