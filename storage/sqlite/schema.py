"""The SQLite schema, as the ordered list of embedded migrations (`PRAGMA user_version` counts those applied).

A data dir written by any earlier version opens in this one: `SQLiteConnection.open` applies the missing
migrations in order, each in one transaction. Never edit a landed migration; append a new one.
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: the core registry
    """
    CREATE TABLE repositories (
        id          INTEGER PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        created_at  REAL NOT NULL
    );
    CREATE TABLE blobs (
        digest      TEXT PRIMARY KEY,
        size        INTEGER NOT NULL,
        created_at  REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE repository_blobs (
        repository_id INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
        digest        TEXT NOT NULL REFERENCES blobs(digest),
        linked_at     REAL NOT NULL,
        PRIMARY KEY (repository_id, digest)
    ) WITHOUT ROWID;
    CREATE INDEX repository_blobs_by_digest ON repository_blobs(digest);
    CREATE TABLE manifests (
        id            INTEGER PRIMARY KEY,
        repository_id INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
        digest        TEXT NOT NULL,
        media_type    TEXT NOT NULL,
        size          INTEGER NOT NULL,
        artifact_type TEXT,
        subject       TEXT,
        annotations   TEXT,
        pushed_at     REAL NOT NULL,
        body          BLOB NOT NULL,
        UNIQUE (repository_id, digest)
    );
    CREATE INDEX manifests_by_subject ON manifests(repository_id, subject) WHERE subject IS NOT NULL;
    CREATE TABLE manifest_references (
        manifest_id INTEGER NOT NULL REFERENCES manifests(id) ON DELETE CASCADE,
        child       TEXT NOT NULL,
        kind        TEXT NOT NULL CHECK (kind IN ('blob', 'manifest')),
        PRIMARY KEY (manifest_id, child)
    ) WITHOUT ROWID;
    CREATE INDEX manifest_references_by_child ON manifest_references(child);
    CREATE TABLE tags (
        repository_id INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
        name          TEXT NOT NULL,
        manifest_id   INTEGER NOT NULL REFERENCES manifests(id) ON DELETE CASCADE,
        updated_at    REAL NOT NULL,
        PRIMARY KEY (repository_id, name)
    ) WITHOUT ROWID;
    CREATE INDEX tags_by_manifest ON tags(manifest_id);
    CREATE TABLE uploads (
        id          TEXT PRIMARY KEY,
        repository  TEXT NOT NULL,
        created_at  REAL NOT NULL
    ) WITHOUT ROWID;
    """,
    # 2: ECR repository settings, resource tags, image sizes and last pull times
    """
    ALTER TABLE repositories ADD COLUMN image_tag_mutability TEXT NOT NULL DEFAULT 'MUTABLE';
    ALTER TABLE repositories ADD COLUMN mutability_exclusions TEXT;
    ALTER TABLE repositories ADD COLUMN scan_on_push INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE repositories ADD COLUMN encryption_type TEXT NOT NULL DEFAULT 'AES256';
    ALTER TABLE repositories ADD COLUMN kms_key TEXT;
    ALTER TABLE repositories ADD COLUMN policy TEXT;
    CREATE TABLE repository_tags (
        repository_id INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
        key           TEXT NOT NULL,
        value         TEXT NOT NULL,
        PRIMARY KEY (repository_id, key)
    ) WITHOUT ROWID;
    ALTER TABLE manifests ADD COLUMN image_size INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE manifests ADD COLUMN config_media_type TEXT;
    ALTER TABLE manifests ADD COLUMN last_pulled_at REAL;
    """,
    # 3: pull-through cache rules, and when each cached tag was last confirmed upstream
    """
    CREATE TABLE pull_through_rules (
        prefix            TEXT PRIMARY KEY,
        upstream_url      TEXT NOT NULL,
        upstream_prefix   TEXT NOT NULL DEFAULT 'ROOT',
        credential_arn    TEXT,
        upstream_registry TEXT,
        created_at        REAL NOT NULL,
        updated_at        REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE upstream_checks (
        repository_id INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
        tag           TEXT NOT NULL,
        checked_at    REAL NOT NULL,
        PRIMARY KEY (repository_id, tag)
    ) WITHOUT ROWID;
    """,
    # 4: lifecycle policies, archive storage class, garbage collection, repository creation templates
    """
    ALTER TABLE repositories ADD COLUMN lifecycle_policy TEXT;
    ALTER TABLE repositories ADD COLUMN lifecycle_evaluated_at REAL;
    ALTER TABLE manifests ADD COLUMN storage_class TEXT NOT NULL DEFAULT 'STANDARD';
    ALTER TABLE manifests ADD COLUMN last_archived_at REAL;
    ALTER TABLE manifests ADD COLUMN last_activated_at REAL;
    ALTER TABLE blobs ADD COLUMN touched_at REAL NOT NULL DEFAULT 0;
    UPDATE blobs SET touched_at = created_at;
    CREATE TABLE creation_templates (
        prefix      TEXT PRIMARY KEY,
        body        TEXT NOT NULL,
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL
    ) WITHOUT ROWID;
    """,
    # 5: state every worker must see: lifecycle policy previews (any worker answers GetLifecyclePolicyPreview)
    # and recent upstream failures (no worker waits on an upstream another one just found down)
    """
    CREATE TABLE lifecycle_previews (
        repository_id INTEGER PRIMARY KEY REFERENCES repositories(id) ON DELETE CASCADE,
        policy_text   TEXT NOT NULL,
        status        TEXT NOT NULL,
        started_at    REAL NOT NULL,
        results       TEXT
    );
    CREATE TABLE upstream_failures (
        key        TEXT PRIMARY KEY,
        failed_at  REAL NOT NULL
    ) WITHOUT ROWID;
    """,
    # 6: where a repository's blob link came from: NULL for a push, a mount or an import; for a pull-through
    # download, the upstream (URL and credential) that sent the verified bytes. Another cache repository of the
    # same upstream may reuse the bytes without a fetch; any other must prove its upstream has them.
    """
    ALTER TABLE repository_blobs ADD COLUMN upstream TEXT;
    CREATE INDEX repository_blobs_by_upstream ON repository_blobs(digest, upstream) WHERE upstream IS NOT NULL;
    """,
    # 7: the principal that started each upload session ("" anonymous); NULL for those from before (and with auth
    # off): nobody's, so anyone may continue them, as before
    """
    ALTER TABLE uploads ADD COLUMN owner TEXT;
    """,
    # 8: garbage collection claims a blob (a tombstone refusing new links) before it deletes the bytes, and drops
    # the row after; a collection interrupted in between leaves the tombstone for the next one to finish
    """
    ALTER TABLE blobs ADD COLUMN claimed INTEGER NOT NULL DEFAULT 0;
    """,
    # 9: small values every process must agree on (signing keys and generated credentials on shared backends)
    """
    CREATE TABLE shared_values (
        name   TEXT PRIMARY KEY,
        value  BLOB NOT NULL
    ) WITHOUT ROWID;
    """,
    # 10: registry-level documents and settings (the registry policy, account settings, scanning, signing and
    # replication configurations), by name; and the principals whose pulls do not record a pull time
    """
    CREATE TABLE registry_settings (
        name        TEXT PRIMARY KEY,
        value       TEXT NOT NULL,
        updated_at  REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE pull_time_exclusions (
        principal_arn  TEXT PRIMARY KEY,
        created_at     REAL NOT NULL
    ) WITHOUT ROWID;
    """,
    # 11: replication's durable queue (one task per image and destination, claimed under a lease) and the backfills
    # that queue a registry's existing images. Repositories by name, not by id: a task outlives its repository's
    # deletion (and fails saying so)
    """
    CREATE TABLE replication_tasks (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        destination  TEXT NOT NULL,
        repository   TEXT NOT NULL,
        digest       TEXT NOT NULL,
        tags         TEXT NOT NULL,
        backfill     TEXT,
        state        TEXT NOT NULL CHECK (state IN ('pending', 'complete', 'failed', 'stopped')),
        attempts     INTEGER NOT NULL DEFAULT 0,
        due_at       REAL NOT NULL,
        error        TEXT,
        lease_owner  TEXT,
        lease_until  REAL,
        created_at   REAL NOT NULL,
        updated_at   REAL NOT NULL
    );
    CREATE INDEX replication_tasks_due ON replication_tasks(state, due_at);
    CREATE INDEX replication_tasks_in_order ON replication_tasks(destination, repository, id);
    CREATE INDEX replication_tasks_by_image ON replication_tasks(repository, digest);
    CREATE INDEX replication_tasks_by_backfill ON replication_tasks(backfill) WHERE backfill IS NOT NULL;
    CREATE TABLE replication_backfills (
        id           TEXT PRIMARY KEY,
        destination  TEXT NOT NULL,
        status       TEXT NOT NULL,
        started_at   REAL NOT NULL,
        ended_at     REAL,
        failure      TEXT
    ) WITHOUT ROWID;
    CREATE INDEX replication_backfills_by_destination ON replication_backfills(destination, status);
    """,
    # 12: vulnerability scanning: the vulnerability database's advisories (OSV records by id, `modified` as ISO 8601
    # text) and each image's latest scan. Rowid tables (not WITHOUT ROWID): a record or a scan's findings is
    # kilobytes. Repositories by name, not by id: scanning forgets the scans of the images it is told are gone
    """
    CREATE TABLE vulnerabilities (
        id         TEXT PRIMARY KEY,
        modified   TEXT NOT NULL,
        record     TEXT NOT NULL,
        stored_at  REAL NOT NULL
    );
    CREATE INDEX vulnerabilities_by_stored_at ON vulnerabilities(stored_at);
    CREATE TABLE image_scans (
        repository           TEXT NOT NULL,
        digest               TEXT NOT NULL,
        status               TEXT NOT NULL,
        description          TEXT NOT NULL,
        started_at           REAL NOT NULL,
        completed_at         REAL,
        database_updated_at  REAL,
        findings             TEXT NOT NULL,
        packages             TEXT NOT NULL,
        PRIMARY KEY (repository, digest)
    );
    """,
]
