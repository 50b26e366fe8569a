"""Replication's queue, from a push to a copy on every destination.

`Replicator.enqueue` runs before a push is acknowledged: the image's destinations (the replication
configuration's rules that cover its repository) get one task each in the metadata store's durable queue
(`storage.metadata.ReplicationQueue`). Every process runs the queue (`run`): it leases a due task, copies the
image (`copier.Copier`), and records the end; a failed copy is retried with exponential backoff (capped at
`[replication] retry_max_interval`) until it has failed for `retry_for`, then given up. A process that dies
mid-copy loses its lease and another (or the same, restarted) takes the task up again.

Statuses, as ECR's DescribeImageReplicationStatus has them: IN_PROGRESS until the first attempt ends; COMPLETE;
FAILED with the reason, while retrying too (the failure code says it is retrying), until a retry succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp

from registry.config.schema import DestinationConfig, ReplicationConfig
from registry.proxy.upstream import GuardedResolver, UpstreamError
from registry.replication.copier import Copier, SourceGone
from registry.replication.peer import PeerClient, open_peer_session
from registry.service.registry_settings import REPLICATION, RegistrySettings
from storage.errors import StorageError
from storage.metadata import MetadataStore
from storage.records import NewReplication, ReplicationTask

log = logging.getLogger("moorage.replication")

LEASE = 60.0  # a copy's lease, renewed every LEASE / 3 while it runs
IDLE_POLL = 1.0  # how often an idle runner looks for work another process queued (or a retry that is due)
KEEP_FINISHED = 30 * 24 * 3600.0  # finished tasks (statuses) are kept this long
KEEP_BACKFILLS = 90 * 24 * 3600.0  # as ECR keeps ended backfills
PRUNE_INTERVAL = 3600.0


def destinations_for(config: dict[str, Any], repository: str) -> list[dict[str, str]]:
    """The destinations (`{region, registryId}`, each once, in rule order) a repository is replicated to: those of
    every rule without repository filters or with a PREFIX_MATCH filter the name starts with."""
    found: list[dict[str, str]] = []
    for rule in config.get("rules") or ():
        filters = rule.get("repositoryFilters")
        if filters is not None and not any(repository.startswith(f["filter"]) for f in filters):
            continue
        for d in rule["destinations"]:
            destination = {"region": d["region"], "registryId": d["registryId"]}
            if destination not in found:
                found.append(destination)
    return found


def destination_key(destination: dict[str, str]) -> str:
    return f"{destination['region']}/{destination['registryId']}"


def backoff(attempts: int, cap: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds before the next attempt after `attempts` failed ones: 1, 2, 4, ... up to `cap`, each with up to
    20% less at random (so a fleet's retries do not arrive together)."""
    base = min(cap, 2.0 ** max(attempts - 1, 0))
    return base * (1 - 0.2 * rand())


def status_of(task: ReplicationTask) -> tuple[str, str | None]:
    """(ECR status, failure code) of a task."""
    if task.state == "complete":
        return "COMPLETE", None
    if task.state == "failed":
        return "FAILED", task.error
    if task.state == "stopped":
        return "FAILED", "its replication backfill was stopped before it was copied"
    if task.error:
        return "FAILED", f"{task.error} (retrying)"
    return "IN_PROGRESS", None


