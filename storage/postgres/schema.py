"""The PostgreSQL schema, as the ordered list of embedded migrations (`schema_version` holds how many are applied).

PostgreSQL's own list, not SQLite's: migration 1 is the schema SQLite reaches after its nine, and each later one
makes what one of SQLite's makes (2 is SQLite's 10, 3 its 11, 4 its 12). The tables live in the first schema of the
connection's `search_path` (`public` unless the DSN says `?search_path=NAME`), and nothing is created outside it.
`migrate` applies the missing migrations in one transaction under an advisory lock on the schema's name, so replicas
starting together migrate once, and refuses a database that a newer Moorage has migrated. Never edit a landed
migration; append a new one.

Conventions: times are float seconds (double precision), ids BIGSERIAL (never reused), manifest bodies and
shared values bytea; names and digests sort bytewise (COLLATE "C"), as SQLite's do, so pages by name agree.
"""

from __future__ import annotations

import hashlib

import asyncpg

from storage.errors import StorageError

MIGRATIONS: list[str] = [
    # 1: everything SQLite's migrations 1-9 made
    """
    CREATE TABLE repositories (
        id                     BIGSERIAL PRIMARY KEY,
        name                   TEXT COLLATE "C" NOT NULL UNIQUE,
        created_at             DOUBLE PRECISION NOT NULL,
        image_tag_mutability   TEXT NOT NULL DEFAULT 'MUTABLE',
        mutability_exclusions  TEXT,
        scan_on_push           BOOLEAN NOT NULL DEFAULT FALSE,
        encryption_type        TEXT NOT NULL DEFAULT 'AES256',
        kms_key                TEXT,
        policy                 TEXT,
        lifecycle_policy       TEXT,
        lifecycle_evaluated_at DOUBLE PRECISION
    );
    CREATE TABLE blobs (
        digest      TEXT COLLATE "C" PRIMARY KEY,
        size        BIGINT NOT NULL,
        created_at  DOUBLE PRECISION NOT NULL,
        touched_at  DOUBLE PRECISION NOT NULL,
        claimed     BOOLEAN NOT NULL DEFAULT FALSE
    );
    CREATE TABLE repository_blobs (
        repository_id BIGINT NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
        digest        TEXT COLLATE "C" NOT NULL REFERENCES blobs(digest),
        linked_at     DOUBLE PRECISION NOT NULL,
        upstream      TEXT,
        PRIMARY KEY (repository_id, digest)
    );
    CREATE INDEX repository_blobs_by_digest ON repository_blobs(digest);
    CREATE INDEX repository_blobs_by_upstream ON repository_blobs(digest, upstream) WHERE upstream IS NOT NULL;
    CREATE TABLE manifests (
        id                BIGSERIAL PRIMARY KEY,
        repository_id     BIGINT NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
        digest            TEXT COLLATE "C" NOT NULL,
        media_type        TEXT NOT NULL,
        size              BIGINT NOT NULL,
        artifact_type     TEXT,
        subject           TEXT COLLATE "C",
        annotations       TEXT,
        pushed_at         DOUBLE PRECISION NOT NULL,
        body              BYTEA NOT NULL,
        image_size        BIGINT NOT NULL DEFAULT 0,
        config_media_type TEXT,
        last_pulled_at    DOUBLE PRECISION,
        storage_class     TEXT NOT NULL DEFAULT 'STANDARD',
        last_archived_at  DOUBLE PRECISION,
        last_activated_at DOUBLE PRECISION,
        UNIQUE (repository_id, digest)
    );
    CREATE INDEX manifests_by_subject ON manifests(repository_id, subject) WHERE subject IS NOT NULL;
    CREATE TABLE manifest_references (
        manifest_id BIGINT NOT NULL REFERENCES manifests(id) ON DELETE CASCADE,
        child       TEXT COLLATE "C" NOT NULL,
        kind        TEXT NOT NULL CHECK (kind IN ('blob', 'manifest')),
        PRIMARY KEY (manifest_id, child)
    );
    CREATE INDEX manifest_references_by_child ON manifest_references(child);
    CREATE TABLE tags (
        repository_id BIGINT NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
        name          TEXT COLLATE "C" NOT NULL,
        manifest_id   BIGINT NOT NULL REFERENCES manifests(id) ON DELETE CASCADE,
        updated_at    DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (repository_id, name)
    );
    CREATE INDEX tags_by_manifest ON tags(manifest_id);
    CREATE TABLE uploads (
        id          TEXT COLLATE "C" PRIMARY KEY,
        repository  TEXT COLLATE "C" NOT NULL,
        created_at  DOUBLE PRECISION NOT NULL,
        owner       TEXT
    );
    CREATE INDEX uploads_by_repository ON uploads(repository);
    CREATE TABLE repository_tags (
        repository_id BIGINT NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
        key           TEXT COLLATE "C" NOT NULL,
        value         TEXT NOT NULL,
        PRIMARY KEY (repository_id, key)
    );
    CREATE TABLE pull_through_rules (
        prefix            TEXT COLLATE "C" PRIMARY KEY,
        upstream_url      TEXT NOT NULL,
        upstream_prefix   TEXT NOT NULL DEFAULT 'ROOT',
        credential_arn    TEXT,
        upstream_registry TEXT,
        created_at        DOUBLE PRECISION NOT NULL,
        updated_at        DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE upstream_checks (
        repository_id BIGINT NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
        tag           TEXT COLLATE "C" NOT NULL,
        checked_at    DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (repository_id, tag)
    );
    CREATE TABLE creation_templates (
        prefix      TEXT COLLATE "C" PRIMARY KEY,
        body        TEXT NOT NULL,
        created_at  DOUBLE PRECISION NOT NULL,
        updated_at  DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE lifecycle_previews (
        repository_id BIGINT PRIMARY KEY REFERENCES repositories(id) ON DELETE CASCADE,
        policy_text   TEXT NOT NULL,
        status        TEXT NOT NULL,
        started_at    DOUBLE PRECISION NOT NULL,
        results       TEXT
    );
    CREATE TABLE upstream_failures (
        key        TEXT COLLATE "C" PRIMARY KEY,
        failed_at  DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE shared_values (
        name   TEXT COLLATE "C" PRIMARY KEY,
        value  BYTEA NOT NULL
    );
    """,
    # 2: registry-level documents and settings (SQLite's 10), and the principals whose pulls record no pull time
    """
    CREATE TABLE registry_settings (
        name        TEXT COLLATE "C" PRIMARY KEY,
        value       TEXT NOT NULL,
        updated_at  DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE pull_time_exclusions (
        principal_arn  TEXT COLLATE "C" PRIMARY KEY,
        created_at     DOUBLE PRECISION NOT NULL
    );
    """,
    # 3: replication's durable queue and backfills (SQLite's 11); repositories by name (a task outlives its
    # repository)
    """
    CREATE TABLE replication_tasks (
        id           BIGSERIAL PRIMARY KEY,
        destination  TEXT COLLATE "C" NOT NULL,
        repository   TEXT COLLATE "C" NOT NULL,
        digest       TEXT COLLATE "C" NOT NULL,
        tags         TEXT NOT NULL,
        backfill     TEXT COLLATE "C",
        state        TEXT NOT NULL CHECK (state IN ('pending', 'complete', 'failed', 'stopped')),
        attempts     INTEGER NOT NULL DEFAULT 0,
        due_at       DOUBLE PRECISION NOT NULL,
        error        TEXT,
        lease_owner  TEXT,
        lease_until  DOUBLE PRECISION,
        created_at   DOUBLE PRECISION NOT NULL,
        updated_at   DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX replication_tasks_due ON replication_tasks(state, due_at);
    CREATE INDEX replication_tasks_in_order ON replication_tasks(destination, repository, id);
    CREATE INDEX replication_tasks_by_image ON replication_tasks(repository, digest);
    CREATE INDEX replication_tasks_by_backfill ON replication_tasks(backfill) WHERE backfill IS NOT NULL;
    CREATE TABLE replication_backfills (
        id           TEXT COLLATE "C" PRIMARY KEY,
        destination  TEXT COLLATE "C" NOT NULL,
        status       TEXT NOT NULL,
        started_at   DOUBLE PRECISION NOT NULL,
        ended_at     DOUBLE PRECISION,
        failure      TEXT
    );
    CREATE INDEX replication_backfills_by_destination ON replication_backfills(destination, status);
    """,
    # 4: vulnerability scanning's advisories and each image's latest scan (SQLite's 12); `modified` is compared as
    # text, bytewise; repositories by name (scanning forgets the scans of the images it is told are gone)
    """
    CREATE TABLE vulnerabilities (
        id         TEXT COLLATE "C" PRIMARY KEY,
        modified   TEXT COLLATE "C" NOT NULL,
        record     TEXT NOT NULL,
        stored_at  DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX vulnerabilities_by_stored_at ON vulnerabilities(stored_at);
    CREATE TABLE image_scans (
        repository           TEXT COLLATE "C" NOT NULL,
        digest               TEXT COLLATE "C" NOT NULL,
        status               TEXT NOT NULL,
        description          TEXT NOT NULL,
        started_at           DOUBLE PRECISION NOT NULL,
        completed_at         DOUBLE PRECISION,
        database_updated_at  DOUBLE PRECISION,
        findings             TEXT NOT NULL,
        packages             TEXT NOT NULL,
        PRIMARY KEY (repository, digest)
    );
    """,
]


