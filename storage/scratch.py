"""Local scratch files of blob writes, shared by the blob drivers (`storage.fs`, `storage.s3`).

A write lands in a file under the driver's scratch directory (`uploads/` of the data dir), hashed while it is
written, before the driver installs it (a rename on the filesystem, an upload to object storage):

    uploads/
      .ingest-<uuid>              a fresh writer's bytes
      .ingest-shared-<key hash>   a shared writer's bytes, which followers in other processes read as it grows
      .ingest-shared-<key hash>.size   "<pid> <declared size>": which live process writes it

`ScratchWriter` is the writing half (`storage.blobs.BlobWriter` less the installation step, which each driver
supplies), `FileFollow` the following half. A write that finds the disk full (ENOSPC, or EDQUOT for a quota)
raises `StorageFull`. Files are written unbuffered (writes are coalesced to WRITE_BUFFER here), so no buffered
bytes are left over to fail again when the file is closed. File I/O and hashing run in worker threads (hashlib
releases the GIL for large buffers), pipelined with receiving the next bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import ClassVar, TypeVar

from storage.errors import DigestMismatch, StorageFull
from storage.files import FULL_ERRNOS, full_is_storage_full, start_writeback, write_all

WRITE_BUFFER = 1 << 20  # coalesce small writes into 1 MiB ones
LEFTOVER_AGE = 3600.0  # a scratch file untouched this long belongs to no live writer
READ_CHUNK = 1 << 20
SCRATCH_PREFIX = ".ingest-"


def shared_path(scratch: Path, key: str) -> Path:
    """The scratch file of the shared write under `key` (its sidecar: the same name + ".size")."""
    return scratch / f"{SCRATCH_PREFIX}shared-{hashlib.blake2b(key.encode(), digest_size=16).hexdigest()}"


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".size")


class ScratchWriter:
    """One blob being written to a local file (`storage.blobs.BlobWriter`); `_install` (the driver's) makes the
    verified file the blob.

    Writes are coalesced into WRITE_BUFFER pieces, each written and hashed in a worker thread while the next
    bytes arrive. A write-through writer (a shared one: others read the file as it grows) lands every write
    before returning. `start` is the size of what the writer continues (an upload session's bytes so far)."""

    # Whether what was written must survive a crash once flushed (fsync): the filesystem store's files are the
    # stored bytes; an object store's scratch files are only the way to it.
    durable: ClassVar[bool] = True

    def __init__(
        self,
        path: Path,
        fd: int,
        hasher: hashlib._Hash | None,
        start: int,
        *,
        through: bool = False,
        session: str | None = None,
    ) -> None:
        self.path = path
        self.hasher = hasher
        self.session = session
        self.committed = self.aborted = False
        self.consistent = True  # the hasher covers exactly the bytes in the file
        self._fd: int | None = fd
        self._through = through
        self._size = start
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._pending: asyncio.Future[None] | None = None
        self._dirty = False  # written to since the last fsync

    @property
    def size(self) -> int:
        return self._size

    async def write(self, data: bytes) -> None:
        if not data:
            return
        self._dirty = True
        self._size += len(data)
        if self._through:
            await self._land(data)
            return
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered >= WRITE_BUFFER:
            await self._flush_buffer(wait=False)

    async def _flush_buffer(self, *, wait: bool) -> None:
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        if self._pending is not None:
            pending, self._pending = self._pending, None
            await pending
        if data:
            self._pending = asyncio.get_running_loop().run_in_executor(None, self._write_sync, data)
        if wait and self._pending is not None:
            pending, self._pending = self._pending, None
            await pending

    async def _land(self, data: bytes) -> None:
        await asyncio.to_thread(self._write_sync, data)

    def _write_sync(self, data: bytes) -> None:
        assert self._fd is not None
        try:
            offset = os.fstat(self._fd).st_size if self.durable else 0  # (appended at the end)
            write_all(self._fd, data)
            if self.durable:
                start_writeback(self._fd, offset, len(data))
        except OSError as e:
            self.consistent = False
            if e.errno in FULL_ERRNOS:
                raise StorageFull(f"writing a blob: {e.strerror} (writing {self.path})") from e
            raise
        if self.hasher is not None:
            self.hasher.update(data)

    async def _sync(self) -> None:
        await self._flush_buffer(wait=True)
        assert self._fd is not None
        if self.durable:
            with full_is_storage_full("writing a blob", self.path):
                await asyncio.to_thread(os.fsync, self._fd)
        self._dirty = False

    async def flush(self) -> None:
        """Make what was written durable (fsync; for a scratch file that is not, just written)."""
        if self._dirty or self._buffer:
            await self._sync()

    async def file_digest(self, algorithm: str) -> str:
        """The digest of the file's bytes (after `flush`): from the hasher when it covers them, else read again."""
        if algorithm == "sha256" and self.hasher is not None and self.consistent:
            return "sha256:" + self.hasher.hexdigest()
        return await asyncio.to_thread(hash_file, self.path, algorithm)

    async def commit(self, expected: str) -> int:
        await self._sync()
        actual = await self.file_digest(expected.partition(":")[0])
        if actual != expected:
            await self.abort()
            raise DigestMismatch(expected, actual)
        await self._close()
        await self._install(expected)
        self.committed = True
        return self._size

    async def _install(self, expected: str) -> None:
        """Make the verified, closed file the blob `expected` (the driver's part)."""
        raise NotImplementedError

    async def abort(self) -> None:
        self.aborted = True
        await self._close()
        await asyncio.to_thread(self.path.unlink, True)

    async def _close(self, truncate_to: int | None = None) -> None:
        """Let the last write land (a client that went away mid-stream), make what stays durable, close. An
        upload session keeps its bytes; `truncate_to` cuts a chunk off again (after StorageFull)."""
        if self._fd is None:
            return
        fd = self._fd
        try:
            if truncate_to is not None or self.aborted:
                self._buffer.clear()
                self.consistent = False
                if self._pending is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(self._pending)
                    self._pending = None
                if truncate_to is not None:
                    await asyncio.to_thread(os.ftruncate, fd, truncate_to)
                    self._size = truncate_to
            elif self._dirty or self._buffer:
                try:
                    await self._sync()
                except Exception:
                    self.consistent = False
                    if self.session is None:
                        raise
        finally:
            self._fd = None
            if self._pending is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._pending)
                self._pending = None
            await asyncio.to_thread(os.close, fd)


class FileFollow:
    """Another writer's shared file, read while it grows (`storage.blobs.SharedWrite`)."""

    def __init__(self, fd: int, declared_size: int | None) -> None:
        self._fd: int | None = fd
        self._declared = declared_size

    @property
    def declared_size(self) -> int | None:
        return self._declared

    async def available(self) -> int:
        assert self._fd is not None
        return os.fstat(self._fd).st_size

    async def read(self, offset: int, length: int) -> bytes:
        assert self._fd is not None
        return await asyncio.to_thread(os.pread, self._fd, length, offset)

    async def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


Writer = TypeVar("Writer", bound=ScratchWriter)


@contextlib.asynccontextmanager
async def scratch_writer(
    scratch: Path, shared: str | None, size: int | None, make: Callable[[Path, int], Writer]
) -> AsyncIterator[Writer]:
    """A fresh writer on a new scratch file (`BlobIngester.writer`): followable under `shared`, announcing `size`
    to followers; aborted on leaving without a commit, its sidecar removed either way."""
    if shared is None:
        path, sidecar = scratch / f"{SCRATCH_PREFIX}{uuid.uuid4()}", None
    else:
        path = shared_path(scratch, shared)
        sidecar = sidecar_path(path)
    with full_is_storage_full("starting a blob", path):
        fd = await asyncio.to_thread(create_scratch, path, sidecar, size)
    writer = make(path, fd)
    try:
        yield writer
    finally:
        if not (writer.committed or writer.aborted):
            await writer.abort()
        if sidecar is not None:
            await asyncio.to_thread(sidecar.unlink, True)


def create_scratch(path: Path, sidecar: Path | None, size: int | None) -> int:
    """Create a writer's file. A shared one: this process holds the key's lock, so files there are a crashed
    process's leftovers: the old file goes first, then the sidecar names this process (and the size), then the
    new file appears. A follower that reads a sidecar naming a live process can therefore only open this file.

    A write whose size is known and larger than the filesystem's free space fails here, with ENOSPC, before a
    byte is taken: a pull-through download is answered 507 before its response starts (not cut part way, after
    the upstream sent what could never be kept)."""
    if size is not None:
        st = os.statvfs(path.parent)
        if size > st.f_bavail * st.f_frsize:
            raise OSError(
                errno.ENOSPC,
                f"{size} bytes do not fit in the {st.f_bavail * st.f_frsize} bytes free",
                str(path.parent),
            )
    if sidecar is None:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    path.unlink(missing_ok=True)
    tmp = sidecar.with_name(sidecar.name + ".tmp")
    tmp.write_text(f"{os.getpid()} {'' if size is None else size}")
    os.replace(tmp, sidecar)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)


