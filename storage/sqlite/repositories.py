"""Repositories, their settings and resource tags, creation templates, pull-through rules, lifecycle state and
upload sessions in SQLite."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import aiosqlite

from storage.errors import Conflict, RepositoryExists, RepositoryNotEmpty
from storage.records import (
    LifecyclePreview,
    Page,
    PullThroughRule,
    RepositoryInit,
    RepositoryRecord,
    RepositorySettings,
    UploadRecord,
)
from storage.sqlite.connection import SQLiteConnection

_REPO_COLUMNS = (
    "id, name, created_at, image_tag_mutability, mutability_exclusions, scan_on_push, encryption_type, kms_key, "
    "policy, lifecycle_policy, lifecycle_evaluated_at"
)


class RepositoryQueries(SQLiteConnection):
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
        async with self._tx() as db:
            await db.execute(
                "UPDATE repositories SET image_tag_mutability = ?, mutability_exclusions = ?, scan_on_push = ?, "
                "encryption_type = ?, kms_key = ? WHERE name = ?",
                (
                    settings.image_tag_mutability,
                    json.dumps(list(settings.mutability_exclusions)) if settings.mutability_exclusions else None,
                    int(settings.scan_on_push),
                    settings.encryption_type,
                    settings.kms_key,
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

    # -- repository creation templates -----------------------------------------------------------------
    async def list_templates(self) -> list[tuple[str, str, float, float]]:
        rows = await self._fetchall(
            "SELECT prefix, body, created_at, updated_at FROM creation_templates ORDER BY prefix"
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]

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
        return (row[0], row[1], row[2], row[3]) if row else None

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

    # -- shared values ---------------------------------------------------------------------------------
    async def get_value(self, name: str) -> bytes | None:
        row = await self._fetchone("SELECT value FROM shared_values WHERE name = ?", (name,))
        return bytes(row[0]) if row else None

    async def values(self, prefix: str) -> dict[str, bytes]:
        rows = await self._fetchall(
            "SELECT name, value FROM shared_values WHERE substr(name, 1, length(?)) = ? ORDER BY name", (prefix, prefix)
        )
        return {name: bytes(value) for name, value in rows}

    async def put_value(self, name: str, value: bytes, *, replace: bool = True) -> bytes:
        async with self._tx() as db:
            if replace:
                await db.execute(
                    "INSERT INTO shared_values (name, value) VALUES (?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    (name, value),
                )
                return value
            await db.execute("INSERT OR IGNORE INTO shared_values (name, value) VALUES (?, ?)", (name, value))
            row = await self._one(db, "SELECT value FROM shared_values WHERE name = ?", (name,))
            return bytes(row[0])

    async def delete_value(self, name: str) -> bool:
        async with self._tx() as db:
            cur = await db.execute("DELETE FROM shared_values WHERE name = ?", (name,))
            return cur.rowcount > 0
