"""Durable local file writes, written once: every local writer (blobs, keys, credentials, exports) uses these;
and the one way a driver streams a range of a local file (`read_range`).

A file that must survive a crash whole is written to a temporary name beside it, fsynced, renamed over the
final name, and its directory fsynced: a reader sees the old file or the new one, never part of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import BinaryIO

from storage.errors import StorageFull

FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})  # the disk, or the data dir's quota, is full


def fsync_dir(path: Path) -> None:
    """Make a rename or a new name in `path` durable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:  # pragma: no cover - platforms without directory descriptors
        if e.errno in (errno.EINVAL, errno.EACCES):
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, suffix: str = ".tmp") -> None:
    """Replace `path` with `data` atomically and durably (`mode` 0o600 for secrets)."""
    tmp = path.with_name(path.name + suffix)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_all(fd: int, data: bytes) -> None:
    """All of `data` to a descriptor (a write may take only part of it; the next one then raises)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _sync_file_range() -> object | None:
    """Linux's sync_file_range(2) from the C library (the os module has no binding), or None elsewhere."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError, TypeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


_SYNC_FILE_RANGE = _sync_file_range()
SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Have the kernel start writing these bytes to disk now, without waiting for it (Linux; elsewhere
    nothing). A large blob's final fsync then waits for its tail only, and its writer is not throttled for
    the hundreds of megabytes it would otherwise leave dirty in the page cache. Best effort: errors are for
    the fsync to report."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, length, SYNC_FILE_RANGE_WRITE)  # type: ignore[operator]


def install(src: Path, dst: Path) -> None:
    """Make the fsynced file `src` the content-addressed file `dst`, atomically. The same content already there
    wins (`src` is removed)."""
    if dst.exists():
        src.unlink(missing_ok=True)
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)
    fsync_dir(dst.parent)


@contextlib.contextmanager
def full_is_storage_full(what: str, where: Path) -> Iterator[None]:
    """Turn "no space left" (or "quota exceeded") into StorageFull; every other OSError passes unchanged."""
    try:
        yield
    except OSError as e:
        if e.errno in FULL_ERRNOS:
            raise StorageFull(f"{what}: {e.strerror} (writing {e.filename or where})") from e
        raise


async def read_range(fh: BinaryIO, offset: int, length: int | None, chunk: int) -> AsyncIterator[bytes]:
    """An open file's bytes from `offset` (`length` of them, to the end when None), `chunk` at a time, read in
    worker threads; the file is closed at the end."""
    try:
        await asyncio.to_thread(fh.seek, offset)
        remaining = length
        while remaining is None or remaining > 0:
            n = chunk if remaining is None else min(chunk, remaining)
            piece = await asyncio.to_thread(fh.read, n)
            if not piece:
                break
            if remaining is not None:
                remaining -= len(piece)
            yield piece
    finally:
        await asyncio.to_thread(fh.close)
