"""Blob links, manifests, tags, referrers and garbage collection's claims in SQLite."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from storage.errors import BlobNotFound, StorageError, TagConflict
from storage.records import BlobRow, ImageRecord, ManifestRecord, ManifestWrite, Page, PutOutcome
from storage.sqlite.repositories import RepositoryQueries

_IMAGE_COLUMNS = (
    "m.id, r.name, m.digest, m.media_type, m.size, m.image_size, m.config_media_type, m.artifact_type, m.subject, "
    "m.pushed_at, m.last_pulled_at, (SELECT group_concat(t.name, char(0)) FROM "
    "(SELECT name FROM tags WHERE manifest_id = m.id ORDER BY name) t), m.storage_class, m.last_archived_at, "
    "m.last_activated_at"
)
_MANIFEST_COLUMNS = (
    "r.name, m.digest, m.media_type, m.size, m.artifact_type, m.subject, m.annotations, m.pushed_at, m.body, "
    "m.storage_class"
)


class ManifestQueries(RepositoryQueries):
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
            if await self._one(db, "SELECT 1 FROM blobs WHERE digest = ? AND claimed = 1", (digest,)):
                raise BlobNotFound(digest)  # garbage collection is removing it
            await db.execute(
                "INSERT INTO blobs (digest, size, created_at, touched_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (digest) DO UPDATE SET touched_at = excluded.touched_at",
                (digest, size, now, now),
            )
            cur = await db.execute(
                "INSERT OR IGNORE INTO repository_blobs (repository_id, digest, linked_at, upstream) "
                "SELECT id, ?, ?, ? FROM repositories WHERE name = ?",
                (digest, now, upstream, repository),
            )
            if cur.rowcount == 0 and not await self._one(
                db,
                "SELECT 1 FROM repository_blobs JOIN repositories r ON r.id = repository_id "
                "WHERE r.name = ? AND digest = ?",
                (repository, digest),
            ):
                raise StorageError(f"repository {repository} does not exist")

    async def linked_blob_size(self, repository: str, digest: str) -> int | None:
        row = await self._fetchone(
            "SELECT b.size FROM repositories r JOIN repository_blobs rb ON rb.repository_id = r.id "
            "JOIN blobs b ON b.digest = rb.digest WHERE r.name = ? AND rb.digest = ?",
            (repository, digest),
        )
        return row[0] if row else None

    async def linked_blobs(self, repository: str, digests: Iterable[str]) -> set[str]:
        rows = await self._in_query(
            "SELECT rb.digest FROM repositories r JOIN repository_blobs rb ON rb.repository_id = r.id "
            "WHERE r.name = ? AND rb.digest IN ({placeholders})",
            [repository],
            digests,
        )
        return {r[0] for r in rows}

    async def blob_fetched_from(self, digest: str, upstream: str) -> bool:
        return (
            await self._fetchone(
                "SELECT 1 FROM repository_blobs WHERE digest = ? AND upstream = ? LIMIT 1", (digest, upstream)
            )
            is not None
        )

    async def unlink_blob(self, repository: str, digest: str) -> bool:
        async with self._tx() as db:
            cur = await db.execute(
                "DELETE FROM repository_blobs WHERE digest = ? AND repository_id = "
                "(SELECT id FROM repositories WHERE name = ?)",
                (digest, repository),
            )
            return cur.rowcount > 0

    async def repositories_with_blob(self, digest: str, limit: int = 100) -> list[str]:
        rows = await self._fetchall(
            "SELECT r.name FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id "
            "WHERE rb.digest = ? ORDER BY r.name LIMIT ?",
            (digest, limit),
        )
        return [r[0] for r in rows]

    async def blob_size(self, digest: str) -> int | None:
        row = await self._fetchone(
            "SELECT size FROM blobs WHERE digest = ? AND EXISTS (SELECT 1 FROM repository_blobs WHERE digest = ?)",
            (digest, digest),
        )
        return row[0] if row else None

    # -- manifests and tags ------------------------------------------------------------------------
    async def put_manifest(self, write: ManifestWrite) -> PutOutcome:
        annotations = json.dumps(write.annotations) if write.annotations else None
        async with self._tx() as db:
            repo = await self._one(db, "SELECT id FROM repositories WHERE name = ?", (write.repository,))
            if repo is None and write.create is not None:
                await self._ensure_repository_in(db, write.repository, write.pushed_at, write.create)
                repo = await self._one(db, "SELECT id FROM repositories WHERE name = ?", (write.repository,))
            if repo is None:
                raise StorageError(f"repository {write.repository} does not exist")
            repo_id = repo[0]
            row = await self._one(
                db, "SELECT id FROM manifests WHERE repository_id = ? AND digest = ?", (repo_id, write.digest)
            )
            current: dict[str, str] = {}
            if write.tags:
                current = dict(
                    (name, digest)
                    for name, digest in await db.execute_fetchall(
                        f"SELECT t.name, m.digest FROM tags t JOIN manifests m ON m.id = t.manifest_id "
                        f"WHERE t.repository_id = ? AND t.name IN ({','.join('?' * len(write.tags))})",
                        (repo_id, *write.tags),
                    )
                )
            for tag in write.protected_tags:
                if tag in current and current[tag] != write.digest:
                    raise TagConflict(tag, current[tag])
            if write.required_blobs:
                linked = {
                    row[0]
                    for row in await db.execute_fetchall(
                        f"SELECT digest FROM repository_blobs WHERE repository_id = ? AND digest IN "
                        f"({','.join('?' * len(write.required_blobs))})",
                        (repo_id, *write.required_blobs),
                    )
                }
                if missing := [d for d in write.required_blobs if d not in linked]:
                    raise BlobNotFound(missing[0])
            created = row is None
            if created:
                cur = await db.execute(
                    "INSERT INTO manifests (repository_id, digest, media_type, size, artifact_type, subject, "
                    "annotations, pushed_at, body, image_size, config_media_type) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
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
                    ),
                )
                manifest_id = cur.lastrowid
                refs = [(manifest_id, d, "blob") for d in write.blobs]
                refs += [(manifest_id, d, "manifest") for d in write.manifests]
                if refs:
                    await db.executemany(
                        "INSERT OR IGNORE INTO manifest_references (manifest_id, child, kind) VALUES (?, ?, ?)", refs
                    )
                restored = False
            else:
                manifest_id = row[0]
                # Pushing an archived image again restores it (ECR): it is active from now on.
                cur = await db.execute(
                    "UPDATE manifests SET storage_class = 'STANDARD', last_activated_at = ? "
                    "WHERE id = ? AND storage_class = 'ARCHIVE'",
                    (write.pushed_at, manifest_id),
                )
                restored = cur.rowcount > 0
            moved = tuple(t for t in write.tags if current.get(t) != write.digest)
            if moved:
                await db.executemany(
                    "INSERT INTO tags (repository_id, name, manifest_id, updated_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (repository_id, name) DO UPDATE SET manifest_id = excluded.manifest_id, "
                    "updated_at = excluded.updated_at",
                    [(repo_id, tag, manifest_id, write.pushed_at) for tag in moved],
                )
        return PutOutcome(created, moved, restored)

    @staticmethod
    def _manifest(row: Any) -> ManifestRecord:
        name, digest, mt, size, at, subject, ann, pushed_at, body, storage_class = row
        return ManifestRecord(
            name, digest, mt, size, at, subject, json.loads(ann) if ann else None, pushed_at, bytes(body), storage_class
        )

    async def get_manifest(self, repository: str, digest: str) -> ManifestRecord | None:
        row = await self._fetchone(
            f"SELECT {_MANIFEST_COLUMNS} FROM repositories r JOIN manifests m ON m.repository_id = r.id "
            "WHERE r.name = ? AND m.digest = ?",
            (repository, digest),
        )
        return self._manifest(row) if row else None

    async def resolve_tag(self, repository: str, tag: str) -> str | None:
        row = await self._fetchone(
            "SELECT m.digest FROM repositories r JOIN tags t ON t.repository_id = r.id "
            "JOIN manifests m ON m.id = t.manifest_id WHERE r.name = ? AND t.name = ?",
            (repository, tag),
        )
        return row[0] if row else None

    async def existing_manifests(self, repository: str, digests: Iterable[str]) -> set[str]:
        rows = await self._in_query(
            "SELECT m.digest FROM repositories r JOIN manifests m ON m.repository_id = r.id "
            "WHERE r.name = ? AND m.digest IN ({placeholders})",
            [repository],
            digests,
        )
        return {r[0] for r in rows}

    async def list_tags(self, repository: str, last: str | None, limit: int) -> Page:
        rows = await self._fetchall(
            "SELECT t.name FROM repositories r JOIN tags t ON t.repository_id = r.id "
            "WHERE r.name = ? AND t.name > ? ORDER BY t.name LIMIT ?",
            (repository, last or "", limit + 1),
        )
        return Page([r[0] for r in rows[:limit]], len(rows) > limit)

    async def delete_manifest(self, repository: str, digest: str) -> list[str] | None:
        async with self._tx() as db:
            row = await self._one(
                db,
                "SELECT m.id FROM repositories r JOIN manifests m ON m.repository_id = r.id "
                "WHERE r.name = ? AND m.digest = ?",
                (repository, digest),
            )
            if row is None:
                return None
            tags = [
                r[0]
                for r in await db.execute_fetchall(
                    "SELECT name FROM tags WHERE manifest_id = ? ORDER BY name", (row[0],)
                )
            ]
            await db.execute("DELETE FROM manifests WHERE id = ?", (row[0],))
            return tags

    async def delete_tag(self, repository: str, tag: str) -> str | None:
        async with self._tx() as db:
            row = await self._one(
                db,
                "SELECT t.repository_id, m.digest FROM repositories r JOIN tags t ON t.repository_id = r.id "
                "JOIN manifests m ON m.id = t.manifest_id WHERE r.name = ? AND t.name = ?",
                (repository, tag),
            )
            if row is None:
                return None
            await db.execute("DELETE FROM tags WHERE repository_id = ? AND name = ?", (row[0], tag))
            digest: str = row[1]
            return digest

    async def referrers(self, repository: str, subject: str) -> Sequence[ManifestRecord]:
        rows = await self._fetchall(
            f"SELECT {_MANIFEST_COLUMNS} FROM repositories r JOIN manifests m ON m.repository_id = r.id "
            "WHERE r.name = ? AND m.subject = ? ORDER BY m.pushed_at, m.digest",
            (repository, subject),
        )
        return [self._manifest(r) for r in rows]

    @staticmethod
    def _image(row: Any) -> ImageRecord:
        values = list(row)
        values[11] = tuple(values[11].split("\0")) if values[11] else ()  # the tags column
        return ImageRecord(*values)

    async def list_images(self, repository: str, after_id: int, limit: int) -> list[ImageRecord]:
        rows = await self._fetchall(
            f"SELECT {_IMAGE_COLUMNS} FROM repositories r JOIN manifests m ON m.repository_id = r.id "
            "WHERE r.name = ? AND m.id > ? ORDER BY m.id LIMIT ?",
            (repository, after_id, limit),
        )
        return [self._image(r) for r in rows]

    async def images_by_digest(self, repository: str, digests: Iterable[str]) -> dict[str, ImageRecord]:
        rows = await self._in_query(
            f"SELECT {_IMAGE_COLUMNS} FROM repositories r JOIN manifests m ON m.repository_id = r.id "
            "WHERE r.name = ? AND m.digest IN ({placeholders})",
            [repository],
            digests,
        )
        return {img.digest: img for img in map(self._image, rows)}

    async def parents_of(self, repository: str, digests: Iterable[str]) -> dict[str, list[str]]:
        rows = await self._in_query(
            "SELECT ref.child, m.digest FROM repositories r JOIN manifests m ON m.repository_id = r.id "
            "JOIN manifest_references ref ON ref.manifest_id = m.id "
            "WHERE r.name = ? AND ref.kind = 'manifest' AND ref.child IN ({placeholders})",
            [repository],
            digests,
        )
        out: dict[str, list[str]] = {}
        for child, parent in rows:
            out.setdefault(child, []).append(parent)
        return out

    async def blob_referenced(self, repository: str, digest: str) -> bool:
        row = await self._fetchone(
            "SELECT 1 FROM repositories r JOIN manifests m ON m.repository_id = r.id "
            "JOIN manifest_references ref ON ref.manifest_id = m.id "
            "WHERE r.name = ? AND ref.child = ? AND ref.kind = 'blob' LIMIT 1",
            (repository, digest),
        )
        return row is not None

    async def has_archived_images(self, repository: str) -> bool:
        row = await self._fetchone(
            "SELECT 1 FROM repositories r JOIN manifests m ON m.repository_id = r.id "
            "WHERE r.name = ? AND m.storage_class = 'ARCHIVE' LIMIT 1",
            (repository,),
        )
        return row is not None

    async def blob_archived_only(self, repository: str, digest: str) -> bool:
        rows = await self._fetchall(
            "SELECT DISTINCT m.storage_class FROM repositories r JOIN manifests m ON m.repository_id = r.id "
            "JOIN manifest_references ref ON ref.manifest_id = m.id "
            "WHERE r.name = ? AND ref.child = ? AND ref.kind = 'blob'",
            (repository, digest),
        )
        return bool(rows) and all(row[0] == "ARCHIVE" for row in rows)

    async def manifest_blobs(self, repository: str, digest: str) -> list[tuple[str, int]]:
        rows = await self._fetchall(
            "SELECT ref.child, coalesce(b.size, 0) FROM repositories r JOIN manifests m ON m.repository_id = r.id "
            "JOIN manifest_references ref ON ref.manifest_id = m.id LEFT JOIN blobs b ON b.digest = ref.child "
            "WHERE r.name = ? AND m.digest = ? AND ref.kind = 'blob'",
            (repository, digest),
        )
        return [(row[0], row[1]) for row in rows]

    async def blob_reference_counts(self, digests: Iterable[str]) -> dict[str, int]:
        rows = await self._in_query(
            "SELECT child, count(*) FROM manifest_references WHERE kind = 'blob' AND child IN ({placeholders}) "
            "GROUP BY child",
            [],
            digests,
        )
        return {row[0]: row[1] for row in rows}

    async def repository_sizes(self) -> list[tuple[str, int, int]]:
        rows = await self._fetchall(
            "SELECT r.name, count(m.id), coalesce(sum(m.image_size), 0) FROM repositories r "
            "LEFT JOIN manifests m ON m.repository_id = r.id GROUP BY r.id ORDER BY r.name"
        )
        return [(name, images, size) for name, images, size in rows]

    async def record_pulls(self, pulls: Iterable[tuple[str, str, float]]) -> None:
        batch = [(t, repo, digest) for repo, digest, t in pulls]
        if not batch:
            return
        async with self._tx(notify=False) as db:  # (no cache holds pull times: see MetadataStore.record_pulls)
            await db.executemany(
                "UPDATE manifests SET last_pulled_at = max(coalesce(last_pulled_at, 0), ?1) WHERE "
                "repository_id = (SELECT id FROM repositories WHERE name = ?2) AND digest = ?3 "
                "AND pushed_at <= ?1",  # a pull from before a delete and re-push belongs to the old image
                batch,
            )

    # -- garbage collection ----------------------------------------------------------------------------
    _UNREFERENCED = "NOT EXISTS (SELECT 1 FROM manifest_references WHERE child = b.digest AND kind = 'blob')"

    async def unreferenced_blobs(self, touched_before: float, after: str, limit: int) -> list[BlobRow]:
        rows = await self._fetchall(
            f"SELECT b.digest, b.size, b.touched_at, b.claimed FROM blobs b WHERE b.digest > ? AND "
            f"(b.claimed = 1 OR (b.touched_at < ? AND {self._UNREFERENCED})) ORDER BY b.digest LIMIT ?",
            (after, touched_before, limit),
        )
        return [BlobRow(digest, size, touched_at, bool(claimed)) for digest, size, touched_at, claimed in rows]

    async def claim_blob(self, digest: str, touched_before: float) -> bool:
        async with self._tx() as db:
            row = await self._one(db, "SELECT b.touched_at, b.claimed FROM blobs b WHERE b.digest = ?", (digest,))
            if row is not None and row[1]:
                return True
            if await self._one(
                db, "SELECT 1 FROM manifest_references WHERE child = ? AND kind = 'blob' LIMIT 1", (digest,)
            ):
                return False
            if row is None:  # bytes that no row records (a crash between install and link)
                await db.execute(
                    "INSERT INTO blobs (digest, size, created_at, touched_at, claimed) VALUES (?, 0, 0, 0, 1)",
                    (digest,),
                )
                return True
            if row[0] >= touched_before:
                return False
            await db.execute("DELETE FROM repository_blobs WHERE digest = ?", (digest,))
            await db.execute("UPDATE blobs SET claimed = 1 WHERE digest = ?", (digest,))
            return True

    async def drop_blob(self, digest: str) -> None:
        async with self._tx() as db:
            await db.execute("DELETE FROM blobs WHERE digest = ? AND claimed = 1", (digest,))

    async def known_blobs(self, digests: Iterable[str]) -> set[str]:
        rows = await self._in_query("SELECT digest FROM blobs WHERE digest IN ({placeholders})", [], digests)
        return {row[0] for row in rows}

    async def stale_uploads(self, before: float) -> list[str]:
        return [r[0] for r in await self._fetchall("SELECT id FROM uploads WHERE created_at < ?", (before,))]
