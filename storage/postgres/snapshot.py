"""`storage.metadata.Snapshot` on PostgreSQL: every row out in pages by primary key, rows in as one transaction
(executemany per batch), the id sequences moved past the copied ids before it commits."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Sequence
from typing import Any

from storage.postgres.connection import PostgresConnection
from storage.snapshot import BATCH_ROWS, BY_NAME, TABLES, Batch, Table


def _page_query(table: Table, after: bool) -> str:
    conditions = [f"({table.where})"] if table.where else []
    if after:
        marks = ", ".join(f"${i}" for i in range(1, len(table.key) + 1))
        conditions.append(f"({', '.join(table.key)}) > ({marks})")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return (
        f"SELECT {', '.join(table.columns)} FROM {table.name}{where} ORDER BY {', '.join(table.key)} LIMIT {BATCH_ROWS}"
    )


def _insert(table: Table) -> str:
    columns = list(table.columns)
    marks = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({marks})"
    if table.name == "shared_values":
        sql += " ON CONFLICT (name) DO UPDATE SET value = excluded.value"
    return sql


class SnapshotQueries(PostgresConnection):
    async def export_rows(self, tables: Sequence[str] | None = None) -> AsyncIterator[Batch]:
        for table in TABLES:
            if tables is not None and table.name not in tables:
                continue
            last: tuple[Any, ...] | None = None
            while True:
                rows = await self._fetch(_page_query(table, last is not None), *(last or ()))
                if not rows:
                    break
                batch = [table.canonical(dict(row)) for row in rows]
                yield table.name, batch
                if len(rows) < BATCH_ROWS:
                    break
                last = tuple(batch[-1][column] for column in table.key)

    async def import_rows(self, batches: AsyncIterable[Batch]) -> dict[str, int]:
        counts: dict[str, int] = {}
        async with self._tx() as db:
            async for name, rows in batches:
                table = BY_NAME[name]
                canonical = [table.canonical(row) for row in rows]
                await db.executemany(_insert(table), [tuple(row[c] for c in table.columns) for row in canonical])
                counts[name] = counts.get(name, 0) + len(rows)
            for table in TABLES:
                if table.serial is not None:  # the next id a write takes comes after every copied one
                    await db.execute(
                        f"SELECT setval(pg_get_serial_sequence('{table.name}', '{table.serial}'), "
                        f"coalesce((SELECT max({table.serial}) FROM {table.name}), 0) + 1, false)"
                    )
        return counts

    async def row_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for table in TABLES:
            where = f" WHERE {table.where}" if table.where else ""
            counts[table.name] = int(await self._fetchval(f"SELECT count(*) FROM {table.name}{where}"))
        return counts
