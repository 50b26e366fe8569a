"""The coordination contract (`storage.coordination`): named locks, and the change feed between processes.

Within one process the cases use the test's own stores. Where another process is the point, a peer stands for
it: for the change feed, another `Stores` on the same backend (`peer()`); for locks, a real child process
(`python -m tests.contract.backends`), since the local locks are per process by design.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from storage.factory import Stores
from storage.records import RepositorySettings
from tests.contract.backends import Provisioned
from tests.contract.helpers import digest, eventually, manifest

REPO = Path(__file__).parents[2]
SETTLE = 0.1  # how long a task that should be blocked is given to (wrongly) get through


# -- locks in one process ---------------------------------------------------------------------------------


async def test_a_held_name_is_refused_until_released(stores: Stores):
    locks = stores.locks
    assert await locks.try_acquire("upload u1") is True, "a free name is taken"
    try:
        assert await locks.try_acquire("upload u1") is False, "a held name can't be taken again"
        assert await locks.try_acquire("upload u2") is True, "another name is independent"
        await locks.release("upload u2")
    finally:
        await locks.release("upload u1")
    assert await locks.try_acquire("upload u1") is True, "a released name can be taken again"
    await locks.release("upload u1")
    await locks.release("never held")  # releasing a name not held is harmless


async def test_held_elsewhere_of_a_free_name_is_false_and_takes_nothing(stores: Stores):
    assert await stores.locks.held_elsewhere("blob sha256:aa") is False, "nobody holds it"
    assert await stores.locks.try_acquire("blob sha256:aa") is True, "asking did not leave it held"
    await stores.locks.release("blob sha256:aa")


async def test_held_elsewhere_counts_a_hold_by_another_task_of_this_process(stores: Stores):
    # As documented by `Locks.held_elsewhere`: anyone but the caller. A follower polls it to learn whether the
    # leader of a download is still at it, and the leader may be another task of the same process.
    assert await stores.locks.try_acquire("blob sha256:aa") is True
    try:
        assert await stores.locks.held_elsewhere("blob sha256:aa") is True, (
            "held_elsewhere() of a name another holder in this process has: it is held"
        )
    finally:
        await stores.locks.release("blob sha256:aa")
    assert await stores.locks.held_elsewhere("blob sha256:aa") is False, "released: nobody holds it"


async def test_hold_serializes_two_tasks(stores: Stores):
    events: list[str] = []
    first_in, let_go = asyncio.Event(), asyncio.Event()

    async def first() -> None:
        async with stores.locks.hold("manifest r:latest"):
            events.append("first in")
            first_in.set()
            await let_go.wait()
            events.append("first out")

    async def second() -> None:
        await first_in.wait()
        async with stores.locks.hold("manifest r:latest"):
            events.append("second in")

    tasks = [asyncio.create_task(first()), asyncio.create_task(second())]
    await first_in.wait()
    await asyncio.sleep(SETTLE)
    assert events == ["first in"], "the second task got the lock while the first held it"
    let_go.set()
    await asyncio.gather(*tasks)
    assert events == ["first in", "first out", "second in"], "the second holds the lock after the first"
    assert await stores.locks.try_acquire("manifest r:latest") is True, "hold() releases the lock after its block"
    await stores.locks.release("manifest r:latest")


async def test_a_cancelled_wait_for_a_lock_leaves_it_free(stores: Stores):
    assert await stores.locks.try_acquire("x") is True
    waiter = asyncio.create_task(_enter_and_leave(stores, "x"))
    await asyncio.sleep(SETTLE)
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiter
    await stores.locks.release("x")
    assert await stores.locks.held_elsewhere("x") is False
    assert await stores.locks.try_acquire("x") is True, "the cancelled waiter must not have kept the lock"
    await stores.locks.release("x")


async def _enter_and_leave(stores: Stores, name: str) -> None:
    async with stores.locks.hold(name):
        pass


async def test_hold_releases_the_lock_when_its_block_raises(stores: Stores):
    with contextlib.suppress(LookupError):
        async with stores.locks.hold("x"):
            assert await stores.locks.try_acquire("x") is False, "held inside the block"
            raise LookupError
    assert await stores.locks.try_acquire("x") is True, "released after the exception"
    await stores.locks.release("x")


# -- locks across processes -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def child(
    backend: Provisioned, name: str, expect: str = "held", *, upload: bytes | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Another process attached to the same backend, taking the lock `name` (it says "held" or "busy"), or with
    `upload`, writing those bytes in the upload session `name`'s writer. It keeps the lock (or the writer) until
    its stdin closes (it exits) or it is killed (it dies)."""
    what = ["lock", name] if upload is None else ["upload", name, upload.hex()]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.contract.backends",
        backend.backend.id,
        backend.address,
        *what,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        said = (await proc.stdout.readline()).decode().strip()
        assert said == expect, f"the other process, trying {name!r}, said {said!r}, not {expect!r}"
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()


async def test_a_lock_another_process_holds_is_refused_and_reported(backend: Provisioned, stores: Stores):
    async with child(backend, "blob sha256:aa"):
        assert await stores.locks.held_elsewhere("blob sha256:aa") is True, "held_elsewhere sees the other process"
        assert await stores.locks.try_acquire("blob sha256:aa") is False, "try_acquire refuses its lock"
        assert await stores.locks.held_elsewhere("blob sha256:bb") is False, "other names are free"


async def test_a_lock_held_here_is_refused_to_another_process(backend: Provisioned, stores: Stores):
    assert await stores.locks.try_acquire("blob sha256:aa") is True
    try:
        async with child(backend, "blob sha256:aa", expect="busy"):
            pass
    finally:
        await stores.locks.release("blob sha256:aa")
    async with child(backend, "blob sha256:aa", expect="held"):
        pass  # released here: the other process gets it


