"""The filesystem blob store (`storage.blobs.BlobStore` on a local directory).

Layout under the data directory (every path is built by `_blob_path`, `_upload_path` or `_shared_path`)::

    <root>/
      blobs/
        sha256/
          ab/
            abcdef0123...      one file per blob, named by its hex digest, immutable once there
        sha512/
          ...
      uploads/
        <upload uuid>          bytes received so far for an upload session (sessions survive restarts)
        <upload uuid>.sha256   "<size> <hex>": the SHA-256 of its first <size> bytes, so that a PUT that lands on
                               another worker process than the PATCH before it need not read the file again
        .ingest-<uuid>         a fresh writer's bytes (a monolithic upload, an import)
        .ingest-shared-<key>   a shared writer's bytes (a pull-through download other processes follow), and
        .ingest-shared-<key>.size   "<pid> <declared size>": which live process writes it

A blob is written to a file under uploads/, hashed while streaming, fsynced, and renamed into blobs/ (then the
directory is fsynced): a reader never sees a partial blob, and a crash at any moment loses nothing that was
acknowledged. Each blob is stored once however many repositories link it.

A write that finds the disk full (ENOSPC, or EDQUOT for a quota) raises `StorageFull` and keeps nothing of
itself: a fresh writer's file is removed, and a chunk written to an upload session is cut off again, so the
session stays at the offset it had and the client can resume from there once space is freed. Files are written
unbuffered (writes are coalesced to WRITE_BUFFER here), so no buffered bytes are left over to fail again when
the file is closed.

File I/O and hashing run in worker threads (hashlib releases the GIL for large buffers) and are pipelined
with receiving the next bytes, so the event loop never blocks on the disk. The writer and the shared-write
files are `storage.scratch`'s (the S3 driver writes its scratch files the same way).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

from storage.blobs import BlobInfo, FileRange
from storage.coordination import Locks
from storage.errors import BlobNotFound, StorageFull, UploadNotFound
from storage.files import full_is_storage_full, install, read_range
from storage.scratch import (
    LEFTOVER_AGE,
    READ_CHUNK,
    SCRATCH_PREFIX,
    FileFollow,
    ScratchWriter,
    remove_stale,
    scratch_writer,
    shared_path,
)
from storage.scratch import follow as follow_shared


@dataclass(slots=True)
class _HashState:
    """sha256 of an upload session's first `offset` bytes, kept in memory while the session is live."""

    hasher: hashlib._Hash
    offset: int


