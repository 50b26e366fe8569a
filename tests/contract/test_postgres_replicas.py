"""PostgreSQL replicas: what SQLite's single writer on one machine could not show.

Not part of the per-backend contract (these cases know the PostgreSQL driver: two stores on one schema stand for
two replicas, and a few reach for a connection's server process), but they run in the same session and on the
same cluster as the contract suite (`postgres_dsn`). Each case gets a fresh schema.

- Races between replicas that SQLite settled by serializing writers: a protected tag pushed by many at once, a
  garbage collection claim against a link or a push, concurrent repository creations and migrations.
- Advisory locks exclude across instances (unlike POSIX record locks, even within one process), and a lost
  connection releases them.
- The change feed hears another replica's commit within a bounded time, and moves when its connection is lost.
- A server that can't be reached raises StorageUnavailable; a pooled connection that died is replaced.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Iterator

import asyncpg
import pytest

from storage.errors import BlobNotFound, StorageError, StorageUnavailable, TagConflict
from storage.postgres import PostgresChangeFeed, PostgresLocks, PostgresMetadataStore, open_postgres
from storage.postgres.schema import MIGRATIONS
from storage.records import RepositorySettings
from tests.contract.helpers import digest, eventually, manifest
from tests.services.postgres import with_schema

T0 = 1_700_000_000.0
OLD, CUTOFF, LATER = T0 - 100, T0, T0 + 100
LAYER = digest(b"layer")
NOTIFY_BOUND = 1.0  # seconds: a commit is heard by another replica's feed within this


@pytest.fixture
def schema_dsn(postgres_dsn: str, runner: asyncio.Runner) -> Iterator[str]:
    """A DSN selecting a fresh, empty schema (dropped after the case)."""
    schema = f"replicas_{uuid.uuid4().hex[:16]}"

    async def sql(statement: str) -> None:
        conn = await asyncpg.connect(postgres_dsn)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    runner.run(sql(f'CREATE SCHEMA "{schema}"'))
    try:
        yield with_schema(postgres_dsn, schema)
    finally:
        runner.run(sql(f'DROP SCHEMA "{schema}" CASCADE'))


class Replicas:
    """Replicas on one schema: each a metadata store, locks and a change feed, as `open_postgres` makes them."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.opened: list[tuple[PostgresMetadataStore, PostgresLocks, PostgresChangeFeed]] = []

    async def start(self) -> tuple[PostgresMetadataStore, PostgresLocks, PostgresChangeFeed]:
        meta, locks, feed = open_postgres(self.dsn)
        await locks.open()
        await feed.open()
        await meta.open()
        self.opened.append((meta, locks, feed))
        return meta, locks, feed

    async def close(self) -> None:
        for meta, locks, feed in reversed(self.opened):
            await meta.close()
            await feed.close()
            await locks.close()


@pytest.fixture
def replicas(schema_dsn: str, runner: asyncio.Runner) -> Iterator[Replicas]:
    started = Replicas(schema_dsn)
    try:
        yield started
    finally:
        runner.run(started.close())


async def two_stores(replicas: Replicas) -> tuple[PostgresMetadataStore, PostgresMetadataStore]:
    (a, _, _), (b, _, _) = await replicas.start(), await replicas.start()
    return a, b


async def gather_outcomes(*calls: Awaitable[object]) -> list[object]:
    """Run the calls at once; each one's result or exception."""
    return list(await asyncio.gather(*calls, return_exceptions=True))


# -- races between replicas -------------------------------------------------------------------------------


