"""Records the stores take and return: frozen dataclasses in the words of the specs (digest, reference, tag)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

STANDARD, ARCHIVE = "STANDARD", "ARCHIVE"  # an image's storage class (ECR's words)


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
    results: list[dict[str, Any]] | None = None


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
    storage_class: str = STANDARD

    @property
    def archived(self) -> bool:
        """Archived images are not pulled until restored (ECR's archive storage class)."""
        return self.storage_class == ARCHIVE


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
    storage_class: str = STANDARD
    last_archived_at: float | None = None
    last_activated_at: float | None = None

    @property
    def archived(self) -> bool:
        """Archived images are not pulled until restored (ECR's archive storage class)."""
        return self.storage_class == ARCHIVE


@dataclass(frozen=True, slots=True)
class PutOutcome:
    created: bool  # the manifest was new to the repository
    moved_tags: tuple[str, ...]  # tags that now point at it and didn't before
    restored: bool = False  # it was archived, and pushing it again made it active (as on ECR)


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


@dataclass(frozen=True, slots=True)
class BlobRow:
    """A blob as the metadata store knows it (garbage collection's view)."""

    digest: str
    size: int
    touched_at: float
    claimed: bool = False  # tombstoned by a collection that has not finished


@dataclass(frozen=True, slots=True)
class NewReplication:
    """An image to copy to one replication destination: queued by a push (or a backfill), durably."""

    destination: str  # "region/registryId", the key of a configured destination
    repository: str
    digest: str
    tags: tuple[str, ...] = ()  # the tags the push set (copied after the manifest, in this order)
    backfill: str | None = None  # the backfill that queued it


@dataclass(frozen=True, slots=True)
class ReplicationTask:
    """A queued copy. `state`: "pending" (waiting, running or retrying after `error`), "complete", "failed" (given
    up: `error` says why), or "stopped" (its backfill was stopped before it ran)."""

    id: int
    destination: str
    repository: str
    digest: str
    tags: tuple[str, ...]
    backfill: str | None
    state: str
    attempts: int
    due_at: float  # when a pending task may run (next)
    error: str | None
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class BackfillRecord:
    """A replication backfill (ECR's StartReplicationBackfill): PREPARING while it queues the images,
    IN_PROGRESS while they are copied, then COMPLETE; STOPPING, STOPPED; FAILED when it could not be prepared."""

    id: str
    destination: str  # "region/registryId"
    status: str
    started_at: float
    ended_at: float | None = None
    failure: str | None = None


@dataclass(frozen=True, slots=True)
class BackfillProgress:
    total: int
    complete: int
    failed: int
    failure_codes: tuple[str, ...]  # the distinct errors of its failed tasks


@dataclass(frozen=True, slots=True)
class ScanRecord:
    """An image's latest vulnerability scan, as ECR's scan APIs report it."""

    repository: str
    digest: str
    status: str  # ECR's ScanStatus: IN_PROGRESS, COMPLETE, FAILED, UNSUPPORTED_IMAGE
    description: str
    started_at: float
    completed_at: float | None = None
    database_updated_at: float | None = None  # when the vulnerability database it used was last imported
    findings: str = "[]"  # JSON: the findings, ECR-shaped
    packages: str = "[]"  # JSON: [[ecosystem, name], ...] the image's packages are looked up under (new advisories)


def newest_per_id(records: Sequence[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """Vulnerability records (id, modified, JSON text) as `ScanStore.put_vulnerabilities` applies them, one per id:
    an id given more than once keeps its latest `modified` (the first of equals, as applying them in turn would),
    at the place of its first occurrence."""
    chosen: dict[str, tuple[str, str, str]] = {}
    for record in records:
        held = chosen.get(record[0])
        if held is None or record[1] > held[1]:
            chosen[record[0]] = record  # a replaced value keeps its key's place
    return list(chosen.values())
