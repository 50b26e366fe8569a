"""The pull-through cache: repositories under a rule's prefix mirror an upstream registry.

It wraps the local image service behind the same calls (`get_manifest`, `open_blob`), so handlers cannot tell
a cache repository from a local one.

- A manifest not cached yet is fetched, stored byte-exact (the cache repository is created on first pull) and
  served. A cached tag is re-checked upstream (one HEAD; a GET only when the digest moved) at most once per
  `tag_refresh_interval`; digest references never go upstream once cached.
- When the upstream is down, slow, throttling or answers an error for a cached tag, the cached image is served
  at once, a warning is logged, and the failure is remembered for `failure_retry_interval` so the next
  requests don't wait on the upstream again.
- Blobs are fetched when first asked for: one download per digest however many clients ask (single flight),
  spooled to a file and streamed to every client while it is written, verified by digest and size before it
  becomes a blob. A client that goes away does not cancel the download; a failed or truncated one leaves
  nothing behind.
- Single flight holds across processes too (`[server] workers`, an offline `moorage import`): the process
  that takes a digest's lock (`storage.shared.ProcessLocks`) downloads; the others follow its spool file as it
  grows, and learn that it finished when the blob appears (or that it failed when the lock is free and no
  blob is there). Manifest fetches take a lock per (repository, reference) and look again before fetching.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from registry import oci
from registry.config import PullThroughConfig, SecretConfig
from registry.errors import (
    BlobUnknown,
    ManifestUnknown,
    NameUnknown,
    RegistryError,
    UpstreamDenied,
    UpstreamFailure,
    UpstreamThrottled,
    UpstreamTimeout,
)
from registry.proxy import rules as r
from registry.proxy.upstream import (
    AwsCredentials,
    BasicCredentials,
    Credentials,
    GuardedResolver,
    UpstreamClient,
    UpstreamError,
    open_session,
)
from registry.service.images import ImageService
from storage.base import BlobStore, ManifestRecord, MetadataStore, PullThroughRule
from storage.shared import ProcessLocks

log = logging.getLogger("moorage.pullthrough")

AuthorizeImport = Callable[[bool], Awaitable[None]]  # called with "the repository must be created" first
CHUNK = 256 * 1024
FOLLOW_POLL = 0.01  # seconds between looks at another process's download


async def _no_check(needs_create: bool) -> None:
    return None


@dataclass(slots=True)
class RuleMetrics:
    """Per rule. Every manifest or blob request on a cache repository is exactly one hit (served from the cache,
    stale serves included) or one miss (not cached: fetched, or joined a fetch in flight, or refused)."""

    manifest_hits: int = 0
    blob_hits: int = 0
    manifest_misses: int = 0
    blob_misses: int = 0
    upstream_requests: int = 0
    upstream_bytes: int = 0
    stale_serves: int = 0
    single_flight_joins: int = 0


@dataclass(frozen=True, slots=True)
class LocalBlob:
    path: Path | None
    size: int


@dataclass(slots=True)
class StreamingBlob:
    size: int | None
    chunks: AsyncIterator[bytes] | None  # None for a HEAD


class PullThrough:
    def __init__(
        self,
        images: ImageService,
        meta: MetadataStore,
        blobs: BlobStore,
        *,
        config: PullThroughConfig,
        secrets: dict[str, SecretConfig],
        region: str,
        locks: ProcessLocks,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.locks = locks
        self.images = images
        self.meta = meta
        self.blobs = blobs
        self.config = config
        self.secrets = secrets
        self.region = region
        self.clock = clock
        self.rules: list[PullThroughRule] = []
        self.metrics: dict[str, RuleMetrics] = {}
        self.policy = r.UpstreamPolicy.parse(config.allowed_upstreams)  # which upstreams rules may name
        self.declared = DeclaredSizes(images, meta)  # what cached manifests say blobs weigh (bounds downloads)
        self._session: aiohttp.ClientSession | None = None
        self._guard: GuardedResolver | None = None
        self._clients: dict[str, UpstreamClient] = {}
        self._checked: dict[tuple[str, str], float] = {}  # (repository, tag) -> last confirmed upstream
        self._failures: dict[str, float] = {}  # upstream base URL or "repository:tag" -> when it failed
        self._flights: dict[Hashable, asyncio.Task[Any]] = {}
        self._downloads: dict[str, Download | Follower] = {}
        self._epoch = 0

    # -- lifecycle and rules -----------------------------------------------------------------------
    async def start(self) -> None:
        self._session, self._guard = open_session(self.policy)
        await self.reload()

    async def close(self) -> None:
        for task in list(self._flights.values()):
            task.cancel()
        for download in list(self._downloads.values()):
            download.cancel()
        if self._session is not None:
            await self._session.close()

    async def reload(self) -> None:
        rules = await self.meta.list_rules()
        if rules != self.rules:  # keep the upstream clients (and their tokens) while nothing changed
            self._clients.clear()
        self.rules = rules
        for rule in self.rules:
            self.metrics.setdefault(rule.prefix, RuleMetrics())

    async def sync(self) -> None:
        """Catch up with writes by other processes: their rules, and the tag checks they made."""
        epoch = self.meta.epoch()
        if epoch != self._epoch:
            self._epoch = epoch
            self._checked.clear()
            await self.reload()

    def rule_for(self, repository: str) -> PullThroughRule | None:
        return r.match(self.rules, repository) if self.rules else None

    def name_for_namespace(self, namespace: str, repository: str) -> str:
        """A containerd mirror asks for `library/alpine?ns=docker.io`: that is `<prefix>/library/alpine` here."""
        rule = r.for_namespace(self.rules, namespace)
        if rule is None or rule.prefix == r.ROOT or repository.startswith(rule.prefix + "/"):
            return repository
        return f"{rule.prefix}/{repository}"

    def credentials(self, rule: PullThroughRule) -> Credentials | None:
        if not rule.credential_arn:
            return None
        secret = self.secrets.get(r.secret_name(rule.credential_arn) or "")
        if secret is None:
            return None
        if secret.access_key_id:  # signed for the upstream's region, which it checks (not necessarily ours)
            region = r.signing_region(secret.region, rule.upstream_url, self.region)
            return AwsCredentials(secret.access_key_id, secret.secret_access_key.reveal(), region)
        return BasicCredentials(secret.username, secret.password.reveal())

    def client(self, rule: PullThroughRule) -> UpstreamClient:
        client = self._clients.get(rule.prefix)
        if client is None:
            assert self._session is not None and self._guard is not None, "pull-through cache not started"
            client = UpstreamClient(
                self._session,
                r.base_url(rule),
                self.credentials(rule),
                self.config.upstream_timeout,
                self.clock,
                guard=self._guard,
                response_timeout=self.config.upstream_response_timeout,
            )
            self._clients[rule.prefix] = client
        return client

    def _metrics(self, rule: PullThroughRule) -> RuleMetrics:
        return self.metrics.setdefault(rule.prefix, RuleMetrics())

    # -- single flight -----------------------------------------------------------------------------
    async def _flight(self, key: Hashable, rule: PullThroughRule, factory: Callable[[], Awaitable[Any]]) -> Any:
        """Run `factory` once for concurrent callers with the same key; callers that leave don't cancel it."""
        task = self._flights.get(key)
        if task is None:
            task = asyncio.ensure_future(factory())
            self._flights[key] = task
            task.add_done_callback(lambda t: (self._flights.pop(key, None), _consume(t)))
        else:
            self._metrics(rule).single_flight_joins += 1
        return await asyncio.shield(task)

    # -- failures ----------------------------------------------------------------------------------
    async def _recently_failed(self, *keys: str) -> bool:
        """Whether any of `keys` failed within `failure_retry_interval`, here or in another worker (failures are
        noted in the shared database, so no worker waits on an upstream another one just found down)."""
        now, window = self.clock(), self.config.failure_retry_interval
        if any(now - self._failures.get(k, float("-inf")) < window for k in keys):
            return True
        shared = await self.meta.upstream_failed_at(keys)
        return shared is not None and now - shared < window

    async def _note_failure(self, rule: PullThroughRule, repository: str, tag: str, e: UpstreamError) -> None:
        key = r.base_url(rule) if e.kind in ("unavailable", "timeout", "throttled") else _tag_key(repository, tag)
        self._failures[key] = self.clock()
        await self.meta.note_upstream_failure(key, self._failures[key])

    # -- manifests ---------------------------------------------------------------------------------
    async def get_manifest(
        self, repository: str, reference: str, authorize_import: AuthorizeImport = _no_check
    ) -> ManifestRecord:
        await self.sync()
        rule = self.rule_for(repository)
        if rule is None:
            return await self.images.get_manifest(repository, reference)
        try:
            local: ManifestRecord | None = await self.images.get_manifest(repository, reference)
        except (ManifestUnknown, NameUnknown):
            local = None
        m = self._metrics(rule)
        if local is None:
            return await self._import(rule, repository, reference, authorize_import)
        if oci.is_digest(reference):  # content addressed: never stale
            m.manifest_hits += 1
            return local
        checked = await self._checked_at(repository, reference)
        if checked is not None and self.clock() - checked < self.config.tag_refresh_interval:
            m.manifest_hits += 1
            return local
        if self.config.offline or await self._recently_failed(r.base_url(rule), _tag_key(repository, reference)):
            m.stale_serves += 1
            m.manifest_hits += 1
            return local
        # Due for its re-check: served from the cache at once, checked in the background (one check per tag at a
        # time), and what the check finds applies to later pulls. A dead or black-holed upstream never holds a
        # pull of cached content.
        self._refresh_in_background(rule, repository, reference, local)
        m.manifest_hits += 1
        return local

    def _refresh_in_background(self, rule: PullThroughRule, repository: str, tag: str, local: ManifestRecord) -> None:
        key = ("refresh", repository, tag)
        if key in self._flights:
            return

        async def check() -> None:
            try:
                await self._refresh(rule, repository, tag, local)
            except UpstreamError as e:
                await self._note_failure(rule, repository, tag, e)
                log.warning("cached %s:%s stays as it is: the upstream check failed: %s", repository, tag, e)

        task = asyncio.ensure_future(check())
        self._flights[key] = task
        task.add_done_callback(lambda t: (self._flights.pop(key, None), _consume(t)))

    async def _checked_at(self, repository: str, tag: str) -> float | None:
        key = (repository, tag)
        if key not in self._checked:
            when = await self.meta.tag_checked_at(repository, tag)
            if when is None:
                return None
            self._checked[key] = when
        return self._checked[key]

    async def _mark_checked(self, repository: str, tag: str) -> None:
        now = self.clock()
        self._checked[(repository, tag)] = now
        if self._failures.pop(_tag_key(repository, tag), None) is not None:
            await self.meta.clear_upstream_failure(_tag_key(repository, tag))
        await self.meta.set_tag_checked(repository, tag, now)

    async def _refresh(self, rule: PullThroughRule, repository: str, tag: str, local: ManifestRecord) -> ManifestRecord:
        async with self.locks.hold(_manifest_lock(repository, tag)):
            checked = await self.meta.tag_checked_at(repository, tag)
            if checked is not None and self.clock() - checked < self.config.tag_refresh_interval:
                self._checked[(repository, tag)] = checked  # another process checked it just now
                return await self.images.get_manifest(repository, tag)
            return await self._refresh_locked(rule, repository, tag, local)

    async def _refresh_locked(
        self, rule: PullThroughRule, repository: str, tag: str, local: ManifestRecord
    ) -> ManifestRecord:
        client, m = self.client(rule), self._metrics(rule)
        upstream_repo = r.upstream_repository(rule, repository)
        m.upstream_requests += 1
        head = await client.manifest(upstream_repo, tag, head=True)
        if head.digest == local.digest:
            await self._mark_checked(repository, tag)
            return local
        record = await self._fetch_and_store(rule, repository, tag)
        if record.digest != local.digest:
            log.info("cached tag %s:%s moved upstream: %s -> %s", repository, tag, local.digest, record.digest)
        return record

    async def _import(
        self, rule: PullThroughRule, repository: str, reference: str, authorize_import: AuthorizeImport
    ) -> ManifestRecord:
        self._metrics(rule).manifest_misses += 1
        if self.config.offline:
            raise ManifestUnknown(
                f"{repository}:{reference} is not cached, and the pull-through cache is offline "
                "([pull_through] offline = true)"
            )
        await authorize_import(not await self.images.has_repository(repository))
        try:
            return await self._flight(
                ("import", repository, reference), rule, lambda: self._import_once(rule, repository, reference)
            )
        except UpstreamError as e:
            raise upstream_error(e, repository, reference) from None

    async def _import_once(self, rule: PullThroughRule, repository: str, reference: str) -> ManifestRecord:
        """Fetch and store a manifest unless another process stored it while this one waited for the lock."""
        async with self.locks.hold(_manifest_lock(repository, reference)):
            with contextlib.suppress(ManifestUnknown, NameUnknown):
                return await self.images.get_manifest(repository, reference)
            return await self._fetch_and_store(rule, repository, reference)

    async def _fetch_and_store(self, rule: PullThroughRule, repository: str, reference: str) -> ManifestRecord:
        client, m = self.client(rule), self._metrics(rule)
        upstream_repo = r.upstream_repository(rule, repository)
        m.upstream_requests += 1
        got = await client.manifest(upstream_repo, reference)
        assert got.body is not None
        m.upstream_bytes += len(got.body)
        if oci.is_digest(reference) and got.digest != reference:
            raise UpstreamError(
                r.base_url(rule),
                "unavailable",
                f"sent a manifest whose digest is {got.digest}, not the {reference} asked for",
            )
        try:
            await self.images.put_manifest(repository, reference, got.body, got.media_type or None, trusted=True)
        except RegistryError as e:
            raise UpstreamError(r.base_url(rule), "unavailable", f"sent an unusable manifest: {e.message}") from None
        if not oci.is_digest(reference):
            await self._mark_checked(repository, reference)
        return await self.images.get_manifest(repository, got.digest)

    # -- blobs -------------------------------------------------------------------------------------
    async def open_blob(
        self, repository: str, digest: str, authorize_import: AuthorizeImport = _no_check, *, head: bool = False
    ) -> LocalBlob | StreamingBlob:
        try:
            size = await self.images.blob_size(repository, digest)
            if self.rules and (cached := self.rule_for(repository)) is not None:
                self._metrics(cached).blob_hits += 1
            return LocalBlob(self.blobs.local_path(digest), size)
        except BlobUnknown:
            await self.sync()
            rule = self.rule_for(repository)
            if rule is None:
                raise
        if not await self.meta.blob_referenced(repository, digest):
            # Only blobs a cached manifest lists come from the upstream: a push's existence checks (and
            # arbitrary digests) get a plain 404 and never wait on the upstream.
            raise BlobUnknown(f"blob {digest} is not in repository {repository}", detail={"digest": digest})
        # A manifest in a cache repository can list any digest (an upstream decides what its manifests say, and
        # a push may carry a foreign layer). The bytes of a blob stored for somebody else are never served on
        # that say-so: only when this rule's upstream sent and proved them, now or before.
        if (local := await self._link_stored(rule, repository, digest)) is not None:
            return local
        self._metrics(rule).blob_misses += 1
        if self.config.offline:
            raise BlobUnknown(f"blob {digest} is not cached, and the pull-through cache is offline")
        await authorize_import(not await self.images.has_repository(repository))
        for _ in range(3):
            download = self._downloads.get(digest)
            if download is not None and not download.failed and download.origin != origin(rule):
                # Another upstream's download of the same digest: its bytes prove nothing about this upstream.
                await download.wait()
                if (local := await self._link_stored(rule, repository, digest)) is not None:
                    return local
                continue
            if download is None or download.failed:
                download = await self._start_download(rule, repository, digest)
                if download is None:  # another process finished it a moment ago
                    if (local := await self._link_stored(rule, repository, digest)) is not None:
                        return local
                    continue
            else:
                self._metrics(rule).single_flight_joins += 1
            download.repositories.add(repository)
            try:
                await asyncio.shield(download.started)
            except FollowFailed:
                continue  # the process we followed failed before any bytes: try again, leading this time
            except UpstreamError as e:
                raise upstream_error(e, repository, digest, blob=True) from None
            return StreamingBlob(download.size, None if head else download.reader())
        raise upstream_error(
            UpstreamError(r.base_url(rule), "unavailable", "the download failed in another process"),
            repository,
            digest,
            blob=True,
        )

    async def _link_stored(self, rule: PullThroughRule, repository: str, digest: str) -> LocalBlob | None:
        """The blob is already here because this rule's upstream sent it (to another of its cache repositories,
        or another process): link it, no upstream. Bytes stored for any other reason don't count."""
        stored = await self._proven_size(digest, origin(rule))
        if stored is None:
            return None
        await self.meta.link_blob(repository, digest, stored, self.clock(), upstream=origin(rule))
        self._metrics(rule).blob_hits += 1
        return LocalBlob(self.blobs.local_path(digest), stored)

    async def _proven_size(self, digest: str, upstream: str) -> int | None:
        """The stored blob's size, if `upstream` sent and verified its bytes (a link records that); else None."""
        stored = await self.blobs.stat(digest)
        if stored is None or not await self.meta.blob_fetched_from(digest, upstream):
            return None
        return stored

    async def _start_download(self, rule: PullThroughRule, repository: str, digest: str) -> Download | Follower | None:
        """Lead the download when this process gets the digest's lock, else follow the process that has it."""
        m = self._metrics(rule)
        lock = f"blob {digest}"
        download: Download | Follower
        if self.locks.try_acquire(lock):
            if await self._proven_size(digest, origin(rule)) is not None:
                self.locks.release(lock)  # this upstream's bytes were stored between our look and the lock
                return None
            m.upstream_requests += 1
            download = Download(self, rule, digest, lock, upstream_repository=r.upstream_repository(rule, repository))
        else:
            m.single_flight_joins += 1
            download = Follower(self, rule, digest, lock)
        self._downloads[digest] = download
        download.start()
        return download

    def _download_finished(self, download: Spool) -> None:
        if self._downloads.get(download.digest) is download:
            del self._downloads[download.digest]


