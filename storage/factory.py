"""`open_stores`: the one place that picks the storage drivers.

- Metadata: SQLite in the data dir (the default), or PostgreSQL (`metadata = "postgresql://..."`). The
  coordination between processes follows it: POSIX locks and a shared counter in the data dir for one machine,
  PostgreSQL advisory locks and LISTEN/NOTIFY for replicas on several.
- Blobs: the data dir's filesystem (the default), or an S3-compatible bucket (`blobs = "s3://BUCKET/prefix"`),
  with the data dir as each replica's scratch space.

The PostgreSQL and S3 drivers are imported only when configured, so the embedded default needs neither library.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from storage.blobs import BlobStore
from storage.coordination import ChangeFeed, Locks
from storage.errors import StorageError
from storage.metadata import MetadataStore

HEALTH_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class S3Options:
    """How to reach the S3-compatible service (`[storage.s3]`)."""

    endpoint_url: str = ""  # empty: AWS S3
    region: str = "us-east-1"
    access_key_id: str = ""  # empty: the standard AWS environment / shared credentials
    secret_access_key: str = field(default="", repr=False)
    redirect: bool = False  # blob GETs may answer a presigned URL
    local_cache: int = 0  # bytes of verified blob copies kept on the replica's disk (0: none)


@dataclass(slots=True)
class Stores:
    meta: MetadataStore
    blobs: BlobStore
    locks: Locks
    changes: ChangeFeed

    async def open(self) -> None:
        """Connect and migrate (callers hold the start-up lock: one process migrates at a time)."""
        await self.locks.open()
        await self.changes.open()
        await self.meta.open()

    async def close(self) -> None:
        try:
            await self.blobs.close()
            await self.meta.close()
        finally:
            await self.changes.close()
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
    metadata: str = "",
    blobs: str = "",
    s3: S3Options | None = None,
    free_space_floor: Callable[[int], int] = lambda total: 0,
    min_free_space: str = "0",
    exclusive: bool = False,
) -> Stores:
    """The stores (not yet opened) for a data dir and the configured backends. `free_space_floor(total bytes)`
    is the free space below which a store on the local filesystem says it is not ready. `exclusive`: SQLite
    metadata is opened for this process alone (refused while another has it open, and the other way round)."""
    data_dir = Path(data_dir)
    meta: MetadataStore
    locks: Locks
    changes: ChangeFeed
    if metadata.startswith(("postgresql://", "postgres://")):
        from storage.postgres import open_postgres

        meta, locks, changes = open_postgres(metadata)
    elif metadata in ("", "sqlite"):
        from storage.local import ChangeCounter, LocalChangeFeed, LocalLocks, ProcessLocks
        from storage.sqlite import SQLiteMetadataStore

        locks = LocalLocks(ProcessLocks(data_dir / "moorage.locks"))
        changes = LocalChangeFeed(ChangeCounter(data_dir / "moorage.db-changes"))
        meta = SQLiteMetadataStore(data_dir / "moorage.db", changes, exclusive=exclusive)
    else:
        raise StorageError(f"unknown metadata store {metadata!r}")
    blob_store = open_blob_store(
        data_dir, locks, blobs=blobs, s3=s3, free_space_floor=free_space_floor, min_free_space=min_free_space
    )
    return Stores(meta, blob_store, locks, changes)


def open_blob_store(
    data_dir: Path,
    locks: Locks,
    *,
    blobs: str = "",
    s3: S3Options | None = None,
    free_space_floor: Callable[[int], int] = lambda total: 0,
    min_free_space: str = "0",
) -> BlobStore:
    """The blob store alone (not yet opened), coordinating through `locks` (another store's: migrate-storage
    copies a data dir's blobs into a bucket beside the data dir's own metadata and locks)."""
    blob_store: BlobStore
    if blobs.startswith("s3://"):
        from storage.s3 import S3BlobStore

        bucket, _, prefix = blobs[len("s3://") :].partition("/")
        blob_store = S3BlobStore(
            bucket,
            prefix.strip("/"),
            s3 or S3Options(),
            scratch=data_dir,
            locks=locks,
            free_space_floor=free_space_floor,
        )
    elif blobs in ("", "filesystem"):
        from storage.fs import FilesystemBlobStore

        blob_store = FilesystemBlobStore(
            data_dir, locks, free_space_floor=free_space_floor, min_free_space=min_free_space
        )
    else:
        raise StorageError(f"unknown blob store {blobs!r}")
    return blob_store


async def probe(metadata: str, blobs: str, s3: S3Options | None = None) -> tuple[list[str], list[str]]:
    """(problems, what answered) for the shared backends configured (none for the data dir's own): whether they
    can be reached, within HEALTH_TIMEOUT each. Nothing is created, migrated or written."""
    problems: list[str] = []
    found: list[str] = []
    if metadata.startswith(("postgresql://", "postgres://")):
        from storage.postgres.probe import probe_postgres

        more, what = await probe_postgres(metadata, HEALTH_TIMEOUT)
        problems += more
        found += [f"metadata: {what}"] if what else []
    if blobs.startswith("s3://"):
        from storage.local import LocalLocks, ProcessLocks

        with tempfile.TemporaryDirectory(prefix="moorage-probe-") as scratch:
            locks = LocalLocks(ProcessLocks(Path(scratch) / "locks"))
            store = open_blob_store(Path(scratch), locks, blobs=blobs, s3=s3)
            try:
                more = await asyncio.wait_for(store.health(), timeout=HEALTH_TIMEOUT + 1)
            except TimeoutError:
                more = [f"storage: {blobs} did not answer within {HEALTH_TIMEOUT:g}s"]
            finally:
                await store.close()
                await locks.close()
            problems += more
            found += [] if more else [f"blobs: {getattr(store, 'where', blobs)} reachable"]
    return problems, found
