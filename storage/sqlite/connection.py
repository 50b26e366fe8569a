"""The SQLite connection discipline (aiosqlite): WAL, one serialized writer, readers in parallel.

One writer connection whose transactions are serialized by a lock and begin with `BEGIN IMMEDIATE`, and a few
reader connections that run in parallel with it. `synchronous=FULL`: a write the registry has acknowledged
survives a crash or a power cut. The schema's migrations (`storage.sqlite.schema`) are applied on open. After
each commit the change feed hears of it, so other processes drop their caches.

While open, the store holds a shared `flock` on `<database>-inuse` (every worker of a server, every offline
command): `exclusive=True` takes it exclusively instead, so that `moorage migrate-storage` copies a database
nothing else writes meanwhile (it is refused while anything has it open, and anything opening it meanwhile is
refused). A separate file, because closing a descriptor of the database itself would drop SQLite's own locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import itertools
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from storage.coordination import ChangeFeed
from storage.errors import StorageError, StorageFull
from storage.sqlite.schema import MIGRATIONS

_IN_CHUNK = 500  # bound the number of SQL parameters per statement


async def _rollback(conn: aiosqlite.Connection) -> None:
    """Undo the open transaction, if any: after some errors (SQLITE_FULL, SQLITE_IOERR) SQLite has already rolled
    it back itself, and a failed COMMIT may leave it open."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            await conn.execute("ROLLBACK")


async def _undo_begin(conn: aiosqlite.Connection) -> None:
    """Roll back whatever a BEGIN whose caller was cancelled opens: queued behind it on the connection's thread,
    so unconditional (it may not have run yet when this is called)."""
    with contextlib.suppress(sqlite3.Error):
        await conn.execute("ROLLBACK")


class SQLiteConnection:
    def __init__(
        self, path: Path, changes: ChangeFeed | None = None, readers: int = 2, *, exclusive: bool = False
    ) -> None:
        self.path = Path(path)
        self.exclusive = exclusive
        self._in_use: int | None = None  # the descriptor holding the flock on <database>-inuse
        self._n_readers = readers
        self._writer: aiosqlite.Connection | None = None
        self._readers: list[aiosqlite.Connection] = []
        self._next_reader = itertools.cycle(range(readers))
        self._write_lock = asyncio.Lock()
        self.changes = changes

    # -- lifecycle ---------------------------------------------------------------------------------
    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._take_in_use()
        try:
            self._writer = await self._connect()
            await self._migrate(self._writer)
            for _ in range(self._n_readers):
                conn = await self._connect()
                await conn.execute("PRAGMA query_only = ON")
                self._readers.append(conn)
        except BaseException:
            await self.close()
            raise

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
        (version,) = next(iter(await conn.execute_fetchall("PRAGMA user_version")))
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

    def _take_in_use(self) -> None:
        if self._in_use is not None:
            return
        path = self.path.with_name(self.path.name + "-inuse")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise StorageError(
                f"{self.path} is in use by another process (a server, a moorage command)"
                if self.exclusive
                else f"{self.path} is being migrated to other storage (moorage migrate-storage); wait for it to end"
            ) from None
        self._in_use = fd

    async def close(self) -> None:
        for conn in [*self._readers, self._writer]:
            if conn is not None:
                await conn.close()
        self._readers.clear()
        self._writer = None
        fd, self._in_use = self._in_use, None
        if fd is not None:
            os.close(fd)  # drops the flock

    async def storage_stats(self) -> dict[str, int]:
        row = await self._fetchone(
            "SELECT (SELECT count(*) FROM uploads), (SELECT count(*) FROM blobs WHERE claimed = 0), "
            "(SELECT coalesce(sum(size), 0) FROM blobs WHERE claimed = 0), (SELECT count(*) FROM repositories), "
            "(SELECT count(*) FROM manifests)"
        )
        return dict(zip(("uploads_in_progress", "blobs", "blob_bytes", "repositories", "images"), row, strict=True))

    async def health(self) -> list[str]:
        await self._fetchall("SELECT 1")
        return []

    # -- plumbing ----------------------------------------------------------------------------------
    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        conn = self._readers[next(self._next_reader)] if self._readers else self._writer
        assert conn is not None, "store is not open"
        return list(await conn.execute_fetchall(sql, params))

    async def _fetchone(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = await self._fetchall(sql, params)
        return rows[0] if rows else None

    @contextlib.asynccontextmanager
    async def _tx(self, *, notify: bool = True) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction. Shielded so that a cancelled caller can't leave it open. Whatever fails (the
        body, or the COMMIT itself) is rolled back, so nothing of it stays and the writer is free for the next
        one; a full disk (SQLITE_FULL) raises StorageFull. Once committed, the change feed is told, unless
        `notify` is off (a write no process's cache holds: pull times)."""
        conn = self._writer
        assert conn is not None, "store is not open"
        async with self._write_lock:
            try:
                try:
                    await conn.execute("BEGIN IMMEDIATE")
                except asyncio.CancelledError:
                    # The BEGIN goes on in the connection's thread even so. A ROLLBACK queued behind it ends the
                    # transaction it opens before the writer is anyone else's (a cancelled backfill preparation
                    # once left it open, failing every later write with "cannot start a transaction within a
                    # transaction").
                    await asyncio.shield(_undo_begin(conn))
                    raise
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
            if self.changes is not None and notify:
                self.changes.committed()

    @staticmethod
    async def _one(conn: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = list(await conn.execute_fetchall(sql, params))
        return rows[0] if rows else None

    async def _in_query(self, sql: str, prefix: Sequence[Any], values: Iterable[str]) -> list[Any]:
        """Run `sql` (containing one `{in}` placeholder) over `values` in bounded chunks."""
        vals = list(dict.fromkeys(values))
        out: list[Any] = []
        for i in range(0, len(vals), _IN_CHUNK):
            part = vals[i : i + _IN_CHUNK]
            out += await self._fetchall(sql.format(placeholders=",".join("?" * len(part))), [*prefix, *part])
        return out