class FollowFailed(Exception):
    """The process whose download this one followed stopped before sending any bytes."""


@dataclass(eq=False)
class Spool:
    """A blob arriving in a spool file that any number of readers follow while it grows."""

    owner: PullThrough
    rule: PullThroughRule
    digest: str
    lock: str
    repositories: set[str] = field(default_factory=set)
    size: int | None = None
    written: int = 0
    done: bool = False
    error: BaseException | None = None
    started: asyncio.Future[None] = field(init=False)
    _changed: asyncio.Condition = field(init=False, default_factory=asyncio.Condition)
    _task: asyncio.Task[None] | None = field(init=False, default=None)
    _fd: int | None = field(init=False, default=None)
    _readers: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.started = asyncio.get_running_loop().create_future()
        self.started.add_done_callback(_consume)

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def origin(self) -> str:
        return origin(self.rule)

    @property
    def spool(self) -> Path:
        """The spool file: one per digest and upstream, so a process only ever follows bytes from its own."""
        path = self.owner.blobs.spool_path(self.digest)
        return path.with_name(f"{path.name}-{hashlib.blake2b(self.origin.encode(), digest_size=8).hexdigest()}")

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def wait(self) -> None:
        """Until the download ends, however it ends (leaving doesn't cancel it)."""
        if self._task is not None:
            await asyncio.wait({self._task})

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        raise NotImplementedError

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _fail(self, e: BaseException) -> None:
        self.error = e
        if not self.started.done():
            self.started.set_exception(e)

    def _maybe_close(self) -> None:
        if self._fd is not None and self._readers == 0 and (self.done or self.error is not None):
            os.close(self._fd)
            self._fd = None

    async def reader(self) -> AsyncIterator[bytes]:
        """The blob's bytes as they arrive; raises if the download fails part way."""
        self._readers += 1
        offset = 0
        try:
            while True:
                async with self._changed:
                    await self._changed.wait_for(lambda at=offset: self.written - 1 > at or self.done or self.failed)
                if self._fd is None and self.done:  # started after the spool closed: read the installed blob
                    async for data in self.owner.blobs.read(self.digest, offset):
                        yield data
                    return
                # The last byte is held back until the download is verified, so a client can never receive
                # a complete body for a blob whose digest turns out wrong.
                readable = self.written if self.done else self.written - 1
                if readable > offset:
                    assert self._fd is not None
                    data = await asyncio.to_thread(os.pread, self._fd, min(1 << 20, readable - offset), offset)
                    if not data:
                        raise ConnectionAbortedError(f"the spool of {self.digest} ended at {offset} bytes")
                    offset += len(data)
                    yield data
                    continue
                if self.error is not None:
                    raise ConnectionAbortedError(f"upstream download of {self.digest} failed: {self.error}")
                return
        finally:
            self._readers -= 1
            self._maybe_close()

    async def _link_all(self) -> None:
        owner = self.owner
        for repository in self.repositories:
            with contextlib.suppress(Exception):  # a repository deleted meanwhile
                await owner.meta.link_blob(repository, self.digest, self.written, owner.clock(), upstream=self.origin)


