"""Copy one registry's storage into another's: what `moorage migrate-storage` does below the command line.

1. The target is checked: it must hold nothing (no repository, blob, rule, template or shared value, and no blob
   in its blob store), unless it holds an interrupted migration of the same source and the caller resumes it.
   The target's metadata store then records the migration as under way (the shared value `MARKER`).
2. Blobs: every blob the source's metadata lists (not those a garbage collection has claimed) is streamed from the
   source's blob store through a writer of the target's, whose `commit(digest)` verifies the bytes, a few at a
   time; a blob the target holds already (with the right size) is skipped, so a second run resumes the first.
   A blob whose bytes do not match its digest fails the migration and leaves nothing in the target.
3. Metadata: every row (`storage.snapshot`), with `values` (signing keys and generated credentials that a single
   machine keeps in files) added to the shared values, goes into the target in one transaction, which also
   marks the migration complete: the target shows the whole registry or none of it, and only once its blobs
   are all there. Ids are kept (a driver with sequences moves them past the copied ids).

Upload sessions are not copied (their bytes are scratch files of the source's data dir): clients restart them.
Nothing here takes locks: the caller opens the source for itself (`open_stores(..., exclusive=True)`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from storage.errors import BlobCorrupt, BlobNotFound, DigestMismatch, StorageError
from storage.factory import Stores
from storage.snapshot import CONTENT_TABLES, Batch, Row, only

MARKER = "migrate-storage"  # the target's shared value recording a migration: JSON {source, state, times}
PARALLEL_BLOBS = 4  # blobs copied at once (each streams through one writer: memory stays a few chunks each)


class MigrationError(StorageError):
    """Why a migration could not start or did not finish (one line, for the command's error)."""


@dataclass(slots=True)
class MigrationReport:
    source: str
    target: str
    blobs_copied: int = 0
    blobs_present: int = 0  # already in the target (a resumed run, or the same blob store)
    bytes_copied: int = 0
    rows: dict[str, int] = field(default_factory=dict)  # rows copied per table (empty: metadata not copied)
    uploads_dropped: int = 0
    resumed: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.target,
            "resumed": self.resumed,
            "repositories": self.rows.get("repositories", 0),
            "images": self.rows.get("manifests", 0),
            "tags": self.rows.get("tags", 0),
            "blobs": self.blobs_copied + self.blobs_present,
            "blobsCopied": self.blobs_copied,
            "blobsAlreadyThere": self.blobs_present,
            "bytesCopied": self.bytes_copied,
            "rows": self.rows,
            "uploadSessionsDropped": self.uploads_dropped,
            "seconds": round(self.seconds, 3),
        }


Progress = Callable[[int, int], None]  # (blobs done, bytes copied so far)


async def check_target(
    target: Stores, source: str, *, resume: bool, copy_metadata: bool = True, check_blobs: bool = True
) -> bool:
    """Refuse a target that is not empty (MigrationError), unless it holds an interrupted migration of `source`
    and `resume`; returns whether this run resumes one."""
    marker = await target.meta.get_value(MARKER) if copy_metadata else None
    if marker is not None:
        state = json.loads(marker)
        if state.get("state") == "complete":
            raise MigrationError(
                f"the target holds a completed migration of {state.get('source')} already (finished "
                f"{_when(state.get('finished_at'))}); there is nothing to do"
            )
        if state.get("source") != source:
            raise MigrationError(
                f"the target holds an interrupted migration of another source, {state.get('source')}: finish it "
                "(--resume with that source) or empty the target"
            )
        if not resume:
            raise MigrationError(
                f"the target holds an interrupted migration of {source} (started {_when(state.get('started_at'))}):"
                " run again with --resume to finish it"
            )
        return True
    found: list[str] = []
    if copy_metadata:
        counts = await target.meta.row_counts()
        found += [f"{counts[name]} {name.replace('_', ' ')}" for name in CONTENT_TABLES if counts[name]]
    if check_blobs:
        async for _ in target.blobs.iter_digests():
            found.append("blobs in its blob store")
            break
    if found and not (resume and not copy_metadata):
        raise MigrationError(f"the target is not empty ({', '.join(found)}): migrate-storage copies into empty storage")
    return bool(found)