class FilesystemBlobStore:
    def __init__(
        self,
        root: Path,
        locks: Locks | None = None,
        *,
        free_space_floor: Callable[[int], int] = lambda total: 0,
        min_free_space: str = "0",
    ) -> None:
        self.root = Path(root)
        self.locks = locks  # upload sessions are written by one process at a time
        self.free_space_floor = free_space_floor  # free bytes (on a filesystem of that many) below: not ready
        self.min_free_space = min_free_space  # ... as configured, for the message
        self._blobs = self.root / "blobs"
        self._uploads = self.root / "uploads"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._uploads.mkdir(parents=True, exist_ok=True)
        self._session_locks: dict[str, asyncio.Lock] = {}
        self._hashes: dict[str, _HashState] = {}
        self._remove_leftovers(LEFTOVER_AGE)

    # -- paths -------------------------------------------------------------------------------------
    def _blob_path(self, digest: str) -> Path:
        alg, _, hexpart = digest.partition(":")
        return self._blobs / alg / hexpart[:2] / hexpart

    def _upload_path(self, upload_id: str) -> Path:
        return self._uploads / upload_id

    def _upload_hash_path(self, upload_id: str) -> Path:
        return self._uploads / f"{upload_id}{SESSION_HASH_SUFFIX}"

    def _shared_path(self, key: str) -> Path:
        return shared_path(self._uploads, key)

    # -- reading -----------------------------------------------------------------------------------
    async def stat(self, digest: str) -> BlobInfo | None:
        try:
            st = await asyncio.to_thread(os.stat, self._blob_path(digest))
        except FileNotFoundError:
            return None
        return BlobInfo(st.st_size, st.st_mtime)

    async def open(
        self, digest: str, offset: int = 0, length: int | None = None, *, redirect: bool = False
    ) -> FileRange:
        info = await self.stat(digest)
        if info is None:
            raise BlobNotFound(digest)
        return FileRange(str(self._blob_path(digest)), offset, info.size - offset if length is None else length)

    async def read(self, digest: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        try:
            fh = await asyncio.to_thread(open, self._blob_path(digest), "rb")
        except FileNotFoundError:
            raise BlobNotFound(digest) from None
        async for chunk in read_range(fh, offset, length, READ_CHUNK):
            yield chunk

    # -- fresh and shared writers --------------------------------------------------------------------
    def writer(
        self, *, shared: str | None = None, size: int | None = None, expected: str | None = None
    ) -> AbstractAsyncContextManager[FileWriter]:
        """(`expected` changes nothing here: the file is renamed into place at the commit.)"""
        return scratch_writer(
            self._uploads,
            shared,
            size,
            lambda path, fd: FileWriter(self, path, fd, hashlib.sha256(), 0, through=shared is not None),
        )

    async def follow(self, shared: str) -> FileFollow | None:
        return await follow_shared(self._uploads, shared)

    # -- upload sessions ---------------------------------------------------------------------------
    async def create_upload(self, upload_id: str) -> None:
        def create() -> None:
            with open(self._upload_path(upload_id), "xb"):
                pass

        with full_is_storage_full("starting an upload", self._upload_path(upload_id)):
            await asyncio.to_thread(create)
        self._hashes[upload_id] = _HashState(hashlib.sha256(), 0)

    async def upload_size(self, upload_id: str) -> int:
        try:
            st = await asyncio.to_thread(os.stat, self._upload_path(upload_id))
        except FileNotFoundError:
            raise UploadNotFound(upload_id) from None
        return st.st_size

    @contextlib.asynccontextmanager
    async def resume_upload(self, upload_id: str) -> AsyncIterator[FileWriter]:
        lock = self._session_locks.get(upload_id)
        if lock is None:
            lock = self._session_locks[upload_id] = asyncio.Lock()
        async with lock, self._process_lock(upload_id):
            path = self._upload_path(upload_id)
            try:
                fd = await asyncio.to_thread(os.open, path, os.O_WRONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise UploadNotFound(upload_id) from None
            start = await asyncio.to_thread(os.lseek, fd, 0, os.SEEK_END)
            state = self._hashes.pop(upload_id, None)
            if state is not None and state.offset != start:
                state = None  # out of step (a write that failed half way): rehash at commit
            if state is None and start == 0:
                state = _HashState(hashlib.sha256(), 0)  # (a session started by another worker process)
            writer = FileWriter(self, path, fd, state.hasher if state else None, start, session=upload_id)
            try:
                yield writer
                if not (writer.committed or writer.aborted):
                    await writer.flush()  # the chunk is durable before it is acknowledged
            except StorageFull:
                # Disk full: cut the chunk off again (shrinking needs no space), so the session is where it was
                # before this request and the space the chunk took is free again.
                await writer._close(truncate_to=start)
                raise
            finally:
                await writer._close()
                if writer.committed or writer.aborted:
                    self._forget(upload_id)
                    await asyncio.to_thread(self._upload_hash_path(upload_id).unlink, True)
                elif writer.hasher is not None and writer.consistent:
                    self._hashes[upload_id] = _HashState(writer.hasher, writer.size)
                    # (another worker process may take the next request of this session)
                    recorded = self._upload_hash_path(upload_id)
                    await asyncio.to_thread(_record_hash, recorded, writer.size, writer.hasher.copy())

    @contextlib.asynccontextmanager
    async def _process_lock(self, upload_id: str) -> AsyncIterator[None]:
        if self.locks is None:
            yield
            return
        async with self.locks.hold(f"upload {upload_id}"):
            yield

    async def delete_upload(self, upload_id: str) -> None:
        await asyncio.to_thread(self._upload_path(upload_id).unlink, True)
        await asyncio.to_thread(self._upload_hash_path(upload_id).unlink, True)
        self._forget(upload_id)

    def _forget(self, upload_id: str) -> None:
        self._hashes.pop(upload_id, None)
        self._session_locks.pop(upload_id, None)

    # -- deleting ----------------------------------------------------------------------------------
    async def delete(self, digest: str) -> bool:
        try:
            await asyncio.to_thread(os.unlink, self._blob_path(digest))
            return True
        except FileNotFoundError:
            return False

    async def iter_digests(self) -> AsyncIterator[tuple[str, BlobInfo]]:
        def scan() -> list[tuple[str, BlobInfo]]:
            found = []
            for alg_dir in self._blobs.iterdir():
                if not alg_dir.is_dir():
                    continue
                for prefix in alg_dir.iterdir():
                    for blob in prefix.iterdir():
                        with contextlib.suppress(FileNotFoundError):
                            st = blob.stat()
                            found.append((f"{alg_dir.name}:{blob.name}", BlobInfo(st.st_size, st.st_mtime)))
            return found

        for item in await asyncio.to_thread(scan):
            yield item

    async def remove_leftovers(self) -> int:
        return await asyncio.to_thread(self._remove_leftovers, LEFTOVER_AGE)

    def _remove_leftovers(self, older_than: float) -> int:
        """Remove scratch files of writes interrupted by a crash (never acknowledged). Only stale ones: another
        process on the same data dir (a server, `moorage import`) may be writing."""
        return remove_stale(self._uploads, older_than)

    async def warm_up(self) -> None:
        """Nothing to get ready: files are opened as needed."""

    async def health(self) -> list[str]:
        """Runs in a thread (statvfs may block on a network mount)."""
        return await asyncio.to_thread(self._health)

    def _health(self) -> list[str]:
        problems = [
            f"storage: {path} is not writable"
            for path in (self._blobs, self._uploads)
            if not os.access(path, os.W_OK | os.X_OK)
        ]
        # Each filesystem under the data dir (the database's, blobs/, uploads/: usually one) with less free space
        # than the floor, or no free inodes.
        seen = set()
        for path in (self.root, self._blobs, self._uploads):
            try:
                device, st = os.stat(path).st_dev, os.statvfs(path)
            except OSError:
                continue  # missing or unreadable: the writability check says so
            if device in seen:
                continue
            seen.add(device)
            where = "the data directory" if path == self.root else f"{path.name}/"
            free, floor = st.f_bavail * st.f_frsize, self.free_space_floor(st.f_blocks * st.f_frsize)
            if free < floor:
                problems.append(
                    f"storage: {free / 2**20:.1f} MiB free for {where}, below [storage] min_free_space "
                    f"({self.min_free_space}); writes may fail"
                )
            if st.f_files and not st.f_favail:
                problems.append(f"storage: no free inodes for {where}; writes will fail")
        return problems

    async def close(self) -> None:
        self._hashes.clear()


class FileWriter(ScratchWriter):
    """One blob being written to a file under uploads/, installed by a rename into blobs/."""

    def __init__(
        self,
        store: FilesystemBlobStore,
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

    async def file_digest(self, algorithm: str) -> str:
        """Without the session's hash state in this process: the hash another process recorded, when it covers
        every byte of the file."""
        if algorithm == "sha256" and not (self.hasher is not None and self.consistent) and self.session:
            path = self.store._upload_hash_path(self.session)
            recorded = await asyncio.to_thread(_recorded_hash, path, self._size)
            if recorded is not None:
                return f"sha256:{recorded}"
        return await super().file_digest(algorithm)

    async def _install(self, expected: str) -> None:
        with full_is_storage_full(f"installing {expected}", self.store._blob_path(expected)):
            await asyncio.to_thread(install, self.path, self.store._blob_path(expected))


SESSION_HASH_SUFFIX = ".sha256"


def _record_hash(path: Path, size: int, hasher: hashlib._Hash) -> None:
    """Record that the session's first `size` bytes hash to `hasher`'s digest (the bytes are durable already; a
    record lost in a crash only costs a reread)."""
    tmp = path.with_name(f"{SCRATCH_PREFIX}{path.name}")  # (left by a crash: removed as a stale scratch file)
    tmp.write_text(f"{size} {hasher.hexdigest()}")
    os.replace(tmp, path)


def _recorded_hash(path: Path, size: int) -> str | None:
    """The recorded SHA-256 (hex) of a session file of `size` bytes; None when there is none for that size."""
    try:
        text = path.read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    recorded_size, _, hexdigest = text.partition(" ")
    if recorded_size != str(size) or len(hexdigest) != 64 or not all(c in "0123456789abcdef" for c in hexdigest):
        return None
    return hexdigest
