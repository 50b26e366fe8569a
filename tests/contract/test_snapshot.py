"""The `Snapshot` contract (`export_rows` / `import_rows`, what `moorage migrate-storage` copies through): a
registry written through the store's API in a local SQLite store comes out, goes into the backend under test,
and comes out of it again equal, row for row; the backend then carries on from the copied ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.errors import Conflict
from storage.factory import open_stores
from storage.metadata import MetadataStore
from storage.records import (
    BackfillProgress,
    BackfillRecord,
    LifecyclePreview,
    NewReplication,
    PullThroughRule,
    RepositoryInit,
    RepositorySettings,
    ScanRecord,
    UploadRecord,
)
from storage.snapshot import CONTENT_TABLES, TABLES, collect
from tests.contract.helpers import digest, manifest

T0 = 1_700_000_000.0
EAST = "us-east-1/111122223333"
ADVISORIES = [
    ("GHSA-abcd", "2024-02-01T00:00:00Z", '{"id": "GHSA-abcd"}'),
    ("CVE-2024-1", "2024-01-01T00:00:00Z", '{"id": "CVE-2024-1", "summary": "caf\u00e9"}'),
]


def scan_of(image: str) -> ScanRecord:
    findings = '[{"name": "CVE-2024-1", "severity": "HIGH"}]'
    return ScanRecord("team/app", image, "COMPLETE", "done", T0 + 15, T0 + 16, T0 + 14, findings, '[["npm", "x"]]')


async def fill(meta: MetadataStore) -> None:
    settings = RepositorySettings("IMMUTABLE_WITH_EXCLUSION", ("latest*",), True, "KMS", "arn:key")
    await meta.create_repository("team/app", T0, settings, {"env": "prod"})
    await meta.set_policy("team/app", '{"Version": "2012-10-17"}')
    await meta.set_lifecycle_policy("team/app", '{"rules": []}')
    await meta.mark_lifecycle_evaluated("team/app", T0 + 5)
    await meta.put_lifecycle_preview("team/app", LifecyclePreview('{"rules": []}', "COMPLETE", T0, [{"a": 1}]))
    layer, config = digest(b"layer"), digest(b"config")
    await meta.link_blob("team/app", layer, 5, T0)
    await meta.link_blob("team/app", config, 6, T0)
    image = manifest("team/app", "one", pushed_at=T0 + 1, blobs=(layer, config), tags=("1.0", "latest"))
    await meta.put_manifest(image)
    await meta.put_manifest(
        manifest("team/app", "sig", pushed_at=T0 + 2, blobs=(layer,), subject=image.digest, artifact_type="x/sig")
    )
    await meta.record_pulls([("team/app", image.digest, T0 + 3)])
    await meta.set_storage_class("team/app", image.digest, "ARCHIVE", T0 + 4)
    await meta.create_rule(PullThroughRule("cache", "http://127.0.0.1:1", created_at=T0, updated_at=T0))
    await meta.ensure_repository("cache/lib/x", T0, RepositoryInit())
    await meta.link_blob("cache/lib/x", layer, 5, T0, upstream="http://127.0.0.1:1 anonymous")
    await meta.set_tag_checked("cache/lib/x", "1", T0 + 7)
    await meta.put_template("team", '{"prefix": "team"}', T0, create=True)
    await meta.note_upstream_failure("http://127.0.0.1:1", T0 + 8)
    await meta.put_value("signing-key/abc", b"\x00pem\xff")
    await meta.put_registry_setting("account/BLOB_MOUNTING", "DISABLED", T0 + 9)
    await meta.add_pull_time_exclusion("arn:aws:iam::123456789012:user/scanner", T0 + 10)
    assert await meta.create_backfill(BackfillRecord("bf-1", EAST, "IN_PROGRESS", T0 + 11))
    queued = [
        NewReplication(EAST, "team/app", image.digest, ("1.0", "latest")),
        NewReplication(EAST, "cache/lib/x", image.digest, (), backfill="bf-1"),
    ]
    assert await meta.enqueue_replications(queued, T0 + 12) == 2
    assert await meta.claim_replication(T0 + 13, T0 + 43, "worker-1") is not None  # a lease, copied as it is
    assert await meta.put_vulnerabilities(ADVISORIES, T0 + 14) == ["GHSA-abcd", "CVE-2024-1"]
    await meta.put_scan(scan_of(image.digest))
    await meta.put_scan(ScanRecord("gone/repo", image.digest, "IN_PROGRESS", "scanning", T0 + 16))
    await meta.create_upload(UploadRecord("u1", "team/app", T0, owner="admin"))  # not part of a snapshot


async def test_a_snapshot_goes_in_and_comes_out_equal(meta: MetadataStore, tmp_path: Path) -> None:
    local = open_stores(tmp_path / "local")
    await local.open()
    try:
        await fill(local.meta)
        rows = await collect(local.meta.export_rows())
    finally:
        await local.close()
    assert {name: len(r) for name, r in rows.items()} == {
        "repositories": 2,
        "blobs": 2,
        "repository_blobs": 3,
        "manifests": 2,
        "manifest_references": 3,
        "tags": 2,
        "repository_tags": 1,
        "pull_through_rules": 1,
        "upstream_checks": 1,
        "creation_templates": 1,
        "lifecycle_previews": 1,
        "upstream_failures": 1,
        "shared_values": 1,
        "registry_settings": 1,
        "pull_time_exclusions": 1,
        "replication_backfills": 1,
        "replication_tasks": 2,
        "vulnerabilities": 2,
        "image_scans": 2,
    }

    async def batches():  # type: ignore[no-untyped-def]
        for table in TABLES:
            yield table.name, rows[table.name]

    counts = await meta.import_rows(batches())
    assert counts == {name: len(r) for name, r in rows.items()}
    assert await collect(meta.export_rows()) == rows
    assert (await meta.row_counts())["manifests"] == 2
    # it carries on: a new repository and manifest take ids after the copied ones
    await meta.create_repository("new/one", T0, RepositorySettings(), {})
    new = await meta.get_repository("new/one")
    assert new is not None and new.id > max(r["id"] for r in rows["repositories"])
    await meta.put_manifest(manifest("new/one", "n", pushed_at=T0))
    images = await meta.list_images("new/one", 0, 10)
    assert images[0].id > max(r["id"] for r in rows["manifests"])
    # what the copied rows say, read through the API
    app = await meta.get_repository("team/app")
    assert app is not None and app.settings.mutability_exclusions == ("latest*",) and app.lifecycle_evaluated_at
    assert await meta.blob_fetched_from(digest(b"layer"), "http://127.0.0.1:1 anonymous")
    assert await meta.resolve_tag("team/app", "latest") == manifest("x", "one", pushed_at=0).digest
    assert await meta.get_value("signing-key/abc") == b"\x00pem\xff"
    assert await meta.registry_settings() == {"account/BLOB_MOUNTING": ("DISABLED", T0 + 9)}
    assert await meta.pull_time_exclusions() == [("arn:aws:iam::123456789012:user/scanner", T0 + 10)]
    assert await meta.get_backfill("bf-1") == BackfillRecord("bf-1", EAST, "IN_PROGRESS", T0 + 11)
    assert await meta.backfill_progress("bf-1") == BackfillProgress(1, 0, 0, ())
    image_digest = manifest("x", "one", pushed_at=0).digest
    leased = (await meta.replication_states("team/app", image_digest))[EAST]
    assert (leased.tags, leased.attempts, leased.updated_at) == (("1.0", "latest"), 1, T0 + 13)
    assert await meta.claim_replication(T0 + 14, T0 + 44, "worker-2") is not None, "the backfill's task"
    assert await meta.claim_replication(T0 + 15, T0 + 45, "worker-2") is None, "the copied lease holds"
    assert await meta.finish_replication(leased.id, "worker-1", "complete", None, T0 + 16, T0 + 16)
    # the queue carries on after the copied ids
    assert await meta.enqueue_replications([NewReplication(EAST, "new/one", image_digest)], T0 + 17) == 1
    assert (await meta.replication_tasks())[-1].id > max(r["id"] for r in rows["replication_tasks"])
    # the vulnerability database and the scans
    assert await meta.vulnerability_records("", 10) == [(id_, text) for id_, _, text in reversed(ADVISORIES)]
    assert await meta.vulnerability_stats() == (2, T0 + 14)
    assert await meta.put_vulnerabilities(ADVISORIES, T0 + 20) == [], "the copied modified times hold"
    assert await meta.get_scans("team/app", [image_digest]) == {image_digest: scan_of(image_digest)}
    assert [(s.repository, s.status) for s in await meta.scans_after("", "", 10)] == [
        ("gone/repo", "IN_PROGRESS"),
        ("team/app", "COMPLETE"),
    ]


async def test_an_import_over_rows_that_are_there_changes_nothing(meta: MetadataStore) -> None:
    await meta.create_repository("here", T0, RepositorySettings(), {})
    before = await collect(meta.export_rows())

    async def clash():  # type: ignore[no-untyped-def]
        yield "shared_values", [{"name": "k", "value": b"v"}]
        yield "repositories", before["repositories"]

    with pytest.raises(Conflict):
        await meta.import_rows(clash())
    assert await collect(meta.export_rows()) == before  # one transaction: the shared value is not there either
    counts = await meta.row_counts()
    assert {name: counts[name] for name in CONTENT_TABLES} == {name: len(before[name]) for name in CONTENT_TABLES}
