"""The pull-through cache's policy: repositories under a rule's prefix mirror an upstream registry.

It wraps the image service behind the same reader interface (`registry.service.reader.ImageReader`), so the
routes cannot tell a cache repository from a local one.

- A manifest not cached yet is fetched, stored byte-exact (the cache repository is created on first pull) and
  served. A cached tag is re-checked upstream (one HEAD; a GET only when the digest moved) at most once per
  `tag_refresh_interval`; digest references never go upstream once cached.
- When the upstream is down, slow, throttling or answers an error for a cached tag, the cached image is served
  at once, a warning is logged, and the failure is remembered for `failure_retry_interval` so the next
  requests don't wait on the upstream again.
- Blobs are fetched when first asked for, once however many clients (and processes) ask, and streamed to all
  of them while they arrive (`registry.proxy.fill`). A cache repository gets a stored blob only when its own
  upstream sent and proved those bytes; anything else must come from its upstream.
- Manifest fetches take a lock per (repository, reference) and look again before fetching.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
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
from registry.naming import under_prefix
from registry.proxy import rules as cache_rules
from registry.proxy.fill import DeclaredSizes, Download, Follower, FollowFailed, Spool, consume, origin
from registry.proxy.history import HitHistory
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
from registry.service.reader import ArrivingBlob, AuthorizeImport, BlobAnswer, StoredBlob, no_import_check
from registry.upstream_url import UpstreamPolicy
from storage.blobs import BlobStore
from storage.coordination import ChangeFeed, Locks
from storage.errors import BlobNotFound
from storage.metadata import MetadataStore
from storage.records import ManifestRecord, PullThroughRule

log = logging.getLogger("moorage.pullthrough")


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
    # The last time this process's request to the rule's upstream failed, and what the upstream error said
    # (a manifest fetch or re-check, a blob download; not-found answers included).
    last_failure_at: float | None = None
    last_failure: str = ""

    def failed(self, e: UpstreamError, when: float) -> None:
        self.last_failure_at, self.last_failure = when, f"{e.upstream}: {e.message}"


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
        locks: Locks,
        changes: ChangeFeed,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.locks = locks
        self.changes = changes
        self.images = images
        self.meta = meta
        self.blobs = blobs
        self.config = config
        self.secrets = secrets
        self.region = region
        self.clock = clock
        self.rules: list[PullThroughRule] = []
        self.metrics: dict[str, RuleMetrics] = {}
        self.history = HitHistory()  # hits and misses per minute, this process's (`sample_history`)
        self.policy = UpstreamPolicy.parse(config.allowed_upstreams)  # which upstreams rules may name
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
        epoch = self.changes.epoch()
        if epoch != self._epoch:
            self._epoch = epoch
            self._checked.clear()
            await self.reload()

    def rule_for(self, repository: str) -> PullThroughRule | None:
        return cache_rules.match(self.rules, repository) if self.rules else None

    def name_for_namespace(self, namespace: str, repository: str) -> str:
        """A containerd mirror asks for `library/alpine?ns=docker.io`: that is `<prefix>/library/alpine` here."""
        rule = cache_rules.for_namespace(self.rules, namespace)
        if rule is None or under_prefix(rule.prefix, repository):
            return repository
        return f"{rule.prefix}/{repository}"

    def credentials(self, rule: PullThroughRule) -> Credentials | None:
        if not rule.credential_arn:
            return None
        secret = self.secrets.get(cache_rules.secret_name(rule.credential_arn) or "")
        if secret is None:
            return None
        if secret.access_key_id:  # signed for the upstream's region, which it checks (not necessarily ours)
            region = cache_rules.signing_region(secret.region, rule.upstream_url, self.region)
            return AwsCredentials(secret.access_key_id, secret.secret_access_key.reveal(), region)
        return BasicCredentials(secret.username, secret.password.reveal())

    def client(self, rule: PullThroughRule) -> UpstreamClient:
        client = self._clients.get(rule.prefix)
        if client is None:
            assert self._session is not None and self._guard is not None, "pull-through cache not started"
            client = UpstreamClient(
                self._session,
                cache_rules.base_url(rule),
                self.credentials(rule),
                self.config.upstream_timeout,
                self.clock,
                guard=self._guard,
                response_timeout=self.config.upstream_response_timeout,
            )
            self._clients[rule.prefix] = client
        return client

    def rule_metrics(self, rule: PullThroughRule) -> RuleMetrics:
        return self.metrics.setdefault(rule.prefix, RuleMetrics())

    async def sample_history(self) -> None:
        """File the hits and misses counted since the last sample under the current minute (`history`)."""
        tallies = list(self.metrics.values())
        hits = sum(m.manifest_hits + m.blob_hits for m in tallies)
        misses = sum(m.manifest_misses + m.blob_misses for m in tallies)
        self.history.sample(self.clock(), hits, misses)

    # -- single flight -----------------------------------------------------------------------------
    async def _flight(self, key: Hashable, rule: PullThroughRule, factory: Callable[[], Awaitable[Any]]) -> Any:
        """Run `factory` once for concurrent callers with the same key; callers that leave don't cancel it."""
        task = self._flights.get(key)
        if task is None:
            task = asyncio.ensure_future(factory())
            self._flights[key] = task
            task.add_done_callback(functools.partial(self._landed, key))
        else:
            self.rule_metrics(rule).single_flight_joins += 1
        return await asyncio.shield(task)

    def _landed(self, key: Hashable, task: asyncio.Future[Any]) -> None:
        self._flights.pop(key, None)
        consume(task)

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
        self.rule_metrics(rule).failed(e, self.clock())
        key = (
            cache_rules.base_url(rule)
            if e.kind in ("unavailable", "timeout", "throttled")
            else _tag_key(repository, tag)
        )
        self._failures[key] = self.clock()
        await self.meta.note_upstream_failure(key, self._failures[key])

    # -- manifests ---------------------------------------------------------------------------------
    async def get_manifest(
        self, repository: str, reference: str, authorize_import: AuthorizeImport = no_import_check
    ) -> ManifestRecord:
        if self.changes.epoch() != self._epoch:  # (sync's own test, inline: a coroutine less per pull)
            await self.sync()
        rule = self.rule_for(repository)
        if rule is None:
            return await self.images.get_manifest(repository, reference)
        try:
            local: ManifestRecord | None = await self.images.get_manifest(repository, reference)
        except (ManifestUnknown, NameUnknown):
            local = None
        m = self.rule_metrics(rule)
        if local is None:
            return await self._import(rule, repository, reference, authorize_import)
        if oci.is_digest(reference):  # content addressed: never stale
            m.manifest_hits += 1
            return local
        checked = await self._checked_at(repository, reference)
        if checked is not None and self.clock() - checked < self.config.tag_refresh_interval:
            m.manifest_hits += 1
            return local
        if self.config.offline or await self._recently_failed(
            cache_rules.base_url(rule), _tag_key(repository, reference)
        ):
            m.stale_serves += 1
            m.manifest_hits += 1
            return local
        # Due for its re-check: served from the cache at once, checked in the background (one check per tag at a
        # time), and what the check finds applies to later pulls. A dead or black-holed upstream never holds a
        # pull of cached content.
        self._refresh_in_background(rule, repository, reference, local)
        m.manifest_hits += 1
        return local

    def cached_manifest(self, repository: str, reference: str) -> ManifestRecord | None:
        """`get_manifest`'s answer when memory holds it and nothing is due (no store read, no upstream): a cached
        manifest, and for a tag in a cache repository, an upstream check younger than the refresh interval.
        None: ask `get_manifest`."""
        if self.changes.epoch() != self._epoch:
            return None
        local = self.images.cached_manifest(repository, reference)
        if local is None or not self.rules or self.rule_for(repository) is None:
            return local
        if not oci.is_digest(reference):
            checked = self._checked.get((repository, reference))
            if checked is None or self.clock() - checked >= self.config.tag_refresh_interval:
                return None
        return local

    def cached_blob(self, repository: str, digest: str) -> int | None:
        """`open_blob`'s size for a blob linked in the repository, when memory holds it (and holds that the
        repository has no archived image); None: ask `open_blob`."""
        return self.images.cached_unarchived_blob(repository, digest)

    def count_hit(self, repository: str, kind: str) -> None:
        """A manifest or blob answered from `cached_manifest` or `cached_blob`: a hit of a cache repository's
        rule (as `get_manifest` and `open_blob` count theirs)."""
        if self.rules and (rule := self.rule_for(repository)) is not None:
            m = self.rule_metrics(rule)
            if kind == "manifest":
                m.manifest_hits += 1
            else:
                m.blob_hits += 1

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
        task.add_done_callback(functools.partial(self._landed, key))

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
        client, m = self.client(rule), self.rule_metrics(rule)
        upstream_repo = cache_rules.upstream_repository(rule, repository)
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
        self.rule_metrics(rule).manifest_misses += 1
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
            self.rule_metrics(rule).failed(e, self.clock())
            raise upstream_error(e, repository, reference) from None

    async def _import_once(self, rule: PullThroughRule, repository: str, reference: str) -> ManifestRecord:
        """Fetch and store a manifest unless another process stored it while this one waited for the lock."""
        async with self.locks.hold(_manifest_lock(repository, reference)):
            with contextlib.suppress(ManifestUnknown, NameUnknown):
                return await self.images.get_manifest(repository, reference)
            return await self._fetch_and_store(rule, repository, reference)

    async def _fetch_and_store(self, rule: PullThroughRule, repository: str, reference: str) -> ManifestRecord:
        client, m = self.client(rule), self.rule_metrics(rule)
        upstream_repo = cache_rules.upstream_repository(rule, repository)
        m.upstream_requests += 1
        got = await client.manifest(upstream_repo, reference)
        assert got.body is not None
        m.upstream_bytes += len(got.body)
        if oci.is_digest(reference) and got.digest != reference:
            raise UpstreamError(
                cache_rules.base_url(rule),
                "unavailable",
                f"sent a manifest whose digest is {got.digest}, not the {reference} asked for",
            )
        try:
            await self.images.put_manifest(repository, reference, got.body, got.media_type or None, trusted=True)
        except RegistryError as e:
            raise UpstreamError(
                cache_rules.base_url(rule), "unavailable", f"sent an unusable manifest: {e.message}"
            ) from None
        if not oci.is_digest(reference):
            await self._mark_checked(repository, reference)
        return await self.images.get_manifest(repository, got.digest)

    # -- blobs -------------------------------------------------------------------------------------
    async def open_blob(
        self, repository: str, digest: str, authorize_import: AuthorizeImport = no_import_check, *, head: bool = False
    ) -> BlobAnswer:
        try:
            size = await self.images.blob_size(repository, digest)
            if self.rules and (cached := self.rule_for(repository)) is not None:
                self.rule_metrics(cached).blob_hits += 1
            return StoredBlob(digest, size)
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
        self.rule_metrics(rule).blob_misses += 1
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
                self.rule_metrics(rule).single_flight_joins += 1
            download.repositories.add(repository)
            try:
                await asyncio.shield(download.started)
            except FollowFailed:
                continue  # the process we followed failed before any bytes: try again, leading this time
            except UpstreamError as e:
                raise upstream_error(e, repository, digest, blob=True) from None
            return ArrivingBlob(download.size, None if head else download.reader())
        raise upstream_error(
            UpstreamError(cache_rules.base_url(rule), "unavailable", "the download failed in another process"),
            repository,
            digest,
            blob=True,
        )

    async def _link_stored(self, rule: PullThroughRule, repository: str, digest: str) -> StoredBlob | None:
        """The blob is already here because this rule's upstream sent it (to another of its cache repositories,
        or another process): link it, no upstream. Bytes stored for any other reason don't count."""
        stored = await self.proven_size(digest, origin(rule))
        if stored is None:
            return None
        try:
            await self.images.link_blob(repository, digest, stored, upstream=origin(rule))
        except BlobNotFound:
            return None  # garbage collection took the bytes a moment ago: fetch them again
        self.rule_metrics(rule).blob_hits += 1
        return StoredBlob(digest, stored)

    async def proven_size(self, digest: str, upstream: str) -> int | None:
        """The stored blob's size, if `upstream` sent and verified its bytes (a link records that); else None.
        The database first: a blob not fetched yet costs no look in the blob store (a round trip to a bucket)."""
        if not await self.meta.blob_fetched_from(digest, upstream):
            return None
        stored = await self.blobs.stat(digest)
        return None if stored is None else stored.size

    async def _start_download(self, rule: PullThroughRule, repository: str, digest: str) -> Download | Follower | None:
        """Lead the download when this process gets the digest's lock, else follow the process that has it."""
        m = self.rule_metrics(rule)
        lock = f"blob {digest}"
        download: Download | Follower
        if await self.locks.try_acquire(lock):
            if await self.proven_size(digest, origin(rule)) is not None:
                await self.locks.release(lock)  # this upstream's bytes were stored between our look and the lock
                return None
            m.upstream_requests += 1
            download = Download(
                self, rule, digest, lock, upstream_repository=cache_rules.upstream_repository(rule, repository)
            )
        else:
            m.single_flight_joins += 1
            download = Follower(self, rule, digest, lock)
        self._downloads[digest] = download
        download.start()
        return download

    def download_finished(self, download: Spool) -> None:
        if self._downloads.get(download.digest) is download:
            del self._downloads[download.digest]


def _tag_key(repository: str, tag: str) -> str:
    """How a failed tag check is remembered (here and in the shared database)."""
    return f"{repository}:{tag}"


def _manifest_lock(repository: str, reference: str) -> str:
    """The one lock for fetching or re-checking a manifest, so an import and a refresh never overlap."""
    return f"manifest {repository}:{reference}"


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
