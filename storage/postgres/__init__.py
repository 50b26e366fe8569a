"""PostgreSQL metadata and coordination (not written yet)."""

from __future__ import annotations

from storage.coordination import ChangeFeed, Locks
from storage.errors import StorageError
from storage.metadata import MetadataStore


def open_postgres(dsn: str) -> tuple[MetadataStore, Locks, ChangeFeed]:
    raise StorageError("the PostgreSQL metadata store is not available in this version")
