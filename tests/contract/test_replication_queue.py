"""Replication's durable queue and its backfills (`storage.metadata.ReplicationQueue`), on every backend: tasks
queued once, claimed under leases one claimer at a time and in queue order per (destination, repository), their
ends recorded by the lease's holder only; backfills one at a time per destination, stopped, counted, forgotten;
and the migrations that add the tables to a data dir or schema written before them."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from storage.errors import Conflict
from storage.factory import Stores
from storage.metadata import MetadataStore
from storage.postgres import PostgresMetadataStore
from storage.postgres.schema import MIGRATIONS as POSTGRES_MIGRATIONS
from storage.records import BackfillProgress, BackfillRecord, NewReplication, ReplicationTask
from storage.sqlite import SQLiteMetadataStore
from storage.sqlite.schema import MIGRATIONS as SQLITE_MIGRATIONS
from tests.contract.helpers import digest
from tests.services.postgres import with_schema

T0 = 1_700_000_000.0
EAST = "us-east-1/111122223333"
WEST = "us-west-2/111122223333"
X, Y, Z = digest(b"x"), digest(b"y"), digest(b"z")


def new(destination: str, repository: str, image: str = X, *tags: str, backfill: str | None = None) -> NewReplication:
    return NewReplication(destination, repository, image, tags, backfill)


async def task(meta: MetadataStore, task_id: int) -> ReplicationTask:
    [found] = [t for t in await meta.replication_tasks() if t.id == task_id]
    return found


async def ids(meta: MetadataStore, backfill: str | None = None, state: str | None = None) -> list[int]:
    return [t.id for t in await meta.replication_tasks(backfill=backfill, state=state)]


async def claim(meta: MetadataStore, now: float = T0, owner: str = "w1", lease: float = 30) -> ReplicationTask | None:
    return await meta.claim_replication(now, now + lease, owner)


async def run(meta: MetadataStore, now: float, state: str = "complete", error: str | None = None) -> int:
    """Claim the next task and end its attempt in `state` (one ending "pending" is due again an hour later);
    returns its id."""
    claimed = await claim(meta, now, owner="runner")
    assert claimed is not None, "a task to run"
    due = now + 3600 if state == "pending" else now
    assert await meta.finish_replication(claimed.id, "runner", state, error, due, now)
    return claimed.id


async def claimed_id(meta: MetadataStore, now: float = T0, owner: str = "w1", lease: float = 30) -> int | None:
    claimed = await claim(meta, now, owner, lease)
    return claimed.id if claimed is not None else None


# -- queueing ----------------------------------------------------------------------------------------------


async def test_tasks_are_queued_pending_and_an_identical_pending_task_is_not_queued_twice(meta: MetadataStore):
    assert await meta.enqueue_replications([], T0) == 0
    queued = await meta.enqueue_replications(
        [
            new(EAST, "team/app", X, "1.0", "latest"),
            new(EAST, "team/app", X, "1.0", "latest"),  # the same copy twice in one batch
            new(WEST, "team/app", X, "1.0", "latest"),  # another destination
            new(EAST, "team/app", X, "latest"),  # other tags
            new(EAST, "team/app", X, "latest", "1.0"),  # the same tags in another order: copied in that order
            new(EAST, "team/lib", X, "1.0", "latest"),  # another repository
        ],
        T0,
    )
    assert queued == 5
    tasks = await meta.replication_tasks()
    assert [(t.destination, t.repository, t.tags) for t in tasks] == [
        (EAST, "team/app", ("1.0", "latest")),
        (WEST, "team/app", ("1.0", "latest")),
        (EAST, "team/app", ("latest",)),
        (EAST, "team/app", ("latest", "1.0")),
        (EAST, "team/lib", ("1.0", "latest")),
    ]
    assert [t.id for t in tasks] == sorted({t.id for t in tasks}), "ids grow in queue order"
    first = tasks[0]
    assert first == ReplicationTask(
        first.id, EAST, "team/app", X, ("1.0", "latest"), None, "pending", 0, T0, None, T0, T0
    )
    # the newest pending task of EAST/team/app is (latest, 1.0): the same again is not queued, but an older
    # one's copy is (a tag pushed A, B, A ends on A)
    assert await meta.enqueue_replications([new(EAST, "team/app", X, "latest", "1.0")], T0 + 1) == 0
    assert await meta.enqueue_replications([new(EAST, "team/app", X, "1.0", "latest")], T0 + 1) == 1
    again = (await meta.replication_tasks())[-1]
    assert (again.destination, again.tags, again.id > tasks[-1].id) == (EAST, ("1.0", "latest"), True)
    assert await meta.enqueue_replications([new(EAST, "team/app", X, "1.0", "latest")], T0 + 1) == 0
    assert await claim(meta, T0 + 1, owner="w1") == ReplicationTask(
        first.id, EAST, "team/app", X, ("1.0", "latest"), None, "pending", 1, T0, None, T0, T0 + 1
    )
    assert await meta.finish_replication(first.id, "w1", "complete", None, T0 + 3, T0 + 3)
    # team/lib's newest pending task is (1.0, latest) of X: another digest is queued, with its backfill
    assert await meta.enqueue_replications([new(EAST, "team/lib", Y, "1.0", "latest", backfill="b")], T0 + 4) == 1
    last = (await meta.replication_tasks())[-1]
    assert (last.id > again.id, last.digest, last.backfill, last.state, last.due_at) == (
        True,
        Y,
        "b",
        "pending",
        T0 + 4,
    )
    assert len(await meta.replication_tasks()) == 7


async def test_concurrent_enqueues_of_one_copy_queue_it_once(
    meta: MetadataStore, peer: Callable[[], Awaitable[Stores]]
):
    other = (await peer()).meta
    batch = [new(EAST, "team/app", X, "latest"), new(WEST, "team/app", X, "latest")]
    counts = await asyncio.gather(*(store.enqueue_replications(batch, T0) for store in [meta, other] * 3))
    assert sum(counts) == 2, counts
    assert sorted(t.destination for t in await meta.replication_tasks()) == [EAST, WEST]


async def test_tasks_are_listed_by_id_after_a_cursor_by_backfill_and_by_state(meta: MetadataStore):
    await meta.enqueue_replications(
        [new(EAST, "a", X), new(EAST, "b", X, backfill="b1"), new(EAST, "c", X, backfill="b1"), new(WEST, "d", X)],
        T0,
    )
    every = await ids(meta)
    assert len(every) == 4
    assert await ids(meta, backfill="b1") == every[1:3]
    await run(meta, T0)  # the first one ("a") completes
    assert await ids(meta, state="complete") == every[:1]
    assert await ids(meta, state="pending") == every[1:]
    assert await ids(meta, state="pending", backfill="b1") == every[1:3]
    assert [t.id for t in await meta.replication_tasks(after=every[1])] == every[2:]
    assert [t.id for t in await meta.replication_tasks(after=every[0], limit=2)] == every[1:3]
    assert await meta.replication_tasks(backfill="none") == []


# -- claiming ----------------------------------------------------------------------------------------------


async def test_claims_take_the_oldest_due_task_that_is_first_in_its_destination_and_repository(meta: MetadataStore):
    await meta.enqueue_replications(
        [new(EAST, "team/app", X), new(EAST, "team/app", Y), new(EAST, "team/lib", X), new(WEST, "team/app", Z)],
        T0,
    )
    app1, app2, lib, west = await ids(meta)
    assert await meta.claim_replication(T0 - 1, T0 + 30, "w1") is None, "nothing is due before T0"
    first = await claim(meta, owner="w1")
    assert first is not None and (first.id, first.attempts, first.updated_at) == (app1, 1, T0)
    # app2 waits for app1 (running); another repository, or another destination, does not
    assert [(await claim(meta, owner=f"w{i}")) for i in (2, 3, 4)] == [
        await task(meta, lib),
        await task(meta, west),
        None,
    ]
    assert (await task(meta, lib)).attempts == 1
    assert await meta.finish_replication(app1, "w1", "complete", None, T0 + 1, T0 + 1)
    second = await claim(meta, T0 + 1, owner="w5")
    assert second is not None and (second.id, second.digest) == (app2, Y)


async def test_a_task_backing_off_holds_back_the_newer_tasks_of_its_destination_and_repository(meta: MetadataStore):
    await meta.enqueue_replications([new(EAST, "team/app", X), new(EAST, "team/app", Y), new(EAST, "other", X)], T0)
    older, newer, other = await ids(meta)
    assert await claimed_id(meta, owner="w1") == older
    assert await meta.finish_replication(older, "w1", "pending", "ThrottlingException", T0 + 60, T0 + 1)
    backing_off = await task(meta, older)
    assert (backing_off.state, backing_off.error, backing_off.due_at, backing_off.updated_at) == (
        "pending",
        "ThrottlingException",
        T0 + 60,
        T0 + 1,
    )
    # the older task is not due yet: the newer one of the same pair still waits; the other repository runs
    assert await claimed_id(meta, T0 + 2) == other
    assert await claim(meta, T0 + 3) is None
    retried = await claim(meta, T0 + 61, owner="w2")
    assert retried is not None and (retried.id, retried.attempts, retried.error) == (older, 2, "ThrottlingException")
    assert await meta.finish_replication(older, "w2", "failed", "RepositoryNotFoundException", T0 + 62, T0 + 62)
    assert await claimed_id(meta, T0 + 62) == newer


async def test_two_claimers_never_get_one_task(meta: MetadataStore, peer: Callable[[], Awaitable[Stores]]):
    other = (await peer()).meta
    await meta.enqueue_replications([new(EAST, "only", X)], T0)
    claims = await asyncio.gather(*(claim(store, owner=f"w{i}") for i, store in enumerate([meta, other] * 3)))
    won = [c for c in claims if c is not None]
    assert len(won) == 1 and won[0].attempts == 1, claims
    await meta.enqueue_replications([new(EAST, f"repo{i}", X) for i in range(3)], T0)
    claims = await asyncio.gather(*(claim(store, owner=f"v{i}") for i, store in enumerate([meta, other] * 3)))
    won = [c for c in claims if c is not None]
    assert len({c.id for c in won}) == len(won), f"a task claimed twice: {claims}"
    assert {c.repository for c in won} <= {"repo0", "repo1", "repo2"}
    # whatever the race left, the rest is claimed one by one, each task once
    while (c := await claim(meta, owner="late")) is not None:
        won.append(c)
    assert sorted(c.repository for c in won) == ["repo0", "repo1", "repo2"]


async def test_an_ended_lease_is_claimed_again_and_only_its_holder_records_the_end(meta: MetadataStore):
    await meta.enqueue_replications([new(EAST, "team/app", X)], T0)
    [task_id] = await ids(meta)
    assert (await claim(meta, T0, owner="w1", lease=30)) is not None
    assert await claim(meta, T0 + 29, owner="w2") is None, "leased to w1"
    assert await claim(meta, T0 + 30, owner="w2") is None, "the lease runs until T0 + 30"
    taken = await claim(meta, T0 + 31, owner="w2")
    assert taken is not None and (taken.id, taken.attempts, taken.updated_at) == (task_id, 2, T0 + 31)
    # w1's lease is gone: it can neither renew nor finish
    assert not await meta.renew_replication(task_id, "w1", T0 + 100)
    assert not await meta.finish_replication(task_id, "w1", "failed", "late", T0 + 32, T0 + 32)
    assert await task(meta, task_id) == taken
    assert await meta.finish_replication(task_id, "w2", "complete", None, T0 + 33, T0 + 33)
    assert await task(meta, task_id) == ReplicationTask(
        task_id, EAST, "team/app", X, (), None, "complete", 2, T0 + 33, None, T0, T0 + 33
    )
    assert not await meta.finish_replication(task_id, "w2", "complete", None, T0 + 34, T0 + 34), "ended already"
    assert not await meta.renew_replication(task_id, "w2", T0 + 100)
    assert await claim(meta, T0 + 100) is None


async def test_a_renewed_lease_is_kept_until_it_ends(meta: MetadataStore):
    await meta.enqueue_replications([new(EAST, "team/app", X)], T0)
    claimed = await claim(meta, T0, owner="w1", lease=30)
    assert claimed is not None
    assert await meta.renew_replication(claimed.id, "w1", T0 + 100)
    assert not await meta.renew_replication(claimed.id, "w2", T0 + 500), "not w2's lease"
    assert not await meta.renew_replication(claimed.id + 1000, "w1", T0 + 500), "no such task"
    assert await claim(meta, T0 + 99, owner="w2") is None
    taken = await claim(meta, T0 + 101, owner="w2")
    assert taken is not None and taken.attempts == 2


async def test_an_attempt_ends_pending_complete_or_failed(meta: MetadataStore):
    await meta.enqueue_replications([new(EAST, "team/app", X)], T0)
    claimed = await claim(meta)
    assert claimed is not None
    with pytest.raises(ValueError):
        await meta.finish_replication(claimed.id, "w1", "stopped", None, T0, T0)
    assert (await task(meta, claimed.id)).state == "pending"
    assert await meta.finish_replication(claimed.id, "w1", "failed", "ImageNotFoundException", T0 + 1, T0 + 1)
    assert (await task(meta, claimed.id)).error == "ImageNotFoundException"


async def test_replication_states_are_the_newest_task_per_destination(meta: MetadataStore):
    assert await meta.replication_states("team/app", X) == {}
    await meta.enqueue_replications([new(EAST, "team/app", X, "1"), new(WEST, "team/app", X, "1")], T0)
    east_first, west = await ids(meta)
    assert await meta.finish_replication(east_first, "nobody", "complete", None, T0, T0) is False
    await run(meta, T0 + 1, "failed", "AccessDenied")  # east's first one
    await meta.enqueue_replications(
        [new(EAST, "team/app", X, "2"), new(EAST, "team/app", Y, "1"), new(EAST, "other", X, "1")], T0 + 2
    )
    east_newest = (await ids(meta))[2]
    states = await meta.replication_states("team/app", X)
    assert states == {EAST: await task(meta, east_newest), WEST: await task(meta, west)}
    assert (states[EAST].tags, states[EAST].state, states[WEST].state) == (("2",), "pending", "pending")
    assert (await task(meta, east_first)).state == "failed"


# -- backfills ---------------------------------------------------------------------------------------------


async def test_a_backfill_is_refused_while_another_of_its_destination_is_under_way(meta: MetadataStore):
    first = BackfillRecord("bf-1", EAST, "PREPARING", T0)
    assert await meta.create_backfill(first)
    assert await meta.get_backfill("bf-1") == first
    assert not await meta.create_backfill(BackfillRecord("bf-2", EAST, "PREPARING", T0 + 1)), "PREPARING"
    assert await meta.get_backfill("bf-2") is None, "nothing stored"
    assert await meta.create_backfill(BackfillRecord("bf-west", WEST, "PREPARING", T0 + 2)), "another destination"
    with pytest.raises(Conflict):
        await meta.create_backfill(BackfillRecord("bf-west", "eu-west-1/1", "PREPARING", T0 + 3))

    assert await meta.update_backfill("bf-1", "IN_PROGRESS", only_from=("PREPARING",))
    assert not await meta.create_backfill(BackfillRecord("bf-2", EAST, "PREPARING", T0 + 4)), "IN_PROGRESS"
    assert not await meta.update_backfill("bf-1", "COMPLETE", ended_at=T0 + 5, only_from=("PREPARING",))
    assert await meta.get_backfill("bf-1") == BackfillRecord("bf-1", EAST, "IN_PROGRESS", T0)
    assert await meta.update_backfill("bf-1", "STOPPING", only_from=("PREPARING", "IN_PROGRESS"))
    assert not await meta.create_backfill(BackfillRecord("bf-2", EAST, "PREPARING", T0 + 6)), "STOPPING"
    assert await meta.update_backfill("bf-1", "STOPPED", ended_at=T0 + 7)
    assert await meta.create_backfill(BackfillRecord("bf-2", EAST, "PREPARING", T0 + 8)), "the first one ended"
    assert await meta.update_backfill("bf-2", "FAILED", ended_at=T0 + 9, failure="the repositories could not be read")
    assert await meta.update_backfill("bf-2", "FAILED")  # neither end nor failure given: kept
    assert not await meta.update_backfill("nope", "FAILED"), "no such backfill"
    assert await meta.list_backfills() == [
        BackfillRecord("bf-2", EAST, "FAILED", T0 + 8, T0 + 9, "the repositories could not be read"),
        BackfillRecord("bf-west", WEST, "PREPARING", T0 + 2),
        BackfillRecord("bf-1", EAST, "STOPPED", T0, T0 + 7),
    ]


async def test_concurrent_backfills_of_one_destination_start_one(
    meta: MetadataStore, peer: Callable[[], Awaitable[Stores]]
):
    other = (await peer()).meta
    results = await asyncio.gather(
        *(
            store.create_backfill(BackfillRecord(f"bf-{i}", EAST, "PREPARING", T0 + i))
            for i, store in enumerate([meta, other] * 3)
        )
    )
    assert sorted(results) == [False] * 5 + [True]
    assert len(await meta.list_backfills()) == 1


async def test_stopping_a_backfill_stops_the_pending_tasks_nobody_holds(meta: MetadataStore):
    assert await meta.create_backfill(BackfillRecord("bf", EAST, "IN_PROGRESS", T0))
    await meta.enqueue_replications(
        [
            new(EAST, "r1", X, backfill="bf"),
            new(EAST, "r2", X, backfill="bf"),
            new(EAST, "r3", X, backfill="bf"),
            new(EAST, "r4", X, backfill="bf"),
            new(EAST, "r5", X),  # a push's: not the backfill's
        ],
        T0,
    )
    r1, r2, r3, r4, r5 = await ids(meta)
    assert await claimed_id(meta, T0, owner="live", lease=100) == r1
    assert await claimed_id(meta, T0, owner="dead", lease=5) == r2
    assert await run(meta, T0) == r3

    assert await meta.stop_backfill_tasks("bf", T0 + 10) == 2, "r2 (its lease ended) and r4"
    states = {t.id: (t.state, t.updated_at) for t in await meta.replication_tasks()}
    assert states == {
        r1: ("pending", T0),
        r2: ("stopped", T0 + 10),
        r3: ("complete", T0),
        r4: ("stopped", T0 + 10),
        r5: ("pending", T0),
    }
    assert not await meta.finish_replication(r2, "dead", "pending", "late", T0 + 11, T0 + 11), "a stop is final"
    assert (await task(meta, r2)).state == "stopped"
    assert await meta.finish_replication(r1, "live", "failed", "ImageNotFoundException", T0 + 12, T0 + 12)
    assert await claim(meta, T0 + 20) == await task(meta, r5)
    assert await meta.stop_backfill_tasks("bf", T0 + 30) == 0, "nothing pending is left"
    assert await meta.backfill_progress("bf") == BackfillProgress(4, 1, 1, ("ImageNotFoundException",))


async def test_backfill_progress_counts_its_tasks_and_the_distinct_errors_of_the_failed(meta: MetadataStore):
    assert await meta.backfill_progress("bf") == BackfillProgress(0, 0, 0, ())
    await meta.enqueue_replications([new(EAST, f"r{i}", X, backfill="bf") for i in range(7)], T0)
    await meta.enqueue_replications([new(EAST, "push", X), new(WEST, "r0", X, backfill="other")], T0)
    await run(meta, T0, "complete")  # r0
    await run(meta, T0, "failed", "RepositoryNotFoundException")  # r1
    await run(meta, T0, "failed", "AccessDenied")  # r2
    await run(meta, T0, "failed", "RepositoryNotFoundException")  # r3
    await run(meta, T0, "complete")  # r4
    await run(meta, T0, "pending", "ThrottlingException")  # r5: retries later (not failed)
    await run(meta, T0, "failed", "KmsException")  # r6
    await run(meta, T0, "failed", "Unrelated")  # push (no backfill)
    await run(meta, T0, "failed", "Elsewhere")  # other's r0
    assert await meta.backfill_progress("bf") == BackfillProgress(
        7, 2, 4, ("AccessDenied", "KmsException", "RepositoryNotFoundException")
    )
    assert await meta.backfill_progress("other") == BackfillProgress(1, 0, 1, ("Elsewhere",))


# -- forgetting --------------------------------------------------------------------------------------------


async def test_ended_tasks_of_no_kept_backfill_are_pruned(meta: MetadataStore):
    assert await meta.create_backfill(BackfillRecord("kept", EAST, "IN_PROGRESS", T0))
    await meta.enqueue_replications(
        [
            new(EAST, "complete-old", X),
            new(EAST, "failed-old", X),
            new(EAST, "complete-recent", X),
            new(EAST, "pending", X),
            new(EAST, "backfill-old", X, backfill="kept"),
            new(EAST, "orphan-old", X, backfill="gone"),  # its backfill is not stored (any more)
            new(EAST, "stopped-orphan", X, backfill="gone"),
        ],
        T0,
    )
    await run(meta, T0 + 1, "complete")
    await run(meta, T0 + 2, "failed", "AccessDenied")
    await run(meta, T0 + 200, "complete")
    await run(meta, T0 + 3, "pending", "ThrottlingException")  # still pending: never pruned
    await run(meta, T0 + 4, "complete")
    await run(meta, T0 + 5, "failed", "AccessDenied")
    assert await meta.stop_backfill_tasks("gone", T0 + 6) == 1
    assert await meta.prune_replications(T0 + 100) == 4
    assert [t.repository for t in await meta.replication_tasks()] == ["complete-recent", "pending", "backfill-old"]
    assert await meta.prune_replications(T0 + 100) == 0


async def test_backfills_that_ended_long_ago_are_forgotten_with_their_tasks(meta: MetadataStore):
    for i, (name, ended) in enumerate((("old", T0 + 50), ("recent", T0 + 500), ("running", None))):
        assert await meta.create_backfill(BackfillRecord(name, name, "IN_PROGRESS", T0 + i, ended))
        await meta.enqueue_replications([new(name, "a", X, backfill=name), new(name, "b", X, backfill=name)], T0)
    await meta.enqueue_replications([new(EAST, "push", X)], T0)
    await run(meta, T0 + 1, "complete")  # old's first task
    assert await meta.delete_backfills(T0 + 100) == 1
    assert await meta.get_backfill("old") is None
    assert [b.id for b in await meta.list_backfills()] == ["running", "recent"]
    assert [(t.destination, t.repository) for t in await meta.replication_tasks()] == [
        ("recent", "a"),
        ("recent", "b"),
        ("running", "a"),
        ("running", "b"),
        (EAST, "push"),
    ]
    assert await meta.backfill_progress("old") == BackfillProgress(0, 0, 0, ())
    assert await meta.delete_backfills(T0 + 100) == 0


# -- migrations --------------------------------------------------------------------------------------------


async def test_a_sqlite_data_dir_from_before_the_queue_is_migrated(tmp_path: Path):
    """A database at schema version 10 keeps its rows and gains the (empty) queue and backfill tables on open."""
    path = tmp_path / "moorage.db"
    db = sqlite3.connect(path)
    for script in SQLITE_MIGRATIONS[:10]:
        db.executescript(script)
    db.execute("PRAGMA user_version = 10")
    db.execute("INSERT INTO registry_settings (name, value, updated_at) VALUES ('replication', '{}', 1.5e9)")
    db.commit()
    assert db.execute("SELECT count(*) FROM sqlite_master WHERE name LIKE 'replication_%'").fetchone() == (0,)
    db.close()
    store = SQLiteMetadataStore(path)
    await store.open()
    try:
        assert await store.registry_settings() == {"replication": ("{}", 1.5e9)}
        assert await store.replication_tasks() == [] and await store.list_backfills() == []
        assert await store.enqueue_replications([new(EAST, "team/app", X, "1")], T0) == 1
        claimed = await claim(store)
        assert claimed is not None and claimed.tags == ("1",)
        assert await store.create_backfill(BackfillRecord("bf", EAST, "PREPARING", T0))
    finally:
        await store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone() == (len(SQLITE_MIGRATIONS),)
    names = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE name LIKE 'replication_%'")}
    assert {"replication_tasks", "replication_backfills", "replication_tasks_due"} <= names
    db.close()


async def test_a_postgres_schema_from_before_the_queue_is_migrated(postgres_dsn: str):
    schema = f"replq_{uuid.uuid4().hex[:16]}"
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(f'SET search_path TO "{schema}"')
        for script in POSTGRES_MIGRATIONS[:2]:
            await conn.execute(script)
        await conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        await conn.execute("INSERT INTO schema_version (version) VALUES (2)")
        await conn.execute("INSERT INTO registry_settings (name, value, updated_at) VALUES ('replication', '{}', 1)")
        assert await conn.fetchval("SELECT to_regclass('replication_tasks')") is None
        store = PostgresMetadataStore(with_schema(postgres_dsn, schema))
        await store.open()
        try:
            assert await store.registry_settings() == {"replication": ("{}", 1.0)}
            assert await store.enqueue_replications([new(EAST, "team/app", X, "1")], T0) == 1
            claimed = await claim(store)
            assert claimed is not None and (claimed.tags, claimed.attempts) == (("1",), 1)
            assert await store.create_backfill(BackfillRecord("bf", EAST, "PREPARING", T0))
        finally:
            await store.close()
        assert await conn.fetchval("SELECT version FROM schema_version") == len(POSTGRES_MIGRATIONS)
        assert await conn.fetchval("SELECT to_regclass('replication_backfills')") is not None
    finally:
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()
