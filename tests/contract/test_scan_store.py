"""Vulnerability records and image scans (`storage.metadata.ScanStore`), on every backend: records inserted, replaced
only by a later `modified`, the changed ids answered in the order given, paged by id in byte order, counted; an
OSV export's worth of records in one call; scans put, replaced, read, paged across repositories and forgotten;
and the migrations that add the tables to a data dir or schema written before them."""

from __future__ import annotations

import json
import random
import sqlite3
import time
import uuid
from pathlib import Path

import asyncpg

from storage.metadata import MetadataStore
from storage.postgres import PostgresMetadataStore
from storage.postgres.schema import MIGRATIONS as POSTGRES_MIGRATIONS
from storage.records import ScanRecord
from storage.sqlite import SQLiteMetadataStore
from storage.sqlite.schema import MIGRATIONS as SQLITE_MIGRATIONS
from tests.contract.helpers import digest
from tests.services.postgres import with_schema

T0 = 1_700_000_000.0
JAN, FEB, MAR = "2024-01-05T00:00:00Z", "2024-02-01T12:00:00Z", "2024-03-01T00:00:00.5Z"
X, Y, Z = digest(b"x"), digest(b"y"), digest(b"z")
D1, D2, D3 = sorted([X, Y, Z])  # in byte order


def osv(id_: str, modified: str, summary: str = "") -> tuple[str, str, str]:
    """A vulnerability record as `put_vulnerabilities` takes it: (id, modified, JSON text)."""
    return id_, modified, json.dumps({"id": id_, "modified": modified, "summary": summary or f"{id_} at {modified}"})


def byte_order(ids: list[str]) -> list[str]:
    return sorted(ids, key=lambda id_: id_.encode())


async def all_records(meta: MetadataStore, limit: int = 1000) -> dict[str, str]:
    """Every stored record by id, paged through `vulnerability_records` (checking the pages come in byte order)."""
    out: dict[str, str] = {}
    after = ""
    while page := await meta.vulnerability_records(after, limit):
        assert len(page) <= limit
        assert [id_ for id_, _ in page] == byte_order([id_ for id_, _ in page]), "a page in byte order"
        assert page[0][0].encode() > after.encode()
        out.update(page)
        after = page[-1][0]
    return out


def scan(repository: str, image: str, status: str = "COMPLETE", at: float = T0, **fields: object) -> ScanRecord:
    return ScanRecord(repository, image, status, f"{status.lower()} at {at}", at, **fields)  # type: ignore[arg-type]


# -- the vulnerability database ----------------------------------------------------------------------------


async def test_records_are_inserted_replaced_only_when_later_and_the_changed_ids_answered_in_order(
    meta: MetadataStore,
):
    assert await meta.vulnerability_stats() == (0, None)
    assert await meta.put_vulnerabilities([], T0) == []
    first = [osv("GHSA-abcd", JAN), osv("CVE-2024-1", JAN), osv("DSA-5000-1", FEB)]
    assert await meta.put_vulnerabilities(first, T0) == ["GHSA-abcd", "CVE-2024-1", "DSA-5000-1"], "order given"
    assert await all_records(meta) == {id_: text for id_, _, text in first}
    assert await meta.vulnerability_stats() == (3, T0)

    later = osv("CVE-2024-1", FEB, "fixed in 1.2")
    second = [
        osv("DSA-5000-1", JAN, "older: kept"),
        later,
        osv("GHSA-abcd", JAN, "the same modified: kept"),
        osv("a-lowercase", JAN),  # new
    ]
    assert await meta.put_vulnerabilities(second, T0 + 10) == ["CVE-2024-1", "a-lowercase"]
    stored = await all_records(meta)
    assert stored == {
        "CVE-2024-1": later[2],
        "DSA-5000-1": first[2][2],
        "GHSA-abcd": first[0][2],
        "a-lowercase": second[3][2],
    }
    assert await meta.vulnerability_stats() == (4, T0 + 10)

    # a later one again
    assert await meta.put_vulnerabilities([osv("GHSA-abcd", MAR, "march")], T0 + 20) == ["GHSA-abcd"]
    assert json.loads((await all_records(meta))["GHSA-abcd"])["summary"] == "march"
    # nothing changes: nothing is stored, and the last store time stays
    assert await meta.put_vulnerabilities([osv("GHSA-abcd", FEB), osv("CVE-2024-1", JAN)], T0 + 30) == []
    assert await meta.vulnerability_stats() == (4, T0 + 20)
    assert json.loads((await all_records(meta))["GHSA-abcd"])["summary"] == "march"


