"""Filesystem blob store.

Layout under the data directory (every path is built by `_blob_path` / `_upload_path`)::

    <root>/
      blobs/
        sha256/
          ab/
            abcdef0123...      one file per blob, named by its hex digest, immutable once there
        sha512/
          ...
      uploads/
        <upload uuid>          bytes received so far for an upload session (sessions survive restarts)
        .ingest-<uuid>         a monolithic upload being written

A blob is written to a file under uploads/, hashed while streaming, fsynced, and renamed into blobs/ (then the
directory is fsynced): a reader never sees a partial blob, and a crash at any moment loses nothing that was
acknowledged. Each blob is stored once however many repositories link it.

A write that finds the disk full (ENOSPC, or EDQUOT for a quota) raises `StorageFull` and keeps nothing of
itself: a monolithic upload's file is removed, and a chunk appended to an upload session is cut off again, so the
session stays at the offset it had and the client can resume from there once space is freed. Files are written
unbuffered (the writes are already coalesced to WRITE_BUFFER), so no buffered bytes are left over to fail again
when the file is closed.

File I/O and hashing run in worker threads (hashlib releases the GIL for large buffers) and are pipelined
with reading the request, so the event loop never blocks on the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from storage.base import BlobNotFound, DigestMismatch, OffsetMismatch, SizeMismatch, StorageFull, UploadNotFound
from storage.shared import ProcessLocks

WRITE_BUFFER = 1 << 20  # coalesce request chunks into 1 MiB writes
LEFTOVER_AGE = 3600.0  # a spool file untouched this long belongs to no live writer
READ_CHUNK = 1 << 20
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})  # the disk, or the data dir's quota, is full


@contextlib.contextmanager
def _full_is_storage_full(what: str, where: Path) -> Iterator[None]:
    """Turn "no space left" (or "quota exceeded") into StorageFull; every other OSError passes unchanged."""
    try:
        yield
    except OSError as e:
        if e.errno in FULL_ERRNOS:
            raise StorageFull(f"{what}: {e.strerror} (writing {e.filename or where})") from e
        raise


@dataclass(slots=True)
class _HashState:
    """sha256 of an upload's first `offset` bytes, kept in memory while the session is live."""

    hasher: hashlib._Hash
    offset: int


