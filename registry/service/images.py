"""Repositories, manifests, tags, blob links and referrers: the registry's domain rules.

Handlers call this with plain values and get records back; storage errors are translated into registry
errors here, once. Hot lookups (tag -> digest, manifests by digest, blob links) are served from an
in-memory LRU that every write invalidates.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

from registry import oci
from registry.cache import LRUCache
from registry.errors import (
    BlobUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestReferenceUnknown,
    ManifestUnknown,
    NameUnknown,
    TagImmutable,
)
from registry.glob import glob_matches
from registry.service.reader import AuthorizeImport, StoredBlob, no_import_check
from storage.blobs import BlobStore
from storage.coordination import ChangeFeed
from storage.errors import BlobNotFound, TagConflict
from storage.metadata import MetadataStore
from storage.records import (
    ImageRecord,
    ManifestRecord,
    ManifestWrite,
    Page,
    RepositoryInit,
    RepositoryRecord,
    RepositorySettings,
)

MAX_PAGE = 1000
IMAGE_PAGE = 500
OFFLOAD_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class PushResult:
    digest: str
    tags: tuple[str, ...]
    subject: str | None
    media_type: str
    created: bool  # the manifest was new to the repository
    moved_tags: tuple[str, ...]  # tags that point at it now and did not before
    restored: bool = False  # it was archived, and this push made it active again


@dataclass(frozen=True, slots=True)
class Pushed:
    """What a push (a /v2 manifest PUT, PutImage or an import; never a pull-through fill) stored: what the push
    hooks get."""

    repository: str
    result: PushResult
    manifest: oci.ParsedManifest

    @property
    def changed(self) -> bool:
        """The manifest was new to the repository, or a tag moved to it."""
        return self.result.created or bool(self.result.moved_tags)


# Run after a push stored its manifest, before the push is acknowledged (replication queues the image, signing
# signs it); each decides for itself whether the push concerns it.
PushHook = Callable[[Pushed], Awaitable[object]]
# Asked before a manifest is served to a pull (/v2 GET and HEAD, BatchGetImage); raises to refuse it.
PullCheck = Callable[[str, ManifestRecord], Awaitable[None]]


def referrer_descriptor(m: ManifestRecord) -> dict[str, Any]:
    """A referrer as the referrers API lists it (and ListImageReferrers, which adds its status)."""
    d: dict[str, Any] = {"mediaType": m.media_type, "digest": m.digest, "size": m.size}
    if m.artifact_type:
        d["artifactType"] = m.artifact_type
    if m.annotations:
        d["annotations"] = m.annotations
    return d


def tag_is_immutable(settings: RepositorySettings, tag: str) -> bool:
    """ECR's tag mutability: IMMUTABLE and MUTABLE, each optionally with wildcard filters that flip it."""
    mode = settings.image_tag_mutability
    excluded = any(glob_matches(f, tag, single=False) for f in settings.mutability_exclusions)
    if mode == "IMMUTABLE":
        return True
    if mode == "IMMUTABLE_WITH_EXCLUSION":
        return not excluded
    if mode == "MUTABLE_WITH_EXCLUSION":
        return excluded
    return False


V = TypeVar("V")
REPLICATION = "REPLICATION"
# Why a push would create its repository (the creation template's `appliedFor`): CREATE_ON_PUSH, or REPLICATION
# for a request another registry's replication sends (set by the web layer for that request's task).
PUSH_REASON: contextvars.ContextVar[str] = contextvars.ContextVar("push_reason", default="CREATE_ON_PUSH")


