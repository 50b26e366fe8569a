"""Vulnerability records and image scans in PostgreSQL (`storage.metadata.ScanStore`), shared by the replicas.

`put_vulnerabilities` is one transaction of batched upserts (`INSERT ... SELECT FROM unnest(...) ON CONFLICT (id)
DO UPDATE ... WHERE excluded.modified > vulnerabilities.modified RETURNING id`, VULNERABILITY_BATCH records each):
an upsert returns exactly the rows it inserted or replaced, so the ids it answers are those it wrote, even while
another replica imports the same records (its upserts wait on these rows' locks, then find them current). The
records go in id order, so two such imports take their row locks in one order (no deadlock). An id given more
than once counts once, at its first place, with its latest record (`storage.records.newest_per_id`: one
statement can't upsert a row twice). `modified` compares as text, bytewise (COLLATE "C").

Ids, repositories and digests sort bytewise (COLLATE "C"), as SQLite's do. Repositories are names, not foreign
keys: the scans of a deleted repository's images stay until they are deleted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import asyncpg

from storage.postgres.connection import PostgresConnection, rowcount
from storage.records import ScanRecord, newest_per_id

VULNERABILITY_BATCH = 2000  # records per upsert statement (a few MB: well within a statement's timeout)
_SCAN_COLUMNS = (
    "repository, digest, status, description, started_at, completed_at, database_updated_at, findings, packages"
)
_UPSERT_VULNERABILITIES = (
    "INSERT INTO vulnerabilities (id, modified, record, stored_at) "
    "SELECT v.id, v.modified, v.record, $4 FROM unnest($1::text[], $2::text[], $3::text[]) AS v(id, modified, record) "
    "ON CONFLICT (id) DO UPDATE SET modified = excluded.modified, record = excluded.record, "
    "stored_at = excluded.stored_at WHERE excluded.modified > vulnerabilities.modified RETURNING id"
)


def _scan(row: asyncpg.Record) -> ScanRecord:
    return ScanRecord(
        row["repository"],
        row["digest"],
        row["status"],
        row["description"],
        row["started_at"],
        row["completed_at"],
        row["database_updated_at"],
        row["findings"],
        row["packages"],
    )


class ScanQueries(PostgresConnection):
    # -- the vulnerability database ----------------------------------------------------------------------------
    async def put_vulnerabilities(self, records: Sequence[tuple[str, str, str]], now: float) -> list[str]:
        given = newest_per_id(records)
        if not given:
            return []
        in_lock_order = sorted(given)
        changed: set[str] = set()
        async with self._tx() as db:
            for i in range(0, len(in_lock_order), VULNERABILITY_BATCH):
                ids, modified, texts = zip(*in_lock_order[i : i + VULNERABILITY_BATCH], strict=True)
                rows = await db.fetch(_UPSERT_VULNERABILITIES, list(ids), list(modified), list(texts), now)
                changed.update(row["id"] for row in rows)
        return [id_ for id_, _, _ in given if id_ in changed]

    async def vulnerability_records(self, after: str, limit: int) -> list[tuple[str, str]]:
        rows = await self._fetch(
            "SELECT id, record FROM vulnerabilities WHERE id > $1 ORDER BY id LIMIT $2", after, limit
        )
        return [(row["id"], row["record"]) for row in rows]

    async def vulnerability_stats(self) -> tuple[int, float | None]:
        row = await self._fetchrow("SELECT count(*), max(stored_at) FROM vulnerabilities")
        assert row is not None
        count, last = row
        return int(count), last

    # -- scans -------------------------------------------------------------------------------------------------
    async def put_scan(self, scan: ScanRecord) -> None:
        async with self._tx() as db:
            await db.execute(
                f"INSERT INTO image_scans ({_SCAN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
                "ON CONFLICT (repository, digest) DO UPDATE SET status = excluded.status, "
                "description = excluded.description, started_at = excluded.started_at, "
                "completed_at = excluded.completed_at, database_updated_at = excluded.database_updated_at, "
                "findings = excluded.findings, packages = excluded.packages",
                scan.repository,
                scan.digest,
                scan.status,
                scan.description,
                scan.started_at,
                scan.completed_at,
                scan.database_updated_at,
                scan.findings,
                scan.packages,
            )

    async def get_scans(self, repository: str, digests: Iterable[str]) -> dict[str, ScanRecord]:
        wanted = list(dict.fromkeys(digests))
        if not wanted:
            return {}
        rows = await self._fetch(
            f"SELECT {_SCAN_COLUMNS} FROM image_scans WHERE repository = $1 AND digest = ANY($2::text[])",
            repository,
            wanted,
        )
        return {scan.digest: scan for scan in map(_scan, rows)}

    async def scans_after(self, repository: str, digest: str, limit: int) -> list[ScanRecord]:
        rows = await self._fetch(
            f"SELECT {_SCAN_COLUMNS} FROM image_scans WHERE (repository, digest) > ($1, $2) "
            "ORDER BY repository, digest LIMIT $3",
            repository,
            digest,
            limit,
        )
        return [_scan(row) for row in rows]

    async def delete_scans(self, repository: str, digests: Iterable[str]) -> int:
        gone = list(dict.fromkeys(digests))
        if not gone:
            return 0
        async with self._tx() as db:
            status = await db.execute(
                "DELETE FROM image_scans WHERE repository = $1 AND digest = ANY($2::text[])", repository, gone
            )
        return rowcount(status)
