"""Storage records, interfaces and errors.

Two stores sit under the registry: a `BlobStore` for immutable content-addressed bytes (filesystem today,
S3-compatible object storage later) and a `MetadataStore` for everything else (SQLite today, PostgreSQL
later). Both are Protocols composed of small ones, so a backend implements exactly what it must, and the
HTTP layer never knows which backend it has. This package never imports `registry`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

# -- errors ----------------------------------------------------------------------------------------


class StorageError(Exception):
    """Base of storage errors; the service layer translates them into registry errors once."""


class BlobNotFound(StorageError):
    pass


class UploadNotFound(StorageError):
    pass


class DigestMismatch(StorageError):
    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"expected {expected}, content is {actual}")
        self.expected, self.actual = expected, actual


class OffsetMismatch(StorageError):
    """A chunk that does not start where the upload currently ends."""

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"upload is at offset {expected}, chunk starts at {got}")
        self.expected, self.got = expected, got


class SizeMismatch(StorageError):
    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"expected {expected} bytes, received {got}")
        self.expected, self.got = expected, got


class Conflict(StorageError):
    """A uniqueness rule in the metadata store refused the write."""


class StorageFull(StorageError):
    """No space (or no inodes, or a quota) left for a write; the write was undone. Its message may name server
    paths: for logs, not for clients."""


# -- records ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RepositorySettings:
    """What CreateRepository and friends set; defaults are ECR's."""

    image_tag_mutability: str = "MUTABLE"
    mutability_exclusions: tuple[str, ...] = ()  # wildcard tag filters that flip the mutability
    scan_on_push: bool = False
    encryption_type: str = "AES256"
    kms_key: str | None = None


@dataclass(frozen=True, slots=True)
class LifecyclePreview:
    """A lifecycle policy preview: IN_PROGRESS, then COMPLETE (with ECR's preview result objects) or FAILED."""

    policy_text: str
    status: str
    started_at: float
    results: list[dict] | None = None


@dataclass(frozen=True, slots=True)
class RepositoryRecord:
    id: int
    name: str
    created_at: float
    settings: RepositorySettings = RepositorySettings()
    policy: str | None = None
    lifecycle_policy: str | None = None
    lifecycle_evaluated_at: float | None = None


@dataclass(frozen=True, slots=True)
class ManifestRecord:
    repository: str
    digest: str
    media_type: str
    size: int
    artifact_type: str | None
    subject: str | None
    annotations: dict[str, str] | None
    pushed_at: float
    body: bytes
    storage_class: str = "STANDARD"


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """A manifest as ECR's image APIs see it (no body)."""

    id: int
    repository: str
    digest: str
    media_type: str
    size: int
    image_size: int
    config_media_type: str | None
    artifact_type: str | None
    subject: str | None
    pushed_at: float
    last_pulled_at: float | None
    tags: tuple[str, ...]
    storage_class: str = "STANDARD"
    last_archived_at: float | None = None
    last_activated_at: float | None = None


@dataclass(frozen=True, slots=True)
class PutOutcome:
    created: bool  # the manifest was new to the repository
    moved_tags: tuple[str, ...]  # tags that now point at it and didn't before
    restored: bool = False  # it was archived, and pushing it again made it active (as on ECR)


class TagConflict(StorageError):
    """A protected (immutable) tag already points at another manifest."""

    def __init__(self, tag: str, digest: str) -> None:
        super().__init__(f"tag {tag} already points at {digest}")
        self.tag, self.digest = tag, digest


class RepositoryExists(Conflict):
    pass


class RepositoryNotEmpty(Conflict):
    pass