async def test_an_id_given_more_than_once_counts_once_with_its_latest_record(meta: MetadataStore):
    batch = [osv("B", JAN, "b"), osv("A", FEB, "a feb"), osv("A", MAR, "a mar"), osv("A", JAN, "a jan")]
    assert await meta.put_vulnerabilities(batch, T0) == ["B", "A"], "once each, where first given"
    assert await all_records(meta) == {"A": batch[2][2], "B": batch[0][2]}
    assert await meta.vulnerability_stats() == (2, T0)
    # stored A (March): only the later one of two changes it; the first of equals wins
    again = [
        osv("A", JAN, "a jan"),
        osv("C", JAN, "c"),
        osv("A", "2024-04-01T00:00:00Z", "apr 1"),
        osv("A", "2024-04-01T00:00:00Z", "apr 2"),
    ]
    assert await meta.put_vulnerabilities(again, T0 + 1) == ["A", "C"]
    assert json.loads((await all_records(meta))["A"])["summary"] == "apr 1"
    assert await meta.put_vulnerabilities([osv("B", JAN, "x"), osv("B", JAN, "y")], T0 + 2) == []


async def test_records_page_by_id_in_byte_order(meta: MetadataStore):
    ids = ["a-lowercase", "GHSA-abcd", "DSA-5000-1", "CVE-2024-1", "CVE-2024-10", "CVE-2024-2", "Z", "é-accent", "_x"]
    await meta.put_vulnerabilities([osv(id_, JAN) for id_ in ids], T0)
    expected = [
        "CVE-2024-1",
        "CVE-2024-10",
        "CVE-2024-2",
        "DSA-5000-1",
        "GHSA-abcd",
        "Z",
        "_x",
        "a-lowercase",
        "é-accent",
    ]
    assert byte_order(ids) == expected  # uppercase before "_" before lowercase, "10" before "2", é (0xc3) last
    assert [id_ for id_, _ in await meta.vulnerability_records("", 100)] == expected
    pages = []
    after = ""
    while page := await meta.vulnerability_records(after, 2):
        pages.append([id_ for id_, _ in page])
        after = page[-1][0]
    assert pages == [expected[i : i + 2] for i in range(0, len(expected), 2)]
    assert [id_ for id_, _ in await meta.vulnerability_records("CVE-2024-1", 3)] == expected[1:4], "strictly after"
    assert [id_ for id_, _ in await meta.vulnerability_records("D", 2)] == ["DSA-5000-1", "GHSA-abcd"], "not an id"
    assert await meta.vulnerability_records("é-accent", 10) == []
    assert dict(await meta.vulnerability_records("Z", 1)) == {"_x": osv("_x", JAN)[2]}


async def test_an_osv_export_goes_in_at_once(meta: MetadataStore):
    """50,000 records of about 2 KB in one call, then the same again with a third of them updated and a few new
    ones: the changed ids come back in the order given, and every record reads back as given."""
    rng = random.Random(7)
    prefixes = ["CVE-2024-", "GHSA-", "DSA-", "PYSEC-2024-", "go-", "RUSTSEC-2024-"]
    ids = [f"{prefixes[i % len(prefixes)]}{i}" for i in range(50_000)]
    rng.shuffle(ids)
    padding = "x" * 1900
    first = [(id_, JAN, f'{{"id": "{id_}", "modified": "{JAN}", "details": "{padding}"}}') for id_ in ids]
    started = time.perf_counter()
    assert await meta.put_vulnerabilities(first, T0) == ids
    took = time.perf_counter() - started
    assert await meta.vulnerability_stats() == (50_000, T0)

    second = []
    changed = []
    for i, (id_, _, _) in enumerate(first):
        if i % 3 == 0:
            second.append((id_, FEB, f'{{"id": "{id_}", "modified": "{FEB}", "details": "{padding}"}}'))
            changed.append(id_)
        else:
            second.append(first[i])
        if i % 10_000 == 5:
            new = f"NEW-{i}"
            second.append((new, JAN, f'{{"id": "{new}"}}'))
            changed.append(new)
    started = time.perf_counter()
    assert await meta.put_vulnerabilities(second, T0 + 1) == changed
    took_again = time.perf_counter() - started
    print(
        f"\nput_vulnerabilities: 50,000 new records in {took:.2f}s; {len(second)} records, {len(changed)} changed, "
        f"in {took_again:.2f}s"
    )
    assert await meta.vulnerability_stats() == (50_005, T0 + 1)
    stored = await all_records(meta, limit=10_000)
    assert list(stored) == byte_order([id_ for id_, _, _ in second])
    assert stored == {id_: text for id_, _, text in second}


