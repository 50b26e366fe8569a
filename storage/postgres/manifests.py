"""Blob links, manifests, tags, referrers and garbage collection's claims in PostgreSQL.

SQLite's single writer made every check-then-write atomic; here the row locks do, in one order (a repository's
row, then blob rows by digest), so the replicas' transactions wait for each other instead of deadlocking:

- A repository's manifests and tags have one writer at a time: `put_manifest`, `delete_manifest` and
  `delete_tag` lock the repository's row (`FOR NO KEY UPDATE`, which links and other inserts referring to the
  row do not wait for) before they read. So a protected tag is checked and written by one push at a time, and
  image ids grow in push order within a repository.
- A blob row is the meeting point of garbage collection and new references: `claim_blob` locks it
  (`FOR UPDATE`) before it checks for references; `put_manifest` locks its required blobs' rows (`FOR SHARE`)
  before it checks their links; `link_blob` updates it (`ON CONFLICT DO UPDATE ... WHERE NOT claimed`). Whoever
  comes second sees what the first committed: a claim after a push finds the reference, a push after a claim
  finds the link gone, a link after a claim finds the tombstone.
- `delete_repository` locks the repository's row `FOR UPDATE`; `link_blob` locks it `FOR KEY SHARE` first, so a
  link never lands in a repository being deleted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import asyncpg

from storage.errors import BlobNotFound, StorageError, TagConflict
from storage.postgres.connection import Conn, rowcount
from storage.postgres.repositories import RepositoryQueries
from storage.records import BlobRow, ImageRecord, ManifestRecord, ManifestWrite, Page, PutOutcome

_IMAGE_COLUMNS = (
    "m.id, r.name, m.digest, m.media_type, m.size, m.image_size, m.config_media_type, m.artifact_type, m.subject, "
    "m.pushed_at, m.last_pulled_at, (SELECT array_agg(t.name ORDER BY t.name) FROM tags t WHERE t.manifest_id = m.id), "
    "m.storage_class, m.last_archived_at, m.last_activated_at"
)
_MANIFEST_COLUMNS = (
    "r.name, m.digest, m.media_type, m.size, m.artifact_type, m.subject, m.annotations, m.pushed_at, m.body, "
    "m.storage_class"
)
_IN_REPOSITORY = "FROM repositories r JOIN manifests m ON m.repository_id = r.id"


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


class ManifestQueries(RepositoryQueries):
    # -- blob links ----------------------------------------------------------------------------------
    async def link_blob(
        self,
        repository: str,
        digest: str,
        size: int,
        now: float,
        *,
        upstream: str | None = None,
    ) -> None:
        async with self._tx() as db:
            repo_id = await db.fetchval("SELECT id FROM repositories WHERE name = $1 FOR KEY SHARE", repository)
            if repo_id is None:
                raise StorageError(f"repository {repository} does not exist")
            touched = await db.fetchval(
                "INSERT INTO blobs (digest, size, created_at, touched_at) VALUES ($1, $2, $3, $3) "
                "ON CONFLICT (digest) DO UPDATE SET touched_at = excluded.touched_at WHERE NOT blobs.claimed "
                "RETURNING 1",
                digest,
                size,
                now,
            )
            if touched is None:
                raise BlobNotFound(digest)  # garbage collection is removing it
            await db.execute(
                "INSERT INTO repository_blobs (repository_id, digest, linked_at, upstream) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (repository_id, digest) DO NOTHING",
                repo_id,
                digest,
                now,
                upstream,
            )

    async def linked_blob_size(self, repository: str, digest: str) -> int | None:
        size: int | None = await self._fetchval(
            "SELECT b.size FROM repositories r JOIN repository_blobs rb ON rb.repository_id = r.id "
            "JOIN blobs b ON b.digest = rb.digest WHERE r.name = $1 AND rb.digest = $2",
            repository,
            digest,
        )
        return size

    async def linked_blobs(self, repository: str, digests: Iterable[str]) -> set[str]:
        rows = await self._fetch(
            "SELECT rb.digest FROM repositories r JOIN repository_blobs rb ON rb.repository_id = r.id "
            "WHERE r.name = $1 AND rb.digest = ANY($2::text[])",
            repository,
            _unique(digests),
        )
        return {r[0] for r in rows}

    async def blob_fetched_from(self, digest: str, upstream: str) -> bool:
        found = await self._fetchval(
            "SELECT 1 FROM repository_blobs WHERE digest = $1 AND upstream = $2 LIMIT 1", digest, upstream
        )
        return found is not None

    async def unlink_blob(self, repository: str, digest: str) -> bool:
        async with self._tx() as db:
            status = await db.execute(
                "DELETE FROM repository_blobs WHERE digest = $1 AND repository_id = "
                "(SELECT id FROM repositories WHERE name = $2)",
                digest,
                repository,
            )
            return rowcount(status) > 0

    async def repositories_with_blob(self, digest: str, limit: int = 100) -> list[str]:
        rows = await self._fetch(
            "SELECT r.name FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id "
            "WHERE rb.digest = $1 ORDER BY r.name LIMIT $2",
            digest,
            limit,
        )
        return [r[0] for r in rows]

    async def blob_size(self, digest: str) -> int | None:
        size: int | None = await self._fetchval(
            "SELECT size FROM blobs WHERE digest = $1 AND EXISTS (SELECT 1 FROM repository_blobs WHERE digest = $1)",
            digest,
        )
        return size

    # -- manifests and tags ------------------------------------------------------------------------
    async def _locked_repository(self, db: Conn, write: ManifestWrite) -> int:
        """Lock the repository's row for this write (creating the repository first when the write says so)."""
        repo_id = await self._lock_repository(db, write.repository)
        if repo_id is None and write.create is not None:
            await self._ensure_repository_in(db, write.repository, write.pushed_at, write.create)
            repo_id = await self._lock_repository(db, write.repository)
        if repo_id is None:
            raise StorageError(f"repository {write.repository} does not exist")
        return repo_id

    async def put_manifest(self, write: ManifestWrite) -> PutOutcome:
        annotations = json.dumps(write.annotations) if write.annotations else None
        async with self._tx() as db:
            repo_id = await self._locked_repository(db, write)
            manifest_id: int | None = await db.fetchval(
                "SELECT id FROM manifests WHERE repository_id = $1 AND digest = $2", repo_id, write.digest
            )
            current: dict[str, str] = {}
            if write.tags:
                rows = await db.fetch(
                    "SELECT t.name, m.digest FROM tags t JOIN manifests m ON m.id = t.manifest_id "
                    "WHERE t.repository_id = $1 AND t.name = ANY($2::text[])",
                    repo_id,
                    _unique(write.tags),
                )
                current = {name: digest for name, digest in rows}
            for tag in write.protected_tags:
                if tag in current and current[tag] != write.digest:
                    raise TagConflict(tag, current[tag])
            # The rows of the blobs it lists stay locked (shared) until the commit: garbage collection can't
            # claim them in between (it waits, then sees the references).
            await db.execute(
                "SELECT 1 FROM blobs WHERE digest = ANY($1::text[]) ORDER BY digest FOR SHARE",
                _unique([*write.required_blobs, *write.blobs]),
            )
            if write.required_blobs:
                await self._check_required(db, repo_id, write.required_blobs)
            created = manifest_id is None
            restored = False
            if manifest_id is None:
                manifest_id = await db.fetchval(
                    "INSERT INTO manifests (repository_id, digest, media_type, size, artifact_type, subject, "
                    "annotations, pushed_at, body, image_size, config_media_type) "
                    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
                    repo_id,
                    write.digest,
                    write.media_type,
                    len(write.body),
                    write.artifact_type,
                    write.subject,
                    annotations,
                    write.pushed_at,
                    write.body,
                    write.image_size,
                    write.config_media_type,
                )
                children = [*write.blobs, *write.manifests]
                if children:
                    await db.execute(
                        "INSERT INTO manifest_references (manifest_id, child, kind) "
                        "SELECT $1, child, kind FROM unnest($2::text[], $3::text[]) AS r(child, kind) "
                        "ON CONFLICT (manifest_id, child) DO NOTHING",
                        manifest_id,
                        children,
                        ["blob"] * len(write.blobs) + ["manifest"] * len(write.manifests),
                    )
            else:
                # Pushing an archived image again restores it (ECR): it is active from now on.
                status = await db.execute(
                    "UPDATE manifests SET storage_class = 'STANDARD', last_activated_at = $1 "
                    "WHERE id = $2 AND storage_class = 'ARCHIVE'",
                    write.pushed_at,
                    manifest_id,
                )
                restored = rowcount(status) > 0
            moved = tuple(t for t in write.tags if current.get(t) != write.digest)
            if moved:
                await db.execute(
                    "INSERT INTO tags (repository_id, name, manifest_id, updated_at) SELECT $1, name, $2, $3 "
                    "FROM unnest($4::text[]) AS t(name) ON CONFLICT (repository_id, name) "
                    "DO UPDATE SET manifest_id = excluded.manifest_id, updated_at = excluded.updated_at",
                    repo_id,
                    manifest_id,
                    write.pushed_at,
                    _unique(moved),
                )
        return PutOutcome(created, moved, restored)

    @staticmethod
    async def _check_required(db: Conn, repo_id: int, required: Sequence[str]) -> None:
        """BlobNotFound unless every required blob is linked in the repository (and not claimed)."""
        rows = await db.fetch(
            "SELECT rb.digest FROM repository_blobs rb JOIN blobs b ON b.digest = rb.digest "
            "WHERE rb.repository_id = $1 AND rb.digest = ANY($2::text[]) AND NOT b.claimed",
            repo_id,
            _unique(required),
        )
        linked = {row[0] for row in rows}
        if missing := [d for d in required if d not in linked]:
            raise BlobNotFound(missing[0])

    @staticmethod
    def _manifest(row: asyncpg.Record) -> ManifestRecord:
        name, digest, mt, size, at, subject, ann, pushed_at, body, storage_class = row
        return ManifestRecord(
            name, digest, mt, size, at, subject, json.loads(ann) if ann else None, pushed_at, bytes(body), storage_class
        )

    async def get_manifest(self, repository: str, digest: str) -> ManifestRecord | None:
        row = await self._fetchrow(
            f"SELECT {_MANIFEST_COLUMNS} {_IN_REPOSITORY} WHERE r.name = $1 AND m.digest = $2", repository, digest
        )
        return self._manifest(row) if row else None

    async def resolve_tag(self, repository: str, tag: str) -> str | None:
        digest: str | None = await self._fetchval(
            "SELECT m.digest FROM repositories r JOIN tags t ON t.repository_id = r.id "
            "JOIN manifests m ON m.id = t.manifest_id WHERE r.name = $1 AND t.name = $2",
            repository,
            tag,
        )
        return digest

    async def existing_manifests(self, repository: str, digests: Iterable[str]) -> set[str]:
        rows = await self._fetch(
            f"SELECT m.digest {_IN_REPOSITORY} WHERE r.name = $1 AND m.digest = ANY($2::text[])",
            repository,
            _unique(digests),
        )
        return {r[0] for r in rows}

    async def list_tags(self, repository: str, last: str | None, limit: int) -> Page:
        rows = await self._fetch(
            "SELECT t.name FROM repositories r JOIN tags t ON t.repository_id = r.id "
            "WHERE r.name = $1 AND t.name > $2 ORDER BY t.name LIMIT $3",
            repository,
            last or "",
            limit + 1,
        )
        return Page([r[0] for r in rows[:limit]], len(rows) > limit)

    @staticmethod
    async def _lock_repository(db: Conn, repository: str) -> int | None:
        """Lock a repository's row for a write to its manifests and tags (None: no such repository)."""
        repo_id: int | None = await db.fetchval(
            "SELECT id FROM repositories WHERE name = $1 FOR NO KEY UPDATE", repository
        )
        return repo_id

    async def delete_manifest(self, repository: str, digest: str) -> list[str] | None:
        async with self._tx() as db:
            repo_id = await self._lock_repository(db, repository)
            manifest_id = await db.fetchval(
                "SELECT id FROM manifests WHERE repository_id = $1 AND digest = $2", repo_id, digest
            )
            if manifest_id is None:
                return None
            rows = await db.fetch("SELECT name FROM tags WHERE manifest_id = $1 ORDER BY name", manifest_id)
            await db.execute("DELETE FROM manifests WHERE id = $1", manifest_id)
            return [r[0] for r in rows]

    async def delete_tag(self, repository: str, tag: str) -> str | None:
        async with self._tx() as db:
            repo_id = await self._lock_repository(db, repository)
            digest: str | None = await db.fetchval(
                "DELETE FROM tags t USING manifests m WHERE t.repository_id = $1 AND t.name = $2 "
                "AND m.id = t.manifest_id RETURNING m.digest",
                repo_id,
                tag,
            )
            return digest

    async def referrers(self, repository: str, subject: str) -> Sequence[ManifestRecord]:
        rows = await self._fetch(
            f"SELECT {_MANIFEST_COLUMNS} {_IN_REPOSITORY} WHERE r.name = $1 AND m.subject = $2 "
            "ORDER BY m.pushed_at, m.digest",
            repository,
            subject,
        )
        return [self._manifest(r) for r in rows]

    @staticmethod
    def _image(row: asyncpg.Record) -> ImageRecord:
        values = list(row)
        values[11] = tuple(values[11]) if values[11] else ()  # the tags column
        return ImageRecord(*values)

    async def list_images(self, repository: str, after_id: int, limit: int) -> list[ImageRecord]:
        rows = await self._fetch(
            f"SELECT {_IMAGE_COLUMNS} {_IN_REPOSITORY} WHERE r.name = $1 AND m.id > $2 ORDER BY m.id LIMIT $3",
            repository,
            after_id,
            limit,
        )
        return [self._image(r) for r in rows]

    async def images_by_digest(self, repository: str, digests: Iterable[str]) -> dict[str, ImageRecord]:
        rows = await self._fetch(
            f"SELECT {_IMAGE_COLUMNS} {_IN_REPOSITORY} WHERE r.name = $1 AND m.digest = ANY($2::text[])",
            repository,
            _unique(digests),
        )
        return {img.digest: img for img in map(self._image, rows)}

    async def parents_of(self, repository: str, digests: Iterable[str]) -> dict[str, list[str]]:
        rows = await self._fetch(
            f"SELECT ref.child, m.digest {_IN_REPOSITORY} JOIN manifest_references ref ON ref.manifest_id = m.id "
            "WHERE r.name = $1 AND ref.kind = 'manifest' AND ref.child = ANY($2::text[]) ORDER BY m.id",
            repository,
            _unique(digests),
        )
        out: dict[str, list[str]] = {}
        for child, parent in rows:
            out.setdefault(child, []).append(parent)
        return out

    async def blob_referenced(self, repository: str, digest: str) -> bool:
        found = await self._fetchval(
            f"SELECT 1 {_IN_REPOSITORY} JOIN manifest_references ref ON ref.manifest_id = m.id "
            "WHERE r.name = $1 AND ref.child = $2 AND ref.kind = 'blob' LIMIT 1",
            repository,
            digest,
        )
        return found is not None

    async def has_archived_images(self, repository: str) -> bool:
        found = await self._fetchval(
            f"SELECT 1 {_IN_REPOSITORY} WHERE r.name = $1 AND m.storage_class = 'ARCHIVE' LIMIT 1", repository
        )
        return found is not None

    async def blob_archived_only(self, repository: str, digest: str) -> bool:
        rows = await self._fetch(
            f"SELECT DISTINCT m.storage_class {_IN_REPOSITORY} JOIN manifest_references ref ON ref.manifest_id = m.id "
            "WHERE r.name = $1 AND ref.child = $2 AND ref.kind = 'blob'",
            repository,
            digest,
        )
        return bool(rows) and all(row[0] == "ARCHIVE" for row in rows)

    async def manifest_blobs(self, repository: str, digest: str) -> list[tuple[str, int]]:
        rows = await self._fetch(
            f"SELECT ref.child, coalesce(b.size, 0) {_IN_REPOSITORY} "
            "JOIN manifest_references ref ON ref.manifest_id = m.id LEFT JOIN blobs b ON b.digest = ref.child "
            "WHERE r.name = $1 AND m.digest = $2 AND ref.kind = 'blob' ORDER BY ref.child",
            repository,
            digest,
        )
        return [(row[0], row[1]) for row in rows]

    async def blob_reference_counts(self, digests: Iterable[str]) -> dict[str, int]:
        rows = await self._fetch(
            "SELECT child, count(*) FROM manifest_references WHERE kind = 'blob' AND child = ANY($1::text[]) "
            "GROUP BY child",
            _unique(digests),
        )
        return {row[0]: row[1] for row in rows}

    async def repository_sizes(self) -> list[tuple[str, int, int]]:
        rows = await self._fetch(
            "SELECT r.name, count(m.id), coalesce(sum(m.image_size), 0)::bigint FROM repositories r "
            "LEFT JOIN manifests m ON m.repository_id = r.id GROUP BY r.id, r.name ORDER BY r.name"
        )
        return [(row[0], int(row[1]), int(row[2])) for row in rows]

    async def record_pulls(self, pulls: Iterable[tuple[str, str, float]]) -> None:
        # In one order (repository, digest), so that two replicas' batches lock the same rows in the same order.
        batch = sorted((repo, digest, t) for repo, digest, t in pulls)
        if not batch:
            return
        async with self._tx(notify=False) as db:  # (no cache holds pull times: see MetadataStore.record_pulls)
            await db.executemany(
                "UPDATE manifests SET last_pulled_at = greatest(coalesce(last_pulled_at, 0), $3) WHERE "
                "repository_id = (SELECT id FROM repositories WHERE name = $1) AND digest = $2 "
                "AND pushed_at <= $3",  # a pull from before a delete and re-push belongs to the old image
                batch,
            )

    # -- garbage collection ----------------------------------------------------------------------------
    _UNREFERENCED = "NOT EXISTS (SELECT 1 FROM manifest_references WHERE child = b.digest AND kind = 'blob')"

    async def unreferenced_blobs(self, touched_before: float, after: str, limit: int) -> list[BlobRow]:
        rows = await self._fetch(
            f"SELECT b.digest, b.size, b.touched_at, b.claimed FROM blobs b WHERE b.digest > $1 AND "
            f"(b.claimed OR (b.touched_at < $2 AND {self._UNREFERENCED})) ORDER BY b.digest LIMIT $3",
            after,
            touched_before,
            limit,
        )
        return [BlobRow(digest, size, touched_at, claimed) for digest, size, touched_at, claimed in rows]

    async def claim_blob(self, digest: str, touched_before: float) -> bool:
        async with self._tx() as db:
            row = await db.fetchrow("SELECT touched_at, claimed FROM blobs WHERE digest = $1 FOR UPDATE", digest)
            if row is not None and row["claimed"]:
                return True
            if await db.fetchval(
                "SELECT 1 FROM manifest_references WHERE child = $1 AND kind = 'blob' LIMIT 1", digest
            ):
                return False
            if row is None:  # bytes that no row records (a crash between install and link)
                # A link racing this claim inserts the row too: whichever commits first wins, the other finds it.
                await db.execute(
                    "INSERT INTO blobs (digest, size, created_at, touched_at, claimed) VALUES ($1, 0, 0, 0, TRUE) "
                    "ON CONFLICT (digest) DO NOTHING",
                    digest,
                )
                claimed: bool = await db.fetchval("SELECT claimed FROM blobs WHERE digest = $1", digest)
                return claimed
            if row["touched_at"] >= touched_before:
                return False
            await db.execute("DELETE FROM repository_blobs WHERE digest = $1", digest)
            await db.execute("UPDATE blobs SET claimed = TRUE WHERE digest = $1", digest)
            return True

    async def drop_blob(self, digest: str) -> None:
        async with self._tx() as db:
            await db.execute("DELETE FROM blobs WHERE digest = $1 AND claimed", digest)

    async def known_blobs(self, digests: Iterable[str]) -> set[str]:
        rows = await self._fetch("SELECT digest FROM blobs WHERE digest = ANY($1::text[])", _unique(digests))
        return {row[0] for row in rows}

    async def stale_uploads(self, before: float) -> list[str]:
        return [r[0] for r in await self._fetch("SELECT id FROM uploads WHERE created_at < $1", before)]