async def test_hold_waits_for_another_process_to_release(backend: Provisioned, stores: Stores):
    async with child(backend, "upload u1") as proc:
        entered = asyncio.Event()

        async def take() -> None:
            async with stores.locks.hold("upload u1"):
                entered.set()

        task = asyncio.create_task(take())
        await asyncio.sleep(SETTLE)
        assert not entered.is_set(), "hold() got a lock another process holds"
        assert proc.stdin is not None
        proc.stdin.close()  # the other process lets go and exits
        await asyncio.wait_for(task, 10)
        assert entered.is_set()


async def test_a_lock_is_released_when_its_process_dies(backend: Provisioned, stores: Stores):
    async with child(backend, "blob sha256:aa") as proc:
        proc.kill()
        await proc.wait()
        await eventually(
            lambda: stores.locks.held_elsewhere("blob sha256:aa"), "the dead process's lock to go", expect=False
        )
        assert await stores.locks.try_acquire("blob sha256:aa") is True
        await stores.locks.release("blob sha256:aa")


async def test_an_upload_session_has_one_writer_across_processes(backend: Provisioned, stores: Stores):
    blobs = stores.blobs
    data = b"0123456789" * 10
    await blobs.create_upload("u1")
    async with child(backend, "u1", upload=data[:40]) as proc:
        sizes: list[int] = []

        async def resume() -> None:
            async with blobs.resume_upload("u1") as writer:
                sizes.append(writer.size)
                await writer.write(data[40:])

        task = asyncio.create_task(resume())
        await asyncio.sleep(SETTLE)
        assert sizes == [], "a session's writer was resumed here while another process held it"
        assert proc.stdin is not None
        proc.stdin.close()  # the other process leaves its block (keeping its chunk) and exits
        await asyncio.wait_for(task, 10)
    assert sizes == [40], "the writer resumed here must start after the other process's chunk"
    async with blobs.resume_upload("u1") as writer:
        assert await writer.commit(digest(data)) == len(data), "the two processes' chunks make the blob"


# -- the change feed --------------------------------------------------------------------------------------


async def test_the_epoch_stays_while_nobody_commits(stores: Stores):
    epoch = stores.changes.epoch()
    assert [stores.changes.epoch() for _ in range(3)] == [epoch] * 3


async def test_the_epoch_ignores_own_commits_and_moves_for_another_processes(
    stores: Stores, peer: Callable[[], Awaitable[Stores]]
):
    other = await peer()
    feed = stores.changes
    before = feed.epoch()
    feed.committed()
    assert feed.epoch() == before, "this feed's own commit must not move its epoch"
    other.changes.committed()
    await eventually(lambda: feed.epoch() > before, "another process's commit to move the epoch")
    noticed = feed.epoch()
    assert feed.epoch() == noticed, "once noticed, the epoch stays until the next commit elsewhere"


async def test_an_own_commit_never_hides_another_processes(stores: Stores, peer: Callable[[], Awaitable[Stores]]):
    other = await peer()
    feed = stores.changes
    before = feed.epoch()
    other.changes.committed()
    feed.committed()  # ours lands after theirs, before we looked
    await eventually(lambda: feed.epoch() > before, "the other process's commit to move the epoch")


async def test_metadata_writes_reach_the_change_feed(stores: Stores, peer: Callable[[], Awaitable[Stores]]):
    other = await peer()
    before = stores.changes.epoch()
    await stores.meta.create_repository("mine", 1.0, RepositorySettings(), {})
    assert stores.changes.epoch() == before, "a write through this process's store doesn't move its epoch"
    await other.meta.create_repository("theirs", 1.0, RepositorySettings(), {})
    await eventually(lambda: stores.changes.epoch() > before, "another process's write to move the epoch")
    assert await stores.meta.get_repository("theirs") is not None, "and its write is visible here"


async def test_pull_times_move_no_epoch_and_leave_nothing_to_settle(
    stores: Stores, peer: Callable[[], Awaitable[Stores]]
):
    """Every worker of every replica stores its pull times every few seconds while pulls go on. No cache holds
    them, so nobody is told: no other process's epoch moves (which would empty its caches and send its requests
    the full way), and the writer has nothing to settle (which would send its own requests the full way)."""
    layer = digest(b"layer")
    pushed = manifest("r", "m", pushed_at=1.0, blobs=(layer,), tags=("v1",))
    await stores.meta.create_repository("r", 1.0, RepositorySettings(), {})  # (this process's writes: no news here)
    await stores.meta.link_blob("r", layer, 5, 1.0)
    await stores.meta.put_manifest(pushed)
    other = await peer()
    await asyncio.sleep(SETTLE)  # (whatever opening the peer may have told)
    before = stores.changes.epoch()
    await other.meta.record_pulls([("r", pushed.digest, 5.0)])
    assert not other.changes.unsettled(), "a pull-time write leaves the writer nothing to settle"
    assert stores.changes.epoch() == before, "a pull-time write moves no other process's epoch"
    image = (await stores.meta.images_by_digest("r", [pushed.digest]))[pushed.digest]
    assert image.last_pulled_at == 5.0, "and the pull time is stored, for whoever reads it"
    # A write that is news, after it: had the pull-time write been news too, it would be heard as well (first:
    # notifications arrive in commit order).
    await other.meta.create_repository("s", 1.0, RepositorySettings(), {})
    await other.changes.settle()
    await eventually(lambda: stores.changes.epoch() > before, "the next write to move the epoch")
    await asyncio.sleep(SETTLE)
    assert stores.changes.epoch() == before + 1, "only the repository's creation moved it"


async def test_healthy_stores_report_no_problems(stores: Stores):
    assert await stores.health() == []
