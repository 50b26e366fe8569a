"""Vulnerability records and image scans in SQLite (`storage.metadata.ScanStore`).

`put_vulnerabilities` reads the stored `modified` of the ids it is given (in chunks), then writes the records that
are new or later with one `executemany` upsert, all in one `BEGIN IMMEDIATE` transaction: under the single writer
nothing changes in between, so the ids it returns are those it wrote. (Python's sqlite3 refuses rows from
`executemany`, so the upsert's RETURNING can't say which.) An id given more than once counts once, at its first
place, with its latest record (`storage.records.newest_per_id`). `modified` compares as text (bytewise).

Ids, repositories and digests sort bytewise (SQLite's BINARY collation), as PostgreSQL's COLLATE "C" columns do.
Repositories are names, not foreign keys: the scans of a deleted repository's images stay until they are deleted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from storage.records import ScanRecord, newest_per_id
from storage.sqlite.connection import SQLiteConnection

_CHUNK = 500  # ids per statement (bounded SQL parameters)
_SCAN_COLUMNS = (
    "repository, digest, status, description, started_at, completed_at, database_updated_at, findings, packages"
)
_UPSERT_VULNERABILITY = (
    "INSERT INTO vulnerabilities (id, modified, record, stored_at) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE "
    "SET modified = excluded.modified, record = excluded.record, stored_at = excluded.stored_at "
    "WHERE excluded.modified > vulnerabilities.modified"
)


def _scan(row: Sequence[Any]) -> ScanRecord:
    repository, digest, status, description, started_at, completed_at, database_updated_at, findings, packages = row
    return ScanRecord(
        repository,
        digest,
        status,
        description,
        float(started_at),
        None if completed_at is None else float(completed_at),
        None if database_updated_at is None else float(database_updated_at),
        findings,
        packages,
    )


class ScanQueries(SQLiteConnection):
    # -- the vulnerability database ----------------------------------------------------------------------------
    async def put_vulnerabilities(self, records: Sequence[tuple[str, str, str]], now: float) -> list[str]:
        given = newest_per_id(records)
        if not given:
            return []
        async with self._tx() as db:
            stored: dict[str, str] = {}
            for i in range(0, len(given), _CHUNK):
                ids = [id_ for id_, _, _ in given[i : i + _CHUNK]]
                rows = await db.execute_fetchall(
                    f"SELECT id, modified FROM vulnerabilities WHERE id IN ({','.join('?' * len(ids))})", ids
                )
                stored.update((id_, modified) for id_, modified in rows)
            changed = [r for r in given if r[0] not in stored or r[1] > stored[r[0]]]
            await db.executemany(_UPSERT_VULNERABILITY, [(*record, now) for record in changed])
        return [id_ for id_, _, _ in changed]

    async def vulnerability_records(self, after: str, limit: int) -> list[tuple[str, str]]:
        rows = await self._fetchall(
            "SELECT id, record FROM vulnerabilities WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
        )
        return [(id_, record) for id_, record in rows]

    async def vulnerability_stats(self) -> tuple[int, float | None]:
        count, last = await self._fetchone("SELECT count(*), max(stored_at) FROM vulnerabilities")
        return int(count), None if last is None else float(last)

    # -- scans -------------------------------------------------------------------------------------------------
    async def put_scan(self, scan: ScanRecord) -> None:
        async with self._tx() as db:
            await db.execute(
                f"INSERT INTO image_scans ({_SCAN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (repository, digest) DO UPDATE SET status = excluded.status, "
                "description = excluded.description, started_at = excluded.started_at, "
                "completed_at = excluded.completed_at, database_updated_at = excluded.database_updated_at, "
                "findings = excluded.findings, packages = excluded.packages",
                (
                    scan.repository,
                    scan.digest,
                    scan.status,
                    scan.description,
                    scan.started_at,
                    scan.completed_at,
                    scan.database_updated_at,
                    scan.findings,
                    scan.packages,
                ),
            )

    async def get_scans(self, repository: str, digests: Iterable[str]) -> dict[str, ScanRecord]:
        rows = await self._in_query(
            f"SELECT {_SCAN_COLUMNS} FROM image_scans WHERE repository = ? AND digest IN ({{placeholders}})",
            (repository,),
            digests,
        )
        return {scan.digest: scan for scan in map(_scan, rows)}

    async def scans_after(self, repository: str, digest: str, limit: int) -> list[ScanRecord]:
        rows = await self._fetchall(
            f"SELECT {_SCAN_COLUMNS} FROM image_scans WHERE (repository, digest) > (?, ?) "
            "ORDER BY repository, digest LIMIT ?",
            (repository, digest, limit),
        )
        return [_scan(row) for row in rows]

    async def delete_scans(self, repository: str, digests: Iterable[str]) -> int:
        distinct = list(dict.fromkeys(digests))
        if not distinct:
            return 0
        deleted = 0
        async with self._tx() as db:
            for i in range(0, len(distinct), _CHUNK):
                part = distinct[i : i + _CHUNK]
                cur = await db.execute(
                    f"DELETE FROM image_scans WHERE repository = ? AND digest IN ({','.join('?' * len(part))})",
                    (repository, *part),
                )
                deleted += cur.rowcount
        return deleted
