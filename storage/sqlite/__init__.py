"""The SQLite metadata store: the embedded default (one machine, one file in the data dir).

- `schema.py`: the embedded migrations.
- `connection.py`: connections, transactions, the change feed after commits.
- `repositories.py`: repositories, templates, rules, lifecycle state, upload sessions.
- `manifests.py`: blob links, manifests, tags, referrers, garbage collection's claims.
- `registry_settings.py`: the registry's own settings and pull-time update exclusions.
- `replication.py`: replication's durable queue (tasks claimed under leases) and its backfills.
- `scans.py`: the vulnerability database's records and each image's latest scan.
- `snapshot.py`: every row out and in (`moorage migrate-storage`).
"""

from storage.sqlite.manifests import ManifestQueries
from storage.sqlite.registry_settings import RegistrySettingsQueries
from storage.sqlite.replication import ReplicationQueries
from storage.sqlite.scans import ScanQueries
from storage.sqlite.snapshot import SnapshotQueries


class SQLiteMetadataStore(ManifestQueries, RegistrySettingsQueries, ReplicationQueries, ScanQueries, SnapshotQueries):
    """Every query of the `storage.metadata.MetadataStore` contract on one SQLite database."""


__all__ = ["SQLiteMetadataStore"]
