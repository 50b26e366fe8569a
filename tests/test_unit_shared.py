"""storage.local: the named locks and the change counter that processes on one data dir share.

Another process is a real one (a Python child holding a lock), since per-process semantics are the point.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from storage.local import ChangeCounter, ProcessLocks
from tests.helpers import hold_in_child


def _stop(holder: subprocess.Popen[str]) -> None:
    holder.kill()
    holder.wait()
    if holder.stdout is not None:
        holder.stdout.close()


def test_a_lock_held_by_another_process_is_refused_until_that_process_dies(tmp_path: Path):
    path = tmp_path / "locks"
    holder = hold_in_child(path, "blob sha256:aa")
    locks = ProcessLocks(path)
    try:
        assert not locks.try_acquire("blob sha256:aa")
        assert locks.held_elsewhere("blob sha256:aa")
        assert locks.try_acquire("blob sha256:bb")  # other names are independent
        holder.kill()  # a crash: the kernel drops the lock
        holder.wait()
        assert not locks.held_elsewhere("blob sha256:aa")
        assert locks.try_acquire("blob sha256:aa")
    finally:
        _stop(holder)
        locks.close()


def test_within_one_process_a_held_name_is_refused_and_release_frees_it(tmp_path: Path):
    locks = ProcessLocks(tmp_path / "locks")
    assert locks.try_acquire("upload 1")
    assert not locks.try_acquire("upload 1")  # POSIX locks don't exclude within a process; the set does
    locks.release("upload 1")
    assert locks.try_acquire("upload 1")
    locks.close()


def test_acquire_waits_for_the_other_process_without_blocking_the_loop(tmp_path: Path):
    path = tmp_path / "locks"
    holder = hold_in_child(path, "manifest a:b")
    locks = ProcessLocks(path)

    async def main() -> tuple[float, int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        asyncio.get_running_loop().call_later(0.3, holder.kill)
        start = time.monotonic()
        async with locks.hold("manifest a:b"):
            waited = time.monotonic() - start
        ticker.cancel()
        return waited, ticks

    try:
        waited, ticks = asyncio.run(main())
        assert 0.25 < waited < 5
        assert ticks >= 10  # the loop kept running while the lock was awaited
    finally:
        _stop(holder)
        locks.close()


def test_hold_blocking_serializes_start_up_across_processes(tmp_path: Path):
    path = tmp_path / "locks"
    holder = hold_in_child(path, "startup")
    locks = ProcessLocks(path)
    try:
        killer = subprocess.Popen(["sh", "-c", f"sleep 0.3; kill {holder.pid}"])
        start = time.monotonic()
        with locks.hold_blocking("startup"):
            assert time.monotonic() - start > 0.2
        assert locks.try_acquire("startup")  # released on exit
        killer.wait()
    finally:
        _stop(holder)
        locks.close()


def test_change_counter_is_shared_and_bumps_are_never_lost(tmp_path: Path):
    path = tmp_path / "changes"
    mine = ChangeCounter(path)
    assert mine.value() == 0
    script = textwrap.dedent(
        f"""
        from storage.local import ChangeCounter
        c = ChangeCounter({str(path)!r})
        for _ in range(500):
            c.bump()
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parents[1]) for _ in range(3)]
    for _ in range(500):
        mine.bump()
    for proc in procs:
        assert proc.wait(60) == 0
    assert mine.value() == 2000  # 4 processes x 500, none lost to a race
    assert ChangeCounter(path).value() == 2000


@pytest.mark.parametrize("writer", ["this process", "another process"])
def test_store_epoch_moves_only_for_other_processes_writes(tmp_path: Path, writer: str):
    from storage.sqlite import SQLiteMetadataStore

    async def main() -> tuple[int, int]:
        feed, other_feed = ChangeCounter(tmp_path / "changes"), ChangeCounter(tmp_path / "changes")
        store = SQLiteMetadataStore(tmp_path / "moorage.db", feed)
        other = SQLiteMetadataStore(tmp_path / "moorage.db", other_feed)
        await store.open()
        await other.open()
        try:
            before = feed.epoch()
            target = store if writer == "this process" else other
            await target.ensure_repository("a/b", time.time(), None)
            return before, feed.epoch()
        finally:
            await store.close()
            await other.close()
            feed.close()
            other_feed.close()

    before, after = asyncio.run(main())
    # Two stores in one test stand for two processes: each keeps its own view of the shared counter.
    assert (after == before) if writer == "this process" else (after == before + 1)