async def test_concurrent_pushes_of_one_protected_tag_have_one_winner(replicas: Replicas):
    a, b = await two_stores(replicas)
    await a.create_repository("r", T0, RepositorySettings(image_tag_mutability="IMMUTABLE"), {})
    await a.link_blob("r", LAYER, 1000, T0)
    for round_ in range(5):
        writes = [
            manifest(
                "r",
                f"m{round_}-{i}",
                pushed_at=T0,
                blobs=(LAYER,),
                tags=(f"v{round_}",),
                protected_tags=(f"v{round_}",),
            )
            for i in range(8)
        ]
        outcomes = await gather_outcomes(*((a, b)[i % 2].put_manifest(w) for i, w in enumerate(writes)))
        winners = [w for w, o in zip(writes, outcomes, strict=True) if not isinstance(o, BaseException)]
        assert len(winners) == 1, f"round {round_}: {len(winners)} pushes of a protected tag won: {outcomes}"
        assert all(isinstance(o, TagConflict) for o in outcomes if isinstance(o, BaseException)), outcomes
        assert await b.resolve_tag("r", f"v{round_}") == winners[0].digest
        losers = [w.digest for w in writes if w is not winners[0]]
        assert await a.existing_manifests("r", losers) == set(), "a refused push writes no manifest"


async def test_a_claim_racing_a_link_never_leaves_a_link_to_a_claimed_blob(replicas: Replicas):
    a, b = await two_stores(replicas)
    await a.create_repository("r", T0, RepositorySettings(), {})
    for i in range(20):
        blob = digest(f"blob {i}".encode())
        await a.link_blob("r", blob, 10, OLD)
        await a.unlink_blob("r", blob)  # a row, unreferenced and old: collectable
        claimed, linked = await gather_outcomes(b.claim_blob(blob, CUTOFF), a.link_blob("r", blob, 10, LATER))
        assert not isinstance(claimed, BaseException), claimed
        if claimed:
            assert isinstance(linked, BlobNotFound), f"claimed, yet the link answered {linked!r}"
            assert await a.linked_blobs("r", [blob]) == set(), "a claimed blob is linked nowhere"
        else:
            assert linked is None, f"not claimed, yet the link answered {linked!r}"
            assert await a.linked_blobs("r", [blob]) == {blob}


async def test_a_claim_racing_a_push_never_claims_a_referenced_blob(replicas: Replicas):
    a, b = await two_stores(replicas)
    await a.create_repository("r", T0, RepositorySettings(), {})
    for i in range(20):
        blob = digest(f"layer {i}".encode())
        await a.link_blob("r", blob, 10, OLD)
        push = manifest("r", f"m{i}", pushed_at=LATER, blobs=(blob,), tags=(f"t{i}",))
        claimed, pushed = await gather_outcomes(b.claim_blob(blob, CUTOFF), a.put_manifest(push))
        assert not isinstance(claimed, BaseException), claimed
        if claimed:
            assert isinstance(pushed, BlobNotFound), f"claimed, yet the push answered {pushed!r}"
            assert await a.get_manifest("r", push.digest) is None
        else:
            assert not isinstance(pushed, BaseException), f"not claimed, yet the push failed: {pushed!r}"
            assert (await a.blob_reference_counts([blob])).get(blob) == 1
        counts = await a.blob_reference_counts([blob])
        assert not (claimed and counts), "a manifest references a claimed blob"


async def test_concurrent_ensure_repository_on_two_replicas_makes_one(replicas: Replicas):
    a, b = await two_stores(replicas)
    records = await asyncio.gather(*((a, b)[i % 2].ensure_repository("r", T0 + i) for i in range(10)))
    assert len({record.id for record in records}) == 1, "one repository, whichever replica asked"
    assert (await b.list_repositories(None, 10)).items == ["r"]


async def test_put_value_without_replace_keeps_the_first_writer(replicas: Replicas):
    a, b = await two_stores(replicas)
    values = [f"key {i}".encode() for i in range(10)]
    stored = await asyncio.gather(
        *((a, b)[i % 2].put_value("signing-key", v, replace=False) for i, v in enumerate(values))
    )
    assert len(set(stored)) == 1, "every writer is told the one value stored"
    assert await a.get_value("signing-key") == stored[0]


async def test_concurrent_migrations_of_a_fresh_schema_apply_once(schema_dsn: str):
    stores = [PostgresMetadataStore(schema_dsn) for _ in range(4)]
    try:
        opened = await asyncio.gather(*(store.open() for store in stores), return_exceptions=True)
        assert [o for o in opened if o is not None] == [], "every replica opens"
        await stores[0].create_repository("r", T0, RepositorySettings(), {})
        assert await stores[3].get_repository("r") is not None
        conn = await asyncpg.connect(stores[0].dsn, server_settings=stores[0].settings)
        try:
            assert await conn.fetchval("SELECT version FROM schema_version") == len(MIGRATIONS)
            assert await conn.fetchval("SELECT count(*) FROM schema_version") == 1
        finally:
            await conn.close()
    finally:
        for store in stores:
            await store.close()