@dataclass(eq=False)
class Download(Spool):
    """This process's upstream fetch of one blob (it holds the digest's lock until the end).

    It is bounded: it never takes more bytes than the cached manifests declare for the blob (nor than the
    upstream's Content-Length, which must agree), and it ends after `[pull_through] blob_download_timeout`
    however the upstream trickles. A download that fails leaves no blob, no link and no spool."""

    upstream_repository: str = ""
    _out: Any = field(init=False, default=None)  # the spool file, written by this download

    async def _run(self) -> None:
        owner = self.owner
        path = self.spool
        size_path = _size_path(path)
        deadline = owner.config.blob_download_timeout
        try:
            try:
                async with asyncio.timeout(deadline):
                    hasher = await self._fetch(path, size_path)
            except TimeoutError:
                raise UpstreamError(
                    r.base_url(self.rule),
                    "unavailable",
                    f"blob {self.digest} was not downloaded within [pull_through] blob_download_timeout "
                    f"({deadline:g}s): {self.written} bytes had arrived",
                ) from None
            fh = self._out
            await asyncio.to_thread(_finish, fh)
            actual = f"{hasher.name}:{hasher.hexdigest()}"
            if self.size is not None and self.written != self.size:
                raise UpstreamError(
                    r.base_url(self.rule),
                    "unavailable",
                    f"blob {self.digest} was cut short: {self.written} of {self.size} bytes",
                )
            if actual != self.digest:
                raise UpstreamError(
                    r.base_url(self.rule), "unavailable", f"sent content with digest {actual} for blob {self.digest}"
                )
            await owner.blobs.install_spooled(path, self.digest)
            await self._link_all()
            self.done = True
        except BaseException as e:
            self._fail(e)
            if not isinstance(e, asyncio.CancelledError | UpstreamError):
                log.exception("pull-through download of %s failed", self.digest)
            elif isinstance(e, UpstreamError):
                log.warning("pull-through download of %s failed: %s", self.digest, e)
        finally:
            if self._out is not None and not self._out.closed:
                await asyncio.to_thread(self._out.close)
            await asyncio.to_thread(path.unlink, True)
            await asyncio.to_thread(size_path.unlink, True)
            owner.locks.release(self.lock)
            owner._download_finished(self)
            await self._notify()
            self._maybe_close()

    async def _fetch(self, path: Path, size_path: Path) -> Any:
        """Stream the upstream's body into the spool, no further than the blob's size; returns the hasher."""
        owner = self.owner
        upstream = r.base_url(self.rule)
        lookup = asyncio.ensure_future(self._declared_size())  # while the request goes out
        lookup.add_done_callback(_consume)
        try:
            resp = await owner.client(self.rule).blob(self.upstream_repository, self.digest)
            declared = await lookup
        finally:
            if not lookup.done():
                lookup.cancel()
        try:
            length = resp.content_length
            if declared is not None and length is not None and length != declared:
                raise UpstreamError(
                    upstream,
                    "invalid",
                    f"answered blob {self.digest} with {length} bytes, but the manifest declares {declared}",
                )
            if declared is None and length is None:
                raise UpstreamError(
                    upstream, "invalid", f"sent blob {self.digest} without a length, and no cached manifest declares it"
                )
            self.size = declared if declared is not None else length
            # Processes following this download read the size first, then the spool (both at known paths).
            self._out = await asyncio.to_thread(_create_spool, path, size_path, self.size)
            self._fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
            self.started.set_result(None)
            hasher = hashlib.new(oci.digest_algorithm(self.digest))
            try:
                async for chunk in resp.content.iter_chunked(CHUNK):
                    if self.size is not None and self.written + len(chunk) > self.size:
                        raise UpstreamError(
                            upstream, "invalid", f"sent more than the {self.size} bytes of blob {self.digest}"
                        )
                    await asyncio.to_thread(_write, self._out, hasher, chunk)
                    self.written += len(chunk)
                    owner._metrics(self.rule).upstream_bytes += len(chunk)
                    await self._notify()
            except (aiohttp.ClientError, TimeoutError) as e:
                raise UpstreamError(upstream, "unavailable", f"blob download failed: {e}") from None
        finally:
            resp.release()  # a body not read to its end closes the connection
        return hasher

    async def _declared_size(self) -> int | None:
        """The size a cached manifest that lists this blob declares for it (None when none is found: then only
        the upstream's Content-Length and the deadline bound the download)."""
        for repository in list(self.repositories):
            if (size := await self.owner.declared.size(repository, self.digest)) is not None:
                return size
        return None