# -- scans -------------------------------------------------------------------------------------------------


async def test_scans_are_put_replaced_read_and_deleted(meta: MetadataStore):
    assert await meta.get_scans("team/app", [X, Y]) == {}
    running = scan("team/app", X, "IN_PROGRESS")
    await meta.put_scan(running)
    assert await meta.get_scans("team/app", [X, Y]) == {X: running}
    done = scan(
        "team/app",
        X,
        "COMPLETE",
        T0 + 5,
        completed_at=T0 + 9,
        database_updated_at=T0 - 100,
        findings='[{"name": "CVE-2024-1", "severity": "HIGH"}]',
        packages='[["Debian:12", "openssl"]]',
    )
    await meta.put_scan(done)
    await meta.put_scan(scan("team/app", Y, "FAILED", T0 + 1))
    await meta.put_scan(scan("team/other", X, "UNSUPPORTED_IMAGE", T0 + 2))  # same digest, another repository
    assert await meta.get_scans("team/app", [X, Y, Z, X]) == {X: done, Y: scan("team/app", Y, "FAILED", T0 + 1)}
    assert await meta.get_scans("team/app", []) == {}
    assert await meta.get_scans("team/other", [X]) == {X: scan("team/other", X, "UNSUPPORTED_IMAGE", T0 + 2)}
    assert await meta.get_scans("nope", [X]) == {}

    assert await meta.delete_scans("team/app", [X, Z, X]) == 1, "once, and only those there were"
    assert await meta.get_scans("team/app", [X, Y]) == {Y: scan("team/app", Y, "FAILED", T0 + 1)}
    assert await meta.get_scans("team/other", [X]) != {}, "another repository's scan of the digest stays"
    assert await meta.delete_scans("team/app", []) == 0
    assert await meta.delete_scans("team/app", [X]) == 0
    assert await meta.delete_scans("team/app", [Y]) == 1
    assert await meta.get_scans("team/app", [X, Y]) == {}


async def test_many_scans_are_read_and_deleted_at_once(meta: MetadataStore):
    images = [digest(str(i).encode()) for i in range(1200)]  # more than one statement's parameters
    for i, image in enumerate(images):
        await meta.put_scan(scan("big", image, at=T0 + i))
    found = await meta.get_scans("big", images)
    assert len(found) == 1200 and found[images[700]].started_at == T0 + 700
    assert await meta.delete_scans("big", images[:1100] + images[:10]) == 1100
    assert sorted(await meta.get_scans("big", images)) == sorted(images[1100:])


async def test_scans_page_by_repository_then_digest_in_byte_order(meta: MetadataStore):
    put = [
        ("team/app", D2),
        ("a", D3),
        ("team/app", D1),
        ("B", D1),
        ("team-app", D1),
        ("a/b", D1),
        ("a", D1),
        ("team/app", D3),
    ]
    for i, (repository, image) in enumerate(put):
        await meta.put_scan(scan(repository, image, at=T0 + i))
    # bytewise: "B" < "a" < "a/b" < "team-app" < "team/app" ("-" 0x2d before "/" 0x2f)
    expected = sorted(put, key=lambda pair: (pair[0].encode(), pair[1].encode()))
    assert [p[0] for p in expected] == ["B", "a", "a", "a/b", "team-app", "team/app", "team/app", "team/app"]
    every = await meta.scans_after("", "", 100)
    assert [(s.repository, s.digest) for s in every] == expected
    assert every[0] == scan("B", D1, at=T0 + 3)

    pages = []
    cursor = ("", "")
    while page := await meta.scans_after(*cursor, 3):
        pages.append([(s.repository, s.digest) for s in page])
        cursor = (page[-1].repository, page[-1].digest)
    assert pages == [expected[0:3], expected[3:6], expected[6:8]]
    assert [(s.repository, s.digest) for s in await meta.scans_after("a", D1, 2)] == [("a", D3), ("a/b", D1)]
    assert [(s.repository, s.digest) for s in await meta.scans_after("a/b", "", 1)] == [("a/b", D1)]
    assert await meta.scans_after("team/app", D3, 10) == []


