"""How the processes (and, with a shared backend, the machines) serving one registry coordinate.

- `Locks`: named exclusive locks: one pull-through download per blob, one writer per upload session, one
  process at a time migrating the schema or creating keys. A lock held by a process that dies is released.
- `ChangeFeed`: a number that grows after every commit anywhere. A process keeps its caches only while the
  number it saw when filling them is current, so a push answered by one worker (or replica) is seen by the
  next request anywhere.

One machine: `storage.local` (POSIX record locks on one file, a counter in a shared memory map). Across
machines the same two jobs fall to PostgreSQL (advisory locks, LISTEN/NOTIFY).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol


class Locks(Protocol):
    """Asynchronous throughout: a lock across machines is a round trip to the database."""

    async def open(self) -> None: ...

    async def try_acquire(self, name: str) -> bool:
        """Take the lock if nobody (here or elsewhere) holds it; never waits."""

    async def release(self, name: str) -> None: ...

    async def held_elsewhere(self, name: str) -> bool:
        """Whether anyone but the caller holds it right now: another process, or another task of this one (a
        follower asks whether the leader of a download is still at it, wherever the leader runs)."""

    def hold(self, name: str) -> AbstractAsyncContextManager[None]:
        """Wait for the lock (without blocking the loop) and hold it for the block."""

    async def close(self) -> None:
        """Release everything this process holds."""


class ChangeFeed(Protocol):
    async def open(self) -> None:
        """Start hearing of other processes' commits (before the metadata store opens)."""

    def epoch(self) -> int:
        """Grows each time another process's commit is noticed; cheap enough to call before each cache lookup.
        A cache filled at an older epoch must be dropped."""

    def committed(self) -> None:
        """After this process committed a write: tell the others. (The PostgreSQL store also notifies inside its
        own transactions, so its writes are heard exactly when they commit.)"""

    def unsettled(self) -> bool:
        """Whether `settle` would wait (this process has committed writes the others may not have heard of yet):
        a cheap check before the coroutine."""

    async def settle(self) -> None:
        """Until the other processes can have heard of this process's committed writes (bounded; immediate when
        there is nothing to wait for). Called before a request is answered: a client that writes through one
        replica and reads through another at once reads its write."""

    async def close(self) -> None: ...
