"""Scans run in a process of their own, off the event loop: unpacking layers and matching packages is CPU work
that would stall every request.

The worker process builds the vulnerability index once per database version, from a snapshot file the server
writes (`DatabaseFile`: one JSON record per line, named by the version), and keeps it while the version lasts.
Each scan hands it the paths of the image's layers (the blob store's files, or copies spooled from object
storage) and gets back the packages found and the findings.

A scan gets SCAN_TIMEOUT at most (a pushed layer can take hours to unpack, and scans wait for each other):
then its process is killed, the scan ends with ScanTimeout, and the next one starts another process. Closing
the worker kills its process too, a running scan with it (it stays IN_PROGRESS, for the sweep to run again):
left running, it would hold the server's exit, which waits for the processes of its pools.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import multiprocessing
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from registry.scanning.inventory import inventory
from registry.scanning.matcher import Finding, VulnIndex
from registry.scanning.packages import Package

_index: tuple[str, VulnIndex] | None = None  # in the worker process: (database file, its index)
SCAN_TIMEOUT = 1800.0  # seconds a scan may run in the worker process


class ScanTimeout(Exception):
    """The scan ran longer than the worker's timeout: its process was killed."""


def _load(database: str) -> VulnIndex:
    global _index
    if _index is None or _index[0] != database:
        _index = None  # drop the old index before building the new one (memory)
        with open(database, encoding="utf-8") as fh:
            records = (json.loads(line) for line in fh if line.strip())
            _index = (database, VulnIndex(records))
    return _index[1]


def scan_in_worker(database: str | None, layers: Sequence[str]) -> tuple[list[Package], list[Finding]]:
    """In the worker process: the image's packages, and their findings (none without a database)."""
    packages = inventory(layers)
    if database is None:
        return packages, []
    return packages, _load(database).findings(packages)


def affected_in_worker(database: str, ids: Sequence[str]) -> set[tuple[str, str]]:
    """In the worker process: the (ecosystem, package) pairs that these records of the database affect."""
    wanted = set(ids)
    with open(database, encoding="utf-8") as fh:
        records = [r for r in (json.loads(line) for line in fh if line.strip()) if r.get("id") in wanted]
    return VulnIndex(records).affected_names()


class ScanWorker:
    """One worker process (spawned, so it shares nothing with the server's event loop), started on first use."""

    def __init__(self, timeout: float = SCAN_TIMEOUT) -> None:
        self.timeout = timeout
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def _executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    async def scan(self, database: str | None, layers: Sequence[str]) -> tuple[list[Package], list[Finding]]:
        loop = asyncio.get_running_loop()
        pool = self._executor()
        try:
            async with asyncio.timeout(self.timeout):
                return await loop.run_in_executor(pool, scan_in_worker, database, list(layers))
        except concurrent.futures.process.BrokenProcessPool:
            self._drop(pool)  # the worker died (out of memory, killed): the next scan starts another
            raise
        except TimeoutError:
            self._drop(pool)
            raise ScanTimeout(f"the scan did not end within {self.timeout:g} s; it was stopped") from None

    def _drop(self, pool: concurrent.futures.ProcessPoolExecutor) -> None:
        """Kill the pool's process (whatever it runs) and forget the pool."""
        if self._pool is pool:
            self._pool = None
        processes = getattr(pool, "_processes", None) or {}  # the executor has no public way to stop a task
        for process in list(processes.values()):
            with contextlib.suppress(OSError, ValueError):
                process.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    async def affected(self, database: str, ids: Sequence[str]) -> set[tuple[str, str]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor(), affected_in_worker, database, list(ids))

    def close(self) -> None:
        if self._pool is not None:
            self._drop(self._pool)


class DatabaseFile:
    """The database as a file the worker reads: `<dir>/osv-<version>.jsonl`, written once per version (atomically:
    a temporary name, then a rename), older versions' files removed."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, version: str) -> Path:
        return self.directory / f"osv-{version}.jsonl"

    def exists(self, version: str) -> bool:
        return self.path(version).exists()

    async def write(self, version: str, pages: Any) -> Path:
        """Write the version's file from `pages` (an async iterator of lists of JSON texts) unless it exists."""
        target = self.path(version)
        if target.exists():
            return target
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        fh = await asyncio.to_thread(open, temporary, "w", encoding="utf-8")
        try:
            try:
                async for page in pages:
                    await asyncio.to_thread(fh.write, "".join(text.replace("\n", " ") + "\n" for text in page))
            finally:
                await asyncio.to_thread(fh.close)
            await asyncio.to_thread(os.replace, temporary, target)
        except BaseException:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        for old in self.directory.glob("osv-*.jsonl"):
            if old != target:
                with contextlib.suppress(OSError):
                    old.unlink()
        return target
