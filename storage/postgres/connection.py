"""The PostgreSQL connection discipline (asyncpg): a pool, READ COMMITTED transactions, NOTIFY inside each write.

- The DSN is asyncpg's (`postgresql://user:password@host:port/database?sslmode=...`), plus `search_path=NAME`
  (or `schema=NAME`): the schema holding Moorage's tables, which must exist (default: the server's search_path,
  usually `public`). Several registries may share a database in schemas of their own: their locks and change
  notifications are apart too.
- `open()` migrates on a connection of its own (`storage.postgres.schema.migrate`), then opens a pool.
- `_tx()` is a write transaction: it ends with `pg_notify(channel, payload)` (the payload announced to the
  change feed), so the other replicas hear of the write exactly when it commits (their change feeds drop caches;
  this process's hears its own back, which is what `settle()` waits for). The one write that no cache holds,
  the periodic store of pull times, notifies nobody (`_tx(notify=False)`).
- There is no single writer as with SQLite: where a write checks then writes, it takes row locks (`FOR UPDATE`,
  `FOR NO KEY UPDATE`, `FOR SHARE`) or relies on `INSERT ... ON CONFLICT`; see storage.postgres.manifests.
- Errors: connection loss, a server shutting down or failing over, no connection slot, a deadlock victim ->
  `StorageUnavailable` (try again; the web layer answers 503); a full disk -> `StorageFull`; a uniqueness
  violation -> `Conflict`; a foreign key violation (a row deleted by a concurrent transaction) -> `StorageError`;
  any other PostgreSQL error -> `StorageError`. A read, and a write whose connection is found dead before it
  begins, is tried once more on a fresh connection (the pool's others are replaced: a restart kills them all).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from asyncpg.transaction import Transaction

from storage.errors import Conflict, StorageError, StorageFull, StorageUnavailable
from storage.postgres.schema import change_channel, current_schema, migrate

if TYPE_CHECKING:
    from storage.postgres.coordination import PostgresChangeFeed

log = logging.getLogger(__name__)

Conn: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"  # asyncpg's classes are generic only in its stubs
T = TypeVar("T")

POOL_MIN, POOL_MAX = 1, 10
CONNECT_TIMEOUT = 10.0  # to open one connection
ACQUIRE_TIMEOUT = 30.0  # to get a connection from the pool (all busy)
COMMAND_TIMEOUT = 60.0  # one statement (a silently dead connection fails instead of hanging)
HEALTH_TIMEOUT = 3.0

# Errors that say "the database can't serve this now; try again".
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable; TimeoutError (a connect, an acquire, a statement) is one too
    asyncpg.PostgresConnectionError,  # class 08: the connection does not exist, or failed
    asyncpg.OperatorInterventionError,  # class 57: shutting down, starting up, statement timeout
    asyncpg.TooManyConnectionsError,
    asyncpg.TransactionRollbackError,  # class 40: a deadlock victim, a serialization failure
    asyncpg.ReadOnlySQLTransactionError,  # a standby after a failover
    # asyncpg's protocol state after the server ended the session under it ("cannot switch to state ...;
    # another operation is in progress"), a stale type cache after a schema change: a fresh connection will do
    asyncpg.InternalClientError,
)
# A read that fails with one of these is tried once more on another connection.
CONNECTION_LOST: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    ConnectionError,
    asyncpg.InternalClientError,
    asyncpg.AdminShutdownError,  # this session was terminated (the server may be fine)
)

# ... and what else a PostgreSQL server may answer (a check that merely reports).
FAILURES: tuple[type[BaseException], ...] = (*UNAVAILABLE, asyncpg.PostgresError, asyncpg.InterfaceError)


def parse_dsn(dsn: str) -> tuple[str, dict[str, str]]:
    """The DSN for asyncpg, and the server settings it asks for (`search_path` from `?search_path=` or
    `?schema=`)."""
    parts = urllib.parse.urlsplit(dsn)
    settings: dict[str, str] = {}
    query: list[tuple[str, str]] = []
    for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if key in ("search_path", "schema"):
            settings["search_path"] = value
        else:
            query.append((key, value))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query))), settings


def redact(dsn: str) -> str:
    """The DSN without its password, for messages."""
    parts = urllib.parse.urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


@contextlib.contextmanager
def translate_errors(where: str = "PostgreSQL") -> Iterator[None]:
    """Raise asyncpg's and the network's errors as the storage errors the service layer knows."""
    try:
        yield
    except StorageError:
        raise
    except asyncpg.DiskFullError as e:
        raise StorageFull(f"{where}: {e}") from e
    except UNAVAILABLE as e:
        raise StorageUnavailable(f"{where} unavailable: {describe(e)}") from e
    except asyncpg.UniqueViolationError as e:
        raise Conflict(f"{where}: {e}") from e
    except asyncpg.ForeignKeyViolationError as e:
        raise StorageError(f"{where}: a row this write refers to is gone (deleted concurrently): {e}") from e
    except asyncpg.PostgresError as e:
        raise StorageError(f"{where}: {describe(e)}") from e


def rowcount(status: str) -> int:
    """The row count of a command status ("UPDATE 2", "INSERT 0 1", "DELETE 0")."""
    return int(status.rsplit(" ", 1)[-1])


class PostgresConnection:
    def __init__(self, dsn: str, changes: PostgresChangeFeed | None = None) -> None:
        self.dsn, self.settings = parse_dsn(dsn)
        self.changes = changes
        self.token = changes.token if changes is not None else ""
        self.channel = ""
        self.schema = ""
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None

    @property
    def where(self) -> str:
        return f"PostgreSQL {redact(self.dsn)}"

    # -- lifecycle ---------------------------------------------------------------------------------
    async def open(self) -> None:
        if self._pool is not None:
            return
        with translate_errors(self.where):
            conn = await asyncpg.connect(self.dsn, server_settings=self.settings, timeout=CONNECT_TIMEOUT)
            try:
                self.schema = await current_schema(conn)
                await migrate(conn)
            finally:
                await conn.close()
            self.channel = change_channel(self.schema)
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=POOL_MIN,
                max_size=POOL_MAX,
                server_settings=self.settings,
                timeout=CONNECT_TIMEOUT,
                command_timeout=COMMAND_TIMEOUT,
            )

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), timeout=10)
            except UNAVAILABLE as e:
                log.warning("closing the PostgreSQL pool: %s", describe(e))
                pool.terminate()

    def _opened(self) -> asyncpg.Pool[asyncpg.Record]:
        assert self._pool is not None, "store is not open"
        return self._pool

    async def storage_stats(self) -> dict[str, int]:
        row = await self._fetchrow(
            "SELECT (SELECT count(*) FROM uploads), (SELECT count(*) FROM blobs WHERE NOT claimed), "
            "(SELECT coalesce(sum(size), 0)::bigint FROM blobs WHERE NOT claimed), "
            "(SELECT count(*) FROM repositories), (SELECT count(*) FROM manifests)"
        )
        assert row is not None
        names = ("uploads_in_progress", "blobs", "blob_bytes", "repositories", "images")
        return dict(zip(names, (int(v) for v in row), strict=True))

    async def health(self) -> list[str]:
        """A `SELECT 1` within HEALTH_TIMEOUT; what went wrong otherwise."""
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT):
                async with self._opened().acquire() as conn:
                    await conn.fetchval("SELECT 1")
        except TimeoutError:
            return [f"{self.where} did not answer within {HEALTH_TIMEOUT:.0f}s"]
        except FAILURES as e:
            return [f"{self.where} unavailable: {describe(e)}"]
        return []

    # -- plumbing ----------------------------------------------------------------------------------
    async def _read(self, run: Callable[[Conn], Awaitable[T]]) -> T:
        """A read on a pooled connection; once more on a fresh connection when the first one turns out dead."""
        pool = self._opened()
        with translate_errors(self.where):
            for attempt in (1, 2):
                try:
                    async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                        return await run(conn)
                except CONNECTION_LOST as e:
                    if attempt == 2:
                        raise
                    await self._connection_lost(pool, e)
        raise AssertionError("unreachable")

    @staticmethod
    async def _connection_lost(pool: asyncpg.Pool[asyncpg.Record], e: BaseException) -> None:
        """A pooled connection was found dead: the others may be too (a restart, a failover): replace them all."""
        log.info("PostgreSQL connection lost (%s); trying again on a fresh one", describe(e))
        await pool.expire_connections()

    async def _begin(self, pool: asyncpg.Pool[asyncpg.Record]) -> tuple[Conn, Transaction]:
        """A pooled connection in a new transaction; a second try when the connection turns out dead (nothing
        was written yet)."""
        for attempt in (1, 2):
            conn = await pool.acquire(timeout=ACQUIRE_TIMEOUT)
            tx = conn.transaction()
            try:
                await tx.start()
                return conn, tx
            except CONNECTION_LOST as e:
                await pool.release(conn)
                if attempt == 2:
                    raise
                await self._connection_lost(pool, e)
            except BaseException:
                await pool.release(conn)
                raise
        raise AssertionError("unreachable")

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return await self._read(lambda conn: conn.fetch(sql, *args))

    async def _fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        return await self._read(lambda conn: conn.fetchrow(sql, *args))

    async def _fetchval(self, sql: str, *args: Any) -> Any:
        return await self._read(lambda conn: conn.fetchval(sql, *args))

    @contextlib.asynccontextmanager
    async def _tx(self, *, notify: bool = True) -> AsyncIterator[Conn]:
        """A write transaction (READ COMMITTED) that notifies the other replicas as it commits. Whatever fails
        rolls it back; asyncpg's and the network's errors are raised as storage errors. Without `notify`, for a
        write no process's cache holds (pull times): nobody's epoch moves, and there is nothing to settle."""
        pool = self._opened()
        with translate_errors(self.where):
            conn, tx = await self._begin(pool)
            payload = ""  # this write's notification, once announced to the change feed
            try:
                try:
                    yield conn
                    if self.channel and notify:
                        payload = self.changes.announce() if self.changes is not None else self.token
                        await conn.execute("SELECT pg_notify($1, $2)", self.channel, payload)
                except BaseException:
                    if not conn.is_closed():
                        with contextlib.suppress(*FAILURES):  # a dead connection has rolled back already
                            await tx.rollback()
                    raise
                await tx.commit()
            except BaseException:
                if payload and self.changes is not None:
                    self.changes.withdraw(payload)  # not to be waited for
                raise
            finally:
                await pool.release(conn)