@dataclass(frozen=True, slots=True)
class ManifestWrite:
    """One manifest push: stored with its references and tags in a single transaction."""

    repository: str
    digest: str
    media_type: str
    body: bytes
    pushed_at: float
    artifact_type: str | None = None
    subject: str | None = None
    annotations: dict[str, str] | None = None
    blobs: tuple[str, ...] = ()
    manifests: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    image_size: int = 0
    config_media_type: str | None = None
    protected_tags: tuple[str, ...] = ()  # tags that may not move to this manifest if they exist elsewhere
    required_blobs: tuple[str, ...] = ()  # re-checked inside the transaction (garbage collection runs concurrently)
    # Create the repository with these settings if it doesn't exist, in the same transaction: a pull-through
    # cache repository appears with its first manifest, never empty (no request sees it half made).
    create: RepositoryInit | None = None


@dataclass(frozen=True, slots=True)
class TagRecord:
    repository: str
    name: str
    digest: str
    updated_at: float


@dataclass(frozen=True, slots=True)
class PullThroughRule:
    """A pull-through cache rule (its logic is in registry.proxy.rules)."""

    prefix: str  # no trailing slash; "ROOT" for every repository
    upstream_url: str  # as configured: "registry-1.docker.io" or "http://127.0.0.1:5001"
    upstream_prefix: str = "ROOT"
    credential_arn: str | None = None
    upstream_registry: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True)
class RepositoryInit:
    """What a repository starts with (a creation template's settings, or the defaults)."""

    settings: RepositorySettings = RepositorySettings()
    policy: str | None = None
    lifecycle_policy: str | None = None
    tags: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class UploadRecord:
    id: str
    repository: str
    created_at: float
    owner: str | None = None  # the principal that started it ("" anonymous); None: nobody, so anyone's


@dataclass(slots=True)
class Page:
    items: list[str] = field(default_factory=list)
    more: bool = False


# -- blob store ------------------------------------------------------------------------------------