class DeclaredSizes:
    """The blob sizes the cached manifests of each repository declare, read incrementally: a lookup reads only
    the manifests stored since the previous one (images are listed in push order), so the size of a layer of
    the manifest just pulled is found without re-reading the whole repository. Bounded: past MAX_ENTRIES
    sizes, everything is forgotten and read again when asked for."""

    MAX_ENTRIES = 200_000

    def __init__(self, images: ImageService, meta: MetadataStore) -> None:
        self.images = images
        self.meta = meta
        self._sizes: dict[str, dict[str, int]] = {}  # repository -> blob digest -> declared size
        self._read_to: dict[str, int] = {}  # repository -> id of the last image read
        self._entries = 0

    async def size(self, repository: str, digest: str) -> int | None:
        sizes = self._sizes.setdefault(repository, {})
        if digest in sizes:
            return sizes[digest]
        read_to = self._read_to.get(repository, 0)
        found = await self._read(repository, digest, sizes, read_to)
        if found is None and read_to > 0:
            # Image ids can be reused after deletions: read the whole repository again before giving up.
            self._entries -= len(sizes)
            sizes.clear()
            found = await self._read(repository, digest, sizes, 0)
        if self._entries > self.MAX_ENTRIES:
            self._sizes.clear()
            self._read_to.clear()
            self._entries = 0
        return found

    async def _read(self, repository: str, digest: str, sizes: dict[str, int], read_to: int) -> int | None:
        """Note the sizes the repository's manifests after image `read_to` declare; the one of `digest`."""
        async for image in self.images.iter_images(repository, read_to):
            read_to = image.id
            if image.media_type in oci.INDEX_TYPES:
                continue
            record = await self.meta.get_manifest(repository, image.digest)
            try:
                parsed = oci.parse_manifest(record.body, record.media_type) if record is not None else None
            except (RegistryError, ValueError):
                parsed = None
            for d in (parsed.config, *parsed.layers) if parsed is not None else ():
                if d is not None and d.digest not in sizes:
                    sizes[d.digest] = d.size
                    self._entries += 1
        self._read_to[repository] = read_to
        return sizes.get(digest)


