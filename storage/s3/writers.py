"""The S3 blob store's writers: a fresh blob, an upload session's block, and the sink that puts an object (one
PutObject, or a multipart upload with parts in parallel).

A session's block (a PATCH) spools to a scratch file, and once a part's worth has landed there, the part is read
back (from the page cache) and sent as the next part of the chunk's multipart upload while the rest arrives: at
the end of the PATCH only the last part and the CompleteMultipartUpload are left. The chunk's SHA-256 (known
only at its end) is stored beside it as `<chunk>.sha256` (a smaller chunk, one PutObject, carries it as its
metadata), so that a commit of a one-chunk session checks the digest without reading the chunk again.

A fresh writer told the blob's digest before its bytes (a pull-through download) streams the same way, to a
multipart upload of the blob's own key, which its commit completes only once the digest is verified (and no
blob is stored under the key already): a client that follows the download waits only for the last part."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storage.blobs import BlobInfo
from storage.errors import (
    DigestMismatch,
    StorageError,
)
from storage.scratch import (
    READ_CHUNK,
    ScratchWriter,
)

if TYPE_CHECKING:
    from storage.s3.store import S3BlobStore

from storage.s3.common import (
    CHUNK_HASH_SUFFIX,
    MAX_PARTS,
    PARALLEL_PARTS,
    PART_SIZE,
    _Chunk,
    _part_size,
    log,
)


class _ObjectSink:
    """Bytes streamed into the object `key`: up to one part in memory, then a multipart upload with up to
    PARALLEL_PARTS parts in flight. Nothing is visible under the key before `finish` (a PutObject of what is
    buffered, or CompleteMultipartUpload); `abort` leaves nothing."""

    def __init__(
        self, store: S3BlobStore, key: str, *, part_size: int = PART_SIZE, metadata: dict[str, str] | None = None
    ) -> None:
        self.store = store
        self.key = key
        self.part_size = part_size
        self.metadata = metadata or {}
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._next = 1
        self._etags: dict[int, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(PARALLEL_PARTS)
        self._failure: BaseException | None = None

    async def write(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) > self.part_size:  # (an object of one part or less stays one PutObject)
            part = bytes(self._buffer[: self.part_size])
            del self._buffer[: self.part_size]
            await self.send_part(part)

    async def send_part(self, part: bytes) -> None:
        """Send `part` as the next part (a free slot awaited), starting the multipart upload if need be."""
        if self._upload_id is None:
            created = await self.store._call(
                "create_multipart_upload", f"writing {self.key}", Key=self.key, Metadata=self.metadata
            )
            self._upload_id = str(created["UploadId"])
        await self._slots.acquire()
        if self._failure is not None:
            self._slots.release()
            raise self._failure
        number, self._next = self._next, self._next + 1
        task = asyncio.create_task(self._upload_part(number, part))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _upload_part(self, number: int, part: bytes) -> None:
        try:
            sent = await self.store._call(
                "upload_part",
                f"writing {self.key} (part {number})",
                Key=self.key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=part,
            )
            self._etags[number] = str(sent["ETag"])
        except Exception as e:  # kept for the writer to raise (a task's own exception would go unseen)
            self._failure = self._failure or e
        finally:
            self._slots.release()

    async def finish(self) -> None:
        if self._upload_id is None:
            await self.store._call(
                "put_object", f"writing {self.key}", Key=self.key, Body=bytes(self._buffer), Metadata=self.metadata
            )
            return
        if self._buffer:
            await self.send_part(bytes(self._buffer))
            self._buffer.clear()
        await asyncio.gather(*self._tasks)
        if self._failure is not None:
            raise self._failure
        parts = [{"PartNumber": n, "ETag": etag} for n, etag in sorted(self._etags.items())]
        await self.store._call(
            "complete_multipart_upload",
            f"writing {self.key}",
            Key=self.key,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": parts},
        )
        self._upload_id = None

    async def abort(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            with contextlib.suppress(StorageError):
                await asyncio.shield(
                    self.store._call("abort_multipart_upload", f"aborting {self.key}", Key=self.key, UploadId=upload_id)
                )


class _PartStreamer(ScratchWriter):
    """A scratch writer whose bytes also go to the bucket while they arrive: once a part's worth has landed in
    the scratch file, it is read back (from the page cache) and sent as the next part of a multipart upload
    (`_ObjectSink`, up to PARALLEL_PARTS in flight; a write waits for a free slot, and the receive with it).
    Nothing is visible under the key until the sink is finished; `_end_stream` aborts what was sent."""

    durable = False  # the object is the durable copy

    def __init__(
        self,
        store: S3BlobStore,
        path: Path,
        fd: int,
        hasher: hashlib._Hash | None,
        start: int,
        *,
        through: bool = False,
        session: str | None = None,
    ) -> None:
        super().__init__(path, fd, hasher, start, through=through, session=session)
        self.store = store
        self.start = start  # the object's offset of the scratch file's first byte
        self._sink: _ObjectSink | None = None  # the multipart upload, once a part of it was sent
        self._streamed = start  # the offset up to which the bytes were handed to the sink
        self._parts = 0
        self._reader: int | None = None  # a read-only descriptor of the scratch file, for the parts

    def _next_part_size(self) -> int:
        """PART_SIZE, growing with every 1,000 parts sent (an object of any size fits S3's 10,000 parts)."""
        return PART_SIZE * (1 + self._parts // 1000)

    def _part_due(self) -> bool:
        """Whether a part is to be sent now (a part's worth has landed past what was sent)."""
        return self._size - self._streamed >= self._next_part_size()

    def _stream_key(self) -> str:
        """The key the parts are sent to."""
        raise NotImplementedError

    async def write(self, data: bytes) -> None:
        await super().write(data)
        if self._part_due():
            await self._stream()

    async def _stream(self) -> None:
        """Send every whole part that has arrived (waiting for a free slot: the receive waits with it)."""
        await self._flush_buffer(wait=True)  # the parts' bytes are in the file
        if self._sink is None:
            self._sink = _ObjectSink(self.store, self._stream_key())
            self._reader = await asyncio.to_thread(os.open, self.path, os.O_RDONLY | os.O_CLOEXEC)
        while self._part_due():
            if not await self._send_part(self._next_part_size()):
                raise StorageError(f"{self._stream_key()}: the scratch file ends at {self._streamed - self.start}")

    async def _send_part(self, size: int) -> int:
        """Up to `size` bytes from where the parts got to, as the next part; how many (0: the file ends)."""
        assert self._sink is not None and self._reader is not None
        if self._parts >= MAX_PARTS:
            raise StorageError(f"{self._stream_key()}: over {MAX_PARTS} parts")
        part = await asyncio.to_thread(os.pread, self._reader, size, self._streamed - self.start)
        if part:
            await self._sink.send_part(part)
            self._streamed += len(part)
            self._parts += 1
        return len(part)

    async def _send_rest(self) -> _ObjectSink:
        """The rest of the file as the last part(s); returns the sink, detached, to be finished or aborted."""
        assert self._sink is not None
        while await self._send_part(self._next_part_size()):
            pass
        sink, self._sink = self._sink, None
        return sink

    async def _end_stream(self) -> None:
        """Whatever was sent and not completed goes (its multipart upload aborted); the reader is closed."""
        if self._sink is not None:
            sink, self._sink = self._sink, None
            await sink.abort()
        if self._reader is not None:
            reader, self._reader = self._reader, None
            await asyncio.to_thread(os.close, reader)


class S3Writer(_PartStreamer):
    """A fresh (or shared) writer: a scratch file, uploaded as the blob's object once verified.

    Given the blob's digest before its bytes (`expected`: a pull-through download), it looks whether the blob
    is stored already while the bytes arrive and, when it is not, sends them as parts of a multipart upload of
    the blob's own key as they land, so that the commit has only the last part left to send. That upload is
    completed only once `commit` verified the digest and found no blob under the key (one already there wins),
    and aborted otherwise: a partial or wrong blob is never visible. A blob of one part or less (by its
    announced `size`) is one PutObject at the commit."""

    def __init__(
        self,
        store: S3BlobStore,
        path: Path,
        fd: int,
        hasher: hashlib._Hash | None,
        start: int,
        *,
        through: bool,
        expected: str | None = None,
        size: int | None = None,
    ) -> None:
        super().__init__(store, path, fd, hasher, start, through=through)
        self.expected = expected
        self.declared = size
        self._streams = expected is not None and (size is None or size > _part_size(size))
        # Whether the blob is stored already, asked while the bytes arrive (with the digest known up front).
        self._stored: asyncio.Future[BlobInfo | None] | None = None
        if expected is not None:
            self._stored = asyncio.ensure_future(store.stat(expected))
            self._stored.add_done_callback(_seen)

    def _next_part_size(self) -> int:
        return super()._next_part_size() if self.declared is None else _part_size(self.declared)

    def _part_due(self) -> bool:
        # Only with bytes past the part: a blob of exactly one part stays one PutObject.
        return self._streams and self._size - self._streamed > self._next_part_size()

    def _stream_key(self) -> str:
        assert self.expected is not None
        return self.store._blob_key(self.expected)

    async def _stream(self) -> None:
        if self._sink is None and await self._stored_early() is not None:
            self._streams = False  # stored already: nothing to send (the commit looks again)
            return
        await super()._stream()

    async def _stored_early(self) -> BlobInfo | None:
        """What the look made while the bytes arrived found (None also when it failed)."""
        assert self._stored is not None
        try:
            return await asyncio.shield(self._stored)
        except StorageError:
            return None

    async def _install(self, expected: str) -> None:
        installed = False
        try:
            if self._sink is not None and expected == self.expected:
                await self._complete(expected)
            else:
                await self._end_stream()  # (parts of another digest's key: never completed)
                if not await self._stored_now(expected):  # the same content already there wins
                    await self.store._upload_file(self.path, self.store._blob_key(expected), self._size)
            installed = True
        finally:
            self._drop_look()
            await self._end_stream()
            # The verified scratch file becomes the replica's local copy, or goes.
            if not (installed and await self.store.local.adopt(self.path, expected, self._size)):
                await asyncio.to_thread(self.path.unlink, True)

    def _drop_look(self) -> None:
        if self._stored is not None and not self._stored.done():
            self._stored.cancel()

    async def _stored_now(self, expected: str) -> bool:
        """Whether the blob is stored. Not there while the bytes arrived: taken as not there (a copy that
        appeared since has the same bytes); otherwise (stored then, or not asked) looked at again."""
        if expected == self.expected and self._stored is not None:
            try:
                if await asyncio.shield(self._stored) is None:
                    return False
            except StorageError:
                pass
        return await self.store.stat(expected) is not None

    async def _complete(self, expected: str) -> None:
        """Send the last part and, once the blob is found not stored meanwhile, complete the multipart upload
        (else abort it: the blob there wins)."""
        look = asyncio.ensure_future(self.store.stat(expected))  # while the last part goes
        look.add_done_callback(_seen)
        try:
            sink = await self._send_rest()
        except BaseException:
            look.cancel()
            raise
        try:
            if await look is None:
                await sink.finish()
            else:
                await sink.abort()
        except BaseException:
            look.cancel()
            await sink.abort()
            raise

    async def abort(self) -> None:
        self.aborted = True
        self._drop_look()
        try:
            await self._end_stream()
        finally:
            await super().abort()


def _seen(task: asyncio.Future[Any]) -> None:
    """Mark a background look's result as seen (a failure nobody awaited must not warn)."""
    if not task.cancelled():
        task.exception()


class S3SessionWriter(_PartStreamer):
    """A block of an upload session: its bytes spool to a scratch file, which becomes the session's next chunk
    object when the block is left (`keep`), or, with the chunks before it, the blob (`commit`). Parts of the
    chunk's multipart upload go while the block arrives (`_PartStreamer`)."""

    def __init__(self, store: S3BlobStore, upload_id: str, chunks: list[_Chunk], path: Path, fd: int) -> None:
        super().__init__(store, path, fd, hashlib.sha256(), sum(chunk.size for chunk in chunks), session=upload_id)
        self.upload_id = upload_id
        self.chunks = chunks
        self._recorded: dict[str, str] = {}  # chunk key -> its SHA-256 (hex), for chunks this writer kept

    def _stream_key(self) -> str:
        return self.store._chunk_key(self.upload_id, self.start)

    async def _keep_streamed(self, chunk_digest: str) -> _Chunk:
        """The rest of the block's bytes as the last part; the chunk completed; its SHA-256 stored beside it."""
        sink = await self._send_rest()
        await sink.finish()
        hexdigest = chunk_digest.partition(":")[2]
        await self.store._call(
            "put_object",
            f"writing {sink.key}{CHUNK_HASH_SUFFIX}",
            Key=sink.key + CHUNK_HASH_SUFFIX,
            Body=hexdigest.encode(),
        )
        self._recorded[sink.key] = hexdigest
        return _Chunk(sink.key, self.start, self._streamed - self.start)

    @property
    def ended(self) -> bool:
        """Committed, aborted or failed its commit's digest check: the session is gone."""
        return self.committed or self.aborted

    async def keep(self) -> None:
        """Store the block's bytes as the session's next chunk (nothing to do for an empty block). StorageFull:
        the scratch disk could not take them all, and nothing of them is kept."""
        await self.flush()
        await self._close()
        written = self._size - self.start
        if written == 0:
            return
        chunk_digest = await self.file_digest("sha256")
        if self._sink is not None:
            await self._keep_streamed(chunk_digest)
            return
        await self.store._upload_file(
            self.path,
            self.store._chunk_key(self.upload_id, self.start),
            written,
            metadata={"sha256": chunk_digest.partition(":")[2]},
        )

    async def discard_scratch(self) -> None:
        """Drop the scratch file (kept as a chunk, or cut off): nothing of the block stays on this replica."""
        self._buffer.clear()
        self._buffered = 0
        self._dirty = False
        await self._close()
        await self._end_stream()
        await asyncio.to_thread(self.path.unlink, True)

    async def commit(self, expected: str) -> int:
        await self._sync()
        store = self.store
        if self._sink is not None:  # parts of this block are sent: it is completed as a chunk, and committed so
            await self._close()
            chunk = await self._keep_streamed(await self.file_digest("sha256"))
            self.chunks, self.start = [*self.chunks, chunk], self._size
        algorithm = expected.partition(":")[0]
        written = self._size - self.start
        key = store._blob_key(expected)
        if written == 0 and len(self.chunks) == 1 and algorithm == "sha256":
            # One chunk (a PATCH of the whole blob, then a PUT): its recorded hash decides, a copy installs it.
            chunk = self.chunks[0]
            recorded = self._recorded.get(chunk.key) or await store._chunk_sha256(chunk, self.upload_id)
            if recorded:
                actual = f"sha256:{recorded}"
                if actual == expected and await store.stat(expected) is None:
                    await store._copy(chunk, key)
                return await self._finish(expected, actual)
        if not self.chunks:
            # The whole blob in this block (a monolithic upload): verified here, uploaded as it is.
            actual = await self.file_digest(algorithm)
            if actual == expected:
                await self._close()
                if await store.stat(expected) is None:
                    await store._upload_file(self.path, key, written)
            return await self._finish(expected, actual)
        return await self._finish(expected, await self._assemble(expected))

    async def _assemble(self, expected: str) -> str:
        """Stream the chunks and this block's bytes through a hash into the blob's object; the upload completes
        only when the digest matches (and is skipped when the blob is stored already). Returns the digest."""
        store = self.store
        hasher = hashlib.new(expected.partition(":")[0])
        sink = None
        if await store.stat(expected) is None:
            sink = _ObjectSink(store, store._blob_key(expected), part_size=_part_size(self._size))
        try:
            for chunk in self.chunks:
                async for piece in store._object_stream(chunk.key, f"reading upload {self.upload_id}"):
                    hasher.update(piece)
                    if sink is not None:
                        await sink.write(piece)
            if self._size > self.start:
                fh = await asyncio.to_thread(open, self.path, "rb")
                try:
                    while piece := await asyncio.to_thread(fh.read, READ_CHUNK):
                        hasher.update(piece)
                        if sink is not None:
                            await sink.write(piece)
                finally:
                    await asyncio.to_thread(fh.close)
            actual = f"{expected.partition(':')[0]}:{hasher.hexdigest()}"
            if sink is not None:
                if actual == expected:
                    await sink.finish()
                else:
                    await sink.abort()
            return actual
        except BaseException:
            if sink is not None:
                await sink.abort()
            raise

    async def _finish(self, expected: str, actual: str) -> int:
        """After the blob is installed (or the digest did not match): the session ends."""
        if actual != expected:
            await self.abort()
            raise DigestMismatch(expected, actual)
        self.committed = True
        await self._close()
        try:
            await self.store.delete_upload(self.upload_id)
        except StorageError as e:  # the blob is in place; the chunks left go with remove_leftovers
            log.warning("upload %s committed, but its chunks were not all removed: %s", self.upload_id, e)
        return self._size

    async def abort(self) -> None:
        self.aborted = True
        await self._close()
        await self._end_stream()
        await asyncio.to_thread(self.path.unlink, True)
        await self.store.delete_upload(self.upload_id)
