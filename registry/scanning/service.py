"""Vulnerability scans of images: queued (on push, by StartImageScan, or when a new vulnerability database affects
an image under CONTINUOUS_SCAN), run in the scan worker process, stored in the metadata store.

A queued scan is a stored scan IN_PROGRESS. The process that queues it runs it at once in the background; a scan
left IN_PROGRESS by a process that stopped, or queued by `moorage vuln-db import` (an offline command), is
taken up by the periodic sweep, which one process of the registry runs at a time. Scans read blobs straight
from the blob store, so they never count as pulls (`lastRecordedPullTime` does not move).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from registry import oci
from registry.errors import NameUnknown
from registry.scanning import findings as shapes
from registry.scanning.layers import LayerError
from registry.scanning.matcher import index_keys
from registry.scanning.osv import read_export
from registry.scanning.worker import DatabaseFile, ScanTimeout, ScanWorker
from registry.service.ecr_scanning import repository_scanning
from registry.service.images import ImageService, Pushed
from registry.service.registry_settings import SCANNING, RegistrySettings
from storage.blobs import BlobStore, FileRange
from storage.coordination import Locks
from storage.errors import BlobNotFound, StorageError
from storage.metadata import MetadataStore
from storage.records import ScanRecord

log = logging.getLogger("moorage.scanning")

SCAN_LOCK = "job scanning"
STALE = 600.0  # a scan IN_PROGRESS this long (its process stopped) is run again by the sweep
IMPORT_BATCH = 5000
PAGE = 500
IMAGE_CONFIGS = ("application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json")
COMPLETE = "The scan was completed successfully."
QUEUED = "The scan is queued."
UPDATED = "Queued again: the vulnerability database changed."


def frequency(settings: RegistrySettings, repository: Any) -> str:
    config = settings.document(SCANNING) or {"rules": []}
    return repository_scanning(config, repository)[0]


class ScanService:
    def __init__(
        self,
        meta: MetadataStore,
        blobs: BlobStore,
        images: ImageService,
        settings: RegistrySettings,
        locks: Locks,
        *,
        scratch: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.meta = meta
        self.blobs = blobs
        self.images = images
        self.settings = settings
        self.locks = locks
        self.scratch = scratch
        self.clock = clock
        self.worker = ScanWorker()
        self.database = DatabaseFile(scratch / "vulnerability-db")
        self._running: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._one_at_a_time = asyncio.Semaphore(1)  # one worker process: scans queue here

    # -- queueing -------------------------------------------------------------------------------------
    async def on_push(self, pushed: Pushed) -> None:
        """Scan a new manifest on push where the registry's rules (or the repository's scanOnPush) say so."""
        if not pushed.result.created:
            return
        repository, digest = pushed.repository, pushed.result.digest
        await self.settings.refresh()
        try:
            repo = await self.images.repository(repository)
        except NameUnknown:
            return
        if frequency(self.settings, repo) in ("SCAN_ON_PUSH", "CONTINUOUS_SCAN"):
            await self.queue(repository, digest)

    async def queue(self, repository: str, digest: str, description: str = QUEUED) -> ScanRecord:
        """Store the scan IN_PROGRESS (keeping the last findings) and run it in the background."""
        previous = (await self.meta.get_scans(repository, [digest])).get(digest)
        record = ScanRecord(
            repository,
            digest,
            "IN_PROGRESS",
            description,
            self.clock(),
            findings=previous.findings if previous else "[]",
            packages=previous.packages if previous else "[]",
        )
        await self.meta.put_scan(record)
        self._start(repository, digest)
        return record

    def _start(self, repository: str, digest: str) -> None:
        key = (repository, digest)
        if key in self._running:
            return
        task = asyncio.ensure_future(self._run(repository, digest))
        self._running[key] = task
        task.add_done_callback(lambda _: self._running.pop(key, None))

    async def _run(self, repository: str, digest: str) -> None:
        async with self._one_at_a_time:
            started = self.clock()
            try:
                record = await self.scan(repository, digest)
            except asyncio.CancelledError:
                raise
            except ScanTimeout as e:
                log.warning("the scan of %s@%s failed: %s", repository, digest, e)
                record = ScanRecord(repository, digest, "FAILED", f"The scan failed: {e}"[:512], started)
            except Exception as e:
                log.exception("the scan of %s@%s failed", repository, digest)
                record = ScanRecord(repository, digest, "FAILED", f"The scan failed: {e}"[:512], started)
            try:
                await self.meta.put_scan(record)
            except StorageError as e:
                log.warning("the scan of %s@%s was not stored: %s", repository, digest, e)
            else:
                log.info(
                    "scanned %s@%s: %s",
                    repository,
                    digest,
                    record.status,
                    extra={
                        "fields": {
                            "findings": len(json.loads(record.findings)),
                            "seconds": round(self.clock() - started, 3),
                        }
                    },
                )

    # -- scanning -------------------------------------------------------------------------------------
    async def scan(self, repository: str, digest: str) -> ScanRecord:
        started = self.clock()
        manifest = await self.meta.get_manifest(repository, digest)
        if manifest is None:
            return ScanRecord(repository, digest, "FAILED", "The image no longer exists.", started)
        parsed = oci.parse_manifest(manifest.body, manifest.media_type)
        if parsed.is_index:
            return ScanRecord(
                repository,
                digest,
                "UNSUPPORTED_IMAGE",
                "An image index is not scanned; each platform's image is.",
                started,
            )
        if parsed.config is None or parsed.config.media_type not in IMAGE_CONFIGS:
            return ScanRecord(
                repository,
                digest,
                "UNSUPPORTED_IMAGE",
                "Not a container image (an artifact): nothing to scan.",
                started,
            )
        count, updated_at = await self.meta.vulnerability_stats()
        database = await self._database_file(count, updated_at)
        layers = [d.digest for d in parsed.layers if not d.urls]
        paths: list[str] = []
        try:
            async with self._layer_files(layers) as paths:
                packages, found = await self.worker.scan(database, paths)
        except LayerError as e:
            said = str(e)
            for path, layer in zip(paths, layers, strict=False):  # the layer's digest, never a path of this server
                said = said.replace(path, layer)
            said = f"A layer cannot be read as a filesystem: {said}"
            return ScanRecord(repository, digest, "UNSUPPORTED_IMAGE", said[:512], started)
        stored = [shapes.stored(f) for f in found]
        names = sorted({key for p in packages for key in index_keys(p)})
        description = (
            COMPLETE if database else f"{COMPLETE} No vulnerability database is loaded (moorage vuln-db import)."
        )
        return ScanRecord(
            repository,
            digest,
            "COMPLETE",
            description,
            started,
            self.clock(),
            updated_at,
            json.dumps(stored),
            json.dumps(names),
        )

    async def _database_file(self, count: int, updated_at: float | None) -> str | None:
        if not count or updated_at is None:
            return None
        version = f"{int(updated_at * 1000)}-{count}"
        return str(await self.database.write(version, self._records()))

    async def _records(self) -> AsyncIterator[list[str]]:
        after = ""
        while page := await self.meta.vulnerability_records(after, IMPORT_BATCH):
            after = page[-1][0]
            yield [text for _, text in page]

    @contextlib.asynccontextmanager
    async def _layer_files(self, digests: Sequence[str]) -> AsyncIterator[list[str]]:
        """Paths of the layers: the blob store's own files, or copies spooled into the scratch dir (removed after)."""
        spooled: list[str] = []
        paths: list[str] = []
        try:
            for digest in digests:
                try:
                    body = await self.blobs.open(digest)
                except BlobNotFound:
                    raise RuntimeError(
                        f"layer {digest} is not stored here (a pull-through image not yet pulled)"
                    ) from None
                if isinstance(body, FileRange) and body.offset == 0:
                    paths.append(body.file)
                    continue
                self.scratch.mkdir(parents=True, exist_ok=True)
                fd, path = tempfile.mkstemp(prefix=f"layer-{os.getpid()}-", dir=self.scratch)
                spooled.append(path)
                with os.fdopen(fd, "wb") as fh:
                    async for chunk in self.blobs.read(digest):
                        await asyncio.to_thread(fh.write, chunk)
                paths.append(path)
            yield paths
        finally:
            for path in spooled:
                with contextlib.suppress(OSError):
                    os.unlink(path)

    # -- the sweep ----------------------------------------------------------------------------------------
    async def sweep(self) -> None:
        """Run the scans left IN_PROGRESS by a process that stopped, or queued by `moorage vuln-db import`; forget
        the scans of images that are gone. Before that, in every process that sweeps (one per machine at least),
        remove the scratch files that processes which stopped without cleaning up (killed) left behind."""
        await asyncio.to_thread(remove_leftovers, self.scratch)
        if not await self.locks.try_acquire(SCAN_LOCK):
            return
        try:
            now = self.clock()
            after = ("", "")
            while page := await self.meta.scans_after(*after, PAGE):
                after = (page[-1].repository, page[-1].digest)
                by_repository: dict[str, list[str]] = {}
                for scan in page:
                    by_repository.setdefault(scan.repository, []).append(scan.digest)
                    if scan.status == "IN_PROGRESS" and now - scan.started_at > STALE:
                        self._start(scan.repository, scan.digest)
                for repository, digests in by_repository.items():
                    gone = set(digests) - await self.meta.existing_manifests(repository, digests)
                    if gone:
                        await self.meta.delete_scans(repository, gone)
        finally:
            await self.locks.release(SCAN_LOCK)

    async def close(self) -> None:
        for task in list(self._running.values()):
            task.cancel()
        for task in list(self._running.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.worker.close()


_LEFTOVER = re.compile(r"layer-(\d+)-.*|\.osv-.*\.(\d+)\.tmp")  # a spooled layer, a database file being written


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(scratch: Path) -> int:
    """Remove the spooled layers and half-written database files of processes that no longer run (a process
    removes its own when a scan or a write ends, unless it is killed first); returns how many."""
    removed = 0
    for path in [*scratch.glob("layer-*"), *scratch.glob("vulnerability-db/.osv-*.tmp")]:
        found = _LEFTOVER.fullmatch(path.name)
        if found is None or _alive(int(found.group(1) or found.group(2))):
            continue
        with contextlib.suppress(OSError):
            path.unlink()
            removed += 1
    if removed:
        log.info("removed %d scratch files of scans that stopped half-way", removed)
    return removed


# -- the vulnerability database (`moorage vuln-db import`) -------------------------------------------------


def _read(paths: Iterable[str]) -> list[tuple[str, str, str]]:
    out = []
    for path in paths:
        for record in read_export(path):
            out.append((str(record["id"]), str(record.get("modified", "")), json.dumps(record, separators=(",", ":"))))
    return out


async def import_database(
    meta: MetadataStore, settings: RegistrySettings, images: ImageService, paths: Sequence[str], now: float
) -> tuple[int, int, int]:
    """Store the records of OSV exports; queue a rescan of every image under CONTINUOUS_SCAN that holds a package
    a new or changed record affects (the server's sweep runs them). Returns (records read, records new or
    changed, rescans queued)."""
    from registry.scanning.matcher import VulnIndex

    records = await asyncio.to_thread(_read, paths)
    changed: list[str] = []
    for start in range(0, len(records), IMPORT_BATCH):
        changed += await meta.put_vulnerabilities(records[start : start + IMPORT_BATCH], now)
    if not changed:
        return len(records), 0, 0
    wanted = set(changed)
    affected = VulnIndex(json.loads(text) for rid, _, text in records if rid in wanted).affected_names()
    await settings.refresh()
    queued = 0
    after = ("", "")
    while page := await meta.scans_after(*after, PAGE):
        after = (page[-1].repository, page[-1].digest)
        for scan in page:
            held = {(ecosystem, name) for ecosystem, name in json.loads(scan.packages)}  # matcher.index_keys
            if scan.status != "COMPLETE" or not held & affected:
                continue
            try:
                repo = await images.repository(scan.repository)
            except NameUnknown:
                continue
            if frequency(settings, repo) != "CONTINUOUS_SCAN":
                continue
            await meta.put_scan(
                ScanRecord(
                    scan.repository,
                    scan.digest,
                    "IN_PROGRESS",
                    UPDATED,
                    0.0,
                    findings=scan.findings,
                    packages=scan.packages,
                )
            )
            queued += 1
    return len(records), len(changed), queued
