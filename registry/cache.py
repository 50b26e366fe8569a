"""A bounded LRU for hot metadata (tag -> digest, manifests, blob links, whether a repository has archived
images).

Only positive answers are cached, except the archived flag (asked on every blob GET, so its usual answer,
"none", is worth keeping; every storage-class change invalidates it), and every write that could change an
entry invalidates it, so a cached answer is never staler than the store. Writes by other processes (workers,
offline commands) empty the cache before its next use: see `storage.coordination.ChangeFeed`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any


class LRUCache:
    __slots__ = ("_data", "hits", "max_entries", "misses", "version")

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self.hits = self.misses = 0
        # Bumped by every invalidation. A reader takes it before going to the store and caches its answer
        # only if it is unchanged afterwards, so a read that raced a write can't cache the old value.
        self.version = 0

    def get(self, key: Hashable) -> Any:
        try:
            value = self._data[key]
        except KeyError:
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: Hashable, value: Any) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        if len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def put_if_current(self, version: int, key: Hashable, value: Any) -> None:
        if version == self.version:
            self.put(key, value)

    def pop(self, key: Hashable) -> None:
        self.version += 1
        self._data.pop(key, None)

    def clear(self) -> None:
        self.version += 1
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class BytesLRU:
    """An LRU of small immutable values bounded by their total size (small blobs served from memory)."""

    __slots__ = ("_data", "max_bytes", "size")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._data: OrderedDict[Hashable, bytes] = OrderedDict()

    def get(self, key: Hashable) -> bytes | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: Hashable, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        old = self._data.pop(key, None)
        if old is not None:
            self.size -= len(old)
        self._data[key] = value
        self.size += len(value)
        while self.size > self.max_bytes:
            _, evicted = self._data.popitem(last=False)
            self.size -= len(evicted)