# -- migrations --------------------------------------------------------------------------------------------


async def test_a_sqlite_data_dir_from_before_scanning_is_migrated(tmp_path: Path):
    """A database at schema version 11 keeps its rows and gains the (empty) scanning tables on open."""
    path = tmp_path / "moorage.db"
    db = sqlite3.connect(path)
    for script in SQLITE_MIGRATIONS[:11]:
        db.executescript(script)
    db.execute("PRAGMA user_version = 11")
    db.execute("INSERT INTO registry_settings (name, value, updated_at) VALUES ('scanning', '{}', 1.5e9)")
    db.commit()
    assert db.execute(
        "SELECT count(*) FROM sqlite_master WHERE name IN ('vulnerabilities', 'image_scans')"
    ).fetchone() == (0,)
    db.close()
    store = SQLiteMetadataStore(path)
    await store.open()
    try:
        assert await store.registry_settings() == {"scanning": ("{}", 1.5e9)}
        assert await store.vulnerability_stats() == (0, None)
        assert await store.put_vulnerabilities([osv("CVE-2024-1", JAN)], T0) == ["CVE-2024-1"]
        await store.put_scan(scan("team/app", X))
        assert await store.get_scans("team/app", [X]) == {X: scan("team/app", X)}
    finally:
        await store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone() == (len(SQLITE_MIGRATIONS),) == (12,)
    names = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    assert {"vulnerabilities", "image_scans", "vulnerabilities_by_stored_at"} <= names
    db.close()


async def test_a_postgres_schema_from_before_scanning_is_migrated(postgres_dsn: str):
    schema = f"scans_{uuid.uuid4().hex[:16]}"
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(f'SET search_path TO "{schema}"')
        for script in POSTGRES_MIGRATIONS[:3]:
            await conn.execute(script)
        await conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        await conn.execute("INSERT INTO schema_version (version) VALUES (3)")
        await conn.execute("INSERT INTO registry_settings (name, value, updated_at) VALUES ('scanning', '{}', 1)")
        assert await conn.fetchval("SELECT to_regclass('vulnerabilities')") is None
        store = PostgresMetadataStore(with_schema(postgres_dsn, schema))
        await store.open()
        try:
            assert await store.registry_settings() == {"scanning": ("{}", 1.0)}
            assert await store.vulnerability_stats() == (0, None)
            assert await store.put_vulnerabilities([osv("CVE-2024-1", JAN)], T0) == ["CVE-2024-1"]
            await store.put_scan(scan("team/app", X))
            assert await store.get_scans("team/app", [X]) == {X: scan("team/app", X)}
        finally:
            await store.close()
        assert await conn.fetchval("SELECT version FROM schema_version") == len(POSTGRES_MIGRATIONS) == 4
        assert await conn.fetchval("SELECT to_regclass('image_scans')") is not None
        # keys (and `modified`) sort and compare bytewise whatever the database's locale
        collations = await conn.fetch(
            "SELECT table_name, column_name, collation_name FROM information_schema.columns "
            "WHERE table_schema = $1 AND table_name IN ('vulnerabilities', 'image_scans') "
            "AND column_name IN ('id', 'modified', 'repository', 'digest')",
            schema,
        )
        assert {(r["table_name"], r["column_name"]): r["collation_name"] for r in collations} == {
            ("vulnerabilities", "id"): "C",
            ("vulnerabilities", "modified"): "C",
            ("image_scans", "repository"): "C",
            ("image_scans", "digest"): "C",
        }
    finally:
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()