class FilesystemBlobStore:
    def __init__(self, root: Path, locks: ProcessLocks | None = None) -> None:
        self.root = Path(root)
        self.locks = locks  # upload sessions are written by one process at a time
        self._blobs = self.root / "blobs"
        self._uploads = self.root / "uploads"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._uploads.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, asyncio.Lock] = {}
        self._hashes: dict[str, _HashState] = {}
        self.remove_leftovers()

    def remove_leftovers(self, older_than: float = LEFTOVER_AGE) -> int:
        """Remove spool files of monolithic uploads and downloads interrupted by a crash (never acknowledged).
        Only stale ones: another process on the same data dir (a server, `moorage import`) may be writing."""
        cutoff = time.time() - older_than
        removed = 0
        for leftover in self._uploads.glob(".ingest-*"):
            try:
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed

    # -- paths -------------------------------------------------------------------------------------
    def _blob_path(self, digest: str) -> Path:
        alg, _, hexpart = digest.partition(":")
        return self._blobs / alg / hexpart[:2] / hexpart

    def _upload_path(self, upload_id: str) -> Path:
        return self._uploads / upload_id

    # -- reading -----------------------------------------------------------------------------------
    async def stat(self, digest: str) -> int | None:
        try:
            st = await asyncio.to_thread(os.stat, self._blob_path(digest))
        except FileNotFoundError:
            return None
        return st.st_size

    def local_path(self, digest: str) -> Path | None:
        return self._blob_path(digest)

    async def read(self, digest: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        try:
            fh = await asyncio.to_thread(open, self._blob_path(digest), "rb")
        except FileNotFoundError:
            raise BlobNotFound(digest) from None
        try:
            await asyncio.to_thread(fh.seek, offset)
            remaining = length
            while remaining is None or remaining > 0:
                n = READ_CHUNK if remaining is None else min(READ_CHUNK, remaining)
                chunk = await asyncio.to_thread(fh.read, n)
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
        finally:
            await asyncio.to_thread(fh.close)

    # -- uploads -----------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _lock(self, upload_id: str) -> AsyncIterator[None]:
        """One writer per upload session: within this process, then across the processes on the data dir."""
        lock = self._locks.get(upload_id)
        if lock is None:
            lock = self._locks[upload_id] = asyncio.Lock()
        async with lock:
            if self.locks is None:
                yield
                return
            async with self.locks.hold(f"upload {upload_id}"):
                yield

    async def start_upload(self, upload_id: str) -> None:
        def create() -> None:
            with open(self._upload_path(upload_id), "xb"):
                pass

        with _full_is_storage_full("starting an upload", self._upload_path(upload_id)):
            await asyncio.to_thread(create)
        self._hashes[upload_id] = _HashState(hashlib.sha256(), 0)

    async def upload_size(self, upload_id: str) -> int:
        try:
            st = await asyncio.to_thread(os.stat, self._upload_path(upload_id))
        except FileNotFoundError:
            raise UploadNotFound(upload_id) from None
        return st.st_size

    async def append(
        self,
        upload_id: str,
        chunks: AsyncIterator[bytes],
        *,
        offset: int | None = None,
        length: int | None = None,
    ) -> int:
        path = self._upload_path(upload_id)
        async with self._lock(upload_id):
            try:
                fh = await asyncio.to_thread(open, path, "r+b", buffering=0)
            except FileNotFoundError:
                raise UploadNotFound(upload_id) from None
            try:
                size = await asyncio.to_thread(fh.seek, 0, os.SEEK_END)
                if offset is not None and offset != size:
                    raise OffsetMismatch(size, offset)
                state = self._hashes.get(upload_id)
                if state is not None and state.offset != size:
                    state = None  # out of step (e.g. a write that failed half way): rehash at commit
                try:
                    received = await _pump(chunks, fh, state.hasher if state else None)
                    await asyncio.to_thread(os.fsync, fh.fileno())
                except OSError as e:
                    if e.errno not in FULL_ERRNOS:
                        raise
                    # Disk full: cut the chunk off again (shrinking needs no space), so the session is where it
                    # was before this request and the space the chunk took is free again.
                    self._hashes.pop(upload_id, None)
                    await asyncio.to_thread(_truncate, fh, size)
                    raise StorageFull(f"appending to upload {upload_id}: {e.strerror} (writing {path})") from e
            finally:
                await asyncio.to_thread(fh.close)
            if state is not None:
                state.offset = size + received
                self._hashes[upload_id] = state
            else:
                self._hashes.pop(upload_id, None)
            if length is not None and received != length:
                raise SizeMismatch(length, received)
            return size + received

    async def commit(self, upload_id: str, digest: str) -> int:
        async with self._lock(upload_id):
            path = self._upload_path(upload_id)
            try:
                size = (await asyncio.to_thread(os.stat, path)).st_size
            except FileNotFoundError:
                raise UploadNotFound(upload_id) from None
            state = self._hashes.get(upload_id)
            alg = digest.partition(":")[0]
            if alg == "sha256" and state is not None and state.offset == size:
                actual = "sha256:" + state.hasher.hexdigest()
            else:
                actual = await asyncio.to_thread(_hash_file, path, alg)
            if actual != digest:
                await self._discard(upload_id)
                raise DigestMismatch(digest, actual)
            with _full_is_storage_full(f"installing {digest}", self._blob_path(digest)):
                await asyncio.to_thread(self._install, path, self._blob_path(digest))
            self._forget(upload_id)
            return size

    async def abort(self, upload_id: str) -> None:
        async with self._lock(upload_id):
            await self._discard(upload_id)

    async def _discard(self, upload_id: str) -> None:
        await asyncio.to_thread(self._upload_path(upload_id).unlink, True)
        self._forget(upload_id)

    def _forget(self, upload_id: str) -> None:
        self._hashes.pop(upload_id, None)
        self._locks.pop(upload_id, None)

    async def ingest(self, chunks: AsyncIterator[bytes], digest: str, length: int | None = None) -> int:
        """A monolithic upload: stream into a private file, verify, install."""
        tmp = self._uploads / f".ingest-{uuid.uuid4()}"
        with _full_is_storage_full(f"storing {digest}", tmp):
            fh = await asyncio.to_thread(open, tmp, "xb", buffering=0)
            try:
                try:
                    alg = digest.partition(":")[0]
                    hasher = hashlib.new(alg)
                    received = await _pump(chunks, fh, hasher)
                    await asyncio.to_thread(os.fsync, fh.fileno())
                finally:
                    await asyncio.to_thread(fh.close)
                if length is not None and received != length:
                    raise SizeMismatch(length, received)
                actual = f"{alg}:{hasher.hexdigest()}"
                if actual != digest:
                    raise DigestMismatch(digest, actual)
                await asyncio.to_thread(self._install, tmp, self._blob_path(digest))
                return received
            finally:
                await asyncio.to_thread(tmp.unlink, True)

    async def put(self, digest: str, data: bytes) -> None:
        def write() -> None:
            tmp = self._uploads / f".ingest-{uuid.uuid4()}"
            try:
                with open(tmp, "xb", buffering=0) as fh:
                    _write_all(fh, data)
                    os.fsync(fh.fileno())
                self._install(tmp, self._blob_path(digest))
            finally:
                tmp.unlink(missing_ok=True)

        with _full_is_storage_full(f"storing {digest}", self._uploads):
            await asyncio.to_thread(write)

    # -- spooling (a download that readers follow while it is written) -----------------------------
    def spool_path(self, digest: str | None = None) -> Path:
        """Where a blob is spooled before `install_spooled`. For a known `digest` (a pull-through download) a
        known path, so other processes can follow it: the downloader holds the digest's lock, and a file left
        by a crash is replaced (or removed at start-up). Without one, a fresh private path."""
        if digest is None:
            return self._uploads / f".ingest-{uuid.uuid4()}"
        alg, _, hexpart = digest.partition(":")
        return self._uploads / f".ingest-pull-{alg}-{hexpart}"

    async def install_spooled(self, path: Path, digest: str) -> None:
        """Make a verified, fsynced spool file the blob `digest` (atomically)."""
        with _full_is_storage_full(f"installing {digest}", self._blob_path(digest)):
            await asyncio.to_thread(self._install, path, self._blob_path(digest))

    def _install(self, src: Path, dst: Path) -> None:
        """Atomically make `src` the blob at `dst` (runs in a worker thread)."""
        if dst.exists():  # content-addressed: the same bytes are already there
            src.unlink(missing_ok=True)
            return
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
        _fsync_dir(dst.parent)

    # -- deleting ----------------------------------------------------------------------------------
    async def delete(self, digest: str) -> bool:
        try:
            await asyncio.to_thread(os.unlink, self._blob_path(digest))
            return True
        except FileNotFoundError:
            return False

    async def iter_digests(self) -> AsyncIterator[str]:
        def scan() -> list[str]:
            found = []
            for alg_dir in self._blobs.iterdir():
                if not alg_dir.is_dir():
                    continue
                for prefix in alg_dir.iterdir():
                    found.extend(f"{alg_dir.name}:{p.name}" for p in prefix.iterdir())
            return found

        for digest in await asyncio.to_thread(scan):
            yield digest

    async def close(self) -> None:
        self._hashes.clear()


async def _pump(chunks: AsyncIterator[bytes], fh, hasher: hashlib._Hash | None) -> int:
    """Write a chunk stream to `fh` (hashing it), one worker-thread write per ~1 MiB, overlapped with
    receiving the next buffer. Returns the number of bytes written."""
    loop = asyncio.get_running_loop()
    pending: asyncio.Future[None] | None = None
    buf: list[bytes] = []
    buffered = total = 0

    def write(data: bytes) -> None:
        _write_all(fh, data)
        if hasher is not None:
            hasher.update(data)

    try:
        async for chunk in chunks:
            if not chunk:
                continue
            buf.append(chunk)
            buffered += len(chunk)
            total += len(chunk)
            if buffered >= WRITE_BUFFER:
                data = b"".join(buf)
                buf.clear()
                buffered = 0
                if pending is not None:
                    await pending
                pending = loop.run_in_executor(None, write, data)
        if pending is not None:
            await pending
            pending = None
        if buf:
            await loop.run_in_executor(None, write, b"".join(buf))
    finally:
        if pending is not None:  # the client went away mid-stream: let the last write land
            with contextlib.suppress(Exception):
                await asyncio.shield(pending)
    return total


def _write_all(fh, data: bytes) -> None:
    """All of `data` to an unbuffered file (a raw write may take only part of it; the next one then raises)."""
    view = memoryview(data)
    while view:
        view = view[fh.write(view) :]


def _truncate(fh, size: int) -> None:
    fh.truncate(size)
    fh.seek(size)


def _hash_file(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while chunk := fh.read(READ_CHUNK):
            h.update(chunk)
    return f"{algorithm}:{h.hexdigest()}"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:  # pragma: no cover - platforms without directory fds
        if e.errno in (errno.EINVAL, errno.EACCES):
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
