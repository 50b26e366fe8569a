"""An upload session's block on S3 goes to the bucket while it arrives (storage/s3/writers.py): parts of the
chunk's multipart upload are sent once a part's worth has landed in the scratch file, so a PATCH of a whole
layer ends with only its last part to send; the chunk's hash lies beside it, so the PUT that follows installs
it with a server-side copy and no read. Whatever ends a block without keeping it leaves no multipart upload.
Against the session's SeaweedFS, as tests/test_s3_store.py."""

from __future__ import annotations

import asyncio

import pytest

import storage.s3.writers
from storage.errors import DigestMismatch
from tests import test_s3_store
from tests.test_s3_store import BUCKET, Bucket, MiB, content, digest, join, run

bucket = test_s3_store.bucket  # (the fixture: a prefix of the session's bucket)


def multipart_uploads(b: Bucket) -> list[str]:
    listing = b.service.client().list_multipart_uploads(Bucket=BUCKET, Prefix=f"{b.prefix}/")
    return [u["Key"] for u in listing.get("Uploads", ())]


def test_a_large_patch_is_sent_in_parts_while_it_arrives_and_committed_by_a_copy(bucket: Bucket):
    data = content("a big layer", 20 * MiB + 3)

    async def case() -> None:
        store = bucket.store()
        try:
            await store.create_upload("u1")
            async with store.resume_upload("u1") as writer:  # PATCH with the whole blob
                for i in range(0, len(data), 256 << 10):
                    await writer.write(data[i : i + (256 << 10)])
                    if i == 17 * MiB:
                        await asyncio.sleep(0.2)  # (the parts in flight land)
                        assert store.calls["upload_part"] >= 2, "two parts are sent before the block ends"
                        assert multipart_uploads(bucket), "the chunk's multipart upload is under way"
                sent_while_arriving = store.calls["upload_part"]
            assert store.calls["upload_part"] == sent_while_arriving + 1, "only the last part is left at the end"
            assert store.calls["put_object"] == 1 + 1, "the session's marker, and the chunk's hash beside it"
            assert multipart_uploads(bucket) == [], "the chunk is completed"
            store.calls.clear()
            async with store.resume_upload("u1") as writer:  # PUT ?digest= without a body (another request)
                assert await writer.commit(digest(data)) == len(data)
            assert store.calls["copy_object"] == 1, "the chunk is copied into the blob's key"
            assert store.calls["upload_part"] + store.calls["put_object"] == 0, "nothing is uploaded again"
            assert store.calls["get_object"] == 1, "only the chunk's hash is read, not its bytes"
            assert await join(store.read(digest(data))) == data
            assert bucket.keys("uploads/") == [], "the session leaves nothing behind"
        finally:
            await store.close()

    run(case())


@pytest.mark.parametrize("size", [20 * MiB + 5, 3 * MiB], ids=["in-parts", "one-put"])
def test_a_block_committed_by_its_own_request_is_installed_whole(bucket: Bucket, size: int):
    data = content(f"monolithic {size}", size)

    async def case() -> None:
        store = bucket.store()
        try:
            await store.create_upload("u1")
            async with store.resume_upload("u1") as writer:  # POST then PUT with the body (or a last PATCH)
                await writer.write(data)
                assert await writer.commit(digest(data)) == size
            assert await join(store.read(digest(data))) == data
            assert bucket.keys("uploads/") == [] and multipart_uploads(bucket) == []
        finally:
            await store.close()

    run(case())


def test_a_streamed_block_with_a_wrong_digest_leaves_nothing(bucket: Bucket):
    data = content("claimed wrongly", 18 * MiB)

    async def case() -> None:
        store = bucket.store()
        try:
            await store.create_upload("u1")
            with pytest.raises(DigestMismatch) as raised:
                async with store.resume_upload("u1") as writer:
                    await writer.write(data)
                    await writer.commit(digest(b"other bytes"))
            assert raised.value.actual == digest(data)
            assert bucket.keys("uploads/") == [] and multipart_uploads(bucket) == []
            assert bucket.keys("blobs/") == [], "no blob appears"
        finally:
            await store.close()

    run(case())


def test_a_block_cut_off_by_a_failure_aborts_its_parts_and_keeps_the_session(
    bucket: Bucket, monkeypatch: pytest.MonkeyPatch
):
    """A part the bucket refuses fails the write: the block's multipart upload is aborted, the session stays
    where it was (the client sends the block again), and a later block goes on from there."""
    data = content("a layer", 19 * MiB)
    real = storage.s3.writers._ObjectSink._upload_part
    refuse = True

    async def flaky(self: storage.s3.writers._ObjectSink, number: int, part: bytes) -> None:
        if refuse and number == 2:
            self._failure = self._failure or storage.s3.writers.StorageError("refused (test)")
            self._slots.release()
            return
        await real(self, number, part)

    monkeypatch.setattr(storage.s3.writers._ObjectSink, "_upload_part", flaky)

    async def case() -> None:
        nonlocal refuse
        store = bucket.store()
        try:
            await store.create_upload("u1")
            async with store.resume_upload("u1") as writer:
                await writer.write(b"x" * 100)
            with pytest.raises(storage.s3.writers.StorageError):
                async with store.resume_upload("u1") as writer:
                    for i in range(0, len(data), MiB):
                        await writer.write(data[i : i + MiB])
                    await asyncio.sleep(0.2)
                    await writer.write(b"")  # (a refused part is seen by the next part or the end)
            assert multipart_uploads(bucket) == [], "the refused block's multipart upload is aborted"
            assert await store.upload_size("u1") == 100, "the session is where it was"
            refuse = False
            async with store.resume_upload("u1") as writer:
                await writer.write(data)
                assert await writer.commit(digest(b"x" * 100 + data)) == 100 + len(data)
            assert bucket.keys("uploads/") == [] and multipart_uploads(bucket) == []
        finally:
            await store.close()

    run(case())
