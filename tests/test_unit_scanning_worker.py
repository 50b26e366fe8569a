"""The scan worker process (registry/scanning/worker.py) when a scan never ends: a layer that blocks its reader
(here a FIFO nobody writes, as a layer that takes hours to unpack would) is given up after the scan timeout,
its worker process killed and the next scan served by a new one; closing the worker kills a running scan's
process rather than leaving it (and the server's exit, which waits for it) to run on."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from registry.scanning.worker import DatabaseFile, ScanTimeout, ScanWorker
from tests.test_unit_scanning_inventory import DEBIAN_OS_RELEASE, DPKG_STATUS, layer


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "layer.fifo"
    os.mkfifo(path)
    yield path
    # Unblock a worker that is still opening it (without the fix under test), so the test run can end.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)


def worker_pids(worker: ScanWorker) -> set[int]:
    pool = worker._pool
    return set(pool._processes or {}) if pool is not None else set()


def gone(pid: int) -> bool:
    """The process has exited (a zombie not yet reaped counts)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def test_a_scan_that_never_ends_is_given_up_and_its_process_killed(fifo: Path, tmp_path: Path) -> None:
    files = [("etc/os-release", DEBIAN_OS_RELEASE), ("var/lib/dpkg/status", DPKG_STATUS)]
    good = layer(tmp_path / "debian.tar.gz", files)

    async def run() -> None:
        worker = ScanWorker(timeout=1.5)
        try:
            started = time.monotonic()
            with pytest.raises(ScanTimeout):
                await asyncio.wait_for(worker.scan(None, [str(fifo)]), 20)
            assert time.monotonic() - started < 10
            assert worker._pool is None, "the pool of the killed process is dropped"
            packages, findings = await asyncio.wait_for(worker.scan(None, [str(good)]), 60)
            assert {p.name for p in packages} == {"openssl", "glibc", "bash"} and findings == []
        finally:
            worker.close()

    asyncio.run(run())


def test_closing_the_worker_kills_a_running_scans_process(fifo: Path) -> None:
    async def run() -> None:
        worker = ScanWorker(timeout=3600)
        scan = asyncio.ensure_future(worker.scan(None, [str(fifo)]))
        for _ in range(200):  # the process starts and takes the scan
            await asyncio.sleep(0.05)
            if worker_pids(worker):
                break
        pids = worker_pids(worker)
        assert pids
        await asyncio.sleep(0.5)
        worker.close()
        for _ in range(200):
            if all(gone(pid) for pid in pids):
                break
            await asyncio.sleep(0.05)
        assert all(gone(pid) for pid in pids), "the worker process still runs its scan"
        with contextlib.suppress(Exception):
            await asyncio.wait_for(scan, 10)

    asyncio.run(run())


def test_a_database_file_whose_writing_fails_leaves_nothing(tmp_path: Path) -> None:
    async def pages() -> AsyncIterator[list[str]]:
        yield ['{"id": "A"}']
        raise OSError("the metadata store went away")

    with pytest.raises(OSError):
        asyncio.run(DatabaseFile(tmp_path).write("1-1", pages()))
    assert list(tmp_path.iterdir()) == []
