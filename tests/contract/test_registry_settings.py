"""The registry's own settings and pull-time update exclusions (`storage.metadata.RegistrySettingsStore`), on
every backend; and the migrations that add their tables to a data dir or schema written before them."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from pathlib import Path

import asyncpg

from storage.metadata import MetadataStore
from storage.postgres import PostgresMetadataStore
from storage.postgres.schema import MIGRATIONS as POSTGRES_MIGRATIONS
from storage.records import RepositorySettings
from storage.sqlite import SQLiteMetadataStore
from storage.sqlite.schema import MIGRATIONS as SQLITE_MIGRATIONS
from tests.services.postgres import with_schema

T0 = 1_700_000_000.0
USER = "arn:aws:iam::123456789012:user/scanner"
ROLE = "arn:aws:iam::123456789012:role/mirror"


async def test_settings_are_put_replaced_listed_and_deleted(meta: MetadataStore):
    assert await meta.registry_settings() == {}
    assert await meta.delete_registry_setting("registry-policy") is None, "nothing to delete: None"
    await meta.put_registry_setting("registry-policy", '{"Version": "2012-10-17"}', T0)
    await meta.put_registry_setting("account/BLOB_MOUNTING", "DISABLED", T0 + 1)
    await meta.put_registry_setting("account/BLOB_MOUNTING", "ENABLED", T0 + 2)  # replaces
    assert await meta.registry_settings() == {
        "account/BLOB_MOUNTING": ("ENABLED", T0 + 2),
        "registry-policy": ('{"Version": "2012-10-17"}', T0),
    }
    assert await meta.delete_registry_setting("registry-policy") == '{"Version": "2012-10-17"}'
    assert await meta.delete_registry_setting("registry-policy") is None
    assert list(await meta.registry_settings()) == ["account/BLOB_MOUNTING"]


async def test_a_setting_written_by_one_process_is_read_by_another(meta: MetadataStore, peer):  # type: ignore[no-untyped-def]
    other = (await peer()).meta
    await meta.put_registry_setting("replication", '{"rules": []}', T0)
    assert await other.registry_settings() == {"replication": ('{"rules": []}', T0)}
    assert await other.add_pull_time_exclusion(USER, T0)
    assert await meta.pull_time_exclusions() == [(USER, T0)]


async def test_pull_time_exclusions_are_added_once_and_removed(meta: MetadataStore):
    assert await meta.pull_time_exclusions() == []
    assert await meta.add_pull_time_exclusion(USER, T0)
    assert await meta.add_pull_time_exclusion(ROLE, T0 + 1)
    assert not await meta.add_pull_time_exclusion(USER, T0 + 5), "registered already: False"
    assert await meta.pull_time_exclusions() == [(ROLE, T0 + 1), (USER, T0)], "by ARN, the first time kept"
    assert await meta.remove_pull_time_exclusion(USER)
    assert not await meta.remove_pull_time_exclusion(USER), "not excluded any more: False"
    assert await meta.pull_time_exclusions() == [(ROLE, T0 + 1)]


async def test_concurrent_registrations_of_one_principal_add_it_once(meta: MetadataStore):
    results = await asyncio.gather(*(meta.add_pull_time_exclusion(USER, T0 + i) for i in range(5)))
    assert sorted(results) == [False, False, False, False, True]
    assert [arn for arn, _ in await meta.pull_time_exclusions()] == [USER]


async def test_a_sqlite_data_dir_from_before_the_settings_tables_is_migrated(tmp_path: Path):
    """A database at schema version 9 keeps its rows and gains the (empty) settings tables on open."""
    path = tmp_path / "moorage.db"
    db = sqlite3.connect(path)
    for script in SQLITE_MIGRATIONS[:9]:
        db.executescript(script)
    db.execute("PRAGMA user_version = 9")
    db.execute("INSERT INTO repositories (id, name, created_at) VALUES (3, 'old/app', 1.5e9)")
    db.commit()
    db.close()
    store = SQLiteMetadataStore(path)
    await store.open()
    try:
        repo = await store.get_repository("old/app")
        assert repo is not None and repo.settings == RepositorySettings()
        assert await store.registry_settings() == {} and await store.pull_time_exclusions() == []
        await store.put_registry_setting("registry-policy", "{}", T0)
        assert await store.add_pull_time_exclusion(USER, T0)
    finally:
        await store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone() == (len(SQLITE_MIGRATIONS),)
    db.close()


async def test_a_postgres_schema_from_before_the_settings_tables_is_migrated(postgres_dsn: str):
    schema = f"settings_{uuid.uuid4().hex[:16]}"
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(f'SET search_path TO "{schema}"')
        await conn.execute(POSTGRES_MIGRATIONS[0])
        await conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        await conn.execute("INSERT INTO schema_version (version) VALUES (1)")
        await conn.execute("INSERT INTO repositories (name, created_at) VALUES ('old/app', 1.5e9)")
        store = PostgresMetadataStore(with_schema(postgres_dsn, schema))
        await store.open()
        try:
            assert await store.get_repository("old/app") is not None
            assert await store.registry_settings() == {}
            assert await store.add_pull_time_exclusion(USER, T0)
            assert await store.pull_time_exclusions() == [(USER, T0)]
        finally:
            await store.close()
        assert await conn.fetchval("SELECT version FROM schema_version") == len(POSTGRES_MIGRATIONS)
    finally:
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()
