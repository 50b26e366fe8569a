"""Coordination across replicas in PostgreSQL (`storage.coordination`): advisory locks and LISTEN/NOTIFY.

- `PostgresLocks`: each name is a session advisory lock (`pg_try_advisory_lock`) on a 64-bit key hashed from the
  schema and the name, held on one connection per process (not from the pool: a pooled connection would carry
  the locks to whoever uses it next). When that connection drops (a killed replica, a lost network), PostgreSQL
  releases every lock it held; the next call reconnects. Advisory locks are re-entrant within a session, so the
  names held here are tracked here too: a name held by one task is refused to the others.
- `PostgresChangeFeed`: LISTENs on the schema's channel on a connection of its own. The metadata store sends
  `pg_notify(channel, "token:sequence")` inside each write transaction, so the notification is delivered when
  the write commits; the epoch grows by one for each notification with another instance's token, and when the
  listening connection is lost or comes back (anything may have been missed in between). A watchdog pings the
  connection and reconnects. `settle()` waits until this process's own notifications are heard back: the web
  layer calls it before answering, so a write answered by one replica is known to all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from storage.errors import StorageUnavailable
from storage.postgres.connection import (
    CONNECT_TIMEOUT,
    FAILURES,
    UNAVAILABLE,
    describe,
    parse_dsn,
    redact,
    translate_errors,
)
from storage.postgres.schema import advisory_key, change_channel, current_schema

log = logging.getLogger(__name__)
T = TypeVar("T")

POLL_FIRST, POLL_MAX = 0.002, 0.05  # hold()'s polling, doubling
LOCK_TIMEOUT = 10.0  # one lock round trip
PING_INTERVAL, PING_TIMEOUT = 5.0, 5.0  # the change feed's watchdog
SETTLE_TIMEOUT = 0.5  # the longest a request waits for its writes' notifications to be heard back
RECONNECT_MAX = 5.0


async def _connect(dsn: str, settings: dict[str, str]) -> asyncpg.Connection[asyncpg.Record]:
    # No statement cache: these connections run a handful of tiny statements, and must stay usable however
    # the schema changes.
    return await asyncpg.connect(dsn, server_settings=settings, timeout=CONNECT_TIMEOUT, statement_cache_size=0)


_detached: set[asyncio.Task[None]] = set()  # undos running on their own (referenced until done)


def _finish_detached(task: asyncio.Task[T], undo: Callable[[T], Awaitable[None]]) -> None:
    """When `task` (whose caller was cancelled) completes, undo what it did."""

    async def run(result: T) -> None:
        await undo(result)

    def done(t: asyncio.Task[T]) -> None:
        if not t.cancelled() and t.exception() is None:
            follow = asyncio.ensure_future(run(t.result()))
            _detached.add(follow)
            follow.add_done_callback(_detached.discard)

    task.add_done_callback(done)


class PostgresLocks:
    """`storage.coordination.Locks` on session advisory locks (see the module's doc)."""

    def __init__(self, dsn: str) -> None:
        self.dsn, self.settings = parse_dsn(dsn)
        self._conn: asyncpg.Connection[asyncpg.Record] | None = None
        self._namespace = ""
        self._held: set[str] = set()
        self._use = asyncio.Lock()  # one statement at a time on the one connection

    async def open(self) -> None:
        """Connect (again calls do nothing while connected)."""
        async with self._use:
            await self._connection()

    async def _connection(self) -> asyncpg.Connection[asyncpg.Record]:
        """The live connection (caller holds `_use`); a dead one is replaced, and the locks it held are gone."""
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None
            if self._held:
                log.warning("lost the PostgreSQL lock connection: locks %s were released", sorted(self._held))
            self._held.clear()
        with translate_errors(f"PostgreSQL {redact(self.dsn)}"):
            conn = await _connect(self.dsn, self.settings)
            try:
                self._namespace = await current_schema(conn)
            except BaseException:
                conn.terminate()
                raise
        self._conn = conn
        return conn

    def _key(self, name: str) -> int:
        return advisory_key(self._namespace, name)

    async def _call(self, sql: str, name: str, *, retry: bool) -> Any:
        """Run `sql` with the name's key on the lock connection (caller holds `_use`). With `retry`, once more on
        a fresh connection when the connection turns out dead (what this one held is gone with it anyway)."""
        for attempt in (1, 2):
            conn = await self._connection()
            try:
                with translate_errors(f"PostgreSQL {redact(self.dsn)}"):
                    return await conn.fetchval(sql, self._key(name), timeout=LOCK_TIMEOUT)
            except StorageUnavailable:
                conn.terminate()  # whatever state it is in, its locks are to be considered gone
                if not retry or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _try_acquire(self, name: str) -> bool:
        async with self._use:
            if name in self._held:
                return False
            got = bool(await self._call("SELECT pg_try_advisory_lock($1)", name, retry=True))
            if got:
                self._held.add(name)
            return got

    async def try_acquire(self, name: str) -> bool:
        if name in self._held:
            return False
        # Shielded: a caller cancelled while the lock was being taken must not leave it taken by nobody.
        task = asyncio.ensure_future(self._try_acquire(name))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            _finish_detached(task, lambda got: self.release(name) if got else asyncio.sleep(0))
            raise

    async def _release(self, name: str) -> None:
        async with self._use:
            if name not in self._held:
                return
            self._held.discard(name)
            if self._conn is None or self._conn.is_closed():
                return  # gone with the connection
            try:
                await self._call("SELECT pg_advisory_unlock($1)", name, retry=False)
            except StorageUnavailable as e:  # the connection is gone, and the lock with it
                log.info("releasing lock %r: %s", name, e)

    async def release(self, name: str) -> None:
        if name in self._held:
            await asyncio.shield(self._release(name))

    async def held_elsewhere(self, name: str) -> bool:
        if name in self._held:
            return True  # another task of this process holds it

        async def probe() -> bool:
            async with self._use:
                if name in self._held:
                    return True
                if await self._call("SELECT pg_try_advisory_lock($1)", name, retry=True):
                    with contextlib.suppress(StorageUnavailable):  # a lost connection released it anyway
                        await self._call("SELECT pg_advisory_unlock($1)", name, retry=False)
                    return False
                return True

        return await asyncio.shield(probe())

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        delay = POLL_FIRST
        while not await self.try_acquire(name):
            await asyncio.sleep(delay)
            delay = min(delay * 2, POLL_MAX)
        try:
            yield
        finally:
            await self.release(name)

    async def close(self) -> None:
        async with self._use:
            conn, self._conn = self._conn, None
            self._held.clear()
            if conn is not None and not conn.is_closed():
                try:
                    await asyncio.wait_for(conn.close(), timeout=5)  # releases everything it held
                except UNAVAILABLE:
                    conn.terminate()

    def backend_pid(self) -> int | None:
        """The server process of the lock connection (for tests and diagnostics)."""
        return self._conn.get_server_pid() if self._conn is not None and not self._conn.is_closed() else None


class PostgresChangeFeed:
    """`storage.coordination.ChangeFeed` on LISTEN/NOTIFY (see the module's doc)."""

    def __init__(self, dsn: str) -> None:
        self.dsn, self.settings = parse_dsn(dsn)
        self.token = secrets.token_hex(8)  # what this process's notifications carry
        self.channel = ""
        self._epoch = 0
        self._conn: asyncpg.Connection[asyncpg.Record] | None = None
        self._use = asyncio.Lock()
        self._lost = asyncio.Event()
        self._watchdog: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        self._sequence = 0
        self._unheard: dict[str, asyncio.Future[None]] = {}  # own notifications announced, not yet heard back

    async def open(self) -> None:
        if self._conn is not None:
            return
        with translate_errors(f"PostgreSQL {redact(self.dsn)}"):
            await self._listen()
        self._watchdog = asyncio.create_task(self._watch(), name="moorage-change-feed")

    async def _listen(self) -> None:
        conn = await _connect(self.dsn, self.settings)
        try:
            self.channel = change_channel(await current_schema(conn))
            await conn.add_listener(self.channel, self._heard)
        except BaseException:
            conn.terminate()
            raise
        conn.add_termination_listener(self._terminated)
        self._conn = conn

    def _heard(self, conn: object, pid: int, channel: str, payload: object) -> None:
        if not isinstance(payload, str) or payload.partition(":")[0] != self.token:
            self._epoch += 1
        elif (heard := self._unheard.pop(payload, None)) is not None and not heard.done():
            heard.set_result(None)

    # -- settling: a write is answered once every replica can have heard of it --------------------------------
    def announce(self) -> str:
        """The payload of the notification a write transaction is about to send; `settle()` waits until it is
        heard back (PostgreSQL signals every listener of a commit at once, so once this process's listener has
        it, the other replicas' have been sent it too)."""
        self._sequence += 1
        payload = f"{self.token}:{self._sequence}"
        with contextlib.suppress(RuntimeError):  # no running loop: nothing will wait for it
            self._unheard[payload] = asyncio.get_running_loop().create_future()
        return payload

    def withdraw(self, payload: str) -> None:
        """The transaction that announced `payload` did not commit: there is nothing to wait for."""
        if (unheard := self._unheard.pop(payload, None)) is not None:
            unheard.cancel()

    def unsettled(self) -> bool:
        return bool(self._unheard)

    async def settle(self) -> None:
        """Until this process's committed writes have been heard back on the listening connection, for at most
        SETTLE_TIMEOUT (a lost connection moves every replica's epoch anyway). Free when nothing is unheard."""
        if not self._unheard:
            return
        waiting = list(self._unheard.items())
        _, pending = await asyncio.wait([f for _, f in waiting], timeout=SETTLE_TIMEOUT)
        if pending:
            log.debug("%d change notifications not heard back within %.2fs", len(pending), SETTLE_TIMEOUT)
            for payload, unheard in waiting:
                if unheard in pending:
                    self.withdraw(payload)

    def _forget_unheard(self) -> None:
        for unheard in self._unheard.values():
            unheard.cancel()
        self._unheard.clear()

    def _terminated(self, conn: object) -> None:
        if conn is self._conn:
            self._lost.set()

    async def _watch(self) -> None:
        """Ping the listening connection; when it is lost, move the epoch and reconnect (moving it again)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), timeout=PING_INTERVAL)
            conn = self._conn
            if conn is not None and not self._lost.is_set():
                try:
                    async with self._use:
                        await conn.fetchval("SELECT 1", timeout=PING_TIMEOUT)
                    continue
                except UNAVAILABLE as e:
                    log.warning("the change feed's PostgreSQL connection failed: %s", describe(e))
            await self._reconnect()

    async def _reconnect(self) -> None:
        self._epoch += 1  # anything may have been missed
        self._forget_unheard()  # and nothing sent before now will be heard back
        old, self._conn = self._conn, None
        if old is not None:
            old.terminate()
        delay = 0.1
        while True:
            try:
                await self._listen()
                break
            except FAILURES as e:
                log.warning("the change feed can't reach PostgreSQL (%s); retrying in %.1fs", describe(e), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX)
        self._lost.clear()
        self._epoch += 1  # and anything committed while reconnecting

    def epoch(self) -> int:
        return self._epoch

    def committed(self) -> None:
        """The metadata store notifies inside its transactions, so after its writes there is nothing to do. For
        anything else that calls this (a commit elsewhere), send a notification now, without waiting for it."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(self._send())
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send(self) -> None:
        conn = self._conn
        if conn is None or not self.channel:
            return
        try:
            async with self._use:
                await conn.execute("SELECT pg_notify($1, $2)", self.channel, self.token)
        except FAILURES as e:
            log.warning("change notification not sent: %s", describe(e))

    async def close(self) -> None:
        if self._sends:  # notifications on their way go out first
            await asyncio.wait(set(self._sends), timeout=2)
        self._forget_unheard()
        tasks = [t for t in (self._watchdog, *self._sends) if t is not None]
        self._watchdog = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), timeout=5)
            except UNAVAILABLE:
                conn.terminate()
