"""The metadata store contract: repositories, manifests, tags, blob links, rules, uploads, lifecycle state, and the
registry's own settings.

Small Protocols composed into one `MetadataStore`. A driver stores and answers; it decides no policy. Rules
are decided above it and handed down as data: which tags may not move (`ManifestWrite.protected_tags`,
from the repository's immutability settings), which blobs a manifest requires (`required_blobs`, re-checked
inside the write), which blobs garbage collection may take (`claim_blob`'s condition, from the grace period).
Each multi-row write is one transaction.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from typing import Protocol

from storage.records import (
    BackfillProgress,
    BackfillRecord,
    BlobRow,
    ImageRecord,
    LifecyclePreview,
    ManifestRecord,
    ManifestWrite,
    NewReplication,
    Page,
    PullThroughRule,
    PutOutcome,
    ReplicationTask,
    RepositoryInit,
    RepositoryRecord,
    RepositorySettings,
    ScanRecord,
    UploadRecord,
)
from storage.snapshot import Batch


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
        *,
        upstream: str | None = None,
    ) -> None:
        """Link (and touch) a blob. BlobNotFound when garbage collection has claimed it (the caller checks that
        the bytes are still stored after the link: `registry.service.blobs.link_stored`). `upstream` records
        that a pull-through download from that upstream sent (and proved) these bytes."""

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
        """Set last-pulled times from (repository, digest, time) triples. Not a change other processes hear of
        (their change feeds' epochs stay, and there is nothing to settle): no cache holds pull times (they are read
        from the store when asked for), and every worker of every replica stores its pulls every few seconds
        while pulls go on, which would otherwise empty every other process's caches as often, and send the
        requests in flight the full way to fill them again."""

    async def repository_sizes(self) -> list[tuple[str, int, int]]:
        """(name, images, bytes) of every repository, by name: its manifests counted and their image sizes
        (`ImageRecord.image_size`, DescribeImages' imageSizeInBytes) summed, in one query."""


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
    """Garbage collection's three steps, none holding a transaction across blob I/O: claim a blob (a tombstone
    that refuses new links), delete its bytes from the blob store, drop the row. A crash in between leaves a
    tombstone, which the next run finishes."""

    async def unreferenced_blobs(self, touched_before: float, after: str, limit: int) -> list[BlobRow]:
        """Blobs (by digest, after `after`) that no manifest references and nothing touched since
        `touched_before`, and tombstones left by an interrupted collection."""

    async def claim_blob(self, digest: str, touched_before: float) -> bool:
        """Atomically: if no manifest references the blob and nothing touched it since `touched_before` (or it
        has no row at all: stored bytes nothing recorded), tombstone it and remove its links. True for a blob
        already claimed (an interrupted collection is finished); False otherwise."""

    async def drop_blob(self, digest: str) -> None:
        """Remove a claimed blob's tombstone (its bytes are gone); a blob that is not claimed stays."""

    async def known_blobs(self, digests: Iterable[str]) -> set[str]:
        """Which of these digests have a row (linked, or claimed)."""

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


class SharedValues(Protocol):
    """Small values every process and replica must agree on (signing keys, generated credentials), by name."""

    async def get_value(self, name: str) -> bytes | None: ...

    async def values(self, prefix: str) -> dict[str, bytes]:
        """Every value whose name starts with `prefix`."""

    async def put_value(self, name: str, value: bytes, *, replace: bool = True) -> bytes:
        """Store a value; with `replace=False` only if the name is free. Returns the value stored under the name
        afterwards (the one already there when another process got there first)."""

    async def delete_value(self, name: str) -> bool:
        """Remove a value; False when there was none."""


class RegistrySettingsStore(Protocol):
    """The registry's own documents and settings (its policy, account settings, scanning, signing and replication
    configurations) as text by name, and the principals whose pulls record no pull time (ECR's pull-time update
    exclusions). The service above decides what the names and texts mean."""

    async def registry_settings(self) -> dict[str, tuple[str, float]]:
        """Every setting: name -> (value, updated_at)."""

    async def put_registry_setting(self, name: str, value: str, now: float) -> None: ...

    async def delete_registry_setting(self, name: str) -> str | None:
        """Remove a setting; returns the value it had (None: there was none)."""

    async def pull_time_exclusions(self) -> list[tuple[str, float]]:
        """(principal ARN, created_at) of every exclusion, by ARN."""

    async def add_pull_time_exclusion(self, principal_arn: str, now: float) -> bool:
        """False (and nothing changes) when the principal is excluded already."""

    async def remove_pull_time_exclusion(self, principal_arn: str) -> bool:
        """False when the principal was not excluded."""


class ReplicationQueue(Protocol):
    """Replication's durable queue: one task per (image, destination) copy, claimed under a lease so that one
    process (of any replica) runs it at a time, and a crashed runner's task is taken up again when its lease
    ends. Tasks of one (destination, repository) run in queue order, so a tag pushed twice ends where the last
    push put it. And the backfills that queue a registry's existing images."""

    async def enqueue_replications(self, tasks: Sequence[NewReplication], now: float) -> int:
        """Queue the tasks (pending, due now) in one transaction, skipping any identical (digest and tags) to the
        newest task still pending for its destination and repository, which will leave the destination as this
        one would; returns how many were queued. (Identical to an older pending task is queued: a tag pushed A, B,
        A must end on A.)"""

    async def claim_replication(self, now: float, lease_until: float, owner: str) -> ReplicationTask | None:
        """Lease the oldest pending task that is due (`due_at <= now`), not leased by anyone (or its lease ended
        before `now`), and has no older pending task of the same destination and repository. Sets its lease
        (`owner` until `lease_until`) and counts an attempt; None when there is none. Two claimers never get
        the same task."""

    async def renew_replication(self, task_id: int, owner: str, lease_until: float) -> bool:
        """Extend a lease still held by `owner` (a long copy); False when it was lost."""

    async def finish_replication(
        self, task_id: int, owner: str, state: str, error: str | None, due_at: float, now: float
    ) -> bool:
        """Record an attempt's end and free the lease: `state` "complete", "failed", or "pending" again (to retry
        at `due_at`, with `error`). Only while `owner` holds the lease; False (nothing changes) otherwise."""

    async def replication_states(self, repository: str, digest: str) -> dict[str, ReplicationTask]:
        """The newest task per destination for an image."""

    async def replication_tasks(
        self, *, backfill: str | None = None, state: str | None = None, after: int = 0, limit: int = 1000
    ) -> list[ReplicationTask]:
        """Tasks by id after `after` (all, a backfill's, in a state)."""

    async def prune_replications(self, finished_before: float) -> int:
        """Delete tasks that ended (complete, failed, stopped) before then and belong to no backfill that is kept;
        returns how many."""

    async def create_backfill(self, backfill: BackfillRecord) -> bool:
        """Store a new backfill; False (nothing stored) when a backfill of the same destination is PREPARING,
        IN_PROGRESS or STOPPING."""

    async def get_backfill(self, backfill_id: str) -> BackfillRecord | None: ...

    async def list_backfills(self) -> list[BackfillRecord]:
        """Every backfill, newest first."""

    async def update_backfill(
        self,
        backfill_id: str,
        status: str,
        *,
        ended_at: float | None = None,
        failure: str | None = None,
        only_from: Sequence[str] = (),
    ) -> bool:
        """Set a backfill's status (and end, failure); with `only_from`, only when its status is one of those.
        False when nothing changed."""

    async def stop_backfill_tasks(self, backfill_id: str, now: float) -> int:
        """Mark the backfill's pending tasks that nobody holds a lease on "stopped"; returns how many."""

    async def backfill_progress(self, backfill_id: str) -> BackfillProgress:
        """Its tasks counted: all, complete, failed, and failed tasks' distinct errors."""

    async def delete_backfills(self, ended_before: float) -> int:
        """Forget backfills that ended before then, with their tasks (ECR keeps them 90 days)."""


class ScanStore(Protocol):
    """Vulnerability scanning: the advisories of the vulnerability database (OSV records, as JSON text, by id) and
    each image's latest scan."""

    async def put_vulnerabilities(self, records: Sequence[tuple[str, str, str]], now: float) -> list[str]:
        """Store (id, modified, JSON text) records in one transaction: a new id is inserted, a known one replaced
        when `modified` (ISO 8601 UTC, compared as text) is later than the stored one's. Returns the ids inserted
        or replaced, in the order given."""

    async def vulnerability_records(self, after: str, limit: int) -> list[tuple[str, str]]:
        """(id, JSON text) of the records whose id sorts after `after` (by byte order), at most `limit`."""

    async def vulnerability_stats(self) -> tuple[int, float | None]:
        """How many records are stored, and when the last one was stored (None: never)."""

    async def put_scan(self, scan: ScanRecord) -> None:
        """Store an image's scan, replacing the one it had."""

    async def get_scans(self, repository: str, digests: Iterable[str]) -> dict[str, ScanRecord]:
        """The scans of these images of the repository, by digest (images never scanned are absent)."""

    async def scans_after(self, repository: str, digest: str, limit: int) -> list[ScanRecord]:
        """Every scan, ordered by (repository, digest), after that pair (`("", "")`: from the start)."""

    async def delete_scans(self, repository: str, digests: Iterable[str]) -> int:
        """Forget the scans of these images; returns how many there were."""


class Snapshot(Protocol):
    """Every row, out and in, in the drivers' common form (`storage.snapshot`): how `moorage migrate-storage` copies
    a registry's metadata from one driver to another, without SQL of its own."""

    def export_rows(self, tables: Sequence[str] | None = None) -> AsyncIterator[Batch]:
        """Every row of every table (or of `tables`), table by table in `storage.snapshot.TABLES` order, in
        batches of bounded size, each table's rows in primary key order."""

    async def import_rows(self, batches: AsyncIterable[Batch]) -> dict[str, int]:
        """Insert the rows in one transaction, so a reader sees all of them or none; returns rows per table.
        Raises Conflict (and inserts nothing) when a row's key is taken, except in `shared_values`, where the
        value given replaces the one stored."""

    async def row_counts(self) -> dict[str, int]:
        """How many rows each table holds (those a snapshot would carry)."""


class MetadataStore(
    RepositoryStore,
    BlobLinks,
    ManifestStore,
    PullThroughStore,
    LifecycleStore,
    GarbageStore,
    TemplateStore,
    UploadStore,
    SharedValues,
    RegistrySettingsStore,
    ReplicationQueue,
    ScanStore,
    Snapshot,
    Protocol,
):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def storage_stats(self) -> dict[str, int]:
        """uploads_in_progress, blobs, blob_bytes, repositories, images."""

    async def health(self) -> list[str]:
        """What keeps the store from answering (empty: ready); raises when it cannot even be asked."""
