"""The PostgreSQL metadata store and coordination: several Moorage replicas on one database act as one registry.

`metadata = "postgresql://user:password@host:port/database"` in `[storage]` (asyncpg's DSN; `?search_path=NAME`
puts the tables in that schema, which must exist). Each replica keeps a small pool, one lock connection and one
listening connection.

- `schema.py`: the embedded migrations (PostgreSQL's own list), applied under an advisory lock.
- `connection.py`: the pool, transactions that notify as they commit, errors as storage errors.
- `repositories.py`: repositories, templates, rules, lifecycle state, upload sessions, shared values.
- `manifests.py`: blob links, manifests, tags, referrers, garbage collection's claims (and the row locks that
  stand in for SQLite's single writer).
- `registry_settings.py`: the registry's own settings and pull-time update exclusions.
- `replication.py`: replication's durable queue (tasks claimed under leases, `SKIP LOCKED`) and its backfills.
- `scans.py`: the vulnerability database's records (batched upserts) and each image's latest scan.
- `snapshot.py`: every row out and in (`moorage migrate-storage`).
- `coordination.py`: advisory locks, and the change feed on LISTEN/NOTIFY.
"""

from __future__ import annotations

from storage.postgres.coordination import PostgresChangeFeed, PostgresLocks
from storage.postgres.manifests import ManifestQueries
from storage.postgres.registry_settings import RegistrySettingsQueries
from storage.postgres.replication import ReplicationQueries
from storage.postgres.scans import ScanQueries
from storage.postgres.snapshot import SnapshotQueries


class PostgresMetadataStore(ManifestQueries, RegistrySettingsQueries, ReplicationQueries, ScanQueries, SnapshotQueries):
    """Every query of the `storage.metadata.MetadataStore` contract on one PostgreSQL schema."""


def open_postgres(dsn: str) -> tuple[PostgresMetadataStore, PostgresLocks, PostgresChangeFeed]:
    """The metadata store, locks and change feed of a replica (not yet opened: `Stores.open` does it)."""
    feed = PostgresChangeFeed(dsn)
    return PostgresMetadataStore(dsn, feed), PostgresLocks(dsn), feed


__all__ = ["PostgresChangeFeed", "PostgresLocks", "PostgresMetadataStore", "open_postgres"]
