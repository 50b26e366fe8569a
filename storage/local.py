"""Coordination on one machine (`storage.coordination`): named locks and a change feed in two small files.

Several processes work on one data dir at once: the server's workers (`[server] workers`) and the offline
commands (`moorage gc`, `moorage import`). They coordinate through two small files:

- `ProcessLocks`: named exclusive locks (one pull-through download per blob, one writer per upload session).
  Each name is one byte of a POSIX record lock on a shared file, at an offset hashed from the name, so no lock
  files pile up, and the kernel releases a lock the moment its process dies (a crashed worker never leaves a
  lock behind). POSIX locks don't exclude within a process, so names held here are tracked here too.
- `ChangeCounter`: a counter in a memory-mapped file that each process bumps after every commit. A process
  that keeps caches reads it (one memory load, no system call) before trusting them, so a push answered by one
  worker is seen at once by the others.

Across machines, a PostgreSQL driver does the same two jobs with advisory locks and LISTEN/NOTIFY.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import mmap
import os
import struct
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

_COUNTER = struct.Struct("<Q")
_OFFSET_BITS = 56  # offsets stay well inside off_t


class ProcessLocks:
    """Named exclusive locks shared by every process that opens the same lock file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One descriptor for the process's lifetime: closing any descriptor of the file drops all its locks.
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._held: set[int] = set()

    @staticmethod
    def _offset(name: str) -> int:
        digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") >> (64 - _OFFSET_BITS)

    def try_acquire(self, name: str) -> bool:
        """Take the lock if nobody (in this process or another) holds it; never waits."""
        assert self._fd is not None, "locks are closed"
        offset = self._offset(name)
        if offset in self._held:
            return False
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
        except OSError:  # EAGAIN or EACCES: another process holds it
            return False
        self._held.add(offset)
        return True

    def release(self, name: str) -> None:
        offset = self._offset(name)
        if offset in self._held and self._fd is not None:
            self._held.discard(offset)
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, offset)

    def held_elsewhere(self, name: str) -> bool:
        """Whether someone else holds the lock right now (taking and dropping it when free)."""
        if self.try_acquire(name):
            self.release(name)
            return False
        return True

    async def acquire(self, name: str) -> None:
        """Wait (polling, without blocking the loop) for the lock."""
        delay = 0.002
        while not self.try_acquire(name):
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        await self.acquire(name)
        try:
            yield
        finally:
            self.release(name)

    @contextlib.contextmanager
    def hold_blocking(self, name: str) -> Iterator[None]:
        """Hold the lock, waiting for it in this thread (start-up code that runs before the event loop)."""
        assert self._fd is not None, "locks are closed"
        offset = self._offset(name)
        assert offset not in self._held, f"lock {name!r} is already held by this process"
        fcntl.lockf(self._fd, fcntl.LOCK_EX, 1, offset)
        self._held.add(offset)
        try:
            yield
        finally:
            self.release(name)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops every lock still held
            self._fd = None
            self._held.clear()


class LocalLocks:
    """`storage.coordination.Locks` over `ProcessLocks`: on one machine every call is a system call that never
    waits, so the asynchronous contract costs nothing here."""

    def __init__(self, locks: ProcessLocks) -> None:
        self.locks = locks

    async def open(self) -> None:
        return None

    async def try_acquire(self, name: str) -> bool:
        return self.locks.try_acquire(name)

    async def release(self, name: str) -> None:
        self.locks.release(name)

    async def held_elsewhere(self, name: str) -> bool:
        return self.locks.held_elsewhere(name)

    def hold(self, name: str) -> contextlib.AbstractAsyncContextManager[None]:
        return self.locks.hold(name)

    async def close(self) -> None:
        self.locks.close()


class ChangeCounter:
    """A counter in a shared memory-mapped file: bumped after each commit, read before trusting a cache."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if os.fstat(self._fd).st_size < _COUNTER.size:
            os.ftruncate(self._fd, _COUNTER.size)  # zero-filled
        self._map: mmap.mmap | None = mmap.mmap(self._fd, _COUNTER.size)
        self._seen = self.value()
        self._epoch = 0

    # -- what the ChangeFeed contract asks ------------------------------------------------------------
    def epoch(self) -> int:
        """Grows when another process has committed since this one last looked. (Asked several times per request:
        the counter is read inline.)"""
        assert self._map is not None, "counter is closed"
        now = _COUNTER.unpack_from(self._map)[0]
        if now != self._seen:
            self._seen = now
            self._epoch += 1
        return self._epoch

    def committed(self) -> None:
        """After each commit: tell the other processes. When nobody else wrote since we last looked, our own
        write needs no epoch change (the write path already invalidated exactly what it changed)."""
        now = self.bump()
        if now - 1 == self._seen:
            self._seen = now

    # -- the counter ----------------------------------------------------------------------------------
    def value(self) -> int:
        assert self._map is not None, "counter is closed"
        value: int = _COUNTER.unpack_from(self._map)[0]
        return value

    def bump(self) -> int:
        """Add one (atomically across processes) and return the new value."""
        assert self._map is not None, "counter is closed"
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            value: int = _COUNTER.unpack_from(self._map)[0] + 1
            _COUNTER.pack_into(self._map, 0, value)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        return value

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
            os.close(self._fd)


class LocalChangeFeed:
    """`storage.coordination.ChangeFeed` over a `ChangeCounter`."""

    def __init__(self, counter: ChangeCounter) -> None:
        self.counter = counter
        self.epoch = counter.epoch  # the counter's own method: no call through this one

    async def open(self) -> None:
        return None

    def unsettled(self) -> bool:
        return False  # the counter is moved before committed() returns

    def committed(self) -> None:
        self.counter.committed()

    async def settle(self) -> None:
        return None  # the counter is moved before committed() returns

    async def close(self) -> None:
        self.counter.close()
