"""The BlobStore contract (`storage.blobs`): fresh writers, reads, upload sessions, shared writes, deletion."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import pytest

import storage.scratch
from storage.blobs import BlobInfo, BlobStore, ByteStream, FileRange, RedirectURL
from storage.errors import BlobNotFound, DigestMismatch, UploadNotFound
from storage.factory import Stores
from tests.contract.helpers import body_bytes, content, digest, join, store_blob, stored_digests

DATA = content("blob", 100)
MISSING = digest(b"never stored")

# (offset, length) of a 100-byte blob, and the slice they stand for.
RANGES = [
    pytest.param(0, None, slice(0, 100), id="whole"),
    pytest.param(0, 100, slice(0, 100), id="whole-explicit"),
    pytest.param(0, 1, slice(0, 1), id="first-byte"),
    pytest.param(10, None, slice(10, 100), id="from-offset"),
    pytest.param(10, 25, slice(10, 35), id="middle"),
    pytest.param(99, 1, slice(99, 100), id="last-byte"),
    pytest.param(99, None, slice(99, 100), id="last-byte-open"),
]


# -- fresh writers ----------------------------------------------------------------------------------------


async def test_stat_of_a_missing_blob_is_none(blobs: BlobStore):
    assert await blobs.stat(MISSING) is None, "stat() of a blob never stored must be None"


async def test_a_committed_writer_installs_the_blob(blobs: BlobStore):
    d = digest(DATA)
    before = time.time()
    async with blobs.writer() as writer:
        assert writer.size == 0, "a fresh writer starts empty"
        await writer.write(DATA[:30])
        await writer.write(b"")
        await writer.write(DATA[30:])
        assert writer.size == len(DATA), "size counts every byte written"
        assert await blobs.stat(d) is None, "a blob must not be visible before its commit"
        size = await writer.commit(d)
    assert size == len(DATA), "commit() returns the blob's size"
    info = await blobs.stat(d)
    assert info is not None, "a committed blob must be stat-able"
    assert info.size == len(DATA), f"stat size {info.size} != {len(DATA)} written"
    assert before - 5 <= info.modified <= time.time() + 5, f"modified {info.modified} is not about now ({before})"
    assert await join(blobs.read(d)) == DATA, "the blob's bytes are the bytes written"


async def test_a_large_blob_written_in_many_pieces_round_trips(blobs: BlobStore):
    data = content("large", 3 * 2**20 + 12345)  # over the drivers' buffer and read chunk sizes
    d = digest(data)
    async with blobs.writer() as writer:
        for i in range(0, len(data), 65536):
            await writer.write(data[i : i + 65536])
        assert await writer.commit(d) == len(data)
    assert await join(blobs.read(d)) == data, "read() of a multi-chunk blob returns every byte in order"
    assert await body_bytes(await blobs.open(d)) == data, "open() of a multi-chunk blob covers every byte"
    tail = await join(blobs.read(d, len(data) - 100_000, 90_000))
    assert tail == data[-100_000:-10_000], "a range across chunk boundaries is read exactly"


@pytest.mark.parametrize(("offset", "length", "expected"), RANGES)
async def test_open_returns_a_body_of_exactly_the_requested_range(
    blobs: BlobStore, offset: int, length: int | None, expected: slice
):
    d = await store_blob(blobs, DATA)
    body = await blobs.open(d, offset, length)
    assert not isinstance(body, RedirectURL), "open() must not redirect unless the caller allows it"
    assert await body_bytes(body) == DATA[expected], f"open({offset}, {length}) must give bytes {expected}"


@pytest.mark.parametrize(("offset", "length", "expected"), RANGES)
async def test_read_streams_exactly_the_requested_range(
    blobs: BlobStore, offset: int, length: int | None, expected: slice
):
    d = await store_blob(blobs, DATA)
    assert await join(blobs.read(d, offset, length)) == DATA[expected], f"read({offset}, {length}) != {expected}"


async def test_open_with_redirects_allowed_answers_with_some_body(blobs: BlobStore):
    d = await store_blob(blobs, DATA)
    body = await blobs.open(d, 10, 20, redirect=True)
    assert isinstance(body, FileRange | RedirectURL | ByteStream), f"{body!r} is not a BlobBody"
    if isinstance(body, RedirectURL):
        assert body.url, "a redirect names a URL"
        assert body.expires_at > time.time(), "a redirect must still be valid when handed out"
        assert await body_bytes(body) == DATA, "a redirect's URL serves the blob"
    assert await body_bytes(body, 10, 20) == DATA[10:30], "the body serves the range (a redirect: to a Range GET)"


@pytest.mark.parametrize("call", ["open", "read"])
async def test_open_and_read_of_a_missing_blob_raise_blob_not_found(blobs: BlobStore, call: str):
    with pytest.raises(BlobNotFound):
        if call == "open":
            await blobs.open(MISSING)
        else:
            await join(blobs.read(MISSING))


async def test_a_wrong_digest_raises_digest_mismatch_and_keeps_nothing(blobs: BlobStore):
    wrong = digest(b"something else")
    with pytest.raises(DigestMismatch) as raised:
        async with blobs.writer() as writer:
            await writer.write(DATA)
            await writer.commit(wrong)
    assert raised.value.expected == wrong, "DigestMismatch names the digest expected"
    assert raised.value.actual == digest(DATA), "DigestMismatch names the content's actual digest"
    assert await blobs.stat(wrong) is None, "nothing is installed under the expected digest"
    assert await blobs.stat(digest(DATA)) is None, "nothing is installed under the actual digest"
    assert await stored_digests(blobs) == set(), "a failed commit leaves no blob behind"


@pytest.mark.parametrize("leave", ["normally", "by an exception"])
async def test_leaving_a_writer_without_commit_keeps_nothing(blobs: BlobStore, leave: str):
    class Leave(Exception):
        pass

    with pytest.raises(Leave) if leave == "by an exception" else contextlib.nullcontext():
        async with blobs.writer() as writer:
            await writer.write(DATA)
            if leave == "by an exception":
                raise Leave
    assert await blobs.stat(digest(DATA)) is None, "an uncommitted write must not become a blob"
    assert await stored_digests(blobs) == set(), "an uncommitted write leaves no blob behind"


async def test_an_explicit_abort_keeps_nothing(blobs: BlobStore):
    async with blobs.writer() as writer:
        await writer.write(DATA)
        await writer.abort()
    assert await stored_digests(blobs) == set(), "an aborted write leaves no blob behind"


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
async def test_a_blob_is_stored_under_a_digest_of_either_algorithm(blobs: BlobStore, algorithm: str):
    d = await store_blob(blobs, DATA, algorithm)
    assert d.startswith(f"{algorithm}:")
    info = await blobs.stat(d)
    assert info is not None and info.size == len(DATA), f"a {algorithm} blob is stat-able with its size"
    assert await join(blobs.read(d, 5, 10)) == DATA[5:15], f"a {algorithm} blob reads back"
    assert await stored_digests(blobs) == {d}, f"iter_digests names the {algorithm} blob by its digest"


async def test_committing_the_same_content_twice_stores_it_once(blobs: BlobStore):
    first = await store_blob(blobs, DATA)
    second = await store_blob(blobs, DATA)
    assert first == second
    listed = [d async for d, _ in blobs.iter_digests()]
    assert listed == [first], f"the same content is stored once, iter_digests gave {listed}"
    assert await join(blobs.read(first)) == DATA


# -- deletion and listing ---------------------------------------------------------------------------------


async def test_delete_removes_a_blob_once(blobs: BlobStore):
    d = await store_blob(blobs, DATA)
    assert await blobs.delete(d) is True, "deleting a stored blob returns True"
    assert await blobs.stat(d) is None, "a deleted blob is gone"
    with pytest.raises(BlobNotFound):
        await blobs.open(d)
    assert await blobs.delete(d) is False, "deleting it again returns False"
    assert await blobs.delete(MISSING) is False, "deleting a blob never stored returns False"


async def test_iter_digests_lists_every_stored_blob_with_its_info(blobs: BlobStore):
    assert await stored_digests(blobs) == set(), "a fresh store lists no blobs"
    datas = [content("a", 10), content("b", 2000), content("c", 1)]
    expected = {await store_blob(blobs, data): len(data) for data in datas}
    listed: dict[str, BlobInfo] = {}
    async for d, info in blobs.iter_digests():
        assert d not in listed, f"iter_digests listed {d} twice"
        listed[d] = info
    assert {d: info.size for d, info in listed.items()} == expected, "iter_digests gives each blob with its size"
    for d, info in listed.items():
        stat = await blobs.stat(d)
        assert stat is not None and abs(stat.modified - info.modified) <= 1, f"{d}: modified differs from stat()"


async def test_writes_in_progress_are_not_blobs(blobs: BlobStore):
    await blobs.create_upload("u1")
    async with blobs.resume_upload("u1") as session:
        await session.write(DATA)
    async with blobs.writer() as writer, blobs.writer(shared="k", size=len(DATA)) as shared:
        await writer.write(DATA)
        await shared.write(DATA)
        assert await stored_digests(blobs) == set(), "iter_digests lists no write in progress, nor a session"
        assert await blobs.stat(digest(DATA)) is None
        await writer.abort()
        await shared.abort()


async def test_remove_leftovers_spares_live_writes_and_sessions(blobs: BlobStore):
    await blobs.create_upload("u1")
    async with blobs.resume_upload("u1") as session:
        await session.write(DATA[:10])
    async with blobs.writer() as writer:
        await writer.write(DATA)
        assert await blobs.remove_leftovers() == 0, "a write in progress is not a leftover"
        await writer.commit(digest(DATA))
    assert await blobs.stat(digest(DATA)) is not None
    assert await blobs.upload_size("u1") == 10, "an upload session is not a leftover"


async def test_a_healthy_blob_store_reports_no_problems(blobs: BlobStore):
    assert await blobs.health() == []


# -- upload sessions --------------------------------------------------------------------------------------


async def test_an_upload_session_grows_by_chunks_and_commits_later(blobs: BlobStore):
    chunks = [content("chunk1", 1000), content("chunk2", 1), content("chunk3", 70000)]
    data = b"".join(chunks)
    await blobs.create_upload("u1")
    assert await blobs.upload_size("u1") == 0, "a new session holds nothing"
    written = 0
    for chunk in chunks:
        async with blobs.resume_upload("u1") as writer:
            assert writer.size == written, f"a resumed session is positioned at its end ({written})"
            await writer.write(chunk)
            written += len(chunk)
            assert writer.size == written
        assert await blobs.upload_size("u1") == written, "upload_size counts the chunks written so far"
        assert await blobs.stat(digest(data)) is None, "a session's bytes are not a blob before its commit"
    async with blobs.resume_upload("u1") as writer:
        assert writer.size == len(data)
        assert await writer.commit(digest(data)) == len(data), "commit() returns the blob's size"
    assert await join(blobs.read(digest(data))) == data, "the committed session's bytes are the blob"
    with pytest.raises(UploadNotFound):
        await blobs.upload_size("u1")  # the registry only forgets the session's row after a commit


async def test_an_upload_can_commit_in_the_block_that_writes_its_last_chunk(blobs: BlobStore):
    await blobs.create_upload("u1")
    async with blobs.resume_upload("u1") as writer:
        await writer.write(DATA[:40])
    async with blobs.resume_upload("u1") as writer:
        await writer.write(DATA[40:])
        assert await writer.commit(digest(DATA)) == len(DATA)
    assert await join(blobs.read(digest(DATA))) == DATA


async def test_an_upload_session_commits_a_sha512_digest(blobs: BlobStore):
    await blobs.create_upload("u1")
    async with blobs.resume_upload("u1") as writer:
        await writer.write(DATA)
    async with blobs.resume_upload("u1") as writer:
        assert await writer.commit(digest(DATA, "sha512")) == len(DATA)
    assert await join(blobs.read(digest(DATA, "sha512"))) == DATA


async def test_an_exception_in_a_session_block_keeps_what_was_written_before_it(blobs: BlobStore):
    class ClientWentAway(Exception):
        pass

    await blobs.create_upload("u1")
    with pytest.raises(ClientWentAway):
        async with blobs.resume_upload("u1") as writer:
            await writer.write(DATA[:60])
            raise ClientWentAway
    assert await blobs.upload_size("u1") == 60, "the bytes written before the exception are kept"
    async with blobs.resume_upload("u1") as writer:
        assert writer.size == 60, "the session resumes after the kept bytes"
        await writer.write(DATA[60:])
        assert await writer.commit(digest(DATA)) == len(DATA), "the kept bytes and the rest make the blob"
    assert await join(blobs.read(digest(DATA))) == DATA


async def test_delete_upload_ends_the_session(blobs: BlobStore):
    await blobs.create_upload("u1")
    async with blobs.resume_upload("u1") as writer:
        await writer.write(DATA)
    await blobs.delete_upload("u1")
    with pytest.raises(UploadNotFound):
        await blobs.upload_size("u1")
    with pytest.raises(UploadNotFound):
        async with blobs.resume_upload("u1"):
            pytest.fail("resume_upload of a deleted session must raise UploadNotFound")
    await blobs.delete_upload("u1")  # again (garbage collection purges sessions that may be gone): no error


async def test_an_unknown_upload_session_raises_upload_not_found(blobs: BlobStore):
    with pytest.raises(UploadNotFound):
        await blobs.upload_size("nope")
    with pytest.raises(UploadNotFound):
        async with blobs.resume_upload("nope"):
            pytest.fail("resume_upload of an unknown session must raise UploadNotFound")


async def test_aborting_a_session_writer_ends_the_session(blobs: BlobStore):
    await blobs.create_upload("u1")
    async with blobs.resume_upload("u1") as writer:
        await writer.write(DATA)
        await writer.abort()
    with pytest.raises(UploadNotFound):
        await blobs.upload_size("u1")
    assert await stored_digests(blobs) == set()


async def test_a_wrong_digest_ends_the_session_and_installs_nothing(blobs: BlobStore):
    wrong = digest(b"not the content")
    await blobs.create_upload("u1")
    async with blobs.resume_upload("u1") as writer:
        await writer.write(DATA)
    with pytest.raises(DigestMismatch):
        async with blobs.resume_upload("u1") as writer:
            await writer.commit(wrong)
    with pytest.raises(UploadNotFound):
        await blobs.upload_size("u1")
    with pytest.raises(UploadNotFound):
        async with blobs.resume_upload("u1"):
            pytest.fail("a session whose commit failed must be gone")
    assert await stored_digests(blobs) == set(), "a failed commit installs nothing"


async def test_two_writers_of_one_session_take_turns(blobs: BlobStore):
    await blobs.create_upload("u1")
    first_in, let_go = asyncio.Event(), asyncio.Event()
    second_saw: list[int] = []

    async def first() -> None:
        async with blobs.resume_upload("u1") as writer:
            first_in.set()
            await writer.write(DATA[:30])
            await let_go.wait()
            await writer.write(DATA[30:50])

    async def second() -> None:
        await first_in.wait()
        async with blobs.resume_upload("u1") as writer:
            second_saw.append(writer.size)
            await writer.write(DATA[50:])

    tasks = [asyncio.create_task(first()), asyncio.create_task(second())]
    await first_in.wait()
    await asyncio.sleep(0.1)  # time for the second to get in, if the store let it
    assert second_saw == [], "a second writer entered a session while the first still held it"
    let_go.set()
    await asyncio.gather(*tasks)
    assert second_saw == [50], "the second writer must see all of the first's bytes"
    assert await blobs.upload_size("u1") == len(DATA)
    async with blobs.resume_upload("u1") as writer:
        assert await writer.commit(digest(DATA)) == len(DATA), "the turns wrote the bytes in order"


async def test_upload_sessions_are_independent(blobs: BlobStore):
    a, b = content("a", 10), content("b", 20)
    await blobs.create_upload("ua")
    await blobs.create_upload("ub")
    async with blobs.resume_upload("ua") as wa, blobs.resume_upload("ub") as wb:  # one session doesn't lock another
        await wa.write(a)
        await wb.write(b)
    assert (await blobs.upload_size("ua"), await blobs.upload_size("ub")) == (10, 20)
    await blobs.delete_upload("ua")
    assert await blobs.upload_size("ub") == 20, "deleting one session leaves the other"


# -- another process's view ------------------------------------------------------------------------------


async def test_blobs_are_shared_with_other_processes(blobs: BlobStore, peer: Callable[[], Awaitable[Stores]]):
    other = (await peer()).blobs
    d = await store_blob(blobs, DATA)
    info = await other.stat(d)
    assert info is not None and info.size == len(DATA), "a blob committed here is stored for every process"
    assert await join(other.read(d, 3, 7)) == DATA[3:10]
    assert await stored_digests(other) == {d}
    assert await other.delete(d) is True
    assert await blobs.stat(d) is None, "a blob deleted there is gone here"


async def test_an_upload_session_continues_in_another_process(blobs: BlobStore, peer: Callable[[], Awaitable[Stores]]):
    other = (await peer()).blobs
    await blobs.create_upload("u1")
    async with blobs.resume_upload("u1") as writer:
        await writer.write(DATA[:30])
    assert await other.upload_size("u1") == 30, "the session's bytes are visible to another process"
    async with other.resume_upload("u1") as writer:
        assert writer.size == 30, "another process resumes the session at its end"
        await writer.write(DATA[30:])
    async with blobs.resume_upload("u1") as writer:
        assert writer.size == len(DATA), "... and its chunk is part of the session here"
        assert await writer.commit(digest(DATA)) == len(DATA), "chunks written by two processes make the blob"
    assert await join(other.read(digest(DATA))) == DATA


@pytest.mark.parametrize("claimed", ["right", "wrong"])
@pytest.mark.parametrize("started", ["here", "there"])
async def test_a_session_written_in_one_process_commits_in_another_without_reading_it_again(
    blobs: BlobStore,
    peer: Callable[[], Awaitable[Stores]],
    monkeypatch: pytest.MonkeyPatch,
    claimed: str,
    started: str,
):
    """docker's and skopeo's push (POST, one PATCH, then a PUT) with the PUT landing on another worker process
    than the PATCH, and the POST on either."""
    other = (await peer()).blobs
    await (blobs if started == "here" else other).create_upload("u1")
    async with blobs.resume_upload("u1") as writer:  # the PATCH
        await writer.write(DATA)

    def no_rereading(path: object, algorithm: str) -> str:
        raise AssertionError(f"{path} was read again to hash it")

    monkeypatch.setattr(storage.scratch, "hash_file", no_rereading)
    async with other.resume_upload("u1") as writer:  # the PUT, in the other process
        if claimed == "right":
            assert await writer.commit(digest(DATA)) == len(DATA)
        else:
            with pytest.raises(DigestMismatch):
                await writer.commit(digest(b"something else"))
    if claimed == "right":
        assert await join(blobs.read(digest(DATA))) == DATA
    else:
        assert await blobs.stat(digest(b"something else")) is None
        with pytest.raises(UploadNotFound):
            await blobs.upload_size("u1")


async def test_a_session_continued_in_another_process_is_hashed_whole(
    blobs: BlobStore, peer: Callable[[], Awaitable[Stores]]
):
    """The hash recorded for a session's first bytes covers only them: bytes added in another process count."""
    other = (await peer()).blobs
    await blobs.create_upload("u1")
    async with blobs.resume_upload("u1") as writer:
        await writer.write(DATA[:40])
    async with other.resume_upload("u1") as writer:
        await writer.write(DATA[40:])
        with pytest.raises(DigestMismatch):
            await writer.commit(digest(DATA[:40]))
    await other.create_upload("u2")
    async with other.resume_upload("u2") as writer:
        await writer.write(DATA[:40])
    async with blobs.resume_upload("u2") as writer:
        await writer.write(DATA[40:])
        assert await writer.commit(digest(DATA)) == len(DATA)