def open_shared(path: Path) -> tuple[int, int | None]:
    """Open the shared file of the live process writing it, and its declared size. FileNotFoundError until
    there is one (a sidecar left by a crashed process names a dead one)."""
    pid, _, size = sidecar_path(path).read_text().partition(" ")
    if not pid.isdigit() or not _alive(int(pid)):
        raise FileNotFoundError(f"{path}: left by process {pid}, which is gone")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    return fd, int(size) if size.strip() else None


async def follow(scratch: Path, key: str) -> FileFollow | None:
    """The shared write under `key` of a live process on this scratch directory, or None."""
    try:
        fd, size = await asyncio.to_thread(open_shared, shared_path(scratch, key))
    except FileNotFoundError:
        return None
    return FileFollow(fd, size)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def hash_file(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while chunk := fh.read(READ_CHUNK):
            h.update(chunk)
    return f"{algorithm}:{h.hexdigest()}"


def remove_stale(scratch: Path, older_than: float) -> int:
    """Remove scratch files of writes interrupted by a crash (never acknowledged). Only stale ones: another
    process on the same data dir (a server, `moorage import`) may be writing."""
    cutoff = time.time() - older_than
    removed = 0
    for leftover in scratch.glob(f"{SCRATCH_PREFIX}*"):
        try:
            if leftover.stat().st_mtime < cutoff:
                leftover.unlink()
                removed += 1
        except FileNotFoundError:
            pass
    return removed
