"""Scans run in a process of their own, off the event loop: unpacking layers and matching packages is CPU work
that would stall every request.

The worker process builds the vulnerability index once per database version, from a snapshot file the server
writes (`DatabaseFile`: one JSON record per line, named by the version), and keeps it while the version lasts.
Each scan hands it the paths of the image's layers (the blob store's files, or copies spooled from object
storage) and gets back the packages found and the findings.
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

    def __init__(self) -> None:
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def _executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    async def scan(self, database: str | None, layers: Sequence[str]) -> tuple[list[Package], list[Finding]]:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor(), scan_in_worker, database, list(layers))
        except concurrent.futures.process.BrokenProcessPool:
            self._pool = None  # the worker died (out of memory, killed): the next scan starts another
            raise

    async def affected(self, database: str, ids: Sequence[str]) -> set[tuple[str, str]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor(), affected_in_worker, database, list(ids))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


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
            async for page in pages:
                await asyncio.to_thread(fh.write, "".join(text.replace("\n", " ") + "\n" for text in page))
        finally:
            await asyncio.to_thread(fh.close)
        await asyncio.to_thread(os.replace, temporary, target)
        for old in self.directory.glob("osv-*.jsonl"):
            if old != target:
                with contextlib.suppress(OSError):
                    old.unlink()
        return target
