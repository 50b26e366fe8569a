"""Online garbage collection: remove blobs no manifest references, while pushes and pulls go on.

A blob is collected when no manifest in any repository references it and nothing has touched it (an upload,
a mount, a link) for `grace_period`, so an in-flight push whose manifest has not arrived yet loses nothing.
Each collection takes three steps, none holding a database transaction across blob I/O:

1. claim the blob in the metadata store: a tombstone that refuses new links (`claim_blob` re-checks the
   condition atomically; a manifest write re-checks its blobs' links inside its own transaction, so it can
   never commit a reference to a claimed blob);
2. delete its bytes through the blob store (`BlobStore.delete`, the only place blob bytes are removed);
3. drop the row.

A crash between the steps leaves a tombstone, which the next run finishes. A link made just after a run
finished looks for the bytes afterwards (`ImageService.link_blob`). Also removed: bytes a crash left with no
row (after the grace period, through the same claim), scratch files of interrupted writes, and upload
sessions abandoned for a day.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from storage.blobs import BlobStore
from storage.metadata import MetadataStore

log = logging.getLogger("moorage.gc")
BATCH = 500
ABANDONED_UPLOAD = 24 * 3600.0
LAST_RUN = "gc-last-run"  # the shared value that holds the last collection's report (`GcReport.as_dict` and finishedAt)


@dataclass(slots=True)
class GcReport:
    dry_run: bool
    blobs: int = 0
    bytes: int = 0
    orphan_files: int = 0
    uploads: int = 0
    seconds: float = 0.0
    finished_at: float = 0.0  # epoch seconds

    def as_dict(self) -> dict[str, object]:
        return {
            "dryRun": self.dry_run,
            "blobsRemoved": self.blobs,
            "bytesFreed": self.bytes,
            "orphanFilesRemoved": self.orphan_files,
            "uploadsPurged": self.uploads,
            "seconds": round(self.seconds, 3),
        }


class GarbageCollector:
    def __init__(
        self,
        meta: MetadataStore,
        blobs: BlobStore,
        *,
        grace_period: float,
        on_removed: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.meta = meta
        self.blobs = blobs
        self.grace_period = grace_period
        self.on_removed = on_removed  # e.g. drop cached blob links
        self.clock = clock

    async def run(self, *, dry_run: bool = False) -> GcReport:
        started = time.monotonic()
        report = GcReport(dry_run)
        cutoff = self.clock() - self.grace_period
        after = ""
        while batch := await self.meta.unreferenced_blobs(cutoff, after, BATCH):
            after = batch[-1].digest
            for blob in batch:
                if dry_run:
                    if not blob.claimed:
                        report.blobs += 1
                        report.bytes += blob.size
                elif await self._collect(blob.digest, cutoff):
                    if not blob.claimed:
                        report.blobs += 1
                        report.bytes += blob.size
                        log.info("gc: removed %s (%d bytes)", blob.digest, blob.size)
        report.orphan_files = await self._orphans(cutoff, dry_run)
        if not dry_run:
            for upload_id in await self.meta.stale_uploads(self.clock() - max(ABANDONED_UPLOAD, self.grace_period)):
                await self.blobs.delete_upload(upload_id)
                await self.meta.delete_upload(upload_id)
                report.uploads += 1
            report.orphan_files += await self.blobs.remove_leftovers()
            if report.blobs:
                self.on_removed()
        report.seconds = time.monotonic() - started
        report.finished_at = self.clock()
        if not dry_run:  # every process and replica (and the console) can tell when garbage was last collected
            await self.meta.put_value(
                LAST_RUN, json.dumps({**report.as_dict(), "finishedAt": report.finished_at}).encode()
            )
        log.info(
            "gc%s: %d blobs, %d bytes, %d orphan files, %d abandoned uploads in %.2fs",
            " (dry run)" if dry_run else "",
            report.blobs,
            report.bytes,
            report.orphan_files,
            report.uploads,
            report.seconds,
        )
        return report

    async def last_run(self) -> GcReport | None:
        """The last collection's report (by whichever process ran it; None before the first)."""
        raw = await self.meta.get_value(LAST_RUN)
        if raw is None:
            return None
        d = json.loads(raw)
        return GcReport(
            False,
            blobs=d["blobsRemoved"],
            bytes=d["bytesFreed"],
            orphan_files=d["orphanFilesRemoved"],
            uploads=d["uploadsPurged"],
            seconds=d["seconds"],
            finished_at=d["finishedAt"],
        )

    async def _collect(self, digest: str, cutoff: float) -> bool:
        """Claim, delete the bytes, drop the row; False when the blob is no longer collectable."""
        if not await self.meta.claim_blob(digest, cutoff):
            return False
        await self.blobs.delete(digest)
        await self.meta.drop_blob(digest)
        return True

    async def _orphans(self, cutoff: float, dry_run: bool) -> int:
        """Stored bytes that no row records (a crash between install and link), older than the grace period."""
        removed = 0
        batch: list[str] = []

        async def settle() -> int:
            known = await self.meta.known_blobs(batch)
            orphans = [digest for digest in batch if digest not in known]
            batch.clear()
            if dry_run:
                return len(orphans)
            return sum([await self._collect(digest, cutoff) for digest in orphans])

        async for digest, info in self.blobs.iter_digests():
            if info.modified < cutoff:
                batch.append(digest)
                if len(batch) >= BATCH:
                    removed += await settle()
        if batch:
            removed += await settle()
        return removed
