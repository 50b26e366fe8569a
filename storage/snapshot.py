"""The metadata store's rows in a form every driver reads and writes: `storage.metadata.Snapshot`'s catalog.

Both drivers hold the same tables with the same columns (SQLite after its migrations, PostgreSQL's first), so a
snapshot is simply each table's rows as dicts, in `TABLES` order (a table comes after those it refers to), with
values of one Python type per column kind whatever the driver stored: `int`, `float`, `str`, `bytes`, `bool`
(SQLite's 0/1), or None. Ids are kept as they are: manifests refer to repositories, tags to manifests, and images
list in id order; a driver that numbers rows itself moves its counters past the ids it was given.

Upload sessions are not part of a snapshot: their bytes live in a blob store's session area, not in the rows.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

Row: TypeAlias = dict[str, Any]
Batch: TypeAlias = tuple[str, list[Row]]  # (table, rows)
BATCH_ROWS = 500  # rows per batch: bounded memory (a manifest body is at most 4 MiB, usually a few KiB)


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    columns: Mapping[str, str]  # column -> kind: int, float, text, bytes, bool
    key: tuple[str, ...]  # the primary key: the order rows are read in, and what makes an insert a duplicate
    serial: str | None = None  # a column the driver numbers itself (a sequence to move past the copied ids)
    where: str = ""  # which rows belong in a snapshot (a condition on the table's columns), empty: all

    def canonical(self, row: Mapping[str, Any]) -> Row:
        return {column: _CONVERT[kind](row[column]) for column, kind in self.columns.items()}


def _optional(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else convert(value)


def _bytes(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


_CONVERT: dict[str, Callable[[Any], Any]] = {
    "int": _optional(int),
    "float": _optional(float),
    "text": _optional(str),
    "bytes": _optional(_bytes),
    "bool": _optional(bool),
}


def _table(name: str, columns: str, key: str, serial: str | None = None, where: str = "") -> Table:
    kinds = dict(part.split(":") for part in columns.split())
    return Table(name, kinds, tuple(key.split()), serial, where)


TABLES: tuple[Table, ...] = (
    _table(
        "repositories",
        "id:int name:text created_at:float image_tag_mutability:text mutability_exclusions:text scan_on_push:bool "
        "encryption_type:text kms_key:text policy:text lifecycle_policy:text lifecycle_evaluated_at:float",
        "id",
        serial="id",
    ),
    # A blob claimed by an unfinished garbage collection is on its way out: its bytes may be gone already.
    _table(
        "blobs",
        "digest:text size:int created_at:float touched_at:float claimed:bool",
        "digest",
        where="NOT claimed",
    ),
    _table("repository_blobs", "repository_id:int digest:text linked_at:float upstream:text", "repository_id digest"),
    _table(
        "manifests",
        "id:int repository_id:int digest:text media_type:text size:int artifact_type:text subject:text "
        "annotations:text pushed_at:float body:bytes image_size:int config_media_type:text last_pulled_at:float "
        "storage_class:text last_archived_at:float last_activated_at:float",
        "id",
        serial="id",
    ),
    _table("manifest_references", "manifest_id:int child:text kind:text", "manifest_id child"),
    _table("tags", "repository_id:int name:text manifest_id:int updated_at:float", "repository_id name"),
    _table("repository_tags", "repository_id:int key:text value:text", "repository_id key"),
    _table(
        "pull_through_rules",
        "prefix:text upstream_url:text upstream_prefix:text credential_arn:text upstream_registry:text "
        "created_at:float updated_at:float",
        "prefix",
    ),
    _table("upstream_checks", "repository_id:int tag:text checked_at:float", "repository_id tag"),
    _table("creation_templates", "prefix:text body:text created_at:float updated_at:float", "prefix"),
    _table(
        "lifecycle_previews",
        "repository_id:int policy_text:text status:text started_at:float results:text",
        "repository_id",
    ),
    _table("upstream_failures", "key:text failed_at:float", "key"),
    _table("shared_values", "name:text value:bytes", "name"),
    _table("registry_settings", "name:text value:text updated_at:float", "name"),
    _table("pull_time_exclusions", "principal_arn:text created_at:float", "principal_arn"),
    # Replication's queue and backfills (not in CONTENT_TABLES: they alone do not make a registry). Tasks name their
    # repository and backfill without foreign keys; a copied lease simply runs out.
    _table(
        "replication_backfills",
        "id:text destination:text status:text started_at:float ended_at:float failure:text",
        "id",
    ),
    _table(
        "replication_tasks",
        "id:int destination:text repository:text digest:text tags:text backfill:text state:text attempts:int "
        "due_at:float error:text lease_owner:text lease_until:float created_at:float updated_at:float",
        "id",
        serial="id",
    ),
    # Vulnerability scanning's advisories and images' latest scans (not in CONTENT_TABLES: a registry's own
    # content they are not). Scans name their repository without a foreign key.
    _table("vulnerabilities", "id:text modified:text record:text stored_at:float", "id"),
    _table(
        "image_scans",
        "repository:text digest:text status:text description:text started_at:float completed_at:float "
        "database_updated_at:float findings:text packages:text",
        "repository digest",
    ),
)
BY_NAME: dict[str, Table] = {table.name: table for table in TABLES}
# Tables that say a registry has content (a target of a migration must have none of these rows).
CONTENT_TABLES = (
    "repositories",
    "blobs",
    "manifests",
    "pull_through_rules",
    "creation_templates",
    "shared_values",
    "registry_settings",
    "pull_time_exclusions",
)


async def collect(batches: AsyncIterable[Batch]) -> dict[str, list[Row]]:
    """Every row of a snapshot by table (for tests and small stores: it holds them all in memory)."""
    out: dict[str, list[Row]] = {table.name: [] for table in TABLES}
    async for name, rows in batches:
        out[name] += rows
    return out


async def only(batches: AsyncIterator[Batch], name: str) -> AsyncIterator[Row]:
    """The rows of one table of a snapshot stream."""
    async for table, rows in batches:
        if table == name:
            for row in rows:
                yield row