class Replicator:
    def __init__(
        self,
        meta: MetadataStore,
        copier: Copier,
        settings: RegistrySettings,
        config: ReplicationConfig,
        *,
        source_registry: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.meta = meta
        self.copier = copier
        self.settings = settings
        self.config = config
        self.source_registry = source_registry
        self.clock = clock
        self.destinations: dict[str, DestinationConfig] = {d.key: d for d in config.destinations}
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self._session: tuple[aiohttp.ClientSession, GuardedResolver] | None = None
        self._peers: dict[str, PeerClient] = {}
        self._running: set[asyncio.Task[None]] = set()
        self.copied = 0  # copies completed by this process (for tests and metrics)
        self.failed_attempts = 0

    # -- the configuration ------------------------------------------------------------------------------
    def configuration(self) -> dict[str, Any]:
        return self.settings.document(REPLICATION) or {"rules": []}

    def wake(self) -> None:
        """Look for work now (something was queued in this process)."""
        self._wake.set()

    # -- queueing -------------------------------------------------------------------------------------
    async def enqueue(self, repository: str, digest: str, tags: tuple[str, ...]) -> int:
        """Queue a pushed image for each destination its repository is replicated to; returns how many."""
        await self.settings.refresh()
        destinations = destinations_for(self.configuration(), repository)
        if not destinations:
            return 0
        tasks = [NewReplication(destination_key(d), repository, digest, tags) for d in destinations]
        queued = await self.meta.enqueue_replications(tasks, self.clock())
        self._wake.set()
        return queued

    async def statuses(self, repository: str, digest: str, destinations: list[dict[str, str]]) -> list[dict[str, str]]:
        """ImageReplicationStatus of each destination the image was queued for (the configuration's first)."""
        tasks = await self.meta.replication_states(repository, digest)
        keys = [destination_key(d) for d in destinations]
        keys += sorted(k for k in tasks if k not in keys)
        out = []
        for key in keys:
            task = tasks.get(key)
            if task is None:
                continue
            region, registry_id = key.split("/", 1)
            status, failure = status_of(task)
            entry = {"region": region, "registryId": registry_id, "status": status}
            if failure:
                entry["failureCode"] = failure[:1000]
            out.append(entry)
        return out

    # -- running ----------------------------------------------------------------------------------------
    def _peer(self, key: str) -> PeerClient | None:
        destination = self.destinations.get(key)
        if destination is None:
            return None
        peer = self._peers.get(key)
        if peer is None:
            if self._session is None:
                self._session = open_peer_session()
            session, guard = self._session
            peer = PeerClient(session, guard, destination, self.source_registry, self.config.timeout, self.clock)
            self._peers[key] = peer
        return peer

    async def run(self) -> None:
        """Claim and copy until cancelled, at most `concurrency` copies at once."""
        slots = asyncio.Semaphore(self.config.concurrency)
        while True:
            await slots.acquire()
            try:
                # Without rules nothing is queued: no query every second for a registry that does not replicate.
                await self.settings.refresh()
                task = await self._claim() if self.configuration().get("rules") else None
            except StorageError as e:
                slots.release()
                log.warning("replication: the queue cannot be read: %s", e)
                await asyncio.sleep(IDLE_POLL * 5)
                continue
            except BaseException:
                slots.release()
                raise
            if task is None:
                slots.release()
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), IDLE_POLL)
                continue
            job = asyncio.ensure_future(self._copy(task))
            self._running.add(job)

            def done(j: asyncio.Task[None]) -> None:
                self._running.discard(j)
                slots.release()

            job.add_done_callback(done)

    async def _claim(self) -> ReplicationTask | None:
        now = self.clock()
        return await self.meta.claim_replication(now, now + LEASE, self.owner)

    async def _copy(self, task: ReplicationTask) -> None:
        renewal = asyncio.ensure_future(self._renew(task.id))
        try:
            state, error, due = await self._attempt(task)
        except asyncio.CancelledError:  # shutting down: hand the task back, to run again at once
            with contextlib.suppress(StorageError):
                now = self.clock()
                await self.meta.finish_replication(task.id, self.owner, "pending", task.error, now, now)
            raise
        finally:
            renewal.cancel()
        now = self.clock()
        try:
            await self.meta.finish_replication(task.id, self.owner, state, error, due if due else now, now)
        except StorageError as e:  # the lease ends and the task runs again
            log.warning("replication: the end of copy %d was not recorded: %s", task.id, e)
        if state == "pending":
            self._wake.set()  # a retry may be due before the next idle poll

    async def _attempt(self, task: ReplicationTask) -> tuple[str, str | None, float | None]:
        """(state, error, next due time) after one attempt."""
        where = f"{task.repository}@{task.digest} to {task.destination}"
        peer = self._peer(task.destination)
        if peer is None:
            error = f"no [[replication.destinations]] entry in the configuration for {task.destination}"
            log.warning("replication of %s failed: %s", where, error)
            return "failed", error, None
        started = self.clock()
        try:
            sent = await self.copier.copy(peer, task.repository, task.digest, task.tags)
        except SourceGone as e:
            log.warning("replication of %s failed: %s", where, e)
            return "failed", str(e), None
        except (UpstreamError, StorageError, aiohttp.ClientError, TimeoutError, OSError) as e:
            error = f"{e.upstream}: {e.message}" if isinstance(e, UpstreamError) else f"{type(e).__name__}: {e}"
        except Exception as e:  # a bug: reported, retried like any failure
            log.exception("replication of %s failed", where)
            error = f"{type(e).__name__}: {e}"
        else:
            self.copied += 1
            log.info(
                "replicated %s",
                where,
                extra={"fields": {"bytes": sent, "seconds": round(self.clock() - started, 3), "tags": task.tags}},
            )
            return "complete", None, None
        self.failed_attempts += 1
        now = self.clock()
        if now - task.created_at >= self.config.retry_for:
            log.warning("replication of %s given up after %d attempts: %s", where, task.attempts, error)
            return "failed", error, None
        delay = backoff(task.attempts, self.config.retry_max_interval)
        log.info("replication of %s failed (attempt %d), retrying in %.1fs: %s", where, task.attempts, delay, error)
        return "pending", error, now + delay

    async def _renew(self, task_id: int) -> None:
        while True:
            await asyncio.sleep(LEASE / 3)
            with contextlib.suppress(StorageError):
                await self.meta.renew_replication(task_id, self.owner, self.clock() + LEASE)

    async def prune(self) -> None:
        now = self.clock()
        await self.meta.prune_replications(now - KEEP_FINISHED)
        await self.meta.delete_backfills(now - KEEP_BACKFILLS)

    async def close(self) -> None:
        for job in list(self._running):
            job.cancel()
        for job in list(self._running):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await job
        if self._session is not None:
            session, guard = self._session
            await session.close()
            await guard.close()
            self._session = None