async def test_a_shared_write_followed_from_another_process_is_correct(
    blobs: BlobStore, peer: Callable[[], Awaitable[Stores]]
):
    other = (await peer()).blobs
    async with blobs.writer(shared="k", size=len(DATA)) as writer:
        await writer.write(DATA[:50])
        view = await other.follow("k")  # None is allowed: following from other processes is where the driver can
        if view is not None:
            try:
                assert view.declared_size == len(DATA)
                assert await view.available() == 50
                assert await view.read(10, 40) == DATA[10:50]
            finally:
                await view.close()
        await writer.write(DATA[50:])
        await writer.commit(digest(DATA))
    assert await other.follow("k") is None, "a finished shared write is followed from nowhere"


# -- shared writes ----------------------------------------------------------------------------------------


async def test_a_shared_write_can_be_followed_while_it_runs(blobs: BlobStore):
    key = "blob sha256:shared"
    async with blobs.writer(shared=key, size=len(DATA)) as writer:
        view = await blobs.follow(key)
        assert view is not None, "follow() finds a live shared write"
        try:
            assert view.declared_size == len(DATA), "a follower sees the size the writer announced"
            assert await view.available() == 0, "nothing is available before the first write"
            await writer.write(DATA[:40])
            assert await view.available() == 40, "a follower sees the bytes written so far"
            assert await view.read(0, 40) == DATA[:40]
            await writer.write(DATA[40:])
            assert await view.available() == len(DATA), "available() grows with the writes"
            assert await view.read(35, 20) == DATA[35:55], "a follower reads any range written"
            await writer.commit(digest(DATA))
        finally:
            await view.close()
    assert await blobs.follow(key) is None, "a committed shared write can no longer be followed"
    assert await join(blobs.read(digest(DATA))) == DATA, "a shared write installs its blob like any other"


