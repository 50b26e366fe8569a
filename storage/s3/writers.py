"""The S3 blob store's writers: a fresh blob, an upload session's block, and the sink that puts an object (one
PutObject, or a multipart upload with parts in parallel).

A session's block (a PATCH) spools to a scratch file, and once a part's worth has landed there, the part is read
back (from the page cache) and sent as the next part of the chunk's multipart upload while the rest arrives: at
the end of the PATCH only the last part and the CompleteMultipartUpload are left. The chunk's SHA-256 (known
only at its end) is stored beside it as `<chunk>.sha256` (a smaller chunk, one PutObject, carries it as its
metadata), so that a commit of a one-chunk session checks the digest without reading the chunk again."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

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
        while len(self._buffer) >= self.part_size:
            part = bytes(self._buffer[: self.part_size])
            del self._buffer[: self.part_size]
            await self._send(part)

    async def _send(self, part: bytes) -> None:
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
            await self._send(bytes(self._buffer))
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


class S3Writer(ScratchWriter):
    """A fresh (or shared) writer: a scratch file, uploaded as the blob's object once verified."""

    durable = False  # the object is the durable copy

    def __init__(
        self, store: S3BlobStore, path: Path, fd: int, hasher: hashlib._Hash | None, start: int, *, through: bool
    ) -> None:
        super().__init__(path, fd, hasher, start, through=through)
        self.store = store

    async def _install(self, expected: str) -> None:
        try:
            if await self.store.stat(expected) is None:  # the same content already there wins
                await self.store._upload_file(self.path, self.store._blob_key(expected), self._size)
        finally:
            await asyncio.to_thread(self.path.unlink, True)


class S3SessionWriter(ScratchWriter):
    """A block of an upload session: its bytes spool to a scratch file, which becomes the session's next chunk
    object when the block is left (`keep`), or, with the chunks before it, the blob (`commit`)."""

    durable = False

    def __init__(self, store: S3BlobStore, upload_id: str, chunks: list[_Chunk], path: Path, fd: int) -> None:
        self.start = sum(chunk.size for chunk in chunks)
        super().__init__(path, fd, hashlib.sha256(), self.start, session=upload_id)
        self.store = store
        self.upload_id = upload_id
        self.chunks = chunks
        self._sink: _ObjectSink | None = None  # the block's multipart upload, once a part of it was sent
        self._streamed = self.start  # the session offset up to which the block's bytes were handed to the sink
        self._parts = 0
        self._reader: int | None = None  # a read-only descriptor of the scratch file, for the parts
        self._recorded: dict[str, str] = {}  # chunk key -> its SHA-256 (hex), for chunks this writer kept

    def _next_part_size(self) -> int:
        """PART_SIZE, growing with every 1,000 parts sent (a chunk of any size fits S3's 10,000 parts)."""
        return PART_SIZE * (1 + self._parts // 1000)

    async def write(self, data: bytes) -> None:
        await super().write(data)
        if self._size - self._streamed >= self._next_part_size():
            await self._stream()

    async def _stream(self) -> None:
        """Send every whole part that has arrived (waiting for a free slot: the receive waits with it)."""
        await self._flush_buffer(wait=True)  # the parts' bytes are in the file
        if self._sink is None:
            self._sink = _ObjectSink(self.store, self.store._chunk_key(self.upload_id, self.start))
            self._reader = await asyncio.to_thread(os.open, self.path, os.O_RDONLY | os.O_CLOEXEC)
        while self._size - self._streamed >= (size := self._next_part_size()):
            await self._send_part(size)

    async def _send_part(self, size: int) -> None:
        assert self._sink is not None and self._reader is not None
        if self._parts >= MAX_PARTS:
            raise StorageError(f"upload {self.upload_id}: a chunk of over {MAX_PARTS} parts")
        part = await asyncio.to_thread(os.pread, self._reader, size, self._streamed - self.start)
        if not part:
            raise StorageError(f"upload {self.upload_id}: its scratch file ends at {self._streamed - self.start}")
        self._sink.part_size = len(part)
        await self._sink.write(part)
        self._streamed += len(part)
        self._parts += 1

    async def _keep_streamed(self, chunk_digest: str) -> _Chunk:
        """The rest of the block's bytes as the last part; the chunk completed; its SHA-256 stored beside it."""
        assert self._sink is not None and self._reader is not None
        while part := await asyncio.to_thread(
            os.pread, self._reader, self._next_part_size(), self._streamed - self.start
        ):
            self._sink.part_size = len(part)
            await self._sink.write(part)
            self._streamed += len(part)
            self._parts += 1
        sink, self._sink = self._sink, None
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

    async def _end_stream(self) -> None:
        """Whatever was sent of a block that is not kept goes (its multipart upload aborted)."""
        if self._sink is not None:
            sink, self._sink = self._sink, None
            await sink.abort()
        if self._reader is not None:
            reader, self._reader = self._reader, None
            await asyncio.to_thread(os.close, reader)

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
