"""SQLite metadata store (aiosqlite).

WAL mode; one writer connection whose transactions are serialized by a lock and begin with
`BEGIN IMMEDIATE`, and a few reader connections that run in parallel with it. `synchronous=FULL`: a write
the registry has acknowledged survives a crash or a power cut. Schema migrations are embedded below and
applied in order on open (tracked with `PRAGMA user_version`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from storage.base import (
    BlobNotFound,
    Conflict,
    ImageRecord,
    LifecyclePreview,
    ManifestRecord,
    ManifestWrite,
    Page,
    PullThroughRule,
    PutOutcome,
    RepositoryExists,
    RepositoryInit,
    RepositoryNotEmpty,
    RepositoryRecord,
    RepositorySettings,
    StorageError,
    StorageFull,
    TagConflict,
    UploadRecord,
)
from storage.shared import ChangeCounter

MIGRATIONS: list[str] = [
    # 1: the core registry
    """
    CREATE TABLE repositories (
        id          INTEGER PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        created_at  REAL NOT NULL
    );
    CREATE TABLE blobs (
        digest      TEXT PRIMARY KEY,
        size        INTEGER NOT NULL,
        created_at  REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE repository_blobs (
        repository_id INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
        digest        TEXT NOT NULL REFERENCES blobs(digest),
        linked_at     REAL NOT NULL,
        PRIMARY KEY (repository_id, digest)
    ) WITHOUT ROWID;
    CREATE INDEX repository_blobs_by_digest ON repository_blobs(digest);
    CREATE TABLE manifests (
        id            INTEGER PRIMARY KEY,
        repository_id INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
        digest        TEXT NOT NULL,
        media_type    TEXT NOT NULL,
        size          INTEGER NOT NULL,
        artifact_type TEXT,
        subject       TEXT,
        annotations   TEXT,
        pushed_at     REAL NOT NULL,
        body          BLOB NOT NULL,
        UNIQUE (repository_id, digest)
    );
    CREATE INDEX manifests_by_subject ON manifests(repository_id, subject) WHERE subject IS NOT NULL;
    CREATE TABLE manifest_references (
        manifest_id INTEGER NOT NULL REFERENCES manifests(id) ON DELETE CASCADE,
        child       TEXT NOT NULL,
        kind        TEXT NOT NULL CHECK (kind IN ('blob', 'manifest')),
        PRIMARY KEY (manifest_id, child)
    ) WITHOUT ROWID;
    CREATE INDEX manifest_references_by_child ON manifest_references(child);
    CREATE TABLE tags (
        repository_id INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
        name          TEXT NOT NULL,
        manifest_id   INTEGER NOT NULL REFERENCES manifests(id) ON DELETE CASCADE,
        updated_at    REAL NOT NULL,
        PRIMARY KEY (repository_id, name)
    ) WITHOUT ROWID;
    CREATE INDEX tags_by_manifest ON tags(manifest_id);
    CREATE TABLE uploads (
        id          TEXT PRIMARY KEY,
        repository  TEXT NOT NULL,
        created_at  REAL NOT NULL
    ) WITHOUT ROWID;
    """,
    # 2: ECR repository settings, resource tags, image sizes and last pull times
    """
    ALTER TABLE repositories ADD COLUMN image_tag_mutability TEXT NOT NULL DEFAULT 'MUTABLE';
    ALTER TABLE repositories ADD COLUMN mutability_exclusions TEXT;
    ALTER TABLE repositories ADD COLUMN scan_on_push INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE repositories ADD COLUMN encryption_type TEXT NOT NULL DEFAULT 'AES256';
    ALTER TABLE repositories ADD COLUMN kms_key TEXT;
    ALTER TABLE repositories ADD COLUMN policy TEXT;
    CREATE TABLE repository_tags (
        repository_id INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
        key           TEXT NOT NULL,
        value         TEXT NOT NULL,
        PRIMARY KEY (repository_id, key)
    ) WITHOUT ROWID;
    ALTER TABLE manifests ADD COLUMN image_size INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE manifests ADD COLUMN config_media_type TEXT;
    ALTER TABLE manifests ADD COLUMN last_pulled_at REAL;
    """,
    # 3: pull-through cache rules, and when each cached tag was last confirmed upstream
    """
    CREATE TABLE pull_through_rules (
        prefix            TEXT PRIMARY KEY,
        upstream_url      TEXT NOT NULL,
        upstream_prefix   TEXT NOT NULL DEFAULT 'ROOT',
        credential_arn    TEXT,
        upstream_registry TEXT,
        created_at        REAL NOT NULL,
        updated_at        REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE upstream_checks (
        repository_id INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
        tag           TEXT NOT NULL,
        checked_at    REAL NOT NULL,
        PRIMARY KEY (repository_id, tag)
    ) WITHOUT ROWID;
    """,
    # 4: lifecycle policies, archive storage class, garbage collection, repository creation templates
    """
    ALTER TABLE repositories ADD COLUMN lifecycle_policy TEXT;
    ALTER TABLE repositories ADD COLUMN lifecycle_evaluated_at REAL;
    ALTER TABLE manifests ADD COLUMN storage_class TEXT NOT NULL DEFAULT 'STANDARD';
    ALTER TABLE manifests ADD COLUMN last_archived_at REAL;
    ALTER TABLE manifests ADD COLUMN last_activated_at REAL;
    ALTER TABLE blobs ADD COLUMN touched_at REAL NOT NULL DEFAULT 0;
    UPDATE blobs SET touched_at = created_at;
    CREATE TABLE creation_templates (
        prefix      TEXT PRIMARY KEY,
        body        TEXT NOT NULL,
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL
    ) WITHOUT ROWID;
    """,
    # 5: state every worker must see: lifecycle policy previews (any worker answers GetLifecyclePolicyPreview)
    # and recent upstream failures (no worker waits on an upstream another one just found down)
    """
    CREATE TABLE lifecycle_previews (
        repository_id INTEGER PRIMARY KEY REFERENCES repositories(id) ON DELETE CASCADE,
        policy_text   TEXT NOT NULL,
        status        TEXT NOT NULL,
        started_at    REAL NOT NULL,
        results       TEXT
    );
    CREATE TABLE upstream_failures (
        key        TEXT PRIMARY KEY,
        failed_at  REAL NOT NULL
    ) WITHOUT ROWID;
    """,
    # 6: where a repository's blob link came from: NULL for a push, a mount or an import; for a pull-through
    # download, the upstream (URL and credential) that sent the verified bytes. Another cache repository of the
    # same upstream may reuse the bytes without a fetch; any other must prove its upstream has them.
    """
    ALTER TABLE repository_blobs ADD COLUMN upstream TEXT;
    CREATE INDEX repository_blobs_by_upstream ON repository_blobs(digest, upstream) WHERE upstream IS NOT NULL;
    """,
    # 7: the principal that started each upload session ("" anonymous); NULL for those from before (and with auth
    # off): nobody's, so anyone may continue them, as before
    """
    ALTER TABLE uploads ADD COLUMN owner TEXT;
    """,
]

_REPO_COLUMNS = (
    "id, name, created_at, image_tag_mutability, mutability_exclusions, scan_on_push, encryption_type, kms_key, "
    "policy, lifecycle_policy, lifecycle_evaluated_at"
)
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
_IN_CHUNK = 500  # bound the number of SQL parameters per statement


async def _rollback(conn: aiosqlite.Connection) -> None:
    """Undo the open transaction, if any: after some errors (SQLITE_FULL, SQLITE_IOERR) SQLite has already rolled
    it back itself, and a failed COMMIT may leave it open."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            await conn.execute("ROLLBACK")


class SQLiteMetadataStore:
    def __init__(self, path: Path, readers: int = 2) -> None:
        self.path = Path(path)
        self._n_readers = readers
        self._writer: aiosqlite.Connection | None = None
        self._readers: list[aiosqlite.Connection] = []
        self._next_reader = itertools.cycle(range(readers))
        self._write_lock = asyncio.Lock()
        self._changes: ChangeCounter | None = None
        self._seen_changes = 0
        self._epoch = 0

    # -- lifecycle ---------------------------------------------------------------------------------
    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = await self._connect()
        await self._migrate(self._writer)
        self._changes = ChangeCounter(self.path.with_name(self.path.name + "-changes"))
        self._seen_changes = self._changes.value()
        for _ in range(self._n_readers):
            conn = await self._connect()
            await conn.execute("PRAGMA query_only = ON")
            self._readers.append(conn)

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        for pragma in (
            "journal_mode = WAL",
            "synchronous = FULL",
            "foreign_keys = ON",
            "busy_timeout = 10000",
        ):
            await conn.execute(f"PRAGMA {pragma}")
        return conn

    async def _migrate(self, conn: aiosqlite.Connection) -> None:
        (version,) = (await conn.execute_fetchall("PRAGMA user_version"))[0]
        if version > len(MIGRATIONS):
            raise StorageError(
                f"{self.path} has schema version {version}, newer than this Moorage knows "
                f"({len(MIGRATIONS)}); upgrade Moorage"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            statements = [s for s in script.split(";") if s.strip()]
            await conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in statements:
                    await conn.execute(statement)
                await conn.execute(f"PRAGMA user_version = {number}")
                await conn.execute("COMMIT")
            except BaseException:
                await conn.execute("ROLLBACK")
                raise

    async def close(self) -> None:
        for conn in [*self._readers, self._writer]:
            if conn is not None:
                await conn.close()
        self._readers.clear()
        self._writer = None
        if self._changes is not None:
            self._changes.close()
            self._changes = None

    def epoch(self) -> int:
        """Grows when another process has committed since this one last looked (see `storage.shared`)."""
        if self._changes is not None:
            now = self._changes.value()
            if now != self._seen_changes:
                self._seen_changes = now
                self._epoch += 1
        return self._epoch

    def _committed(self) -> None:
        """After each commit: tell the other processes. When nobody else wrote since we last looked, our own
        write needs no epoch change (the write path already invalidated exactly what it changed)."""
        if self._changes is not None:
            now = self._changes.bump()
            if now - 1 == self._seen_changes:
                self._seen_changes = now

    async def storage_stats(self) -> dict[str, int]:
        row = await self._fetchone(
            "SELECT (SELECT count(*) FROM uploads), (SELECT count(*) FROM blobs), "
            "(SELECT coalesce(sum(size), 0) FROM blobs), (SELECT count(*) FROM repositories), "
            "(SELECT count(*) FROM manifests)"
        )
        return dict(zip(("uploads_in_progress", "blobs", "blob_bytes", "repositories", "images"), row, strict=True))

    async def ping(self) -> None:
        await self._fetchall("SELECT 1")

    # -- plumbing ----------------------------------------------------------------------------------
    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        conn = self._readers[next(self._next_reader)] if self._readers else self._writer
        assert conn is not None, "store is not open"
        return list(await conn.execute_fetchall(sql, params))

    async def _fetchone(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = await self._fetchall(sql, params)
        return rows[0] if rows else None

    @contextlib.asynccontextmanager
    async def _tx(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction. Shielded so that a cancelled caller can't leave it open. Whatever fails (the
        body, or the COMMIT itself) is rolled back, so nothing of it stays and the writer is free for the next
        one; a full disk (SQLITE_FULL) raises StorageFull."""
        conn = self._writer
        assert conn is not None, "store is not open"
        async with self._write_lock:
            try:
                await conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    await asyncio.shield(_rollback(conn))
                    raise
                try:
                    await asyncio.shield(conn.execute("COMMIT"))
                except sqlite3.Error:  # e.g. no room for the WAL frames: the transaction may still be open
                    await asyncio.shield(_rollback(conn))
                    raise
            except sqlite3.Error as e:
                if getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                    raise StorageFull(f"{self.path}: {e}") from e
                raise
            self._committed()

    @staticmethod
    async def _one(conn: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = await conn.execute_fetchall(sql, params)
        return rows[0] if rows else None

    async def _in_query(self, sql: str, prefix: Sequence[Any], values: Iterable[str]) -> list[Any]:
        """Run `sql` (containing one `{in}` placeholder) over `values` in bounded chunks."""
        vals = list(dict.fromkeys(values))
        out: list[Any] = []
        for i in range(0, len(vals), _IN_CHUNK):
            part = vals[i : i + _IN_CHUNK]
            out += await self._fetchall(sql.format(placeholders=",".join("?" * len(part))), [*prefix, *part])
        return out

    # -- repositories ------------------------------------------------------------------------------
    @staticmethod
    def _repo(row: Any) -> RepositoryRecord:
        rid, name, created_at, mutability, exclusions, scan, enc, kms, policy, lifecycle, evaluated_at = row
        settings = RepositorySettings(
            mutability, tuple(json.loads(exclusions)) if exclusions else (), bool(scan), enc, kms
        )
        return RepositoryRecord(rid, name, created_at, settings, policy, lifecycle, evaluated_at)

    async def get_repository(self, name: str) -> RepositoryRecord | None:
        row = await self._fetchone(f"SELECT {_REPO_COLUMNS} FROM repositories WHERE name = ?", (name,))
        return self._repo(row) if row else None

    async def ensure_repository(self, name: str, now: float, init: RepositoryInit | None = None) -> RepositoryRecord:
        existing = await self.get_repository(name)
        if existing:
            return existing
        async with self._tx() as db:
            await self._ensure_repository_in(db, name, now, init or RepositoryInit())
            row = await self._one(db, f"SELECT {_REPO_COLUMNS} FROM repositories WHERE name = ?", (name,))
        return self._repo(row)

    async def _ensure_repository_in(
        self, db: aiosqlite.Connection, name: str, now: float, init: RepositoryInit
    ) -> None:
        """Inside a write transaction: create the repository with `init` unless it exists."""
        if await self._insert_repository(db, name, now, init.settings, ignore=True):
            await db.execute(
                "UPDATE repositories SET policy = ?, lifecycle_policy = ? WHERE name = ?",
                (init.policy, init.lifecycle_policy, name),
            )
            if init.tags:
                await db.executemany(
                    "INSERT OR REPLACE INTO repository_tags (repository_id, key, value) "
                    "SELECT id, ?, ? FROM repositories WHERE name = ?",
                    [(k, v, name) for k, v in init.tags],
                )

    @staticmethod
    async def _insert_repository(
        db: aiosqlite.Connection, name: str, now: float, s: RepositorySettings, *, ignore: bool
    ) -> int:
        cur = await db.execute(
            f"INSERT {'OR IGNORE' if ignore else ''} INTO repositories (name, created_at, image_tag_mutability, "
            "mutability_exclusions, scan_on_push, encryption_type, kms_key) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                name,
                now,
                s.image_tag_mutability,
                json.dumps(list(s.mutability_exclusions)) if s.mutability_exclusions else None,
                int(s.scan_on_push),
                s.encryption_type,
                s.kms_key,
            ),
        )
        return cur.rowcount

    async def create_repository(
        self, name: str, now: float, settings: RepositorySettings, tags: dict[str, str]
    ) -> RepositoryRecord:
        async with self._tx() as db:
            if not await self._insert_repository(db, name, now, settings, ignore=True):
                raise RepositoryExists(name)
            row = await self._one(db, f"SELECT {_REPO_COLUMNS} FROM repositories WHERE name = ?", (name,))
            if tags:
                await db.executemany(
                    "INSERT INTO repository_tags (repository_id, key, value) VALUES (?, ?, ?)",
                    [(row[0], k, v) for k, v in tags.items()],
                )
        return self._repo(row)

    async def delete_repository(self, name: str, force: bool) -> RepositoryRecord | None:
        async with self._tx() as db:
            row = await self._one(db, f"SELECT {_REPO_COLUMNS} FROM repositories WHERE name = ?", (name,))
            if row is None:
                return None
            if not force and await self._one(db, "SELECT 1 FROM manifests WHERE repository_id = ? LIMIT 1", (row[0],)):
                raise RepositoryNotEmpty(name)
            await db.execute("DELETE FROM repositories WHERE id = ?", (row[0],))
            await db.execute("DELETE FROM uploads WHERE repository = ?", (name,))
        return self._repo(row)

    async def update_settings(self, name: str, settings: RepositorySettings) -> RepositoryRecord | None:
        s = settings
        async with self._tx() as db:
            await db.execute(
                "UPDATE repositories SET image_tag_mutability = ?, mutability_exclusions = ?, scan_on_push = ?, "
                "encryption_type = ?, kms_key = ? WHERE name = ?",
                (
                    s.image_tag_mutability,
                    json.dumps(list(s.mutability_exclusions)) if s.mutability_exclusions else None,
                    int(s.scan_on_push),
                    s.encryption_type,
                    s.kms_key,
                    name,
                ),
            )
            row = await self._one(db, f"SELECT {_REPO_COLUMNS} FROM repositories WHERE name = ?", (name,))
        return self._repo(row) if row else None

    async def set_policy(self, name: str, policy: str | None) -> RepositoryRecord | None:
        async with self._tx() as db:
            await db.execute("UPDATE repositories SET policy = ? WHERE name = ?", (policy, name))
            row = await self._one(db, f"SELECT {_REPO_COLUMNS} FROM repositories WHERE name = ?", (name,))
        return self._repo(row) if row else None

    async def list_repositories(self, last: str | None, limit: int) -> Page:
        rows = await self._fetchall(
            "SELECT name FROM repositories WHERE name > ? ORDER BY name LIMIT ?", (last or "", limit + 1)
        )
        return Page([r[0] for r in rows[:limit]], len(rows) > limit)

    async def describe_repositories(self, last: str | None, limit: int) -> list[RepositoryRecord]:
        rows = await self._fetchall(
            f"SELECT {_REPO_COLUMNS} FROM repositories WHERE name > ? ORDER BY name LIMIT ?", (last or "", limit)
        )
        return [self._repo(r) for r in rows]

    async def resource_tags(self, name: str) -> dict[str, str]:
        rows = await self._fetchall(
            "SELECT key, value FROM repository_tags WHERE repository_id = (SELECT id FROM repositories "
            "WHERE name = ?) ORDER BY key",
            (name,),
        )
        return dict(rows)

    async def tag_resource(self, name: str, tags: dict[str, str]) -> None:
        async with self._tx() as db:
            await db.executemany(
                "INSERT INTO repository_tags (repository_id, key, value) SELECT id, ?, ? FROM repositories "
                "WHERE name = ? ON CONFLICT (repository_id, key) DO UPDATE SET value = excluded.value",
                [(k, v, name) for k, v in tags.items()],
            )

    async def untag_resource(self, name: str, keys: list[str]) -> None:
        async with self._tx() as db:
            await db.executemany(
                "DELETE FROM repository_tags WHERE key = ? AND repository_id = "
                "(SELECT id FROM repositories WHERE name = ?)",
                [(k, name) for k in keys],
            )

    # -- blob links --------------------------------------------------------------------------------
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
        async with self._tx() as db:
            if check is not None and not check():
                raise BlobNotFound(digest)
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
            current = {}
            if write.tags:
                current = dict(
                    await db.execute_fetchall(
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

    async def tags_of(self, repository: str, digest: str) -> list[str]:
        rows = await self._fetchall(
            "SELECT t.name FROM repositories r JOIN manifests m ON m.repository_id = r.id "
            "JOIN tags t ON t.manifest_id = m.id WHERE r.name = ? AND m.digest = ? ORDER BY t.name",
            (repository, digest),
        )
        return [r[0] for r in rows]

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
            return row[1]

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

    async def record_pulls(self, pulls: Iterable[tuple[str, str, float]]) -> None:
        batch = [(t, repo, digest) for repo, digest, t in pulls]
        if not batch:
            return
        async with self._tx() as db:
            await db.executemany(
                "UPDATE manifests SET last_pulled_at = max(coalesce(last_pulled_at, 0), ?1) WHERE "
                "repository_id = (SELECT id FROM repositories WHERE name = ?2) AND digest = ?3 "
                "AND pushed_at <= ?1",  # a pull from before a delete and re-push belongs to the old image
                batch,
            )

    # -- pull-through rules ------------------------------------------------------------------------
    _RULE_COLUMNS = "prefix, upstream_url, upstream_prefix, credential_arn, upstream_registry, created_at, updated_at"

    async def list_rules(self) -> list[PullThroughRule]:
        rows = await self._fetchall(f"SELECT {self._RULE_COLUMNS} FROM pull_through_rules ORDER BY prefix")
        return [PullThroughRule(*r) for r in rows]

    async def create_rule(self, rule: PullThroughRule) -> None:
        async with self._tx() as db:
            cur = await db.execute(
                f"INSERT OR IGNORE INTO pull_through_rules ({self._RULE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                dataclasses.astuple(rule),
            )
            if cur.rowcount == 0:
                raise Conflict(rule.prefix)

    async def upsert_rule(self, rule: PullThroughRule) -> None:
        async with self._tx() as db:
            await db.execute(
                f"INSERT INTO pull_through_rules ({self._RULE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (prefix) DO UPDATE SET upstream_url = excluded.upstream_url, "
                "upstream_prefix = excluded.upstream_prefix, credential_arn = excluded.credential_arn, "
                "upstream_registry = excluded.upstream_registry, updated_at = excluded.updated_at",
                dataclasses.astuple(rule),
            )

    async def update_rule_credentials(
        self, prefix: str, credential_arn: str | None, now: float
    ) -> PullThroughRule | None:
        async with self._tx() as db:
            await db.execute(
                "UPDATE pull_through_rules SET credential_arn = ?, updated_at = ? WHERE prefix = ?",
                (credential_arn, now, prefix),
            )
            row = await self._one(
                db, f"SELECT {self._RULE_COLUMNS} FROM pull_through_rules WHERE prefix = ?", (prefix,)
            )
        return PullThroughRule(*row) if row else None

    async def delete_rule(self, prefix: str) -> PullThroughRule | None:
        async with self._tx() as db:
            row = await self._one(
                db, f"SELECT {self._RULE_COLUMNS} FROM pull_through_rules WHERE prefix = ?", (prefix,)
            )
            await db.execute("DELETE FROM pull_through_rules WHERE prefix = ?", (prefix,))
        return PullThroughRule(*row) if row else None

    async def tag_checked_at(self, repository: str, tag: str) -> float | None:
        row = await self._fetchone(
            "SELECT c.checked_at FROM repositories r JOIN upstream_checks c ON c.repository_id = r.id "
            "WHERE r.name = ? AND c.tag = ?",
            (repository, tag),
        )
        return row[0] if row else None

    async def set_tag_checked(self, repository: str, tag: str, when: float) -> None:
        async with self._tx() as db:
            await db.execute(
                "INSERT INTO upstream_checks (repository_id, tag, checked_at) SELECT id, ?, ? FROM repositories "
                "WHERE name = ? ON CONFLICT (repository_id, tag) DO UPDATE SET checked_at = excluded.checked_at",
                (tag, when, repository),
            )

    # -- lifecycle -----------------------------------------------------------------------------------
    async def set_lifecycle_policy(self, name: str, text: str | None) -> RepositoryRecord | None:
        async with self._tx() as db:
            await db.execute("UPDATE repositories SET lifecycle_policy = ? WHERE name = ?", (text, name))
            row = await self._one(db, f"SELECT {_REPO_COLUMNS} FROM repositories WHERE name = ?", (name,))
        return self._repo(row) if row else None

    async def note_upstream_failure(self, key: str, when: float) -> None:
        async with self._tx() as db:
            await db.execute("INSERT OR REPLACE INTO upstream_failures (key, failed_at) VALUES (?, ?)", (key, when))

    async def upstream_failed_at(self, keys: Sequence[str]) -> float | None:
        """The latest failure noted for any of `keys` (an upstream's base URL, a repository:tag)."""
        row = await self._fetchone(
            f"SELECT max(failed_at) FROM upstream_failures WHERE key IN ({','.join('?' * len(keys))})", list(keys)
        )
        return row[0] if row else None

    async def clear_upstream_failure(self, key: str) -> None:
        async with self._tx() as db:
            await db.execute("DELETE FROM upstream_failures WHERE key = ?", (key,))

    async def put_lifecycle_preview(self, name: str, preview: LifecyclePreview) -> None:
        results = json.dumps(preview.results) if preview.results is not None else None
        async with self._tx() as db:
            await db.execute(
                "INSERT OR REPLACE INTO lifecycle_previews (repository_id, policy_text, status, started_at, results) "
                "SELECT id, ?, ?, ?, ? FROM repositories WHERE name = ?",
                (preview.policy_text, preview.status, preview.started_at, results, name),
            )

    async def get_lifecycle_preview(self, name: str) -> LifecyclePreview | None:
        row = await self._fetchone(
            "SELECT p.policy_text, p.status, p.started_at, p.results FROM lifecycle_previews p "
            "JOIN repositories r ON r.id = p.repository_id WHERE r.name = ?",
            (name,),
        )
        if row is None:
            return None
        text, status, started_at, results = row
        return LifecyclePreview(text, status, started_at, json.loads(results) if results is not None else None)

    async def mark_lifecycle_evaluated(self, name: str, when: float) -> None:
        async with self._tx() as db:
            await db.execute("UPDATE repositories SET lifecycle_evaluated_at = ? WHERE name = ?", (when, name))

    async def set_storage_class(self, repository: str, digest: str, storage_class: str, now: float) -> bool:
        column = "last_archived_at" if storage_class == "ARCHIVE" else "last_activated_at"
        async with self._tx() as db:
            cur = await db.execute(
                f"UPDATE manifests SET storage_class = ?, {column} = ? WHERE digest = ? AND storage_class != ? "
                "AND repository_id = (SELECT id FROM repositories WHERE name = ?)",
                (storage_class, now, digest, storage_class, repository),
            )
            return cur.rowcount > 0

    # -- garbage collection ----------------------------------------------------------------------------
    _UNREFERENCED = "NOT EXISTS (SELECT 1 FROM manifest_references WHERE child = b.digest AND kind = 'blob')"

    async def gc_candidates(self, cutoff: float, limit: int) -> list[tuple[str, int]]:
        rows = await self._fetchall(
            f"SELECT b.digest, b.size FROM blobs b WHERE b.touched_at < ? AND {self._UNREFERENCED} "
            "ORDER BY b.digest LIMIT ?",
            (cutoff, limit),
        )
        return [(r[0], r[1]) for r in rows]

    async def delete_unreferenced_blob(self, digest: str, cutoff: float, unlink: Callable[[], None]) -> bool:
        async with self._tx() as db:
            still = await self._one(
                db,
                f"SELECT 1 FROM blobs b WHERE b.digest = ? AND b.touched_at < ? AND {self._UNREFERENCED}",
                (digest, cutoff),
            )
            if not still:
                return False
            await db.execute("DELETE FROM repository_blobs WHERE digest = ?", (digest,))
            await db.execute("DELETE FROM blobs WHERE digest = ?", (digest,))
            unlink()  # inside the transaction: a concurrent link of this digest waits, then finds no file
            return True

    async def known_blobs(self) -> set[str]:
        return {r[0] for r in await self._fetchall("SELECT digest FROM blobs")}

    async def delete_orphan_file(self, digest: str, unlink: Callable[[], None]) -> bool:
        async with self._tx() as db:
            if await self._one(db, "SELECT 1 FROM blobs WHERE digest = ?", (digest,)):
                return False
            unlink()
            return True

    async def stale_uploads(self, before: float) -> list[str]:
        return [r[0] for r in await self._fetchall("SELECT id FROM uploads WHERE created_at < ?", (before,))]

    # -- repository creation templates -----------------------------------------------------------------
    async def list_templates(self) -> list[tuple[str, str, float, float]]:
        rows = await self._fetchall(
            "SELECT prefix, body, created_at, updated_at FROM creation_templates ORDER BY prefix"
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]

    async def put_template(self, prefix: str, body: str, now: float, *, create: bool) -> bool:
        async with self._tx() as db:
            if create:
                cur = await db.execute(
                    "INSERT OR IGNORE INTO creation_templates (prefix, body, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?)",
                    (prefix, body, now, now),
                )
            else:
                cur = await db.execute(
                    "UPDATE creation_templates SET body = ?, updated_at = ? WHERE prefix = ?", (body, now, prefix)
                )
            return cur.rowcount > 0

    async def delete_template(self, prefix: str) -> tuple[str, str, float, float] | None:
        async with self._tx() as db:
            row = await self._one(
                db, "SELECT prefix, body, created_at, updated_at FROM creation_templates WHERE prefix = ?", (prefix,)
            )
            await db.execute("DELETE FROM creation_templates WHERE prefix = ?", (prefix,))
        return tuple(row) if row else None  # type: ignore[return-value]

    # -- upload sessions ---------------------------------------------------------------------------
    async def create_upload(self, upload: UploadRecord) -> None:
        async with self._tx() as db:
            await db.execute(
                "INSERT INTO uploads (id, repository, created_at, owner) VALUES (?, ?, ?, ?)",
                (upload.id, upload.repository, upload.created_at, upload.owner),
            )

    async def get_upload(self, upload_id: str) -> UploadRecord | None:
        row = await self._fetchone("SELECT id, repository, created_at, owner FROM uploads WHERE id = ?", (upload_id,))
        return UploadRecord(*row) if row else None

    async def delete_upload(self, upload_id: str) -> None:
        async with self._tx() as db:
            await db.execute("DELETE FROM uploads WHERE id = ?", (upload_id,))
