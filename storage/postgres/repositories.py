"""Repositories, their settings and resource tags, creation templates, pull-through rules, lifecycle state, upload
sessions and shared values in PostgreSQL. Uniqueness races (two replicas creating one repository, rule, template
or value) are settled by `INSERT ... ON CONFLICT`: the loser sees the winner's row."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import asyncpg

from storage.errors import Conflict, RepositoryExists, RepositoryNotEmpty
from storage.postgres.connection import Conn, PostgresConnection, rowcount
from storage.records import (
    LifecyclePreview,
    Page,
    PullThroughRule,
    RepositoryInit,
    RepositoryRecord,
    RepositorySettings,
    UploadRecord,
)

_REPO_COLUMNS = (
    "id, name, created_at, image_tag_mutability, mutability_exclusions, scan_on_push, encryption_type, kms_key, "
    "policy, lifecycle_policy, lifecycle_evaluated_at"
)
_RULE_COLUMNS = "prefix, upstream_url, upstream_prefix, credential_arn, upstream_registry, created_at, updated_at"
_TEMPLATE_COLUMNS = "prefix, body, created_at, updated_at"


def _exclusions(settings: RepositorySettings) -> str | None:
    return json.dumps(list(settings.mutability_exclusions)) if settings.mutability_exclusions else None


class RepositoryQueries(PostgresConnection):
    @staticmethod
    def _repo(row: asyncpg.Record) -> RepositoryRecord:
        rid, name, created_at, mutability, exclusions, scan, enc, kms, policy, lifecycle, evaluated_at = row
        settings = RepositorySettings(
            mutability, tuple(json.loads(exclusions)) if exclusions else (), bool(scan), enc, kms
        )
        return RepositoryRecord(rid, name, created_at, settings, policy, lifecycle, evaluated_at)

    async def get_repository(self, name: str) -> RepositoryRecord | None:
        row = await self._fetchrow(f"SELECT {_REPO_COLUMNS} FROM repositories WHERE name = $1", name)
        return self._repo(row) if row else None

    async def ensure_repository(self, name: str, now: float, init: RepositoryInit | None = None) -> RepositoryRecord:
        existing = await self.get_repository(name)
        if existing:
            return existing
        async with self._tx() as db:
            await self._ensure_repository_in(db, name, now, init or RepositoryInit())
            row = await db.fetchrow(f"SELECT {_REPO_COLUMNS} FROM repositories WHERE name = $1", name)
        assert row is not None
        return self._repo(row)

    async def _ensure_repository_in(self, db: Conn, name: str, now: float, init: RepositoryInit) -> None:
        """Inside a write transaction: create the repository with `init` unless it exists. A concurrent creation
        of the same name waits for the other transaction, then finds its row."""
        repo_id = await self._insert_repository(db, name, now, init.settings)
        if repo_id is not None:
            await db.execute(
                "UPDATE repositories SET policy = $1, lifecycle_policy = $2 WHERE id = $3",
                init.policy,
                init.lifecycle_policy,
                repo_id,
            )
            await self._put_resource_tags(db, repo_id, dict(init.tags))

    @staticmethod
    async def _insert_repository(db: Conn, name: str, now: float, s: RepositorySettings) -> int | None:
        """The new repository's id; None when the name is taken."""
        repo_id: int | None = await db.fetchval(
            "INSERT INTO repositories (name, created_at, image_tag_mutability, mutability_exclusions, scan_on_push, "
            "encryption_type, kms_key) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO NOTHING RETURNING id",
            name,
            now,
            s.image_tag_mutability,
            _exclusions(s),
            s.scan_on_push,
            s.encryption_type,
            s.kms_key,
        )
        return repo_id

    @staticmethod
    async def _put_resource_tags(db: Conn, repo_id: int, tags: dict[str, str]) -> None:
        if tags:
            await db.execute(
                "INSERT INTO repository_tags (repository_id, key, value) SELECT $1, k, v "
                "FROM unnest($2::text[], $3::text[]) AS t(k, v) "
                "ON CONFLICT (repository_id, key) DO UPDATE SET value = excluded.value",
                repo_id,
                list(tags),
                list(tags.values()),
            )

    async def create_repository(
        self, name: str, now: float, settings: RepositorySettings, tags: dict[str, str]
    ) -> RepositoryRecord:
        async with self._tx() as db:
            repo_id = await self._insert_repository(db, name, now, settings)
            if repo_id is None:
                raise RepositoryExists(name)
            await self._put_resource_tags(db, repo_id, tags)
            row = await db.fetchrow(f"SELECT {_REPO_COLUMNS} FROM repositories WHERE id = $1", repo_id)
        assert row is not None
        return self._repo(row)

    async def delete_repository(self, name: str, force: bool) -> RepositoryRecord | None:
        async with self._tx() as db:
            row = await db.fetchrow(f"SELECT {_REPO_COLUMNS} FROM repositories WHERE name = $1 FOR UPDATE", name)
            if row is None:
                return None
            if not force and await db.fetchval("SELECT 1 FROM manifests WHERE repository_id = $1 LIMIT 1", row[0]):
                raise RepositoryNotEmpty(name)
            await db.execute("DELETE FROM repositories WHERE id = $1", row[0])
            await db.execute("DELETE FROM uploads WHERE repository = $1", name)
        return self._repo(row)

    async def update_settings(self, name: str, settings: RepositorySettings) -> RepositoryRecord | None:
        async with self._tx() as db:
            row = await db.fetchrow(
                "UPDATE repositories SET image_tag_mutability = $1, mutability_exclusions = $2, scan_on_push = $3, "
                f"encryption_type = $4, kms_key = $5 WHERE name = $6 RETURNING {_REPO_COLUMNS}",
                settings.image_tag_mutability,
                _exclusions(settings),
                settings.scan_on_push,
                settings.encryption_type,
                settings.kms_key,
                name,
            )
        return self._repo(row) if row else None

    async def set_policy(self, name: str, policy: str | None) -> RepositoryRecord | None:
        async with self._tx() as db:
            row = await db.fetchrow(
                f"UPDATE repositories SET policy = $1 WHERE name = $2 RETURNING {_REPO_COLUMNS}", policy, name
            )
        return self._repo(row) if row else None

    async def list_repositories(self, last: str | None, limit: int) -> Page:
        rows = await self._fetch(
            "SELECT name FROM repositories WHERE name > $1 ORDER BY name LIMIT $2", last or "", limit + 1
        )
        return Page([r[0] for r in rows[:limit]], len(rows) > limit)

    async def describe_repositories(self, last: str | None, limit: int) -> list[RepositoryRecord]:
        rows = await self._fetch(
            f"SELECT {_REPO_COLUMNS} FROM repositories WHERE name > $1 ORDER BY name LIMIT $2", last or "", limit
        )
        return [self._repo(r) for r in rows]

    async def resource_tags(self, name: str) -> dict[str, str]:
        rows = await self._fetch(
            "SELECT t.key, t.value FROM repository_tags t JOIN repositories r ON r.id = t.repository_id "
            "WHERE r.name = $1 ORDER BY t.key",
            name,
        )
        return {r[0]: r[1] for r in rows}

    async def tag_resource(self, name: str, tags: dict[str, str]) -> None:
        async with self._tx() as db:
            repo_id = await db.fetchval("SELECT id FROM repositories WHERE name = $1", name)
            if repo_id is not None:
                await self._put_resource_tags(db, repo_id, tags)

    async def untag_resource(self, name: str, keys: list[str]) -> None:
        async with self._tx() as db:
            await db.execute(
                "DELETE FROM repository_tags WHERE key = ANY($1::text[]) AND repository_id = "
                "(SELECT id FROM repositories WHERE name = $2)",
                list(keys),
                name,
            )

    # -- pull-through rules ------------------------------------------------------------------------
    async def list_rules(self) -> list[PullThroughRule]:
        rows = await self._fetch(f"SELECT {_RULE_COLUMNS} FROM pull_through_rules ORDER BY prefix")
        return [PullThroughRule(*r) for r in rows]

    async def create_rule(self, rule: PullThroughRule) -> None:
        async with self._tx() as db:
            status = await db.execute(
                f"INSERT INTO pull_through_rules ({_RULE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) "
                "ON CONFLICT (prefix) DO NOTHING",
                *dataclasses.astuple(rule),
            )
            if rowcount(status) == 0:
                raise Conflict(rule.prefix)

    async def upsert_rule(self, rule: PullThroughRule) -> None:
        async with self._tx() as db:
            await db.execute(
                f"INSERT INTO pull_through_rules ({_RULE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) "
                "ON CONFLICT (prefix) DO UPDATE SET upstream_url = excluded.upstream_url, "
                "upstream_prefix = excluded.upstream_prefix, credential_arn = excluded.credential_arn, "
                "upstream_registry = excluded.upstream_registry, updated_at = excluded.updated_at",
                *dataclasses.astuple(rule),
            )

    async def update_rule_credentials(
        self, prefix: str, credential_arn: str | None, now: float
    ) -> PullThroughRule | None:
        async with self._tx() as db:
            row = await db.fetchrow(
                f"UPDATE pull_through_rules SET credential_arn = $1, updated_at = $2 WHERE prefix = $3 "
                f"RETURNING {_RULE_COLUMNS}",
                credential_arn,
                now,
                prefix,
            )
        return PullThroughRule(*row) if row else None

    async def delete_rule(self, prefix: str) -> PullThroughRule | None:
        async with self._tx() as db:
            row = await db.fetchrow(
                f"DELETE FROM pull_through_rules WHERE prefix = $1 RETURNING {_RULE_COLUMNS}", prefix
            )
        return PullThroughRule(*row) if row else None

    async def tag_checked_at(self, repository: str, tag: str) -> float | None:
        checked: float | None = await self._fetchval(
            "SELECT c.checked_at FROM repositories r JOIN upstream_checks c ON c.repository_id = r.id "
            "WHERE r.name = $1 AND c.tag = $2",
            repository,
            tag,
        )
        return checked

    async def set_tag_checked(self, repository: str, tag: str, when: float) -> None:
        async with self._tx() as db:
            await db.execute(
                "INSERT INTO upstream_checks (repository_id, tag, checked_at) SELECT id, $1, $2 FROM repositories "
                "WHERE name = $3 ON CONFLICT (repository_id, tag) DO UPDATE SET checked_at = excluded.checked_at",
                tag,
                when,
                repository,
            )

    # -- lifecycle -----------------------------------------------------------------------------------
    async def set_lifecycle_policy(self, name: str, text: str | None) -> RepositoryRecord | None:
        async with self._tx() as db:
            row = await db.fetchrow(
                f"UPDATE repositories SET lifecycle_policy = $1 WHERE name = $2 RETURNING {_REPO_COLUMNS}", text, name
            )
        return self._repo(row) if row else None

    async def note_upstream_failure(self, key: str, when: float) -> None:
        async with self._tx() as db:
            await db.execute(
                "INSERT INTO upstream_failures (key, failed_at) VALUES ($1, $2) "
                "ON CONFLICT (key) DO UPDATE SET failed_at = excluded.failed_at",
                key,
                when,
            )

    async def upstream_failed_at(self, keys: Sequence[str]) -> float | None:
        """The latest failure noted for any of `keys` (an upstream's base URL, a repository:tag)."""
        failed: float | None = await self._fetchval(
            "SELECT max(failed_at) FROM upstream_failures WHERE key = ANY($1::text[])", list(keys)
        )
        return failed

    async def clear_upstream_failure(self, key: str) -> None:
        async with self._tx() as db:
            await db.execute("DELETE FROM upstream_failures WHERE key = $1", key)

    async def put_lifecycle_preview(self, name: str, preview: LifecyclePreview) -> None:
        results = json.dumps(preview.results) if preview.results is not None else None
        async with self._tx() as db:
            await db.execute(
                "INSERT INTO lifecycle_previews (repository_id, policy_text, status, started_at, results) "
                "SELECT id, $1, $2, $3, $4 FROM repositories WHERE name = $5 ON CONFLICT (repository_id) DO UPDATE "
                "SET policy_text = excluded.policy_text, status = excluded.status, started_at = excluded.started_at, "
                "results = excluded.results",
                preview.policy_text,
                preview.status,
                preview.started_at,
                results,
                name,
            )

    async def get_lifecycle_preview(self, name: str) -> LifecyclePreview | None:
        row = await self._fetchrow(
            "SELECT p.policy_text, p.status, p.started_at, p.results FROM lifecycle_previews p "
            "JOIN repositories r ON r.id = p.repository_id WHERE r.name = $1",
            name,
        )
        if row is None:
            return None
        text, status, started_at, results = row
        return LifecyclePreview(text, status, started_at, json.loads(results) if results is not None else None)

    async def mark_lifecycle_evaluated(self, name: str, when: float) -> None:
        async with self._tx() as db:
            await db.execute("UPDATE repositories SET lifecycle_evaluated_at = $1 WHERE name = $2", when, name)

    async def set_storage_class(self, repository: str, digest: str, storage_class: str, now: float) -> bool:
        column = "last_archived_at" if storage_class == "ARCHIVE" else "last_activated_at"
        async with self._tx() as db:
            status = await db.execute(
                f"UPDATE manifests SET storage_class = $1, {column} = $2 WHERE digest = $3 AND storage_class <> $1 "
                "AND repository_id = (SELECT id FROM repositories WHERE name = $4)",
                storage_class,
                now,
                digest,
                repository,
            )
            return rowcount(status) > 0

    # -- repository creation templates -----------------------------------------------------------------
    @staticmethod
    def _template(row: Any) -> tuple[str, str, float, float]:
        return (row[0], row[1], row[2], row[3])

    async def list_templates(self) -> list[tuple[str, str, float, float]]:
        rows = await self._fetch(f"SELECT {_TEMPLATE_COLUMNS} FROM creation_templates ORDER BY prefix")
        return [self._template(r) for r in rows]

    async def put_template(self, prefix: str, body: str, now: float, *, create: bool) -> bool:
        async with self._tx() as db:
            if create:
                status = await db.execute(
                    "INSERT INTO creation_templates (prefix, body, created_at, updated_at) VALUES ($1, $2, $3, $3) "
                    "ON CONFLICT (prefix) DO NOTHING",
                    prefix,
                    body,
                    now,
                )
            else:
                status = await db.execute(
                    "UPDATE creation_templates SET body = $1, updated_at = $2 WHERE prefix = $3", body, now, prefix
                )
            return rowcount(status) > 0

    async def delete_template(self, prefix: str) -> tuple[str, str, float, float] | None:
        async with self._tx() as db:
            row = await db.fetchrow(
                f"DELETE FROM creation_templates WHERE prefix = $1 RETURNING {_TEMPLATE_COLUMNS}", prefix
            )
        return self._template(row) if row else None

    # -- upload sessions ---------------------------------------------------------------------------
    async def create_upload(self, upload: UploadRecord) -> None:
        async with self._tx() as db:
            await db.execute(
                "INSERT INTO uploads (id, repository, created_at, owner) VALUES ($1, $2, $3, $4)",
                upload.id,
                upload.repository,
                upload.created_at,
                upload.owner,
            )

    async def get_upload(self, upload_id: str) -> UploadRecord | None:
        row = await self._fetchrow("SELECT id, repository, created_at, owner FROM uploads WHERE id = $1", upload_id)
        return UploadRecord(*row) if row else None

    async def delete_upload(self, upload_id: str) -> None:
        async with self._tx() as db:
            await db.execute("DELETE FROM uploads WHERE id = $1", upload_id)

    # -- shared values ---------------------------------------------------------------------------------
    async def get_value(self, name: str) -> bytes | None:
        value: bytes | None = await self._fetchval("SELECT value FROM shared_values WHERE name = $1", name)
        return bytes(value) if value is not None else None

    async def values(self, prefix: str) -> dict[str, bytes]:
        rows = await self._fetch(
            "SELECT name, value FROM shared_values WHERE left(name, length($1)) = $1 ORDER BY name", prefix
        )
        return {name: bytes(value) for name, value in rows}

    async def put_value(self, name: str, value: bytes, *, replace: bool = True) -> bytes:
        async with self._tx() as db:
            if replace:
                await db.execute(
                    "INSERT INTO shared_values (name, value) VALUES ($1, $2) "
                    "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    name,
                    value,
                )
                return value
            # A concurrent insert of the name waits for the other transaction; then this one sees its value.
            await db.execute(
                "INSERT INTO shared_values (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING", name, value
            )
            stored: bytes = await db.fetchval("SELECT value FROM shared_values WHERE name = $1", name)
            return bytes(stored)

    async def delete_value(self, name: str) -> bool:
        async with self._tx() as db:
            status = await db.execute("DELETE FROM shared_values WHERE name = $1", name)
        return rowcount(status) > 0
