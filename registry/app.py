"""create_app(config): the one place that picks concrete stores and wires services, routes and jobs.

`Services` is the set of stores and services without HTTP; the server (each of its workers) and the offline
commands (`moorage gc`, `moorage lifecycle ...`) build it the same way, so they work on a data dir while a
server runs on it: the stores (`storage.factory.open_stores`) serialize the writers, and their coordination
(`storage.coordination`) carries locks and cache invalidation between the processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from registry.auth.access import AccessControl
from registry.auth.principals import Directory, load_shared_directory
from registry.auth.tokens import DOWNLOAD_TTL, KeyRing
from registry.config import Config
from registry.config.values import parse_size
from registry.gc import GarbageCollector
from registry.naming import normalize_prefix
from registry.proxy import rules
from registry.proxy.eviction import evict
from registry.proxy.pullthrough import PullThrough
from registry.proxy.rule_service import PullThroughRuleService
from registry.replication.backfill import Backfills
from registry.replication.copier import Copier
from registry.replication.operations import ReplicationOperations
from registry.replication.runner import PRUNE_INTERVAL, Replicator
from registry.scanning.operations import ScanOperations
from registry.scanning.service import ScanService
from registry.service.ecr import EcrService
from registry.service.ecr_registry import RegistryOperations
from registry.service.ecr_scanning import ScanningOperations
from registry.service.ecr_signing import SigningOperations
from registry.service.images import ImageService, Pushed
from registry.service.lifecycle import LifecycleService, SweepReport
from registry.service.registry_settings import RegistrySettings
from registry.service.signing import ImageSigner, registry_host
from registry.service.templates import TemplateService
from registry.service.uploads import UploadService
from registry.tls import tls_context
from registry.web import console, ecr_api, health, jobs, metrics, oci_routes
from registry.web.connections import Limits, Runner
from registry.web.context import (
    ACCESS,
    BLOBS,
    CONFIG,
    ECR,
    ECR_OPERATIONS,
    GC,
    IMAGES,
    LIFECYCLE,
    META,
    PULL_THROUGH,
    READER,
    RULES,
    STORES,
    SWEEP_NOW,
    UPLOADS,
)
from registry.web.fastlane import FastLane
from registry.web.middleware import InFlight, Recorder, access_middleware
from registry.workers import BACKLOG
from storage.blobs import BlobStore
from storage.coordination import Locks
from storage.errors import StorageError
from storage.factory import S3Options, Stores, open_stores
from storage.metadata import MetadataStore
from storage.records import PullThroughRule

log = logging.getLogger("moorage")
IN_FLIGHT = web.AppKey("in_flight", InFlight)
FAST_LANE = web.AppKey("fast_lane", FastLane)
PULL_FLUSH_INTERVAL = 5.0  # seconds between writes of recorded pull times
HIT_SAMPLE_INTERVAL = 5.0  # seconds between samples of the pull-through cache's hits for its per-minute history
PARENT_POLL = 0.5  # seconds between a worker's checks that its supervisor is alive
# Shutdown: the part of [server] drain_timeout kept for cancelling the requests still running at its end and
# closing the stores, so the process is gone by the deadline (docker stop's grace period, say).
SHUTDOWN_RESERVE = 0.5
SHUTDOWN_LEFTOVER = 0.1  # seconds aiohttp waits for a request that ignored its cancellation
STARTUP_LOCK = "startup"  # held while a process creates keys, the admin principal, or migrates the database
KEY_REFRESH_INTERVAL = 1.0  # seconds between looks for a rotated shared signing key
WARM_UP_WAIT = 3.0  # seconds a starting process waits for its blob store's warm-up before it serves (then: on)
COLLECT_LOCK, SWEEP_LOCK = "job gc", "job lifecycle"  # one scheduled runner at a time across replicas


@dataclass(slots=True)
class Services:
    config: Config
    stores: Stores
    images: ImageService
    uploads: UploadService
    templates: TemplateService
    pull_through: PullThrough
    lifecycle: LifecycleService
    gc: GarbageCollector
    settings: RegistrySettings
    replicator: Replicator
    backfills: Backfills
    scans: ScanService
    signer: ImageSigner
    metrics: metrics.Metrics | None = None

    @property
    def meta(self) -> MetadataStore:
        return self.stores.meta

    @property
    def blobs(self) -> BlobStore:
        return self.stores.blobs

    @property
    def locks(self) -> Locks:
        return self.stores.locks

    @classmethod
    def build(cls, config: Config) -> Services:
        data_dir = config.server.data_dir
        account = config.registry.account_id
        s3 = config.storage.s3
        stores = open_stores(
            data_dir,
            metadata=config.storage.metadata.reveal(),
            blobs=config.storage.blobs,
            s3=S3Options(
                s3.endpoint_url,
                s3.region,
                s3.access_key_id,
                s3.secret_access_key.reveal(),
                redirect=s3.redirect,
                local_cache=parse_size(s3.local_cache),
            ),
            free_space_floor=config.storage.free_space_floor,
            min_free_space=config.storage.min_free_space,
        )
        meta, blobs = stores.meta, stores.blobs
        templates = TemplateService(meta, account_id=account)
        settings = RegistrySettings(meta, stores.changes)
        images = ImageService(
            meta,
            blobs,
            stores.changes,
            create_on_push=config.registry.create_on_push,
            cache_entries=config.registry.metadata_cache_entries,
            templates=templates.init_for,
            pull_time_excluded=settings.pull_time_excluded,
        )
        pull_through = PullThrough(
            images,
            meta,
            blobs,
            config=config.pull_through,
            secrets=config.secrets,
            region=config.registry.region,
            locks=stores.locks,
            changes=stores.changes,
        )
        replicator = Replicator(meta, Copier(meta, blobs), settings, config.replication, source_registry=account)
        scans = ScanService(meta, blobs, images, settings, stores.locks, scratch=config.server.data_dir / "scanning")

        async def replicate(pushed: Pushed) -> None:
            if pushed.changed:
                await replicator.enqueue(pushed.repository, pushed.result.digest, pushed.result.tags)

        images.push_hooks += [replicate, scans.on_push]
        return cls(
            config,
            stores,
            images,
            UploadService(images, meta, blobs, mounting=settings.blob_mounting),
            templates,
            pull_through,
            LifecycleService(images, meta, account_id=account),
            GarbageCollector(meta, blobs, grace_period=config.gc.grace_period, on_removed=images.forget_all),
            settings,
            replicator,
            Backfills(meta, replicator.configuration, replicator.wake),
            scans,
            ImageSigner(
                images,
                meta,
                blobs,
                settings,
                host=registry_host(config.registry.hostname, config.server.listen),
                enforce=config.signing.enforce,
            ),
        )

    async def open(self, also: Callable[[], Awaitable[None]] | None = None) -> None:
        """Open the stores; one process at a time migrates, declares the configured rules and runs `also`
        (the server's keys and generated admin) under the start-up lock."""
        await self.locks.open()
        async with self.locks.hold(STARTUP_LOCK):
            await self.stores.open()
            await _declare_rules(self.config, self.meta)
            if also is not None:
                await also()
        await self.pull_through.start()

    async def close(self) -> None:
        """Every step runs even when one before it fails (a full disk refusing the last pull times, say): the
        database and files are always closed and shutdown completes. Failures are logged."""
        steps = (
            self.scans.close,
            self.backfills.close,
            self.replicator.close,
            self.pull_through.close,
            self.images.flush_pulls,
        )
        for step in (*steps, self.stores.close):
            try:
                await step()
            except StorageError as e:
                log.error("shutdown: %s failed: %s", step.__qualname__, e)
            except Exception:
                log.exception("shutdown: %s failed", step.__qualname__)

    async def evict_cache(self, *, dry_run: bool = False) -> int:
        return await evict(
            self.pull_through, self.lifecycle, self.meta, self.config.pull_through.max_cache_bytes, dry_run=dry_run
        )

    async def collect(self) -> None:
        """Eviction and garbage collection, by one process of the registry at a time (other replicas' scheduled
        runs skip while one runs)."""
        if not await self.locks.try_acquire(COLLECT_LOCK):
            return
        try:
            await self._collect()
        finally:
            await self.locks.release(COLLECT_LOCK)

    async def _collect(self) -> None:
        evicted = await self.evict_cache()
        report = await self.gc.run()
        if self.metrics is not None:
            self.metrics.evictions.inc(evicted)
            self.metrics.gc_runs.inc()
            self.metrics.gc_blobs.inc(report.blobs)
            self.metrics.gc_bytes.inc(report.bytes)

    async def sweep(self) -> None:
        """The lifecycle sweep, by one process of the registry at a time."""
        if not await self.locks.try_acquire(SWEEP_LOCK):
            return
        try:
            await self._sweep()
        finally:
            await self.locks.release(SWEEP_LOCK)

    async def sweep_repository(self, name: str) -> list[SweepReport] | None:
        """Apply one repository's policy now (the console's "apply now"), unless a sweep is running in any process
        of the registry (None then: it holds the lock the scheduled sweep and `moorage lifecycle run` take)."""
        if not await self.locks.try_acquire(SWEEP_LOCK):
            return None
        try:
            return await self.lifecycle.sweep(repository=name)
        finally:
            await self.locks.release(SWEEP_LOCK)

    async def _sweep(self) -> None:
        reports = await self.lifecycle.sweep()
        if self.metrics is not None:
            self.metrics.lifecycle_runs.inc()
            self.metrics.lifecycle_images.inc(sum(len(r.expired) for r in reports))
            self.metrics.lifecycle_archived.inc(sum(len(r.transitioned) for r in reports))
            self.metrics.lifecycle_bytes.inc(sum(r.bytes for r in reports))


@contextlib.asynccontextmanager
async def open_services(config: Config) -> AsyncIterator[Services]:
    services = Services.build(config)
    await services.open()
    try:
        yield services
    finally:
        await services.close()


def create_app(config: Config, worker: int | None = None) -> web.Application:
    """The HTTP application. `worker` is the worker's index under a supervisor (None: a single process);
    only worker 0 (or the single process) runs the scheduled jobs."""
    services = Services.build(config)
    services.metrics = metrics.Metrics(multiprocess=metrics.multiprocess_dir())
    in_flight = InFlight()
    recorder = Recorder(services.metrics.observe, config.log.access, worker)
    app = web.Application(
        middlewares=[
            access_middleware(
                recorder,
                in_flight,
                changes=services.stores.changes,
                before=_fresh_settings(services.settings),
                body_timeout=config.server.body_timeout,
            ),
        ],
        client_max_size=1024**2,
    )
    app[IN_FLIGHT] = in_flight
    # Only what the server receives is signed (after replication's hook: the image is queued before its signature).
    services.images.push_hooks.append(services.signer.on_push)
    if config.signing.enforce:  # (a coroutine less per pull where nothing is enforced)
        services.images.pull_checks.append(services.signer.check_pull)
    app[CONFIG] = config
    shared = bool(config.storage.metadata.reveal())  # replicas on a shared backend: keys and admin live there
    keyring = KeyRing(config.server.data_dir / "keys", shared=services.meta if shared else None)
    access = AccessControl(
        enabled=config.auth.enabled,
        directory=Directory([]),  # loaded at start-up (below)
        keyring=keyring,
        account_id=config.registry.account_id,
        region=config.registry.region,
        challenge=config.auth.challenge,
        registry_policy=services.settings.registry_policy,
    )

    def issue_token(principal: str | None) -> tuple[str, float]:
        return keyring.issue(principal or "anonymous", access.clock(), config.auth.token_ttl)

    ecr = EcrService(
        services.images,
        services.uploads,
        services.meta,
        account_id=config.registry.account_id,
        region=config.registry.region,
        issue_token=issue_token,
        issue_download=lambda principal, repository, digest: keyring.issue_download(
            principal or "anonymous", repository, digest, access.clock(), DOWNLOAD_TTL
        ),
    )
    app[META], app[BLOBS], app[IMAGES], app[UPLOADS] = services.meta, services.blobs, services.images, services.uploads
    app[STORES] = services.stores
    app[READER] = services.pull_through
    app[ACCESS], app[PULL_THROUGH], app[ECR] = access, services.pull_through, ecr
    pull_through_rules = PullThroughRuleService(
        services.meta, services.pull_through, account_id=config.registry.account_id
    )
    account, region = config.registry.account_id, config.registry.region
    scan_operations = ScanOperations(services.scans, account_id=account, region=region)
    ecr.image_operations.scan_details = scan_operations.scan_details
    app[ECR_OPERATIONS] = (
        *ecr.operations,
        pull_through_rules,
        services.lifecycle,
        services.templates,
        RegistryOperations(services.settings, account_id=account),
        ScanningOperations(services.images, services.settings, account_id=account, region=region),
        SigningOperations(services.images, services.settings, services.signer, account_id=account),
        scan_operations,
        ReplicationOperations(
            services.images,
            services.settings,
            services.replicator,
            services.backfills,
            account_id=account,
            region=region,
        ),
    )
    app[RULES], app[LIFECYCLE], app[GC] = pull_through_rules, services.lifecycle, services.gc
    app[SWEEP_NOW] = services.sweep_repository

    async def load_identity() -> None:
        """The signing keys and the principals; workers starting together create one key and one admin."""
        account, data_dir = config.registry.account_id, config.server.data_dir
        if shared:
            await keyring.load_shared()
            access.directory = await load_shared_directory(config.auth, account, data_dir, services.meta)
        else:
            keyring.load()
            access.directory = Directory.load(config.auth, account, data_dir)
        if access.directory.created_admin is not None:
            _announce_admin(config, access.directory)

    async def lifespan(app: web.Application) -> AsyncIterator[None]:
        await services.open(also=load_identity)
        # Ready to serve means ready to serve blobs quickly: the first blob request does not wait for the store's
        # client (unless the store is slow to answer: the warm-up goes on while the process serves).
        warming = asyncio.ensure_future(services.blobs.warm_up())
        try:
            await asyncio.wait_for(asyncio.shield(warming), WARM_UP_WAIT)
        except TimeoutError:
            pass
        except Exception:  # (the first request meets it again)
            log.exception("warming up the blob store failed")
        try:
            yield
        finally:
            warming.cancel()
            await services.close()

    app.cleanup_ctx.append(lifespan)
    app.cleanup_ctx.append(jobs.every("record pull times", PULL_FLUSH_INTERVAL, services.images.flush_pulls))
    if shared:
        app.cleanup_ctx.append(jobs.every("signing keys", KEY_REFRESH_INTERVAL, _key_refresher(keyring, services)))
    app.cleanup_ctx.append(jobs.every("metrics", metrics.SYNC_INTERVAL, services.metrics.sync))
    app.cleanup_ctx.append(
        jobs.every("pull-through hit history", HIT_SAMPLE_INTERVAL, services.pull_through.sample_history)
    )
    app.cleanup_ctx.append(jobs.running("replication", services.replicator.run))
    if worker in (None, 0):
        app.cleanup_ctx.append(jobs.every("replication pruning", PRUNE_INTERVAL, services.replicator.prune))
        app.cleanup_ctx.append(jobs.every("scan sweep", config.scanning.sweep_interval, services.scans.sweep))
        app.cleanup_ctx.append(jobs.every("lifecycle sweep", config.lifecycle.evaluation_interval, services.sweep))
        app.cleanup_ctx.append(jobs.every("garbage collection", config.gc.interval, services.collect))
    oci_routes.add_routes(app)
    app[FAST_LANE] = lane = FastLane(
        access=access,
        images=services.images,
        reader=services.pull_through,
        small_blobs=app[oci_routes.SMALL_BLOBS],
        settings=services.settings,
        changes=services.stores.changes,
        in_flight=in_flight,
        record=recorder,
    )
    services.metrics.follow(services.metrics.fast_lane, lambda: lane.answered)
    local = getattr(services.stores.blobs, "local", None)  # (an S3 store's local copies)
    if local is not None:
        services.metrics.follow(services.metrics.local_copies, lambda: local.hits)
    health.add_routes(app)
    metrics.setup(app, services.metrics)
    console.setup(app)  # /console/ (and GET /), unless [console] enabled = false
    # Last: a catch-all costs a regex match for every request routed after it.
    app.router.add_post("/{tail:.*}", _post_root)
    return app


_UNSETTLED_PATHS = ("/healthz", "/readyz", "/metrics")  # they answer about the storage; they don't need its settings


def _fresh_settings(settings: RegistrySettings) -> Callable[[web.Request], Awaitable[None]]:
    """Before a request is handled: the registry's settings (its policy, account settings, pull-time exclusions)
    as last committed by any process."""

    async def refresh(request: web.Request) -> None:
        if settings.stale() and request.path not in _UNSETTLED_PATHS:
            await settings.refresh()

    return refresh


async def serve(
    app: web.Application,
    sockets: list[socket.socket],
    drain_timeout: float,
    supervisor: int | None = None,
    announce: str | None = None,
) -> None:
    """Serve on the listening `sockets` until SIGTERM or SIGINT (logging `announce` once connections are
    accepted), then shut down within `drain_timeout`: stop listening, close idle connections, let in-flight
    requests (uploads whose bodies are still arriving included) finish until SHUTDOWN_RESERVE before the
    deadline, cancel whatever is still running then (a client that stopped sending or reading), close the stores
    and return. A worker stops by itself when its `supervisor` process is gone (even if that happened while the
    worker was still starting)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = app[CONFIG].server
    limits = Limits(server.header_timeout, server.keepalive_timeout, server.max_connections)
    _raise_fd_limit(limits.max_connections)
    # Our own drain below does the waiting and the cancelling; aiohttp's shutdown then finds nothing in flight.
    runner = Runner(app, limits, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_LEFTOVER)
    await runner.setup()
    assert runner.server is not None
    # Manifest and small-blob reads answered from memory before the Application's router (registry/web/fastlane).
    runner.server.request_handler = app[FAST_LANE].install(app, runner.server.request_handler)
    # What start-up built (botocore's ECR model, the configuration, the console's templates: a heap of long-lived
    # objects) is moved out of the collector's sight: the full collections that small requests' garbage triggers
    # now and then no longer walk it.
    gc.collect()
    gc.freeze()
    tls = tls_context(server)
    # With TLS, a handshake must be done within header_timeout too (asyncio's default is 60 s; the head's own
    # deadline starts after it).
    assert runner.server is not None
    handshake_timeout = server.header_timeout if tls is not None else None
    listeners: list[asyncio.AbstractServer] = []
    watch = asyncio.ensure_future(_watch_parent(supervisor, stop)) if supervisor is not None else None
    try:
        for sock in sockets:
            listeners.append(
                await loop.create_server(
                    runner.server, sock=sock, backlog=BACKLOG, ssl=tls, ssl_handshake_timeout=handshake_timeout
                )
            )
        if announce:
            log.info("%s", announce)
        await stop.wait()
        deadline = loop.time() + drain_timeout
        cancel_at = deadline - min(SHUTDOWN_RESERVE, drain_timeout / 2)
        in_flight = app[IN_FLIGHT]
        log.info("shutting down: draining %d in-flight requests (up to %gs)", in_flight.count, drain_timeout)
        in_flight.draining = True  # each response from now on closes its connection
        for listener in listeners:
            listener.close()  # no new connections
        runner.close_idle()  # nor new requests on idle keep-alive connections
        if not await in_flight.wait_idle(cancel_at - loop.time()):
            log.warning("drain timed out: cancelling %d requests still in flight", in_flight.cancel())
            await in_flight.wait_idle(deadline - loop.time())  # their clean-up (an upload closes its file)
    finally:
        if watch is not None:
            watch.cancel()
        await runner.cleanup()
        log.info("stopped")


def run(main: Coroutine[Any, Any, None], event_loop: str) -> None:
    """Run the server on uvloop (libuv: fewer CPU cycles per request) or asyncio's own loop."""
    if event_loop == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


FD_HEADROOM = 256  # descriptors beyond the connections: database, blobs being read or written, spools, logs


def _raise_fd_limit(max_connections: int) -> None:
    """Make room for `max_connections` open sockets: raise the soft descriptor limit towards the hard one
    (as Go's runtime and nginx's worker_rlimit_nofile do), and say so when even that is too low."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return
    want = (max_connections or 0) + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if max_connections and soft < want:
        log.warning(
            "open-file limit %d is below [server] max_connections (%d) plus %d: raise it (ulimit -n) or lower "
            "max_connections, or new connections will fail with 'too many open files' before the cap applies",
            soft,
            max_connections,
            FD_HEADROOM,
        )


async def _watch_parent(parent: int, stop: asyncio.Event) -> None:
    """A worker whose supervisor died (SIGKILL) is re-parented: then it drains and exits like on SIGTERM."""
    while os.getppid() == parent:  # noqa: ASYNC110 - nothing to wait on: the kernel re-parents silently
        await asyncio.sleep(PARENT_POLL)
    log.warning("the supervisor (pid %d) is gone; stopping", parent)
    stop.set()


async def _declare_rules(config: Config, meta: MetadataStore) -> None:
    """Rules declared in the configuration are (re)written at every start."""
    now = time.time()
    existing = {rule.prefix: rule for rule in await meta.list_rules()}
    for declared in config.pull_through.rules:
        prefix = normalize_prefix(declared.ecr_repository_prefix)
        arn = (
            rules.secret_arn(config.registry.region, config.registry.account_id, declared.credential)
            if declared.credential
            else None
        )
        created = existing[prefix].created_at if prefix in existing else now
        await meta.upsert_rule(
            PullThroughRule(
                prefix,
                declared.upstream_registry_url,
                normalize_prefix(declared.upstream_repository_prefix),
                arn,
                rules.infer_upstream_registry(declared.upstream_registry_url),
                created,
                now,
            )
        )


async def _post_root(request: web.Request) -> web.StreamResponse:
    """ECR API calls are POSTs to the endpoint's path (any path) with an X-Amz-Target header."""
    if ecr_api.is_ecr_request(request):
        return await ecr_api.handle(request)
    return await oci_routes.dispatch(request)


def _key_refresher(keyring: KeyRing, services: Services) -> Callable[[], Awaitable[None]]:
    """Reload the shared signing keys when another process committed something since the last look (a
    rotation, or another replica's first key): one small query, at most every KEY_REFRESH_INTERVAL."""
    seen = -1

    async def refresh() -> None:
        nonlocal seen
        epoch = services.stores.changes.epoch()
        if epoch != seen:
            seen = epoch
            await keyring.refresh_shared()

    return refresh


def _announce_admin(config: Config, directory: Directory) -> None:
    host, port = config.listen
    scheme = "https" if config.server.tls_cert_file else "http"
    endpoint = f"{scheme}://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"
    (admin,) = directory.by_name.values()
    log.warning(
        "No [[auth.principals]] configured: created principal %r (access key %s); its keys are in %s (mode 0600).\n"
        "  Log in with:\n"
        '    creds=$(moorage credentials --data-dir %s) && eval "$creds"\n'
        "    moorage get-login-password --endpoint %s | docker login --username AWS --password-stdin %s",
        admin.name,
        admin.access_key_id,
        directory.created_admin,
        config.server.data_dir,
        endpoint,
        endpoint.split("://", 1)[1],
    )
