"""A replica's local copies of blobs from the bucket (`[storage.s3] local_cache`), served with sendfile.

A blob is immutable and named by its digest, so a copy never goes stale: the bytes under a digest are the same
wherever they are. Only verified bytes enter the cache:
  - a whole-blob read from the bucket is written to a fill file while it streams to the client, and kept only
    when the stream's digest check passed (`fill`);
  - a blob this replica wrote (a push, a pull-through download) is verified before its upload, and its scratch
    file is kept instead of removed (`adopt`).
The registry asks the metadata store whether a repository holds a blob before it opens one, so a copy of a
blob deleted since is never served; it ages out. Least recently used copies go first once the cache holds more
than its budget (the modification time is the use time, refreshed at most every TOUCH_AFTER seconds), sparing
those used in the last SPARE_RECENT seconds, which a reader may be about to open. Each
worker process keeps its own count of the bytes held, recounted from the directory whenever it believes the
budget is reached, so the cache may briefly overshoot by what other workers added since, or by copies in use.

    <data dir>/s3-cache/
      ab/abcdef...        the blob sha256:abcdef... (sha256 digests only)
      .fill-<uuid>        a copy being written
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from storage.scratch import ScratchWriter, remove_stale

log = logging.getLogger(__name__)

TOUCH_AFTER = 10.0  # seconds: a hit refreshes the copy's use time when it is older than this
# A copy used this recently is never evicted: a reader opens the file it looked up well within
# SPARE_RECENT - TOUCH_AFTER seconds, and an open file is sent whole even if removed then.
SPARE_RECENT = 30.0
EVICT_TO = 0.9  # eviction frees room down to this share of the budget
LARGEST_SHARE = 4  # a blob over budget / LARGEST_SHARE is not cached (one blob must not flush the cache)
FILL_PREFIX = ".fill-"
LEFTOVER_AGE = 3600.0  # a fill file untouched this long belongs to no live reader
_HEX = frozenset("0123456789abcdef")


class Fill(ScratchWriter):
    """A copy being written while its blob streams from the bucket; `keep` installs it once the stream's own
    digest check passed."""

    durable = False

    def __init__(self, cache: LocalCache, path: Path, fd: int, target: Path) -> None:
        super().__init__(path, fd, None, 0)
        self.cache = cache
        self.target = target

    async def keep(self, size: int) -> None:
        try:
            if self._size != size:
                raise OSError(f"{self._size} of {size} bytes written")
            await self._close()  # (lands the last writes)
            await asyncio.to_thread(self.cache._install, self.path, self.target, size)
            self.committed = True
        finally:
            if not self.committed:
                await self.abort()

    async def abort(self) -> None:
        with contextlib.suppress(OSError):
            await super().abort()


class LocalCache:
    def __init__(self, directory: Path, budget: int, free_space_floor: Callable[[int], int] = lambda total: 0) -> None:
        self.directory = Path(directory)
        self.budget = max(budget, 0)
        self.free_space_floor = free_space_floor  # free bytes (on a filesystem of that many) to leave alone
        self.hits = self.fills = self.adopted = 0
        self._held: int | None = None  # bytes held, as last counted plus what this process added since
        self._counting = asyncio.Lock()
        if self.budget:
            self.directory.mkdir(parents=True, exist_ok=True)
            remove_stale(self.directory, LEFTOVER_AGE)

    def _path(self, digest: str) -> Path | None:
        algorithm, _, hexpart = digest.partition(":")
        if algorithm != "sha256" or len(hexpart) != 64 or not _HEX.issuperset(hexpart):
            return None
        return self.directory / hexpart[:2] / hexpart

    # -- reading -------------------------------------------------------------------------------------
    def lookup(self, digest: str) -> tuple[str, int] | None:
        """The local copy of `digest` (its path and size), or None. One stat, on the calling thread."""
        path = self._path(digest) if self.budget else None
        if path is None:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        if time.time() - st.st_mtime > TOUCH_AFTER:
            with contextlib.suppress(OSError):
                os.utime(path)
        self.hits += 1
        return str(path), st.st_size

    # -- filling -------------------------------------------------------------------------------------
    def _target(self, digest: str, size: int) -> Path | None:
        """Where the copy of `digest` (`size` bytes) goes; None when it is not to be kept."""
        if not self.budget or not 0 < size <= self.budget // LARGEST_SHARE:
            return None
        return self._path(digest)

    async def fill(self, digest: str, size: int) -> Fill | None:
        """A fill file for `digest` (`size` bytes), or None when the blob is not to be cached or there is no
        room on the disk. Never raises: the cache is only ever a shortcut."""
        target = self._target(digest, size)
        if target is None:
            return None
        try:
            if not await self._room_for(size):
                return None
            path = self.directory / f"{FILL_PREFIX}{uuid.uuid4()}"
            fd = await asyncio.to_thread(os.open, path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as e:
            log.warning("local cache %s: not caching %s: %s", self.directory, digest, e)
            return None
        self.fills += 1
        return Fill(self, path, fd, target)

    async def adopt(self, path: Path, digest: str, size: int) -> bool:
        """Move a verified local file of `digest` (a writer's scratch file, on the same filesystem) into the
        cache. False: not taken (the caller removes it)."""
        target = self._target(digest, size)
        if target is None:
            return False
        try:
            if not await self._room_for(size):
                return False
            await asyncio.to_thread(self._install, path, target, size)
        except OSError as e:
            log.warning("local cache %s: not keeping %s: %s", self.directory, digest, e)
            return False
        self.adopted += 1
        return True

    def _install(self, path: Path, target: Path, size: int) -> None:
        target.parent.mkdir(exist_ok=True)
        os.replace(path, target)
        if self._held is not None:
            self._held += size

    def forget(self, digest: str) -> None:
        """Drop the copy of a deleted blob."""
        path = self._path(digest) if self.budget else None
        if path is not None:
            with contextlib.suppress(OSError):
                path.unlink()

    # -- room ----------------------------------------------------------------------------------------
    async def _room_for(self, size: int) -> bool:
        """Evict least recently used copies when `size` more would pass the budget; False when the disk would
        be left with less than its floor of free space."""
        async with self._counting:
            if self._held is None or self._held + size > self.budget:
                self._held = await asyncio.to_thread(self._evict, int(self.budget * EVICT_TO) - size)
        st = os.statvfs(self.directory)
        return st.f_bavail * st.f_frsize - size > self.free_space_floor(st.f_blocks * st.f_frsize)

    def _evict(self, target: int) -> int:
        """Count the copies; remove the least recently used until at most `target` bytes are held. Returns the
        bytes held."""
        copies: list[tuple[float, int, str]] = []
        with os.scandir(self.directory) as top:
            for group in top:
                if len(group.name) != 2 or not group.is_dir(follow_symlinks=False):
                    continue
                with os.scandir(group.path) as entries:
                    for entry in entries:
                        with contextlib.suppress(OSError):
                            st = entry.stat(follow_symlinks=False)
                            copies.append((st.st_mtime, st.st_size, entry.path))
        held = sum(size for _, size, _ in copies)
        if held > target:
            copies.sort()
            recent = time.time() - SPARE_RECENT
            for used, size, path in copies:
                if held <= max(target, 0) or used > recent:
                    break
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                held -= size
        return held