async def begin(target: Stores, source: str, now: float) -> None:
    """Record in the target that a migration of `source` is under way (what a resumed run checks)."""
    await target.meta.put_value(MARKER, json.dumps({"source": source, "state": "copying", "started_at": now}).encode())


async def copy_blobs(source: Stores, target: Stores, report: MigrationReport, progress: Progress | None = None) -> None:
    """Every blob the source's metadata lists, into the target's blob store (skipping those there already)."""
    slots = asyncio.Semaphore(PARALLEL_BLOBS)
    done = 0

    async def one(digest: str, size: int) -> None:
        nonlocal done
        try:
            stored = await target.blobs.stat(digest)
            if stored is not None and stored.size == size:
                report.blobs_present += 1
            else:
                report.bytes_copied += await _copy_blob(source, target, digest, size)
                report.blobs_copied += 1
            done += 1
            if progress is not None:
                progress(done, report.bytes_copied)
        finally:
            slots.release()

    try:
        async with asyncio.TaskGroup() as tasks:
            async for row in only(source.meta.export_rows(["blobs"]), "blobs"):
                await slots.acquire()
                tasks.create_task(one(row["digest"], row["size"]))
    except BaseExceptionGroup as group:  # the first failure (the others were cancelled by it)
        raise group.exceptions[0] from None


async def _copy_blob(source: Stores, target: Stores, digest: str, size: int) -> int:
    try:
        async with target.blobs.writer(size=size) as writer:
            async for chunk in source.blobs.read(digest):
                await writer.write(chunk)
            return await writer.commit(digest)
    except BlobNotFound:
        raise MigrationError(
            f"blob {digest} is listed in the source's metadata but its bytes are missing from the source's blob "
            "store: the source is damaged (nothing of this blob was written to the target)"
        ) from None
    except (DigestMismatch, BlobCorrupt) as e:
        raise MigrationError(
            f"blob {digest}: the source's bytes do not match their digest (they hash to {e.actual}): the source "
            "is damaged (nothing of this blob was written to the target)"
        ) from None


async def copy_metadata(
    source: Stores, target: Stores, values: Mapping[str, bytes], report: MigrationReport, now: float
) -> None:
    """Every row, plus `values` among the shared values, into the target in one transaction that marks the
    migration complete."""
    state = {"source": report.source, "state": "complete", "finished_at": now}
    extra = {**values, MARKER: json.dumps(state).encode()}

    async def batches() -> AsyncIterator[Batch]:
        async for table, rows in source.meta.export_rows():
            if table == "shared_values":
                rows = [row for row in rows if row["name"] not in extra]
            if rows:
                yield table, rows
        values_rows: list[Row] = [{"name": name, "value": value} for name, value in sorted(extra.items())]
        yield "shared_values", values_rows

    rows = await target.meta.import_rows(batches())
    rows["shared_values"] -= 1  # the marker is no row of the source's
    report.rows = {name: count for name, count in rows.items() if count}


async def migrate(
    source: Stores,
    target: Stores,
    *,
    source_name: str,
    target_name: str,
    values: Mapping[str, bytes],
    resume: bool = False,
    copy_metadata_too: bool = True,
    same_blobs: bool = False,
    progress: Progress | None = None,
) -> MigrationReport:
    """Check the target, copy the blobs, then the metadata (`copy_metadata_too=False`: the target keeps the
    source's metadata store, only the blobs move). Both stores are open; the caller holds the source for itself."""
    started = time.monotonic()
    report = MigrationReport(source_name, target_name)
    report.resumed = await check_target(
        target, source_name, resume=resume, copy_metadata=copy_metadata_too, check_blobs=not same_blobs
    )
    report.uploads_dropped = (await source.meta.storage_stats())["uploads_in_progress"]
    if copy_metadata_too and not report.resumed:
        await begin(target, source_name, time.time())
    await copy_blobs(source, target, report, progress)
    if copy_metadata_too:
        await copy_metadata(source, target, values, report, time.time())
    report.seconds = time.monotonic() - started
    return report


def _when(stamp: object) -> str:
    if not isinstance(stamp, int | float):
        return "at an unknown time"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))