def advisory_key(*parts: str) -> int:
    """A 64-bit advisory lock key (signed, as PostgreSQL's bigint) for a name."""
    digest = hashlib.blake2b("\0".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def change_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel of the registry whose tables are in `schema` (a short identifier)."""
    return "moorage_changes_" + hashlib.blake2b(schema.encode(), digest_size=6).hexdigest()


async def current_schema(conn: asyncpg.Connection) -> str:
    """The schema the connection creates tables in: the first existing one of its `search_path`."""
    schema: str | None = await conn.fetchval("SELECT current_schema()")
    if schema is None:
        path = await conn.fetchval("SHOW search_path")
        raise StorageError(f"PostgreSQL: no schema of the search_path ({path}) exists; create it first")
    return schema


async def migrate(conn: asyncpg.Connection) -> int:
    """Bring the connection's schema up to date (one transaction, under the schema's migration lock); returns
    the version it is at."""
    schema = await current_schema(conn)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", advisory_key("moorage migrate", schema))
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        version: int | None = await conn.fetchval("SELECT max(version) FROM schema_version")
        version = version or 0
        if version > len(MIGRATIONS):
            raise StorageError(
                f"the PostgreSQL schema {schema!r} has version {version}, newer than this Moorage knows "
                f"({len(MIGRATIONS)}); upgrade Moorage"
            )
        for script in MIGRATIONS[version:]:
            await conn.execute(script)
        if version < len(MIGRATIONS):
            await conn.execute("DELETE FROM schema_version")
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", len(MIGRATIONS))
        return len(MIGRATIONS)
