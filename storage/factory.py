"""`open_stores`: the one place that picks the storage drivers.

Today one machine: SQLite in the data dir for metadata, the data dir's filesystem for blobs, and POSIX locks
and a shared counter (`storage.local`) for coordination between the processes on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from storage.blobs import BlobStore
from storage.coordination import ChangeFeed, Locks
from storage.errors import StorageError
from storage.fs import FilesystemBlobStore
from storage.local import ChangeCounter, LocalLocks, ProcessLocks
from storage.metadata import MetadataStore
from storage.sqlite import SQLiteMetadataStore

HEALTH_TIMEOUT = 5.0


@dataclass(slots=True)
class Stores:
    meta: MetadataStore
    blobs: BlobStore
    locks: Locks
    changes: ChangeFeed

    async def open(self) -> None:
        """Connect and migrate (callers hold the start-up lock: one process migrates at a time)."""
        await self.meta.open()

    async def close(self) -> None:
        try:
            await self.blobs.close()
            await self.meta.close()
        finally:
            self.changes.close()
            await self.locks.close()

    async def health(self) -> list[str]:
        """What keeps the stores from serving (empty: ready), each problem said plainly."""
        problems: list[str] = []
        for name, store in (("database", self.meta), ("storage", self.blobs)):
            try:
                problems += await asyncio.wait_for(store.health(), timeout=HEALTH_TIMEOUT)
            except Exception as e:  # any failure means "not ready"
                problems.append(f"{name}: {e or type(e).__name__}")
        return problems


def open_stores(
    data_dir: Path,
    *,
    metadata: str | None = None,
    blobs: str | None = None,
    free_space_floor: Callable[[int], int] = lambda total: 0,
    min_free_space: str = "0",
) -> Stores:
    """The stores for a data dir. `metadata` and `blobs` name other backends (none yet besides the default);
    `free_space_floor(total bytes)` is the free space below which the filesystem store says it is not ready."""
    if metadata not in (None, "", "sqlite"):
        raise StorageError(f"unknown metadata store {metadata!r}")
    if blobs not in (None, "", "filesystem"):
        raise StorageError(f"unknown blob store {blobs!r}")
    data_dir = Path(data_dir)
    locks = LocalLocks(ProcessLocks(data_dir / "moorage.locks"))
    changes = ChangeCounter(data_dir / "moorage.db-changes")
    return Stores(
        SQLiteMetadataStore(data_dir / "moorage.db", changes),
        FilesystemBlobStore(data_dir, locks, free_space_floor=free_space_floor, min_free_space=min_free_space),
        locks,
        changes,
    )
