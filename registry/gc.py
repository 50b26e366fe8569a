"""Online garbage collection: remove blobs no manifest references, while pushes and pulls go on.

A blob is collected when no manifest in any repository references it and nothing has touched it (an upload,
a mount, a link) for `grace_period`, so an in-flight push whose manifest has not arrived yet loses nothing.
Each candidate is re-checked and its file removed inside one write transaction; blob links and manifest
writes re-check the blob inside theirs, so a manifest can never commit a reference to a collected blob
(`storage.sqlite`). Also removed: files a crash left with no blob row (after the grace period) and upload
sessions abandoned for a day.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from storage import base as st
from storage.fs import FilesystemBlobStore

log = logging.getLogger("moorage.gc")
BATCH = 500
ABANDONED_UPLOAD = 24 * 3600.0


@dataclass(slots=True)
class GcReport:
    dry_run: bool
    blobs: int = 0
    bytes: int = 0
    orphan_files: int = 0
    uploads: int = 0
    seconds: float = 0.0

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
        meta: st.MetadataStore,
        blobs: FilesystemBlobStore,
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
        seen: set[str] = set()
        while True:
            batch = [(d, s) for d, s in await self.meta.gc_candidates(cutoff, BATCH + len(seen)) if d not in seen]
            if not batch:
                break
            for digest, size in batch[:BATCH]:
                seen.add(digest)
                path = self.blobs.local_path(digest)
                if dry_run:
                    report.blobs += 1
                    report.bytes += size
                elif await self.meta.delete_unreferenced_blob(digest, cutoff, _unlinker(path)):
                    report.blobs += 1
                    report.bytes += size
                    log.info("gc: removed %s (%d bytes)", digest, size)
        report.orphan_files = await self._orphans(cutoff, dry_run)
        if not dry_run:
            for upload_id in await self.meta.stale_uploads(self.clock() - max(ABANDONED_UPLOAD, self.grace_period)):
                await self.blobs.abort(upload_id)
                await self.meta.delete_upload(upload_id)
                report.uploads += 1
            report.orphan_files += await asyncio.to_thread(self.blobs.remove_leftovers)
            if report.blobs:
                self.on_removed()
        report.seconds = time.monotonic() - started
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

    async def _orphans(self, cutoff: float, dry_run: bool) -> int:
        known = await self.meta.known_blobs()
        removed = 0
        async for digest in self.blobs.iter_digests():
            if digest in known:
                continue
            path = self.blobs.local_path(digest)
            try:
                if path is None or os.stat(path).st_mtime >= cutoff:
                    continue
            except FileNotFoundError:
                continue
            if dry_run or await self.meta.delete_orphan_file(digest, _unlinker(path)):
                removed += 1
        return removed


def _unlinker(path: object) -> Callable[[], None]:
    def unlink() -> None:
        if path is not None:
            try:
                os.unlink(path)  # type: ignore[arg-type]
            except FileNotFoundError:
                pass

    return unlink