@dataclass(eq=False)
class Follower(Spool):
    """Another process's download of a blob, followed through its spool file."""

    async def _run(self) -> None:
        owner = self.owner
        path = self.spool  # the leader may be fetching the digest from another upstream: then there is none
        try:
            while self._fd is None:  # wait for the leader's spool (or its end)
                try:
                    self._fd, self.size = await asyncio.to_thread(_open_spool, path)
                except FileNotFoundError:
                    if not owner.locks.held_elsewhere(self.lock):
                        if (stored := await owner._proven_size(self.digest, self.origin)) is None:
                            raise FollowFailed(f"the download of {self.digest} in another process stopped") from None
                        self.size = self.written = stored
                        self.done = True
                        self.started.set_result(None)
                        await self._link_all()
                        return
                    await asyncio.sleep(FOLLOW_POLL)
            self.started.set_result(None)
            while True:
                written = os.fstat(self._fd).st_size
                if written != self.written:
                    self.written = written
                    await self._notify()
                # Done when the leader let go of the digest and its upstream's link is recorded (the leader
                # links before it lets go); bytes that appear while it still holds the lock prove nothing.
                if not owner.locks.held_elsewhere(self.lock):
                    if (stored := await owner._proven_size(self.digest, self.origin)) is None:
                        raise UpstreamError(
                            r.base_url(self.rule),
                            "unavailable",
                            f"the download of {self.digest} in another process failed",
                        )
                    self.written = stored
                    self.done = True
                    await self._link_all()
                    return
                await asyncio.sleep(FOLLOW_POLL)
        except BaseException as e:
            self._fail(e)
            if not isinstance(e, asyncio.CancelledError | UpstreamError | FollowFailed):
                log.exception("following the download of %s failed", self.digest)
        finally:
            owner._download_finished(self)
            await self._notify()
            self._maybe_close()


