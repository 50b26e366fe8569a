"""A replica's local copies of S3 blobs (storage/s3/local_cache.py, `[storage.s3] local_cache`): a whole read
from the bucket leaves a verified copy, a blob written here keeps its scratch file as one, and later reads are
answered from the disk (sendfile) without a round trip to the bucket. Bytes that fail the digest check, or a
read cut short, leave nothing; the budget holds by evicting the least recently used; a deleted blob's copy goes.
Against the session's SeaweedFS, as tests/test_s3_store.py."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from registry.config.values import parse_size
from storage.blobs import ByteStream, FileRange
from storage.errors import BlobCorrupt, BlobNotFound
from storage.factory import S3Options
from storage.s3 import S3BlobStore
from storage.s3.local_cache import FILL_PREFIX, LocalCache
from tests import test_s3_store
from tests.oci import Client
from tests.server import AUTH_OFF
from tests.services.seaweedfs import ACCESS_KEY, BUCKET, REGION, SECRET_KEY
from tests.test_s3_store import Bucket, MiB, content, digest, join, run, store_blob

bucket = test_s3_store.bucket  # (the fixture: a prefix of the session's bucket)


def cached_store(b: Bucket, budget: int = 64 * MiB, *, redirect: bool = False) -> S3BlobStore:
    options = S3Options(b.service.endpoint_url, REGION, ACCESS_KEY, SECRET_KEY, redirect=redirect, local_cache=budget)
    return b.store(options=options)


def copies(store: S3BlobStore) -> list[str]:
    root = store.local.directory
    return sorted(p.name for p in root.glob("??/*"))


def fills(store: S3BlobStore) -> list[str]:
    return [p.name for p in store.local.directory.glob(f"{FILL_PREFIX}*")]


def put_object(b: Bucket, d: str, data: bytes) -> None:
    b.service.client().put_object(Bucket=BUCKET, Key=b.key(d), Body=data)


def test_a_whole_read_leaves_a_copy_and_later_reads_need_no_bucket(bucket: Bucket):
    data = content("read once", 5 * MiB + 7)
    d = digest(data)
    put_object(bucket, d, data)  # (written by another replica)

    async def case() -> None:
        store = cached_store(bucket)
        try:
            body = await store.open(d)
            assert isinstance(body, ByteStream), "no copy yet: streamed from the bucket"
            assert await join(body.chunks) == data
            assert copies(store) == [d.partition(":")[2]] and fills(store) == []
            store.calls.clear()
            body = await store.open(d, 100, 1000, redirect=True)  # (redirects are off for this store)
            assert isinstance(body, FileRange) and (body.offset, body.length) == (100, 1000)
            assert await asyncio.to_thread(Path(body.file).read_bytes) == data, "the copy is the blob"
            assert await join(store.read(d)) == data
            assert await join(store.read(d, 5 * MiB, 7)) == data[5 * MiB :]
            assert sum(store.calls.values()) == 0, f"answered without the bucket: {store.calls}"
        finally:
            await store.close()

    run(case())


def test_a_blob_written_here_is_a_copy_at_once_and_delete_drops_it(bucket: Bucket):
    data = content("pushed here", 3 * MiB)

    async def case() -> None:
        store = cached_store(bucket)
        try:
            d = await store_blob(store, data)
            assert store.local.adopted == 1 and copies(store) == [d.partition(":")[2]]
            assert list(store._scratch.iterdir()) == [], "the scratch file became the copy"
            assert isinstance(await store.open(d), FileRange)
            assert await store.delete(d) is True
            assert copies(store) == [] and await store.stat(d) is None
            with pytest.raises(BlobNotFound):
                await store.open(d)
        finally:
            await store.close()

    run(case())


def test_bytes_that_fail_the_digest_check_leave_no_copy(bucket: Bucket):
    data = content("claimed", 4 * MiB)
    d = digest(data)
    put_object(bucket, d, content("rotten", 4 * MiB))

    async def case() -> None:
        store = cached_store(bucket)
        try:
            with pytest.raises(BlobCorrupt):
                await join(store.read(d))
            assert copies(store) == [] and fills(store) == []
            with pytest.raises(BlobCorrupt):  # and the next read goes to the bucket again
                await join(store.read(d))
        finally:
            await store.close()

    run(case())


def test_a_read_cut_short_or_in_part_leaves_no_copy(bucket: Bucket):
    data = content("abandoned", 6 * MiB)
    d = digest(data)
    put_object(bucket, d, data)

    async def case() -> None:
        store = cached_store(bucket)
        try:
            stream = store.read(d)
            assert len(await anext(stream)) > 0
            await stream.aclose()  # a client that went away
            assert await join(store.read(d, 10, 2 * MiB)) == data[10 : 10 + 2 * MiB]  # a range: never a copy
            assert copies(store) == [] and fills(store) == []
        finally:
            await store.close()

    run(case())


def test_the_budget_holds_least_recently_used_first_and_large_blobs_stay_out(bucket: Bucket):
    blobs = [content(f"lru {i}", 2 * MiB + MiB // 5) for i in range(5)]  # 4 fit in 10 MiB, 5 do not
    large = content("too large", 3 * MiB)  # over a quarter of the budget

    async def case() -> None:
        store = cached_store(bucket, budget=10 * MiB)
        try:
            names = []
            for i, data in enumerate(blobs[:4]):
                names.append(digest(data).partition(":")[2])
                put_object(bucket, digest(data), data)
                await join(store.read(digest(data)))
                path = store.local.directory / names[-1][:2] / names[-1]
                os.utime(path, (time.time() - 1000 + i, time.time() - 1000 + i))  # used in this order
            assert copies(store) == sorted(names)
            assert len(names) == 4
            assert store.local.lookup(digest(blobs[0])) is not None  # the oldest, used again now
            put_object(bucket, digest(blobs[4]), blobs[4])
            await join(store.read(digest(blobs[4])))
            held = sum(p.stat().st_size for p in store.local.directory.glob("??/*"))
            assert held <= 10 * MiB, held
            kept = copies(store)
            assert names[0] in kept and names[1] not in kept, "the least recently used went first"
            assert digest(blobs[4]).partition(":")[2] in kept
            put_object(bucket, digest(large), large)
            assert await join(store.read(digest(large))) == large
            assert digest(large).partition(":")[2] not in copies(store)
        finally:
            await store.close()

    run(case())


def test_no_copies_without_a_budget_or_without_free_disk(bucket: Bucket, tmp_path: Path):
    data = content("not kept", 2 * MiB)
    d = digest(data)
    put_object(bucket, d, data)

    async def case() -> None:
        off = cached_store(bucket, budget=0)
        try:
            assert await join(off.read(d)) == data
            assert not off.local.directory.exists() and isinstance(await off.open(d), ByteStream)
        finally:
            await off.close()
        full = LocalCache(tmp_path / "full", 64 * MiB, free_space_floor=lambda total: total)  # nothing is free
        assert await full.fill(d, len(data)) is None
        assert not await full.adopt(tmp_path / "nothing", d, len(data))
        assert await LocalCache(tmp_path / "odd", 64 * MiB).fill("sha512:" + "0" * 128, 10) is None
        assert LocalCache(tmp_path / "odd", 64 * MiB).lookup("sha256:../../etc/passwd") is None

    run(case())


def test_copies_in_use_are_spared_until_they_age(tmp_path: Path):
    """A copy looked up a moment ago may be about to be opened: eviction leaves it, and takes it once it aged."""
    cache = LocalCache(tmp_path / "cache", 8 * MiB)

    async def case() -> None:
        names = []
        for i in range(5):  # 5 x 2 MiB, all just used: over the budget, yet nothing may go
            data = content(f"spared {i}", 2 * MiB)
            source = tmp_path / f"scratch{i}"
            await asyncio.to_thread(source.write_bytes, data)
            assert await cache.adopt(source, digest(data), len(data))
            names.append(digest(data))
        assert all(cache.lookup(d) is not None for d in names), "every copy kept while in use"
        old = time.time() - 1000
        for d in names[:3]:
            path, _ = cache.lookup(d) or ("", 0)
            os.utime(path, (old, old))
        data = content("one more", 2 * MiB)
        source = tmp_path / "scratch-more"
        await asyncio.to_thread(source.write_bytes, data)
        assert await cache.adopt(source, digest(data), len(data))
        kept = [d for d in names if cache.lookup(d) is not None]
        assert kept == names[3:], "the aged copies went (down to the budget's share), the ones in use stayed"

    run(case())


def test_the_setting_takes_sizes():
    assert parse_size("2GiB") == 2 << 30 and parse_size("0") == 0 and parse_size("500MB") == 500_000_000
    with pytest.raises(ValueError):
        parse_size("5%")


def test_a_registry_serves_a_blob_from_its_copy_when_the_bucket_lost_it(
    bucket: Bucket, make_server: Callable[..., Any]
):
    config = AUTH_OFF + (
        f'[storage]\nblobs = "s3://{BUCKET}/{bucket.prefix}"\n'
        f'[storage.s3]\nendpoint_url = "{bucket.service.endpoint_url}"\nregion = "{REGION}"\n'
        f'access_key_id = "{ACCESS_KEY}"\nsecret_access_key = "{SECRET_KEY}"\nlocal_cache = "64MiB"\n'
    )
    srv = make_server(config)
    data = content("served from disk", 3 * MiB)
    d = Client(srv.url).push_blob("t/app", data)
    blob = f"{srv.url}/v2/t/app/blobs/{d}"
    # The push kept a copy: even with the bucket's object replaced by rot, the verified copy is what is served.
    put_object(bucket, d, content("rot in the bucket", 3 * MiB))
    for headers, want in (({}, data), ({"Range": "bytes=10-19"}, data[10:20])):
        r = requests.get(blob, headers=headers, timeout=30)
        assert r.status_code in (200, 206) and r.content == want, (r.status_code, len(r.content))
    bucket.service.client().delete_object(Bucket=BUCKET, Key=bucket.key(d))
    r = requests.get(blob, timeout=30)
    assert (r.status_code, r.content == data) == (200, True)
    assert any(srv.data_dir.glob(f"s3-cache/??/{d.partition(':')[2]}"))
    for _ in range(30):  # bounded: other workers' counts reach a scrape within a second
        text = requests.get(f"{srv.url}/metrics", timeout=30).text
        reads = [line for line in text.splitlines() if line.startswith("moorage_blob_local_copy_reads_total ")]
        if reads and float(reads[0].split()[1]) >= 3:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the three reads from the local copy are not counted: {reads}")


def test_local_copies_leave_nothing_in_flight(bucket: Bucket):
    """Two readers of one blob at once: both get it whole, one copy stays, no fill file is left."""
    data = content("twice at once", 5 * MiB)
    d = digest(data)
    put_object(bucket, d, data)

    async def case() -> None:
        store = cached_store(bucket)
        try:
            got = await asyncio.gather(join(store.read(d)), join(store.read(d)))
            assert got == [data, data]
            assert copies(store) == [d.partition(":")[2]] and fills(store) == []
        finally:
            await store.close()

    run(case())