async def test_a_schema_newer_than_the_code_is_refused(schema_dsn: str):
    store = PostgresMetadataStore(schema_dsn)
    await store.open()
    await store.close()
    conn = await asyncpg.connect(store.dsn, server_settings=store.settings)
    try:
        await conn.execute("UPDATE schema_version SET version = $1", len(MIGRATIONS) + 1)
    finally:
        await conn.close()
    with pytest.raises(StorageError, match="newer than this Moorage knows"):
        await PostgresMetadataStore(schema_dsn).open()


async def test_a_write_cancelled_while_it_waits_for_a_row_lock_leaves_nothing(replicas: Replicas):
    a, _, _ = await replicas.start()
    await a.create_repository("r", T0, RepositorySettings(), {})
    other = await asyncpg.connect(a.dsn, server_settings=a.settings)  # another replica, mid-transaction
    try:
        async with other.transaction():
            await other.execute("SELECT 1 FROM repositories WHERE name = 'r' FOR UPDATE")
            waiting = asyncio.create_task(a.put_manifest(manifest("r", "m", pushed_at=T0, tags=("v1",))))
            await asyncio.sleep(0.2)
            assert not waiting.done(), "the push waits for the repository's row"
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
    finally:
        await other.close()
    assert await a.resolve_tag("r", "v1") is None, "the cancelled push wrote nothing"
    outcome = await asyncio.wait_for(a.put_manifest(manifest("r", "m", pushed_at=T0, tags=("v1",))), 5)
    assert outcome.created, "and the store works on"


# -- locks across replicas --------------------------------------------------------------------------------


async def test_locks_of_two_instances_exclude_each_other(replicas: Replicas):
    (_, a, _), (_, b, _) = await replicas.start(), await replicas.start()
    assert await a.try_acquire("blob sha256:aa") is True
    assert await b.try_acquire("blob sha256:aa") is False, "another replica's lock is refused"
    assert await b.held_elsewhere("blob sha256:aa") is True
    assert await a.held_elsewhere("blob sha256:aa") is True, "a's own holder counts as elsewhere too"
    entered = asyncio.Event()

    async def wait_in_b() -> None:
        async with b.hold("blob sha256:aa"):
            entered.set()

    waiter = asyncio.create_task(wait_in_b())
    await asyncio.sleep(0.1)
    assert not entered.is_set(), "b's hold() got a lock a holds"
    await a.release("blob sha256:aa")
    await asyncio.wait_for(waiter, 5)
    assert await a.held_elsewhere("blob sha256:aa") is False, "b released it after its block"


async def test_a_killed_lock_connection_releases_its_locks(replicas: Replicas, postgres_dsn: str):
    (_, a, _), (_, b, _) = await replicas.start(), await replicas.start()
    assert await a.try_acquire("upload u1") is True
    pid = a.backend_pid()
    assert pid is not None
    admin = await asyncpg.connect(postgres_dsn)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid) is True
    finally:
        await admin.close()
    await eventually(lambda: b.try_acquire("upload u1"), "the killed replica's lock to be released")
    await b.release("upload u1")
    assert await a.try_acquire("upload u2") is True, "the replica whose connection died reconnects on next use"
    assert a.backend_pid() not in (None, pid)
    await a.release("upload u2")


# -- the change feed --------------------------------------------------------------------------------------


