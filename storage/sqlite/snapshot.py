"""`storage.metadata.Snapshot` on SQLite: every row out in pages by primary key, rows in as one transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from typing import Any

from storage.errors import Conflict
from storage.snapshot import BATCH_ROWS, BY_NAME, TABLES, Batch, Table
from storage.sqlite.connection import SQLiteConnection


def _page_query(table: Table, after: bool) -> str:
    conditions = [f"({table.where})"] if table.where else []
    if after:
        conditions.append(f"({', '.join(table.key)}) > ({', '.join('?' * len(table.key))})")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return (
        f"SELECT {', '.join(table.columns)} FROM {table.name}{where} ORDER BY {', '.join(table.key)} LIMIT {BATCH_ROWS}"
    )


class SnapshotQueries(SQLiteConnection):
    async def export_rows(self, tables: Sequence[str] | None = None) -> AsyncIterator[Batch]:
        for table in TABLES:
            if tables is not None and table.name not in tables:
                continue
            last: tuple[Any, ...] | None = None
            while True:
                rows = await self._fetchall(_page_query(table, last is not None), last or ())
                if not rows:
                    break
                batch = [table.canonical(dict(zip(table.columns, row, strict=True))) for row in rows]
                yield table.name, batch
                if len(rows) < BATCH_ROWS:
                    break
                last = tuple(batch[-1][column] for column in table.key)

    async def import_rows(self, batches: AsyncIterable[Batch]) -> dict[str, int]:
        counts: dict[str, int] = {}
        try:
            async with self._tx() as db:
                async for name, rows in batches:
                    table = BY_NAME[name]
                    columns = list(table.columns)
                    verb = "INSERT OR REPLACE" if name == "shared_values" else "INSERT"
                    sql = f"{verb} INTO {name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
                    values = [[_sqlite_value(table.canonical(row)[c]) for c in columns] for row in rows]
                    await db.executemany(sql, values)
                    counts[name] = counts.get(name, 0) + len(rows)
        except sqlite3.IntegrityError as e:
            raise Conflict(f"{self.path}: a row is there already, or refers to one that is not: {e}") from e
        return counts

    async def row_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for table in TABLES:
            where = f" WHERE {table.where}" if table.where else ""
            (count,) = await self._fetchone(f"SELECT count(*) FROM {table.name}{where}")
            counts[table.name] = int(count)
        return counts


def _sqlite_value(value: Any) -> Any:
    return int(value) if isinstance(value, bool) else value