class ImageService:
    def __init__(
        self,
        meta: MetadataStore,
        blobs: BlobStore,
        changes: ChangeFeed | None = None,
        *,
        create_on_push: bool = True,
        cache_entries: int = 10000,
        clock: Callable[[], float] = time.time,
        templates: Callable[[str, str], Awaitable[RepositoryInit | None]] | None = None,
        pull_time_excluded: Callable[[str | None], bool] = lambda principal_arn: False,
    ) -> None:
        self.meta = meta
        self.blobs = blobs
        self.changes = changes  # other processes' commits: the cache is dropped when it moves
        self.create_on_push = create_on_push
        # (repository, "CREATE_ON_PUSH" | "PULL_THROUGH_CACHE") -> what a new repository starts with
        self.templates = templates
        self.cache = LRUCache(cache_entries)
        self.clock = clock
        self._pulls: dict[tuple[str, str], float] = {}  # (repository, digest) -> last pull, not yet stored
        # Principals whose pulls record no pull time (ECR's pull-time update exclusions: scanners, mirrors).
        self.pull_time_excluded = pull_time_excluded
        # In order, after every push (not a pull-through fill), before it is acknowledged.
        self.push_hooks: list[PushHook] = []
        self.pull_checks: list[PullCheck] = []
        self._epoch = 0
        self._loads: dict[tuple[Hashable, int], asyncio.Future[Any]] = {}  # reads under way: (key, cache version)

    def _cache(self) -> LRUCache:
        """The cache, emptied first if another process (a worker, an offline command) wrote since it was filled."""
        epoch = self.changes.epoch() if self.changes is not None else 0
        if epoch != self._epoch:
            self._epoch = epoch
            self.cache.clear()
        return self.cache

    async def _cached(self, key: Hashable, load: Callable[[], Awaitable[V | None]]) -> V | None:
        """The cache's value of `key`, else what `load` reads (kept unless None, or the cache was invalidated
        while it read). Callers that miss one key with the cache unchanged share one read: when the epoch moves,
        every request in flight misses the same keys at once, and one read each would be as many round trips
        to a shared database. A caller that comes after an invalidation starts a read of its own."""
        cache = self._cache()
        value: V | None = cache.get(key)
        if value is not None:
            return value
        version = cache.version
        flight = (key, version)
        load_task = self._loads.get(flight)
        if load_task is None:

            async def read() -> V | None:
                found = await load()
                if found is not None:
                    self.cache.put_if_current(version, key, found)
                return found

            load_task = asyncio.ensure_future(read())
            self._loads[flight] = load_task
            load_task.add_done_callback(lambda done: self._landed(flight, done))
        result: V | None = await asyncio.shield(load_task)  # (a caller that leaves does not cancel the others')
        return result

    def _landed(self, flight: tuple[Hashable, int], done: asyncio.Future[Any]) -> None:
        if self._loads.get(flight) is done:
            del self._loads[flight]
        if not done.cancelled():
            done.exception()  # (retrieved: raised to the callers that await it)

    # -- repositories ------------------------------------------------------------------------------
    async def repository(self, name: str) -> RepositoryRecord:
        repo = await self._cached(("repo", name), lambda: self.meta.get_repository(name))
        if repo is None:
            raise NameUnknown(f"repository {name} not known to registry", detail={"name": name})
        return repo

    def cached_repository(self, name: str) -> RepositoryRecord | None:
        """The repository if the cache holds it (no store read; None also when it does not exist)."""
        repo: RepositoryRecord | None = self._cache().get(("repo", name))
        return repo

    async def has_repository(self, name: str) -> bool:
        try:
            await self.repository(name)
            return True
        except NameUnknown:
            return False

    async def policy_of(self, name: str) -> str | None:
        """The repository's policy text (None without one, or without the repository)."""
        try:
            return (await self.repository(name)).policy
        except NameUnknown:
            return None

    async def image(self, name: str, digest: str) -> ImageRecord | None:
        """The image `digest` of the repository (its tags, sizes, times, storage class), or None."""
        return (await self.meta.images_by_digest(name, [digest])).get(digest)

    async def parents_of(self, name: str, digest: str) -> list[str]:
        """The indexes of the repository that list the manifest `digest`."""
        return (await self.meta.parents_of(name, [digest])).get(digest, [])

    async def iter_images(self, name: str, after_id: int = 0) -> AsyncIterator[ImageRecord]:
        """The repository's images in push order (by id) after `after_id`, read a page at a time."""
        while batch := await self.meta.list_images(name, after_id, IMAGE_PAGE):
            for img in batch:
                yield img
            after_id = batch[-1].id

    async def repository_for_push(self, name: str) -> RepositoryRecord:
        """The repository a push writes to, created on first push when `create_on_push` is set; a replicated
        push (`PUSH_REASON` REPLICATION) creates it always, with the REPLICATION creation template, as on ECR."""
        try:
            return await self.repository(name)
        except NameUnknown:
            reason = PUSH_REASON.get()
            if not self.create_on_push and reason != REPLICATION:
                raise
        return await self.create_repository(name, reason)

    async def create_repository(self, name: str, reason: str) -> RepositoryRecord:
        """Create (or get) a repository, with the settings of the creation template that applies, if any."""
        init = await self.templates(name, reason) if self.templates else None
        return await self.meta.ensure_repository(name, self.clock(), init)

    async def catalog(self, last: str | None, n: int | None) -> Page:
        return await self.meta.list_repositories(last, _page_size(n))

    async def visible_catalog(
        self, last: str | None, n: int | None, visible: Callable[[RepositoryRecord], bool]
    ) -> Page:
        """A catalog page of the repositories `visible` accepts; `more` only when a visible one follows."""
        records, more = await self.visible_repositories(last, _page_size(n), visible)
        return Page([r.name for r in records], more)

    async def visible_repositories(
        self, last: str | None, limit: int, visible: Callable[[RepositoryRecord], bool]
    ) -> tuple[list[RepositoryRecord], bool]:
        """Up to `limit` repositories after `last` (by name) that `visible` accepts, and whether another visible
        one follows. Hidden repositories leave no trace: the page, where it ends and whether there is a next one
        depend only on what the caller may see (so a cursor naming the last item never names a hidden one, and
        a caller is never handed a next page that turns out empty)."""
        out: list[RepositoryRecord] = []
        batch_size = min(limit + 1, MAX_PAGE)
        while True:
            batch = await self.meta.describe_repositories(last, batch_size)
            for record in batch:
                if visible(record):
                    if len(out) == limit:
                        return out, True
                    out.append(record)
            if len(batch) < batch_size:
                return out, False
            last = batch[-1].name
            batch_size = min(batch_size * 2, MAX_PAGE)  # sparse visibility: fewer, larger reads

    async def list_tags(self, name: str, last: str | None, n: int | None) -> Page:
        await self.repository(name)
        return await self.meta.list_tags(name, last, _page_size(n))

    # -- manifests ---------------------------------------------------------------------------------
    async def resolve(self, name: str, reference: str) -> str:
        """A reference (tag or digest) to a digest known in the repository."""
        if oci.is_digest(reference):
            return reference
        digest = await self._cached(("tag", name, reference), lambda: self.meta.resolve_tag(name, reference))
        if digest is None:
            await self.repository(name)
            raise ManifestUnknown(
                f"manifest tagged {reference} is not in repository {name}",
                detail={"name": name, "tag": reference},
            )
        return digest

    async def get_manifest(
        self, name: str, reference: str, authorize_import: AuthorizeImport = no_import_check
    ) -> ManifestRecord:
        """The stored manifest (`authorize_import` is for readers that import: `service.reader.ImageReader`)."""
        digest = await self.resolve(name, reference)
        record = await self._cached(("manifest", name, digest), lambda: self.meta.get_manifest(name, digest))
        if record is None:
            await self.repository(name)
            raise ManifestUnknown(
                f"manifest {digest} is not in repository {name}", detail={"name": name, "digest": digest}
            )
        return record

    def cached_manifest(self, name: str, reference: str) -> ManifestRecord | None:
        """The manifest if the cache holds it and its tag (no store read): None asks `get_manifest`."""
        cache = self._cache()
        digest = reference if oci.is_digest(reference) else cache.get(("tag", name, reference))
        if digest is None:
            return None
        record: ManifestRecord | None = cache.get(("manifest", name, digest))
        return record

    async def put_manifest(
        self,
        name: str,
        reference: str,
        body: bytes,
        content_type: str | None,
        extra_tags: tuple[str, ...] = (),
        *,
        trusted: bool = False,
    ) -> PushResult:
        """Store a manifest byte-exact under its digest, and tag it.

        `reference` is a tag or the digest the client says the body has; `extra_tags` are the `?tag=`
        parameters of a push by digest.
        """
        if oci.is_digest(reference):
            digest = oci.validate_digest(reference)
            tags = tuple(oci.validate_tag(t) for t in extra_tags)
        else:
            digest = None
            tags = tuple(dict.fromkeys([oci.validate_tag(reference), *(oci.validate_tag(t) for t in extra_tags)]))
        algorithm = oci.digest_algorithm(digest) if digest else "sha256"
        if len(body) > OFFLOAD_BYTES:  # parsing and hashing megabytes would stall the event loop
            parsed, actual = await asyncio.to_thread(_inspect, body, content_type, algorithm)
        else:
            parsed, actual = _inspect(body, content_type, algorithm)
        if digest is not None and actual != digest:
            raise DigestInvalid(
                f"manifest digest is {actual}, not {digest}", detail={"expected": digest, "actual": actual}
            )
        digest = actual
        create: RepositoryInit | None = None
        if trusted:  # a manifest from an upstream: its blobs and children arrive when first asked for
            try:
                settings = (await self.repository(name)).settings
            except NameUnknown:  # a new cache repository: it is created with this manifest, in one transaction
                template = await self.templates(name, "PULL_THROUGH_CACHE") if self.templates else None
                create = template or RepositoryInit()
                settings = create.settings
        else:
            settings = (await self.repository_for_push(name)).settings
        required = () if trusted else parsed.required_blobs
        missing = set(required) - await self.meta.linked_blobs(name, required) if required else set()
        if required and not missing:  # linked, but are the bytes still there? (a crash mid-GC can orphan a row)
            missing = {d for d in required if await self.blobs.stat(d) is None}
        if missing:
            raise ManifestBlobUnknown(
                f"blob {sorted(missing)[0]} is not in repository {name}", detail={"missing": sorted(missing)}
            )
        if parsed.manifests and not trusted:
            children = parsed.referenced_manifests
            missing = set(children) - await self.meta.existing_manifests(name, children)
            if missing:
                raise ManifestReferenceUnknown(
                    f"manifest {sorted(missing)[0]} is not in repository {name}",
                    detail={"missing": sorted(missing)},
                )

        image_size = sum(d.size for d in parsed.layers)
        if parsed.manifests:
            child_images = await self.meta.images_by_digest(name, parsed.referenced_manifests)
            image_size = max((child.image_size for child in child_images.values()), default=0)
        protected = tuple(t for t in tags if tag_is_immutable(settings, t))
        try:
            outcome = await self.meta.put_manifest(
                ManifestWrite(
                    repository=name,
                    digest=digest,
                    media_type=parsed.media_type,
                    body=body,
                    pushed_at=self.clock(),
                    artifact_type=parsed.artifact_type,
                    subject=parsed.subject.digest if parsed.subject else None,
                    annotations=parsed.annotations,
                    blobs=parsed.referenced_blobs,
                    manifests=parsed.referenced_manifests,
                    tags=tags,
                    image_size=image_size,
                    config_media_type=parsed.config.media_type if parsed.config else None,
                    protected_tags=protected,
                    required_blobs=required,
                    create=create,
                )
            )
        except BlobNotFound as e:  # collected as garbage between the check above and the write
            raise ManifestBlobUnknown(f"blob {e} is not in repository {name}", detail={"missing": [str(e)]}) from None
        except TagConflict as e:
            raise TagImmutable(
                f"The image tag '{e.tag}' already exists in the '{name}' repository and cannot be overwritten "
                "because the tag is immutable.",
                detail={"tag": e.tag, "digest": e.digest},
            ) from None
        for tag in tags:
            self.cache.pop(("tag", name, tag))
        if outcome.restored:
            self.forget_manifest(name, digest)
        subject = parsed.subject.digest if parsed.subject else None
        result = PushResult(
            digest, tags, subject, parsed.media_type, outcome.created, outcome.moved_tags, outcome.restored
        )
        if not trusted:
            pushed = Pushed(name, result, parsed)
            for hook in self.push_hooks:
                await hook(pushed)
        return result

    async def check_pull(self, name: str, record: ManifestRecord) -> None:
        """Before a pull is served the manifest: each pull check may refuse it (by raising)."""
        for check in self.pull_checks:
            await check(name, record)

    # -- repository settings (each write invalidates the cached record) ----------------------------
    def forget_repository(self, name: str) -> None:
        self.cache.pop(("repo", name))

    def forget_manifest(self, name: str, digest: str) -> None:
        """After a manifest changed (its storage class): its record, and whether the repository has archives."""
        self.cache.pop(("manifest", name, digest))
        self.cache.pop(("archived", name))

    async def blob_archived_only(self, name: str, digest: str) -> bool:
        """Whether every image of the repository that uses the blob is archived. Cheap when none is archived
        (one cached answer per repository), since it is asked on every blob GET."""
        archived = await self._cached(("archived", name), lambda: self.meta.has_archived_images(name))
        return bool(archived) and await self.meta.blob_archived_only(name, digest)

    def cached_unarchived_blob(self, name: str, digest: str) -> int | None:
        """The size of a blob linked in the repository, when the cache holds it and holds that the repository
        has no archived image (no store read); None asks `blob_archived_only` and `blob_size`."""
        cache = self._cache()
        if cache.get(("archived", name)) is not False:
            return None
        size: int | None = cache.get(("blob", name, digest))
        return size

    def forget_all(self) -> None:
        """After a repository is deleted: its tags, manifests and blob links may be cached anywhere."""
        self.cache.clear()

    # -- pulls -------------------------------------------------------------------------------------
    def note_pull(self, name: str, digest: str, principal_arn: str | None = None) -> None:
        """Remember a pull (unless the principal is excluded from pull-time updates); `flush_pulls` stores the
        times in one write (no database write per pull)."""
        if not self.pull_time_excluded(principal_arn):
            self._pulls[(name, digest)] = self.clock()

    async def flush_pulls(self) -> int:
        pulls, self._pulls = self._pulls, {}
        await self.meta.record_pulls((repo, digest, t) for (repo, digest), t in pulls.items())
        return len(pulls)

    async def delete_manifest(self, name: str, reference: str) -> None:
        """By digest: the manifest and every tag on it. By tag: just the tag."""
        if oci.is_digest(reference):
            oci.validate_digest(reference)
            tags = await self.meta.delete_manifest(name, reference)
            if tags is None:
                await self.repository(name)
                raise ManifestUnknown(f"manifest {reference} is not in repository {name}")
            self.cache.pop(("manifest", name, reference))
            self._pulls.pop((name, reference), None)
            for tag in tags:
                self.cache.pop(("tag", name, tag))
        else:
            oci.validate_tag(reference)
            if await self.meta.delete_tag(name, reference) is None:
                await self.repository(name)
                raise ManifestUnknown(f"tag {reference} is not in repository {name}")
            self.cache.pop(("tag", name, reference))

    async def referrer_records(self, name: str, digest: str) -> list[ManifestRecord]:
        """The manifests of the repository whose subject is `digest`, archived ones included: what both
        `/v2/<name>/referrers/<digest>` and ECR's ListImageReferrers list."""
        oci.validate_digest(digest)
        return list(await self.meta.referrers(name, digest))

    async def referrers(self, name: str, digest: str, artifact_type: str | None) -> bytes:
        """The referrers index for `digest` (an empty one when nothing refers to it)."""
        descriptors = []
        for m in await self.referrer_records(name, digest):
            if artifact_type is None or m.artifact_type == artifact_type:
                descriptors.append(referrer_descriptor(m))
        return json.dumps(
            {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": descriptors}, separators=(",", ":")
        ).encode()

    # -- blobs -------------------------------------------------------------------------------------
    async def blob_size(self, name: str, digest: str) -> int:
        """Size of a blob linked in the repository; BlobUnknown otherwise."""
        size = await self._cached(("blob", name, digest), lambda: self.meta.linked_blob_size(name, digest))
        if size is None:
            raise BlobUnknown(f"blob {digest} is not in repository {name}", detail={"digest": digest})
        return size

    async def read_small_blob(self, name: str, digest: str, limit: int) -> bytes | None:
        """The bytes of a blob linked in the repository (an image's config, for the console); None when it is
        over `limit` bytes or its bytes are not stored here (a cache repository's blob not fetched yet)."""
        try:
            size = await self.blob_size(name, digest)
        except BlobUnknown:
            return None
        if size > limit:
            return None
        parts: list[bytes] = []
        try:
            async for chunk in self.blobs.read(digest, 0, size):
                parts.append(chunk)
        except BlobNotFound:
            return None
        return b"".join(parts)

    async def link_blob(self, name: str, digest: str, size: int, *, upstream: str | None = None) -> None:
        """Link stored bytes into a repository (an upload, a mount, a pull-through download, an import).

        Garbage collection claims a blob before it deletes the bytes, and a claimed blob refuses links; the link
        also touches the blob, so once it is made no collection can claim it for the grace period. What is left
        is bytes deleted by a collection that finished just before the link: the bytes are looked for after
        it, and their absence undoes it. BlobNotFound: the bytes are gone (the caller says "retry")."""
        await self.meta.link_blob(name, digest, size, self.clock(), upstream=upstream)
        if await self.blobs.stat(digest) is None:
            await self.meta.unlink_blob(name, digest)
            raise BlobNotFound(digest)

    async def open_blob(
        self, name: str, digest: str, authorize_import: AuthorizeImport = no_import_check, *, head: bool = False
    ) -> StoredBlob:
        """A blob linked in the repository (`service.reader.ImageReader`); BlobUnknown otherwise."""
        return StoredBlob(digest, await self.blob_size(name, digest))

    async def repositories_with_blob(self, digest: str) -> list[str]:
        return await self.meta.repositories_with_blob(digest)

    async def delete_blob(self, name: str, digest: str) -> None:
        """Unlink a blob from a repository; the bytes go when garbage collection finds them unreferenced."""
        if not await self.meta.unlink_blob(name, digest):
            raise BlobUnknown(f"blob {digest} is not in repository {name}", detail={"digest": digest})
        self.cache.pop(("blob", name, digest))


def _page_size(n: int | None) -> int:
    return MAX_PAGE if n is None else min(n, MAX_PAGE)


def _inspect(body: bytes, content_type: str | None, algorithm: str) -> tuple[oci.ParsedManifest, str]:
    return oci.parse_manifest(body, content_type), oci.compute_digest(body, algorithm)