def origin(rule: PullThroughRule) -> str:
    """Who vouches for a pull-through blob: the upstream's URL and the credential used there."""
    return f"{r.base_url(rule)}#{rule.credential_arn or ''}"


def _tag_key(repository: str, tag: str) -> str:
    """How a failed tag check is remembered (here and in the shared database)."""
    return f"{repository}:{tag}"


def _manifest_lock(repository: str, reference: str) -> str:
    """The one lock for fetching or re-checking a manifest, so an import and a refresh never overlap."""
    return f"manifest {repository}:{reference}"


def _size_path(spool: Path) -> Path:
    return spool.with_name(spool.name + ".size")


def _create_spool(path: Path, size_path: Path, size: int | None) -> Any:
    """Start a download's spool. This process holds the digest's lock, so files there are a crashed process's
    leftovers: the old spool goes first, then the sidecar names this process (and the size), then the new
    spool appears. A follower that reads a sidecar naming a live process can therefore only open this spool."""
    path.unlink(missing_ok=True)
    tmp = size_path.with_name(size_path.name + ".tmp")
    tmp.write_text(f"{os.getpid()} {'' if size is None else size}")
    os.replace(tmp, size_path)
    return open(path, "xb")


def _open_spool(path: Path) -> tuple[int, int | None]:
    """Open the spool of the live process downloading into it, and its size. FileNotFoundError until there
    is one (a sidecar left by a crashed process names a dead one)."""
    pid, _, size = _size_path(path).read_text().partition(" ")
    if not pid.isdigit() or not _alive(int(pid)):
        raise FileNotFoundError(f"{path}: left by process {pid}, which is gone")
    fd = os.open(path, os.O_RDONLY)
    return fd, int(size) if size.strip() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write(fh: Any, hasher: Any, chunk: bytes) -> None:
    fh.write(chunk)
    fh.flush()  # readers (here and in other processes) read what `written` counts from the file itself
    hasher.update(chunk)


def _finish(fh: Any) -> None:
    fh.flush()
    os.fsync(fh.fileno())
    fh.close()


def _consume(task: asyncio.Future[Any]) -> None:
    """Mark a background result as seen, so a failure nobody awaited doesn't warn at exit."""
    if not task.cancelled():
        task.exception()


def upstream_error(e: UpstreamError, repository: str, reference: str, *, blob: bool = False) -> RegistryError:
    """Nothing cached and the upstream failed: an error that names the upstream and what it said."""
    message = f"{repository}:{reference} is not cached and upstream {e.upstream} failed: {e.message}"
    if e.kind == "not_found":
        return BlobUnknown(message) if blob else ManifestUnknown(message)
    if e.kind == "denied":
        return UpstreamDenied(f"The authentication to the upstream registry failed. {message}")
    if e.kind == "throttled":
        return UpstreamThrottled(message)
    if e.kind == "timeout":
        return UpstreamTimeout(message)
    return UpstreamFailure(message)
