"""Replication's durable queue and its backfills in PostgreSQL (`storage.metadata.ReplicationQueue`), shared by
the replicas:

- A claim is one statement: `UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING`, the
  claim's conditions checked again on the row it locked (a compare-and-set), so two claimers, of any replicas,
  never get one task; a claimer skips a row another one is taking instead of waiting for it. An idle claim
  (nothing due) reads first and writes nothing, so polling does not notify the other replicas.
- Finishing and renewing are conditional updates (`lease_owner = owner`).
- Enqueueing takes transaction advisory locks on its (destination, repository) pairs (one of ENQUEUE_LOCKS per
  destination, by repository; in key order) before its de-duplicating inserts, so two replicas queueing the
  same copy at once queue it once.
- A backfill is created under a transaction advisory lock on its destination, so two replicas starting backfills
  of one destination at once start one.

A stopped task's ended lease is cleared with it (its late runner can't record an end over the stop). Pruning
also drops ended tasks whose backfill is not stored (any more). `update_backfill` sets `ended_at` and `failure`
when given; None keeps what is stored.

Tags are JSON text of a list (`json.dumps`, as the SQLite driver writes them). Repositories are names, not
foreign keys: a task outlives its repository.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import asyncpg

from storage.errors import Conflict
from storage.postgres.connection import PostgresConnection, rowcount
from storage.postgres.schema import advisory_key
from storage.records import BackfillProgress, BackfillRecord, NewReplication, ReplicationTask

_TASK_COLUMNS = (
    "id, destination, repository, digest, tags, backfill, state, attempts, due_at, error, created_at, updated_at"
)
_BACKFILL_COLUMNS = "id, destination, status, started_at, ended_at, failure"
_ACTIVE_BACKFILL = ["PREPARING", "IN_PROGRESS", "STOPPING"]
_FINISHED = ("pending", "complete", "failed")  # the states an attempt ends in
ENQUEUE_LOCKS = 16  # advisory locks per destination that enqueueing takes (by repository)
# A task that may run now ($1: now): due, its lease free or ended, and first in its (destination, repository)
# queue: no older task of the pair is still pending (running, or waiting to retry).
_CLAIMABLE = (
    "t.state = 'pending' AND t.due_at <= $1 AND (t.lease_until IS NULL OR t.lease_until < $1) AND NOT EXISTS ("
    "SELECT 1 FROM replication_tasks o WHERE o.destination = t.destination AND o.repository = t.repository "
    "AND o.state = 'pending' AND o.id < t.id)"
)
_CLAIM = (
    "UPDATE replication_tasks SET attempts = attempts + 1, lease_owner = $3, lease_until = $2, updated_at = $1 "
    f"WHERE id = (SELECT t.id FROM replication_tasks t WHERE {_CLAIMABLE} ORDER BY t.id LIMIT 1 "
    "FOR UPDATE SKIP LOCKED) AND state = 'pending' AND (lease_until IS NULL OR lease_until < $1) "
    f"RETURNING {_TASK_COLUMNS}"
)
_ENQUEUE = (
    "INSERT INTO replication_tasks (destination, repository, digest, tags, backfill, state, attempts, due_at, "
    "created_at, updated_at) SELECT $1, $2, $3, $4, $5, 'pending', 0, $6, $6, $6 WHERE NOT EXISTS ("
    "SELECT 1 FROM replication_tasks WHERE digest = $3 AND tags = $4 AND id = (SELECT max(id) FROM "
    "replication_tasks WHERE destination = $1 AND repository = $2 AND state = 'pending'))"
)


def tags_text(tags: Sequence[str]) -> str:
    return json.dumps(list(tags))


def _task(row: asyncpg.Record) -> ReplicationTask:
    return ReplicationTask(
        row["id"],
        row["destination"],
        row["repository"],
        row["digest"],
        tuple(json.loads(row["tags"])),
        row["backfill"],
        row["state"],
        row["attempts"],
        row["due_at"],
        row["error"],
        row["created_at"],
        row["updated_at"],
    )


def _backfill(row: asyncpg.Record) -> BackfillRecord:
    return BackfillRecord(
        row["id"], row["destination"], row["status"], row["started_at"], row["ended_at"], row["failure"]
    )


class ReplicationQueries(PostgresConnection):
    def _enqueue_lock(self, destination: str, repository: str) -> int:
        """The advisory lock that queueing a copy to `destination` of `repository` takes: one of a few per
        destination (each lock a transaction holds takes a slot of the server's shared lock table, and a backfill
        queues many repositories at once)."""
        bucket = advisory_key(repository) % ENQUEUE_LOCKS
        return advisory_key("moorage replication", self.schema, destination, str(bucket))

    # -- tasks -------------------------------------------------------------------------------------------------
    async def enqueue_replications(self, tasks: Sequence[NewReplication], now: float) -> int:
        if not tasks:
            return 0
        keys = sorted({self._enqueue_lock(task.destination, task.repository) for task in tasks})
        queued = 0
        async with self._tx() as db:
            for key in keys:
                await db.execute("SELECT pg_advisory_xact_lock($1)", key)
            for task in tasks:
                args: tuple[Any, ...] = (
                    task.destination,
                    task.repository,
                    task.digest,
                    tags_text(task.tags),
                    task.backfill,
                    now,
                )
                queued += rowcount(await db.execute(_ENQUEUE, *args))
        return queued

    async def claim_replication(self, now: float, lease_until: float, owner: str) -> ReplicationTask | None:
        if not await self._fetchval(f"SELECT EXISTS (SELECT 1 FROM replication_tasks t WHERE {_CLAIMABLE})", now):
            return None  # nothing to run: no write (no notification)
        async with self._tx() as db:
            row = await db.fetchrow(_CLAIM, now, lease_until, owner)
        return _task(row) if row is not None else None

    async def renew_replication(self, task_id: int, owner: str, lease_until: float) -> bool:
        async with self._tx() as db:
            status = await db.execute(
                "UPDATE replication_tasks SET lease_until = $1 WHERE id = $2 AND lease_owner = $3 "
                "AND state = 'pending'",
                lease_until,
                task_id,
                owner,
            )
        return rowcount(status) > 0

    async def finish_replication(
        self, task_id: int, owner: str, state: str, error: str | None, due_at: float, now: float
    ) -> bool:
        if state not in _FINISHED:
            raise ValueError(f"an attempt ends pending, complete or failed, not {state!r}")
        async with self._tx() as db:
            status = await db.execute(
                "UPDATE replication_tasks SET state = $1, error = $2, due_at = $3, updated_at = $4, "
                "lease_owner = NULL, lease_until = NULL WHERE id = $5 AND lease_owner = $6 AND state = 'pending'",
                state,
                error,
                due_at,
                now,
                task_id,
                owner,
            )
        return rowcount(status) > 0

    async def replication_states(self, repository: str, digest: str) -> dict[str, ReplicationTask]:
        rows = await self._fetch(
            f"SELECT DISTINCT ON (destination) {_TASK_COLUMNS} FROM replication_tasks "
            "WHERE repository = $1 AND digest = $2 ORDER BY destination, id DESC",
            repository,
            digest,
        )
        return {task.destination: task for task in map(_task, rows)}

    async def replication_tasks(
        self, *, backfill: str | None = None, state: str | None = None, after: int = 0, limit: int = 1000
    ) -> list[ReplicationTask]:
        conditions: list[str] = ["id > $1"]
        args: list[Any] = [after]
        for column, value in (("backfill", backfill), ("state", state)):
            if value is not None:
                args.append(value)
                conditions.append(f"{column} = ${len(args)}")
        args.append(limit)
        rows = await self._fetch(
            f"SELECT {_TASK_COLUMNS} FROM replication_tasks WHERE {' AND '.join(conditions)} ORDER BY id "
            f"LIMIT ${len(args)}",
            *args,
        )
        return [_task(row) for row in rows]

    async def prune_replications(self, finished_before: float) -> int:
        async with self._tx() as db:
            status = await db.execute(
                "DELETE FROM replication_tasks t WHERE state IN ('complete', 'failed', 'stopped') AND updated_at < $1 "
                "AND (backfill IS NULL OR NOT EXISTS (SELECT 1 FROM replication_backfills b WHERE b.id = t.backfill))",
                finished_before,
            )
        return rowcount(status)

    # -- backfills ---------------------------------------------------------------------------------------------
    async def create_backfill(self, backfill: BackfillRecord) -> bool:
        async with self._tx() as db:
            key = advisory_key("moorage replication backfill", self.schema, backfill.destination)
            await db.execute("SELECT pg_advisory_xact_lock($1)", key)
            busy = await db.fetchval(
                "SELECT EXISTS (SELECT 1 FROM replication_backfills WHERE destination = $1 "
                "AND status = ANY($2::text[]))",
                backfill.destination,
                _ACTIVE_BACKFILL,
            )
            if busy:
                return False
            status = await db.execute(
                f"INSERT INTO replication_backfills ({_BACKFILL_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) "
                "ON CONFLICT (id) DO NOTHING",
                backfill.id,
                backfill.destination,
                backfill.status,
                backfill.started_at,
                backfill.ended_at,
                backfill.failure,
            )
            if rowcount(status) == 0:
                raise Conflict(f"backfill {backfill.id} exists already")
        return True

    async def get_backfill(self, backfill_id: str) -> BackfillRecord | None:
        row = await self._fetchrow(f"SELECT {_BACKFILL_COLUMNS} FROM replication_backfills WHERE id = $1", backfill_id)
        return _backfill(row) if row is not None else None

    async def list_backfills(self) -> list[BackfillRecord]:
        rows = await self._fetch(
            f"SELECT {_BACKFILL_COLUMNS} FROM replication_backfills ORDER BY started_at DESC, id DESC"
        )
        return [_backfill(row) for row in rows]

    async def update_backfill(
        self,
        backfill_id: str,
        status: str,
        *,
        ended_at: float | None = None,
        failure: str | None = None,
        only_from: Sequence[str] = (),
    ) -> bool:
        """`ended_at` and `failure` are set when given (None keeps what is stored)."""
        async with self._tx() as db:
            result = await db.execute(
                "UPDATE replication_backfills SET status = $1, ended_at = coalesce($2, ended_at), "
                "failure = coalesce($3, failure) WHERE id = $4 AND (cardinality($5::text[]) = 0 OR status = ANY($5))",
                status,
                ended_at,
                failure,
                backfill_id,
                list(only_from),
            )
        return rowcount(result) > 0

    async def stop_backfill_tasks(self, backfill_id: str, now: float) -> int:
        async with self._tx() as db:
            status = await db.execute(
                "UPDATE replication_tasks SET state = 'stopped', updated_at = $1, lease_owner = NULL, "
                "lease_until = NULL WHERE backfill = $2 AND state = 'pending' "
                "AND (lease_until IS NULL OR lease_until < $1)",
                now,
                backfill_id,
            )
        return rowcount(status)

    async def backfill_progress(self, backfill_id: str) -> BackfillProgress:
        row = await self._fetchrow(
            "SELECT count(*), count(*) FILTER (WHERE state = 'complete'), count(*) FILTER (WHERE state = 'failed'), "
            "coalesce(array_agg(DISTINCT error) FILTER (WHERE state = 'failed' AND error IS NOT NULL), '{}') "
            "FROM replication_tasks WHERE backfill = $1",
            backfill_id,
        )
        assert row is not None
        total, complete, failed, codes = row
        return BackfillProgress(int(total), int(complete), int(failed), tuple(sorted(codes)))

    async def delete_backfills(self, ended_before: float) -> int:
        async with self._tx() as db:
            gone = [
                row["id"]
                for row in await db.fetch(
                    "DELETE FROM replication_backfills WHERE ended_at < $1 RETURNING id", ended_before
                )
            ]
            if gone:
                await db.execute("DELETE FROM replication_tasks WHERE backfill = ANY($1)", gone)
        return len(gone)