async def test_a_shared_write_of_unknown_size_declares_none(blobs: BlobStore):
    async with blobs.writer(shared="k") as writer:
        view = await blobs.follow("k")
        assert view is not None
        try:
            assert view.declared_size is None, "no size announced: declared_size is None"
        finally:
            await view.close()
        await writer.write(DATA)
        await writer.commit(digest(DATA))


@pytest.mark.parametrize("end", ["leaving", "abort", "exception"])
async def test_an_abandoned_shared_write_can_no_longer_be_followed(blobs: BlobStore, end: str):
    with pytest.raises(RuntimeError) if end == "exception" else contextlib.nullcontext():
        async with blobs.writer(shared="k", size=len(DATA)) as writer:
            await writer.write(DATA[:10])
            if end == "abort":
                await writer.abort()
            elif end == "exception":
                raise RuntimeError("download failed")
    assert await blobs.follow("k") is None, f"a shared write ended by {end} can't be followed"
    assert await stored_digests(blobs) == set(), "an abandoned shared write installs nothing"


async def test_follow_of_an_unknown_key_is_none(blobs: BlobStore):
    assert await blobs.follow("nobody writes this") is None
    async with blobs.writer(shared="one key") as writer:
        assert await blobs.follow("another key") is None, "follow() only finds the write under its own key"
        await writer.abort()


async def test_a_key_can_be_written_again_after_its_write_ended(blobs: BlobStore):
    async with blobs.writer(shared="k", size=5) as writer:
        await writer.write(b"wrong")
    async with blobs.writer(shared="k", size=len(DATA)) as writer:
        view = await blobs.follow("k")
        assert view is not None
        try:
            assert view.declared_size == len(DATA), "the new write's size, not the old one's"
            assert await view.available() == 0, "none of the abandoned write's bytes"
        finally:
            await view.close()
        await writer.write(DATA)
        await writer.commit(digest(DATA))
    assert await join(blobs.read(digest(DATA))) == DATA
