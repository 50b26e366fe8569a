"""Replication's durable queue and its backfills in SQLite (`storage.metadata.ReplicationQueue`).

The single writer makes each claim, finish and backfill creation atomic: a claim reads the task it takes and
leases it in one `BEGIN IMMEDIATE` transaction, so two claimers (workers of this machine) never get one task. An
idle claim (nothing due) reads first and writes nothing, so polling does not move the change feed.

A stopped task's ended lease is cleared with it (its late runner can't record an end over the stop). Pruning
also drops ended tasks whose backfill is not stored (any more). `update_backfill` sets `ended_at` and `failure`
when given; None keeps what is stored.

A task's tags are JSON text of a list (`json.dumps`, as the PostgreSQL driver writes them, so a task copied by
`moorage migrate-storage` still de-duplicates). Repositories are names, not ids: a task outlives its repository.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from storage.errors import Conflict
from storage.records import BackfillProgress, BackfillRecord, NewReplication, ReplicationTask
from storage.sqlite.connection import SQLiteConnection

_TASK_COLUMNS = (
    "id, destination, repository, digest, tags, backfill, state, attempts, due_at, error, created_at, updated_at"
)
_BACKFILL_COLUMNS = "id, destination, status, started_at, ended_at, failure"
_ACTIVE_BACKFILL = ("PREPARING", "IN_PROGRESS", "STOPPING")
_FINISHED = ("pending", "complete", "failed")  # the states an attempt ends in
# A task that may run now (`?` twice: now): due, its lease free or ended, and first in its (destination,
# repository) queue: no older task of the pair is still pending (running, or waiting to retry).
_CLAIMABLE = (
    "t.state = 'pending' AND t.due_at <= ? AND (t.lease_until IS NULL OR t.lease_until < ?) AND NOT EXISTS ("
    "SELECT 1 FROM replication_tasks o WHERE o.destination = t.destination AND o.repository = t.repository "
    "AND o.state = 'pending' AND o.id < t.id)"
)


def tags_text(tags: Sequence[str]) -> str:
    return json.dumps(list(tags))


def _task(row: Sequence[Any]) -> ReplicationTask:
    id_, destination, repository, digest, tags, backfill, state, attempts, due_at, error, created, updated = row
    return ReplicationTask(
        int(id_),
        destination,
        repository,
        digest,
        tuple(json.loads(tags)),
        backfill,
        state,
        int(attempts),
        float(due_at),
        error,
        float(created),
        float(updated),
    )


def _backfill(row: Sequence[Any]) -> BackfillRecord:
    id_, destination, status, started_at, ended_at, failure = row
    return BackfillRecord(id_, destination, status, started_at, ended_at, failure)


class ReplicationQueries(SQLiteConnection):
    # -- tasks -------------------------------------------------------------------------------------------------
    async def enqueue_replications(self, tasks: Sequence[NewReplication], now: float) -> int:
        if not tasks:
            return 0
        queued = 0
        async with self._tx() as db:
            for task in tasks:
                tags = tags_text(task.tags)
                cur = await db.execute(
                    "INSERT INTO replication_tasks (destination, repository, digest, tags, backfill, state, attempts, "
                    "due_at, created_at, updated_at) SELECT ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ? WHERE NOT EXISTS ("
                    "SELECT 1 FROM replication_tasks WHERE digest = ? AND tags = ? AND id = ("
                    "SELECT max(id) FROM replication_tasks WHERE destination = ? AND repository = ? "
                    "AND state = 'pending'))",
                    (
                        *(task.destination, task.repository, task.digest, tags, task.backfill, now, now, now),
                        *(task.digest, tags, task.destination, task.repository),
                    ),
                )
                queued += cur.rowcount
        return queued

    async def claim_replication(self, now: float, lease_until: float, owner: str) -> ReplicationTask | None:
        find = f"SELECT {_TASK_COLUMNS} FROM replication_tasks t WHERE {_CLAIMABLE} ORDER BY t.id LIMIT 1"
        if await self._fetchone(find, (now, now)) is None:
            return None  # nothing to run: no write
        async with self._tx() as db:
            row = await self._one(db, find, (now, now))
            if row is None:
                return None
            await db.execute(
                "UPDATE replication_tasks SET attempts = attempts + 1, lease_owner = ?, lease_until = ?, "
                "updated_at = ? WHERE id = ?",
                (owner, lease_until, now, row[0]),
            )
            row = await self._one(db, f"SELECT {_TASK_COLUMNS} FROM replication_tasks WHERE id = ?", (row[0],))
        return _task(row)

    async def renew_replication(self, task_id: int, owner: str, lease_until: float) -> bool:
        async with self._tx() as db:
            cur = await db.execute(
                "UPDATE replication_tasks SET lease_until = ? WHERE id = ? AND lease_owner = ? AND state = 'pending'",
                (lease_until, task_id, owner),
            )
            return cur.rowcount > 0

    async def finish_replication(
        self, task_id: int, owner: str, state: str, error: str | None, due_at: float, now: float
    ) -> bool:
        if state not in _FINISHED:
            raise ValueError(f"an attempt ends pending, complete or failed, not {state!r}")
        async with self._tx() as db:
            cur = await db.execute(
                "UPDATE replication_tasks SET state = ?, error = ?, due_at = ?, updated_at = ?, lease_owner = NULL, "
                "lease_until = NULL WHERE id = ? AND lease_owner = ? AND state = 'pending'",
                (state, error, due_at, now, task_id, owner),
            )
            return cur.rowcount > 0

    async def replication_states(self, repository: str, digest: str) -> dict[str, ReplicationTask]:
        rows = await self._fetchall(
            f"SELECT {_TASK_COLUMNS} FROM replication_tasks WHERE id IN (SELECT max(id) FROM replication_tasks "
            "WHERE repository = ? AND digest = ? GROUP BY destination) ORDER BY destination",
            (repository, digest),
        )
        return {task.destination: task for task in map(_task, rows)}

    async def replication_tasks(
        self, *, backfill: str | None = None, state: str | None = None, after: int = 0, limit: int = 1000
    ) -> list[ReplicationTask]:
        conditions: list[str] = ["id > ?"]
        params: list[Any] = [after]
        if backfill is not None:
            conditions.append("backfill = ?")
            params.append(backfill)
        if state is not None:
            conditions.append("state = ?")
            params.append(state)
        rows = await self._fetchall(
            f"SELECT {_TASK_COLUMNS} FROM replication_tasks WHERE {' AND '.join(conditions)} ORDER BY id LIMIT ?",
            [*params, limit],
        )
        return [_task(row) for row in rows]

    async def prune_replications(self, finished_before: float) -> int:
        async with self._tx() as db:
            cur = await db.execute(
                "DELETE FROM replication_tasks WHERE state IN ('complete', 'failed', 'stopped') AND updated_at < ? "
                "AND (backfill IS NULL OR backfill NOT IN (SELECT id FROM replication_backfills))",
                (finished_before,),
            )
            return cur.rowcount

    # -- backfills ---------------------------------------------------------------------------------------------
    async def create_backfill(self, backfill: BackfillRecord) -> bool:
        try:
            async with self._tx() as db:
                busy = await self._one(
                    db,
                    "SELECT 1 FROM replication_backfills WHERE destination = ? AND status IN (?, ?, ?) LIMIT 1",
                    (backfill.destination, *_ACTIVE_BACKFILL),
                )
                if busy is not None:
                    return False
                await db.execute(
                    f"INSERT INTO replication_backfills ({_BACKFILL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        backfill.id,
                        backfill.destination,
                        backfill.status,
                        backfill.started_at,
                        backfill.ended_at,
                        backfill.failure,
                    ),
                )
        except sqlite3.IntegrityError as e:
            raise Conflict(f"backfill {backfill.id} exists already") from e
        return True

    async def get_backfill(self, backfill_id: str) -> BackfillRecord | None:
        row = await self._fetchone(
            f"SELECT {_BACKFILL_COLUMNS} FROM replication_backfills WHERE id = ?", (backfill_id,)
        )
        return _backfill(row) if row is not None else None

    async def list_backfills(self) -> list[BackfillRecord]:
        rows = await self._fetchall(
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
        sql = (
            "UPDATE replication_backfills SET status = ?, ended_at = coalesce(?, ended_at), "
            "failure = coalesce(?, failure) WHERE id = ?"
        )
        if only_from:
            sql += f" AND status IN ({', '.join('?' * len(only_from))})"
        async with self._tx() as db:
            cur = await db.execute(sql, (status, ended_at, failure, backfill_id, *only_from))
            return cur.rowcount > 0

    async def stop_backfill_tasks(self, backfill_id: str, now: float) -> int:
        async with self._tx() as db:
            cur = await db.execute(
                "UPDATE replication_tasks SET state = 'stopped', updated_at = ?, lease_owner = NULL, "
                "lease_until = NULL WHERE backfill = ? AND state = 'pending' "
                "AND (lease_until IS NULL OR lease_until < ?)",
                (now, backfill_id, now),
            )
            return cur.rowcount

    async def backfill_progress(self, backfill_id: str) -> BackfillProgress:
        total, complete, failed = await self._fetchone(
            "SELECT count(*), coalesce(sum(state = 'complete'), 0), coalesce(sum(state = 'failed'), 0) "
            "FROM replication_tasks WHERE backfill = ?",
            (backfill_id,),
        )
        codes = await self._fetchall(
            "SELECT DISTINCT error FROM replication_tasks WHERE backfill = ? AND state = 'failed' "
            "AND error IS NOT NULL ORDER BY error",
            (backfill_id,),
        )
        return BackfillProgress(int(total), int(complete), int(failed), tuple(code for (code,) in codes))

    async def delete_backfills(self, ended_before: float) -> int:
        async with self._tx() as db:
            await db.execute(
                "DELETE FROM replication_tasks WHERE backfill IN (SELECT id FROM replication_backfills "
                "WHERE ended_at < ?)",
                (ended_before,),
            )
            cur = await db.execute("DELETE FROM replication_backfills WHERE ended_at < ?", (ended_before,))
            return cur.rowcount
