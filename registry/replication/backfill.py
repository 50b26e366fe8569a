"""Replication backfills (ECR's StartReplicationBackfill): the images a repository held before its replication
rule, queued for one destination like pushes are, and tracked together.

A backfill is PREPARING while it walks the covered repositories and queues their images (one task per image
with its tags; an index's children and images' referrers are copied with them, not queued on their own), then
IN_PROGRESS until none of its tasks is pending, then COMPLETE. Stopping marks its queued tasks "stopped"
(copies already running finish) and it is STOPPED once none runs. Statuses settle when asked (List, Describe),
so no process needs to watch them.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from registry.replication.runner import destination_key, destinations_for
from storage.metadata import MetadataStore
from storage.records import BackfillRecord, NewReplication

log = logging.getLogger("moorage.replication")

PAGE = 500
PREPARE_TIMEOUT = 600.0  # a backfill PREPARING this long was interrupted (its process stopped): FAILED
ACTIVE = ("PREPARING", "IN_PROGRESS", "STOPPING")
TERMINAL = ("COMPLETE", "FAILED", "STOPPED")


class Backfills:
    def __init__(
        self,
        meta: MetadataStore,
        configuration: Callable[[], dict[str, Any]],
        wake: Callable[[], None],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.meta = meta
        self.configuration = configuration  # the replication configuration, as last committed
        self.wake = wake  # the local runner: work was queued
        self.clock = clock
        self._preparing: dict[str, asyncio.Task[None]] = {}

    async def start(self, destination: dict[str, str]) -> BackfillRecord | None:
        """Start a backfill (PREPARING; its images are queued in the background); None when one of the destination
        is active already."""
        record = BackfillRecord(str(uuid.uuid4()), destination_key(destination), "PREPARING", self.clock())
        if not await self.meta.create_backfill(record):
            return None
        task = asyncio.ensure_future(self._prepare(record))
        self._preparing[record.id] = task
        task.add_done_callback(lambda _: self._preparing.pop(record.id, None))
        return record

    async def _prepare(self, record: BackfillRecord) -> None:
        try:
            queued = await self._queue_images(record)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("replication backfill %s could not be prepared", record.id)
            await self.meta.update_backfill(
                record.id, "FAILED", ended_at=self.clock(), failure=f"preparing failed: {e}", only_from=("PREPARING",)
            )
            return
        await self.meta.update_backfill(record.id, "IN_PROGRESS", only_from=("PREPARING",))
        log.info("replication backfill %s to %s: %d images queued", record.id, record.destination, queued)
        self.wake()

    async def _queue_images(self, record: BackfillRecord) -> int:
        queued, last = 0, None
        while True:
            repositories = await self.meta.describe_repositories(last, PAGE)
            for repository in repositories:
                covered = destinations_for(self.configuration(), repository.name)
                if record.destination in (destination_key(d) for d in covered):
                    queued += await self._queue_repository(record, repository.name)
            if len(repositories) < PAGE:
                return queued
            last = repositories[-1].name

    async def _queue_repository(self, record: BackfillRecord, repository: str) -> int:
        queued, after = 0, 0
        while batch := await self.meta.list_images(repository, after, PAGE):
            after = batch[-1].id
            digests = [img.digest for img in batch]
            parents = await self.meta.parents_of(repository, digests)
            subjects = [img.subject for img in batch if img.subject]
            present = set(await self.meta.existing_manifests(repository, subjects)) if subjects else set()
            tasks = [
                NewReplication(record.destination, repository, img.digest, img.tags, backfill=record.id)
                for img in batch
                if not parents.get(img.digest) and not (img.subject and img.subject in present)
            ]
            if tasks:
                queued += await self.meta.enqueue_replications(tasks, self.clock())
        return queued

    async def stop(self, record: BackfillRecord) -> BackfillRecord:
        preparing = self._preparing.get(record.id)
        if preparing is not None:
            preparing.cancel()
        await self.meta.update_backfill(record.id, "STOPPING", only_from=("PREPARING", "IN_PROGRESS"))
        await self.meta.stop_backfill_tasks(record.id, self.clock())
        return await self.settle(record.id) or record

    async def settle(self, backfill_id: str) -> BackfillRecord | None:
        """The backfill, its status moved on if its tasks say it ended (or its preparation was interrupted)."""
        record = await self.meta.get_backfill(backfill_id)
        if record is None or record.status in TERMINAL:
            return record
        now = self.clock()
        if record.status == "PREPARING":
            if backfill_id not in self._preparing and now - record.started_at > PREPARE_TIMEOUT:
                await self.meta.update_backfill(
                    backfill_id,
                    "FAILED",
                    ended_at=now,
                    failure="its preparation was interrupted (the server stopped); start a new backfill",
                    only_from=("PREPARING",),
                )
            return await self.meta.get_backfill(backfill_id)
        if record.status == "STOPPING":
            await self.meta.stop_backfill_tasks(backfill_id, now)  # those whose copy was handed back meanwhile
        if await self.meta.replication_tasks(backfill=backfill_id, state="pending", limit=1):
            return record
        ended = "STOPPED" if record.status == "STOPPING" else "COMPLETE"
        await self.meta.update_backfill(backfill_id, ended, ended_at=now, only_from=(record.status,))
        return await self.meta.get_backfill(backfill_id)

    async def close(self) -> None:
        for task in list(self._preparing.values()):
            task.cancel()