async def test_another_replicas_commit_is_heard_within_a_bound(replicas: Replicas):
    (a, _, feed), (b, _, other_feed) = await replicas.start(), await replicas.start()
    latencies = []
    for i in range(20):
        before, own = feed.epoch(), other_feed.epoch()
        started = time.monotonic()
        await b.put_value(f"k{i}", b"v")
        while feed.epoch() == before:
            assert time.monotonic() - started < NOTIFY_BOUND, f"commit {i} not heard within {NOTIFY_BOUND}s"
            await asyncio.sleep(0.001)
        latencies.append(time.monotonic() - started)
        assert feed.epoch() == before + 1, "one commit, one step"
        assert other_feed.epoch() == own, "the writer's own feed ignores its own commit"
    await a.put_value("mine", b"v")
    await asyncio.sleep(0.05)
    assert feed.epoch() == before + 1, "nor does the reader's feed move for the reader's own commit"
    print(f"notification latency (write start to epoch change): max {max(latencies) * 1000:.1f} ms")


async def test_a_rolled_back_write_is_not_heard(replicas: Replicas):
    (a, _, feed), (b, _, _) = await replicas.start(), await replicas.start()
    await a.create_repository("r", T0, RepositorySettings(), {})
    await asyncio.sleep(0.05)
    before = feed.epoch()
    with pytest.raises(StorageError):
        await b.put_manifest(manifest("nope", "m", pushed_at=T0))  # fails inside its transaction
    await asyncio.sleep(0.1)
    assert feed.epoch() == before, "a write that did not commit notifies nobody"


async def test_settle_waits_for_own_writes_to_be_heard_back(replicas: Replicas):
    (a, _, feed), (_, _, other_feed) = await replicas.start(), await replicas.start()
    started = time.monotonic()
    await feed.settle()
    assert time.monotonic() - started < 0.01, "with nothing written, settling is immediate"
    for i in range(20):
        before, announced = other_feed.epoch(), feed._sequence
        await a.put_value(f"k{i}", b"v")
        assert feed._sequence == announced + 1, "a write announces its notification to the feed"
        started = time.monotonic()
        await feed.settle()
        assert time.monotonic() - started < NOTIFY_BOUND
        assert not feed._unheard, "settle returns once this replica heard its own notification"
        await eventually(lambda before=before: other_feed.epoch() > before, "the other replica to hear the write")


async def test_a_rolled_back_write_leaves_nothing_to_settle(replicas: Replicas):
    (a, _, feed), _ = await replicas.start(), None
    with pytest.raises(StorageError):
        await a.put_manifest(manifest("nope", "m", pushed_at=T0))  # fails inside its transaction
    assert not feed._unheard, "a write that did not commit is withdrawn"
    started = time.monotonic()
    await feed.settle()
    assert time.monotonic() - started < 0.01


async def test_the_epoch_moves_when_the_listening_connection_is_lost(replicas: Replicas, postgres_dsn: str):
    (_, _, feed), (b, _, _) = await replicas.start(), await replicas.start()
    before = feed.epoch()
    assert feed._conn is not None
    pid = feed._conn.get_server_pid()
    admin = await asyncpg.connect(postgres_dsn)
    try:
        await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()
    await eventually(lambda: feed.epoch() >= before + 2, "the epoch to move for the loss and the reconnection")
    await eventually(lambda: feed._conn is not None and not feed._lost.is_set(), "the feed to listen again")
    again = feed.epoch()
    await b.put_value("after", b"v")
    await eventually(lambda: feed.epoch() > again, "a commit after the reconnection to be heard")


# -- unavailability ---------------------------------------------------------------------------------------


def _unused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_an_unreachable_server_raises_storage_unavailable():
    dsn = f"postgresql://moorage@127.0.0.1:{_unused_port()}/nowhere"
    meta, locks, feed = open_postgres(dsn)
    for part in (meta, locks, feed):
        with pytest.raises(StorageUnavailable):
            await part.open()


async def test_a_pooled_connection_that_died_is_replaced(replicas: Replicas, postgres_dsn: str):
    a, _, _ = await replicas.start()
    await a.create_repository("r", T0, RepositorySettings(), {})
    admin = await asyncpg.connect(postgres_dsn)
    try:
        pids = await admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND datname = current_database() "
            "AND application_name = '' AND state = 'idle'"
        )
        for (pid,) in pids:
            await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()
    assert await a.get_repository("r") is not None, "a read on a dead pooled connection is retried"
    assert await a.health() == []