class BlobReader(Protocol):
    async def stat(self, digest: str) -> int | None:
        """The blob's size, or None when it is not stored."""

    def local_path(self, digest: str) -> Path | None:
        """A path the server can sendfile() from, for backends on the local filesystem; else None."""

    def read(self, digest: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """Stream a blob (or a byte range of it). Raises BlobNotFound."""


class BlobIngester(Protocol):
    async def start_upload(self, upload_id: str) -> None: ...

    async def upload_size(self, upload_id: str) -> int:
        """Bytes received so far. Raises UploadNotFound."""

    async def append(
        self,
        upload_id: str,
        chunks: AsyncIterator[bytes],
        *,
        offset: int | None = None,
        length: int | None = None,
    ) -> int:
        """Append a chunk stream; `offset`, when given, must equal the current size (OffsetMismatch), and
        `length`, when given, must equal the bytes received (SizeMismatch). Returns the new size."""

    async def commit(self, upload_id: str, digest: str) -> int:
        """Verify the upload against `digest` and make it the blob `digest` (atomically; a partial blob is
        never visible). Returns its size. DigestMismatch discards the upload."""

    async def abort(self, upload_id: str) -> None: ...

    async def ingest(self, chunks: AsyncIterator[bytes], digest: str, length: int | None = None) -> int:
        """A monolithic upload: stream, verify against `digest`, install. Returns the size."""

    async def put(self, digest: str, data: bytes) -> None:
        """Store a small blob whose digest the caller has already verified."""


class BlobSpooler(Protocol):
    """For downloads that clients read while they are written (the pull-through cache)."""

    def spool_path(self, digest: str | None = None) -> Path:
        """A local file to spool into: at a known path for `digest` (other processes follow a pull-through
        download there), a fresh private one without."""

    async def install_spooled(self, path: Path, digest: str) -> None: ...


class BlobDeleter(Protocol):
    async def delete(self, digest: str) -> bool: ...

    def iter_digests(self) -> AsyncIterator[str]:
        """Every stored blob digest (for garbage collection)."""


class BlobStore(BlobReader, BlobIngester, BlobSpooler, BlobDeleter, Protocol):
    async def close(self) -> None: ...


# -- metadata store --------------------------------------------------------------------------------


class RepositoryStore(Protocol):
    async def get_repository(self, name: str) -> RepositoryRecord | None: ...

    async def ensure_repository(
        self, name: str, now: float, init: RepositoryInit | None = None
    ) -> RepositoryRecord: ...

    async def create_repository(
        self, name: str, now: float, settings: RepositorySettings, tags: dict[str, str]
    ) -> RepositoryRecord:
        """Raises RepositoryExists."""

    async def delete_repository(self, name: str, force: bool) -> RepositoryRecord | None:
        """Delete a repository with its manifests, tags and blob links; RepositoryNotEmpty unless `force`."""

    async def update_settings(self, name: str, settings: RepositorySettings) -> RepositoryRecord | None: ...

    async def set_policy(self, name: str, policy: str | None) -> RepositoryRecord | None: ...

    async def list_repositories(self, last: str | None, limit: int) -> Page: ...

    async def describe_repositories(self, last: str | None, limit: int) -> list[RepositoryRecord]: ...

    async def resource_tags(self, name: str) -> dict[str, str]: ...

    async def tag_resource(self, name: str, tags: dict[str, str]) -> None: ...

    async def untag_resource(self, name: str, keys: list[str]) -> None: ...


class BlobLinks(Protocol):
    async def link_blob(
        self,
        repository: str,
        digest: str,
        size: int,
        now: float,
        check: Callable[[], bool] | None = None,
        *,
        upstream: str | None = None,
    ) -> None:
        """Link (and touch) a blob; `check`, run inside the write transaction, must say its bytes are still
        stored (garbage collection removes unreferenced blobs concurrently), else BlobNotFound. `upstream`
        records that a pull-through download from that upstream sent (and proved) these bytes."""

    async def blob_fetched_from(self, digest: str, upstream: str) -> bool:
        """Whether a verified pull-through download from `upstream` linked the blob into some repository."""

    async def linked_blob_size(self, repository: str, digest: str) -> int | None: ...

    async def linked_blobs(self, repository: str, digests: Iterable[str]) -> set[str]: ...

    async def unlink_blob(self, repository: str, digest: str) -> bool: ...

    async def blob_size(self, digest: str) -> int | None:
        """Size of a blob linked in any repository (for a mount without `from`)."""

    async def repositories_with_blob(self, digest: str, limit: int = 100) -> list[str]: ...


class ManifestStore(Protocol):
    async def put_manifest(self, write: ManifestWrite) -> PutOutcome:
        """Raises TagConflict (and writes nothing) when a protected tag points elsewhere."""

    async def get_manifest(self, repository: str, digest: str) -> ManifestRecord | None: ...

    async def resolve_tag(self, repository: str, tag: str) -> str | None: ...

    async def existing_manifests(self, repository: str, digests: Iterable[str]) -> set[str]: ...

    async def list_tags(self, repository: str, last: str | None, limit: int) -> Page: ...

    async def tags_of(self, repository: str, digest: str) -> list[str]: ...

    async def delete_manifest(self, repository: str, digest: str) -> list[str] | None:
        """Delete a manifest and its tags; returns the tags removed, None when it did not exist."""

    async def delete_tag(self, repository: str, tag: str) -> str | None:
        """Delete a tag; returns the digest it pointed at, None when it did not exist."""

    async def referrers(self, repository: str, subject: str) -> Sequence[ManifestRecord]: ...

    async def list_images(self, repository: str, after_id: int, limit: int) -> list[ImageRecord]:
        """Images in push order (by id), after `after_id`, at most `limit`."""

    async def images_by_digest(self, repository: str, digests: Iterable[str]) -> dict[str, ImageRecord]: ...

    async def parents_of(self, repository: str, digests: Iterable[str]) -> dict[str, list[str]]:
        """For each digest, the indexes in the repository that list it."""

    async def blob_referenced(self, repository: str, digest: str) -> bool:
        """Whether a manifest in the repository lists the blob."""

    async def has_archived_images(self, repository: str) -> bool: ...

    async def blob_archived_only(self, repository: str, digest: str) -> bool:
        """Whether the manifests of the repository that list the blob are all archived (and there is one)."""

    async def manifest_blobs(self, repository: str, digest: str) -> list[tuple[str, int]]:
        """(digest, size) of the blobs a manifest references."""

    async def blob_reference_counts(self, digests: Iterable[str]) -> dict[str, int]:
        """How many manifests, in all repositories, reference each blob."""

    async def record_pulls(self, pulls: Iterable[tuple[str, str, float]]) -> None:
        """Set last-pulled times from (repository, digest, time) triples."""


class PullThroughStore(Protocol):
    async def list_rules(self) -> list[PullThroughRule]: ...

    async def create_rule(self, rule: PullThroughRule) -> None:
        """Raises Conflict when the prefix is taken."""

    async def upsert_rule(self, rule: PullThroughRule) -> None: ...

    async def update_rule_credentials(
        self, prefix: str, credential_arn: str | None, now: float
    ) -> PullThroughRule | None: ...

    async def delete_rule(self, prefix: str) -> PullThroughRule | None: ...

    async def tag_checked_at(self, repository: str, tag: str) -> float | None:
        """When a cached tag was last confirmed against its upstream."""

    async def set_tag_checked(self, repository: str, tag: str, when: float) -> None: ...


class LifecycleStore(Protocol):
    async def set_lifecycle_policy(self, name: str, text: str | None) -> RepositoryRecord | None: ...

    async def put_lifecycle_preview(self, name: str, preview: LifecyclePreview) -> None: ...

    async def note_upstream_failure(self, key: str, when: float) -> None: ...

    async def upstream_failed_at(self, keys: Sequence[str]) -> float | None: ...

    async def clear_upstream_failure(self, key: str) -> None: ...

    async def get_lifecycle_preview(self, name: str) -> LifecyclePreview | None: ...

    async def mark_lifecycle_evaluated(self, name: str, when: float) -> None: ...

    async def set_storage_class(self, repository: str, digest: str, storage_class: str, now: float) -> bool: ...


class GarbageStore(Protocol):
    async def gc_candidates(self, cutoff: float, limit: int) -> list[tuple[str, int]]:
        """Blobs no manifest references and nothing has touched since `cutoff`."""

    async def delete_unreferenced_blob(self, digest: str, cutoff: float, unlink: Callable[[], None]) -> bool:
        """Re-check inside a write transaction, remove the blob's rows and (still inside it) its file."""

    async def known_blobs(self) -> set[str]: ...

    async def delete_orphan_file(self, digest: str, unlink: Callable[[], None]) -> bool:
        """Remove a stored file that has no blob row (a crash between install and link), atomically."""

    async def stale_uploads(self, before: float) -> list[str]: ...


class TemplateStore(Protocol):
    async def list_templates(self) -> list[tuple[str, str, float, float]]:
        """(prefix, JSON body, created_at, updated_at) for every repository creation template."""

    async def put_template(self, prefix: str, body: str, now: float, *, create: bool) -> bool:
        """Create (False when it exists) or update (False when it does not) a template."""

    async def delete_template(self, prefix: str) -> tuple[str, str, float, float] | None: ...


class UploadStore(Protocol):
    async def create_upload(self, upload: UploadRecord) -> None: ...

    async def get_upload(self, upload_id: str) -> UploadRecord | None: ...

    async def delete_upload(self, upload_id: str) -> None: ...


class MetadataStore(
    RepositoryStore,
    BlobLinks,
    ManifestStore,
    PullThroughStore,
    LifecycleStore,
    GarbageStore,
    TemplateStore,
    UploadStore,
    Protocol,
):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def storage_stats(self) -> dict[str, int]:
        """uploads_in_progress, blobs, blob_bytes, repositories, images."""

    async def ping(self) -> None:
        """Raise if the store can't answer a query."""

    def epoch(self) -> int:
        """A number that grows each time this process notices that another process (another worker, an
        offline command) committed a write; a cache filled at an older epoch must be dropped. Cheap enough to
        call before every cache lookup."""
