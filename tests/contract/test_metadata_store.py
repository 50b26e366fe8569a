"""The MetadataStore contract (`storage.metadata`): repositories, blob links, manifests and tags, pull-through
rules, lifecycle state, templates, upload sessions, statistics. Garbage collection's claims: test_gc_claims.py."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from storage.errors import (
    BlobNotFound,
    Conflict,
    RepositoryExists,
    RepositoryNotEmpty,
    StorageError,
    TagConflict,
)
from storage.metadata import MetadataStore
from storage.records import (
    LifecyclePreview,
    ManifestRecord,
    Page,
    PullThroughRule,
    RepositoryInit,
    RepositorySettings,
    UploadRecord,
)
from tests.contract.helpers import INDEX_MEDIA_TYPE, MEDIA_TYPE, digest, manifest

T0 = 1_700_000_000.0
CONFIG, LAYER, OTHER = digest(b"config"), digest(b"layer"), digest(b"other layer")
SIZES = {CONFIG: 100, LAYER: 1000, OTHER: 2000}
CUSTOM = RepositorySettings("IMMUTABLE", ("dev-*", "latest"), True, "KMS", "arn:aws:kms:us-east-1:1:key/k")


async def repository(meta: MetadataStore, name: str, *blobs: str) -> None:
    """A repository with `blobs` linked (sizes from SIZES)."""
    await meta.create_repository(name, T0, RepositorySettings(), {})
    for d in blobs:
        await meta.link_blob(name, d, SIZES[d], T0)


# -- repositories -----------------------------------------------------------------------------------------


async def test_create_repository_stores_settings_and_tags_once(meta: MetadataStore):
    assert await meta.get_repository("team/app") is None, "a repository never created is None"
    record = await meta.create_repository("team/app", T0, CUSTOM, {"env": "prod", "team": "a"})
    assert (record.name, record.created_at, record.settings) == ("team/app", T0, CUSTOM)
    assert (record.policy, record.lifecycle_policy, record.lifecycle_evaluated_at) == (None, None, None)
    assert await meta.get_repository("team/app") == record, "get_repository returns what create returned"
    assert await meta.resource_tags("team/app") == {"env": "prod", "team": "a"}
    with pytest.raises(RepositoryExists):
        await meta.create_repository("team/app", T0 + 1, RepositorySettings(), {"other": "x"})
    assert await meta.get_repository("team/app") == record, "a refused create changes nothing"
    assert await meta.resource_tags("team/app") == {"env": "prod", "team": "a"}, "nor the resource tags"


async def test_ensure_repository_creates_with_init_or_returns_the_existing_one(meta: MetadataStore):
    init = RepositoryInit(CUSTOM, policy='{"Statement":[]}', lifecycle_policy='{"rules":[]}', tags=(("k", "v"),))
    made = await meta.ensure_repository("cache/lib", T0, init)
    assert (made.name, made.created_at, made.settings) == ("cache/lib", T0, CUSTOM)
    assert (made.policy, made.lifecycle_policy) == (init.policy, init.lifecycle_policy), "init's policies apply"
    assert await meta.resource_tags("cache/lib") == {"k": "v"}, "init's resource tags apply"
    again = await meta.ensure_repository("cache/lib", T0 + 5, RepositoryInit(tags=(("k", "changed"),)))
    assert again == made, "ensure_repository of an existing repository returns it unchanged"
    assert await meta.resource_tags("cache/lib") == {"k": "v"}
    plain = await meta.ensure_repository("plain", T0)
    assert plain.settings == RepositorySettings(), "no init: the default settings"


@pytest.mark.parametrize(
    ("images", "force", "outcome"),
    [
        pytest.param(False, False, "deleted", id="empty"),
        pytest.param(False, True, "deleted", id="empty-forced"),
        pytest.param(True, False, "not empty", id="with-images"),
        pytest.param(True, True, "deleted", id="with-images-forced"),
    ],
)
async def test_delete_repository(meta: MetadataStore, images: bool, force: bool, outcome: str):
    await repository(meta, "r", LAYER)
    await meta.tag_resource("r", {"k": "v"})
    await meta.set_tag_checked("r", "latest", T0)
    await meta.put_lifecycle_preview("r", LifecyclePreview("{}", "IN_PROGRESS", T0))
    write = manifest("r", "m", pushed_at=T0, blobs=(LAYER,), tags=("latest",))
    if images:
        await meta.put_manifest(write)
    if outcome == "not empty":
        with pytest.raises(RepositoryNotEmpty):
            await meta.delete_repository("r", force)
        assert await meta.get_repository("r") is not None, "a refused delete keeps the repository"
        assert await meta.resolve_tag("r", "latest") == write.digest, "... and its images"
        return
    deleted = await meta.delete_repository("r", force)
    assert deleted is not None and deleted.name == "r", "delete_repository returns the deleted repository"
    assert await meta.get_repository("r") is None
    assert (await meta.list_repositories(None, 10)).items == []
    assert await meta.repositories_with_blob(LAYER) == [], "its blob links went with it"
    # A repository created again under the name starts empty: nothing of the old one shows through.
    await meta.create_repository("r", T0 + 1, RepositorySettings(), {})
    assert await meta.get_manifest("r", write.digest) is None
    assert await meta.resolve_tag("r", "latest") is None
    assert await meta.linked_blobs("r", [LAYER]) == set()
    assert await meta.resource_tags("r") == {}
    assert await meta.tag_checked_at("r", "latest") is None
    assert await meta.get_lifecycle_preview("r") is None


async def test_delete_of_a_missing_repository_is_none(meta: MetadataStore):
    assert await meta.delete_repository("nope", True) is None


async def test_settings_and_policies_update(meta: MetadataStore):
    await meta.create_repository("r", T0, RepositorySettings(), {})
    updated = await meta.update_settings("r", CUSTOM)
    assert updated is not None and updated.settings == CUSTOM, "update_settings returns the new settings"
    assert (await meta.get_repository("r")).settings == CUSTOM  # type: ignore[union-attr]
    with_policy = await meta.set_policy("r", '{"Version":"2012-10-17"}')
    assert with_policy is not None and with_policy.policy == '{"Version":"2012-10-17"}'
    assert with_policy.settings == CUSTOM, "setting the policy keeps the settings"
    cleared = await meta.set_policy("r", None)
    assert cleared is not None and cleared.policy is None, "a None policy clears it"
    lifecycle = await meta.set_lifecycle_policy("r", '{"rules":[]}')
    assert lifecycle is not None and lifecycle.lifecycle_policy == '{"rules":[]}'
    await meta.mark_lifecycle_evaluated("r", T0 + 7)
    assert (await meta.get_repository("r")).lifecycle_evaluated_at == T0 + 7  # type: ignore[union-attr]
    for update in (
        meta.update_settings("nope", CUSTOM),
        meta.set_policy("nope", "{}"),
        meta.set_lifecycle_policy("nope", "{}"),
    ):
        assert await update is None, "updating a missing repository returns None"
    assert await meta.get_repository("nope") is None, "... and creates nothing"


async def test_list_and_describe_repositories_page_by_name(meta: MetadataStore):
    names = ["alpha", "beta/one", "beta/two", "gamma"]
    for name in reversed(names):
        await meta.create_repository(name, T0, RepositorySettings(), {})
    pages = [
        (None, 2, Page(["alpha", "beta/one"], True)),
        ("beta/one", 2, Page(["beta/two", "gamma"], False)),
        ("beta/one", 5, Page(["beta/two", "gamma"], False)),
        (None, 4, Page(names, False)),
        (None, 3, Page(names[:3], True)),
        ("b", 2, Page(["beta/one", "beta/two"], True)),  # `last` need not be a repository
        ("gamma", 2, Page([], False)),
    ]
    for last, limit, expected in pages:
        assert await meta.list_repositories(last, limit) == expected, f"list_repositories({last!r}, {limit})"
    described = await meta.describe_repositories("alpha", 2)
    assert [r.name for r in described] == ["beta/one", "beta/two"], "describe_repositories pages by name too"


async def test_concurrent_ensure_repository_calls_agree(meta: MetadataStore):
    records = await asyncio.gather(*(meta.ensure_repository("r", T0 + i) for i in range(5)))
    assert len({record.id for record in records}) == 1, "concurrent ensures of one name make one repository"
    assert (await meta.list_repositories(None, 10)).items == ["r"]


async def test_resource_tags_are_set_overwritten_and_removed(meta: MetadataStore):
    await meta.create_repository("r", T0, RepositorySettings(), {"a": "1"})
    await meta.tag_resource("r", {"a": "2", "b": "3"})
    assert await meta.resource_tags("r") == {"a": "2", "b": "3"}, "tag_resource adds and overwrites"
    await meta.untag_resource("r", ["a", "not-there"])
    assert await meta.resource_tags("r") == {"b": "3"}, "untag_resource removes the keys named (others ignored)"
    assert await meta.resource_tags("nope") == {}


# -- blob links -------------------------------------------------------------------------------------------


async def test_blob_links_are_per_repository(meta: MetadataStore):
    for name in ("r1", "r2"):
        await meta.create_repository(name, T0, RepositorySettings(), {})
    assert await meta.blob_size(LAYER) is None, "a blob linked nowhere has no size"
    await meta.link_blob("r1", LAYER, 1000, T0)
    await meta.link_blob("r1", LAYER, 1000, T0 + 1)  # linking again is fine
    assert await meta.linked_blob_size("r1", LAYER) == 1000
    assert await meta.linked_blob_size("r2", LAYER) is None, "a link is per repository"
    assert await meta.linked_blobs("r1", [LAYER, OTHER]) == {LAYER}
    assert await meta.linked_blobs("r1", []) == set()
    assert await meta.blob_size(LAYER) == 1000, "blob_size: linked in any repository"
    assert await meta.repositories_with_blob(LAYER) == ["r1"]
    await meta.link_blob("r2", LAYER, 1000, T0)
    assert sorted(await meta.repositories_with_blob(LAYER)) == ["r1", "r2"]
    assert len(await meta.repositories_with_blob(LAYER, limit=1)) == 1, "repositories_with_blob honours limit"
    assert await meta.unlink_blob("r1", LAYER) is True, "unlinking a link returns True"
    assert await meta.unlink_blob("r1", LAYER) is False, "unlinking it again returns False"
    assert await meta.linked_blob_size("r1", LAYER) is None
    assert await meta.blob_size(LAYER) == 1000, "still linked in r2"
    assert await meta.unlink_blob("r2", LAYER) is True
    assert await meta.blob_size(LAYER) is None, "linked nowhere any more"
    assert await meta.repositories_with_blob(LAYER) == []


async def test_a_link_records_the_upstream_that_proved_the_bytes(meta: MetadataStore):
    upstream, elsewhere = "https://registry-1.docker.io|", "https://ghcr.io|"
    for name in ("cache/a", "local"):
        await meta.create_repository(name, T0, RepositorySettings(), {})
    assert await meta.blob_fetched_from(LAYER, upstream) is False
    await meta.link_blob("cache/a", LAYER, 1000, T0, upstream=upstream)
    await meta.link_blob("local", OTHER, 2000, T0)
    assert await meta.blob_fetched_from(LAYER, upstream) is True, "the upstream that sent the bytes"
    assert await meta.blob_fetched_from(LAYER, elsewhere) is False, "only that upstream"
    assert await meta.blob_fetched_from(OTHER, upstream) is False, "only that blob"
    await meta.link_blob("local", LAYER, 1000, T0)
    assert await meta.blob_fetched_from(LAYER, upstream) is True, "a push of the same blob elsewhere keeps it"
    assert await meta.blob_fetched_from(LAYER, elsewhere) is False


# -- manifests and tags -----------------------------------------------------------------------------------


async def test_put_manifest_stores_it_with_its_tags_and_blobs(meta: MetadataStore):
    await repository(meta, "r", CONFIG, LAYER)
    write = manifest(
        "r",
        "m1",
        pushed_at=T0 + 1,
        blobs=(CONFIG, LAYER),
        tags=("v1", "latest"),
        annotations={"org.opencontainers.image.created": "now"},
        image_size=1100,
        config_media_type="application/vnd.oci.image.config.v1+json",
    )
    outcome = await meta.put_manifest(write)
    assert outcome.created and not outcome.restored, "a new manifest is created"
    assert sorted(outcome.moved_tags) == ["latest", "v1"], "both tags moved to it"
    assert await meta.get_manifest("r", write.digest) == ManifestRecord(
        "r", write.digest, MEDIA_TYPE, len(write.body), None, None, write.annotations, T0 + 1, write.body
    )
    for tag in ("v1", "latest"):
        assert await meta.resolve_tag("r", tag) == write.digest, f"{tag} resolves to the manifest"
    assert await meta.resolve_tag("r", "v2") is None
    assert await meta.existing_manifests("r", [write.digest, digest(b"nope")]) == {write.digest}
    assert sorted(await meta.manifest_blobs("r", write.digest)) == sorted([(CONFIG, 100), (LAYER, 1000)])
    assert await meta.blob_referenced("r", LAYER) is True
    assert await meta.blob_referenced("r", OTHER) is False
    again = await meta.put_manifest(write)
    assert (again.created, again.moved_tags) == (False, ()), "pushing it again creates and moves nothing"
    assert await meta.get_manifest("other", write.digest) is None, "a manifest is per repository"


async def test_a_tag_moves_to_the_manifest_pushed_with_it(meta: MetadataStore):
    await repository(meta, "r", LAYER)
    first = manifest("r", "first", pushed_at=T0, blobs=(LAYER,), tags=("v1", "latest"))
    second = manifest("r", "second", pushed_at=T0 + 1, blobs=(LAYER,), tags=("latest",))
    await meta.put_manifest(first)
    outcome = await meta.put_manifest(second)
    assert outcome.moved_tags == ("latest",), "only the tag that pointed elsewhere moved"
    assert await meta.resolve_tag("r", "latest") == second.digest
    assert await meta.resolve_tag("r", "v1") == first.digest
    images = await meta.images_by_digest("r", [first.digest, second.digest])
    assert images[first.digest].tags == ("v1",), "the old manifest lost the moved tag"
    assert images[second.digest].tags == ("latest",)


async def test_list_tags_pages_by_name(meta: MetadataStore):
    await repository(meta, "r")
    await meta.put_manifest(manifest("r", "a", pushed_at=T0, tags=("d", "b")))
    await meta.put_manifest(manifest("r", "b", pushed_at=T0, tags=("a", "c")))
    pages = [
        (None, 2, Page(["a", "b"], True)),
        ("b", 2, Page(["c", "d"], False)),
        (None, 4, Page(["a", "b", "c", "d"], False)),
        ("d", 2, Page([], False)),
    ]
    for last, limit, expected in pages:
        assert await meta.list_tags("r", last, limit) == expected, f"list_tags({last!r}, {limit})"
    assert await meta.list_tags("nope", None, 10) == Page([], False)


@pytest.mark.parametrize(
    ("protected", "pushed_tags", "conflict"),
    [
        pytest.param(("v1",), ("v1", "new"), "v1", id="protected-tag-points-elsewhere"),
        pytest.param(("v1", "v2"), ("v2", "v1"), "v1", id="second-protected-tag-conflicts"),
        pytest.param(("new",), ("new",), None, id="protected-tag-not-there-yet"),
        pytest.param((), ("v1",), None, id="unprotected-tag-moves"),
    ],
)
async def test_a_protected_tag_never_moves(
    meta: MetadataStore, protected: tuple[str, ...], pushed_tags: tuple[str, ...], conflict: str | None
):
    await repository(meta, "r", LAYER)
    old = manifest("r", "old", pushed_at=T0, blobs=(LAYER,), tags=("v1",))
    await meta.put_manifest(old)
    new = manifest("r", "new", pushed_at=T0 + 1, blobs=(LAYER,), tags=pushed_tags, protected_tags=protected)
    if conflict is None:
        await meta.put_manifest(new)
        for tag in pushed_tags:
            assert await meta.resolve_tag("r", tag) == new.digest
        return
    with pytest.raises(TagConflict) as raised:
        await meta.put_manifest(new)
    assert (raised.value.tag, raised.value.digest) == (conflict, old.digest), "TagConflict names tag and digest"
    assert await meta.get_manifest("r", new.digest) is None, "a refused push writes no manifest"
    assert await meta.resolve_tag("r", "v1") == old.digest, "the protected tag stays"
    for tag in set(pushed_tags) - {"v1"}:
        assert await meta.resolve_tag("r", tag) is None, f"tag {tag} of the refused push was not written"


async def test_a_protected_tag_may_be_pushed_again_with_its_own_manifest(meta: MetadataStore):
    await repository(meta, "r")
    write = manifest("r", "m", pushed_at=T0, tags=("v1",))
    await meta.put_manifest(write)
    outcome = await meta.put_manifest(manifest("r", "m", pushed_at=T0 + 1, tags=("v1",), protected_tags=("v1",)))
    assert (outcome.created, outcome.moved_tags) == (False, ()), "re-pushing a protected tag's manifest is fine"


@pytest.mark.parametrize("where", ["not linked anywhere", "linked in another repository"])
async def test_a_manifest_whose_required_blob_is_not_linked_writes_nothing(meta: MetadataStore, where: str):
    await repository(meta, "r", CONFIG)
    await repository(meta, "other", *([LAYER] if where == "linked in another repository" else []))
    write = manifest("r", "m", pushed_at=T0, blobs=(CONFIG, LAYER), tags=("latest",))
    with pytest.raises(BlobNotFound):
        await meta.put_manifest(write)
    assert await meta.get_manifest("r", write.digest) is None, "no manifest"
    assert await meta.resolve_tag("r", "latest") is None, "no tag"
    assert await meta.blob_reference_counts([CONFIG, LAYER]) == {}, "no references"


async def test_put_manifest_can_create_its_repository_in_the_same_write(meta: MetadataStore):
    init = RepositoryInit(CUSTOM, policy='{"Statement":[]}', lifecycle_policy='{"rules":[]}', tags=(("k", "v"),))
    write = manifest("cache/library/alpine", "m", pushed_at=T0, tags=("3.20",), create=init)
    outcome = await meta.put_manifest(write)
    assert outcome.created
    repo = await meta.get_repository("cache/library/alpine")
    assert repo is not None, "the repository appears with its first manifest"
    assert (repo.created_at, repo.settings, repo.policy, repo.lifecycle_policy) == (
        T0,
        CUSTOM,
        init.policy,
        init.lifecycle_policy,
    ), "the repository starts with the init's settings and policies, created at the push"
    assert await meta.resource_tags("cache/library/alpine") == {"k": "v"}
    assert await meta.resolve_tag("cache/library/alpine", "3.20") == write.digest


async def test_put_manifest_create_keeps_an_existing_repositorys_settings(meta: MetadataStore):
    await meta.create_repository("r", T0, RepositorySettings(), {})
    await meta.put_manifest(manifest("r", "m", pushed_at=T0 + 1, create=RepositoryInit(CUSTOM)))
    repo = await meta.get_repository("r")
    assert repo is not None and repo.settings == RepositorySettings(), "create only applies to a new repository"
    assert repo.created_at == T0


async def test_a_failed_put_manifest_does_not_leave_the_repository_it_would_create(meta: MetadataStore):
    write = manifest("cache/x", "m", pushed_at=T0, blobs=(LAYER,), create=RepositoryInit())
    with pytest.raises(BlobNotFound):
        await meta.put_manifest(write)
    assert await meta.get_repository("cache/x") is None, "a failed write creates no (empty) repository"


async def test_writes_into_a_missing_repository_fail_and_leave_nothing(meta: MetadataStore):
    with pytest.raises(StorageError):
        await meta.put_manifest(manifest("nope", "m", pushed_at=T0))
    with pytest.raises(StorageError):
        await meta.link_blob("nope", LAYER, 1000, T0)
    assert await meta.get_repository("nope") is None
    assert await meta.known_blobs([LAYER]) == set(), "a failed link leaves no blob row behind"


@pytest.mark.parametrize(
    ("lookup", "empty"),
    [
        pytest.param(lambda meta: meta.linked_blobs("r", []), set(), id="linked_blobs"),
        pytest.param(lambda meta: meta.existing_manifests("r", []), set(), id="existing_manifests"),
        pytest.param(lambda meta: meta.images_by_digest("r", []), {}, id="images_by_digest"),
        pytest.param(lambda meta: meta.parents_of("r", []), {}, id="parents_of"),
        pytest.param(lambda meta: meta.blob_reference_counts([]), {}, id="blob_reference_counts"),
        pytest.param(lambda meta: meta.known_blobs([]), set(), id="known_blobs"),
        pytest.param(lambda meta: meta.upstream_failed_at([]), None, id="upstream_failed_at"),
    ],
)
async def test_batch_lookups_of_nothing_find_nothing(
    meta: MetadataStore, lookup: Callable[[MetadataStore], Awaitable[object]], empty: object
):
    await repository(meta, "r", LAYER)
    await meta.put_manifest(manifest("r", "m", pushed_at=T0, blobs=(LAYER,)))
    await meta.note_upstream_failure("https://example", T0)
    assert await lookup(meta) == empty, "an empty batch is a valid question with an empty answer"


async def test_delete_manifest_returns_its_tags_and_removes_its_references(meta: MetadataStore):
    await repository(meta, "r", LAYER)
    write = manifest("r", "m", pushed_at=T0, blobs=(LAYER,), tags=("b", "a"))
    kept = manifest("r", "kept", pushed_at=T0, tags=("c",))
    await meta.put_manifest(write)
    await meta.put_manifest(kept)
    removed = await meta.delete_manifest("r", write.digest)
    assert removed is not None and sorted(removed) == ["a", "b"], "delete_manifest returns the tags removed"
    assert await meta.get_manifest("r", write.digest) is None
    assert await meta.resolve_tag("r", "a") is None
    assert await meta.list_tags("r", None, 10) == Page(["c"], False), "the other manifest's tags stay"
    assert (await meta.blob_reference_counts([LAYER])).get(LAYER, 0) == 0, "its references went with it"
    assert await meta.linked_blobs("r", [LAYER]) == {LAYER}, "the blob link itself stays"
    assert await meta.delete_manifest("r", write.digest) is None, "deleting it again: None"
    assert await meta.delete_manifest("r", digest(b"never")) is None


async def test_delete_tag_returns_the_digest_and_keeps_the_manifest(meta: MetadataStore):
    await repository(meta, "r")
    write = manifest("r", "m", pushed_at=T0, tags=("v1", "latest"))
    await meta.put_manifest(write)
    assert await meta.delete_tag("r", "latest") == write.digest, "delete_tag returns what the tag pointed at"
    assert await meta.resolve_tag("r", "latest") is None
    assert await meta.resolve_tag("r", "v1") == write.digest
    assert await meta.get_manifest("r", write.digest) is not None, "the manifest stays"
    assert await meta.delete_tag("r", "latest") is None, "deleting it again: None"
    assert await meta.delete_tag("nope", "v1") is None


async def test_referrers_are_the_manifests_with_that_subject(meta: MetadataStore):
    await repository(meta, "r")
    await repository(meta, "elsewhere")
    subject = manifest("r", "subject", pushed_at=T0)
    await meta.put_manifest(subject)
    signature_type = "application/vnd.example.signature"
    refs = [
        manifest("r", f"ref{i}", pushed_at=T0 + i, subject=subject.digest, artifact_type=signature_type) for i in (1, 2)
    ]
    for write in [*refs, manifest("r", "unrelated", pushed_at=T0)]:
        await meta.put_manifest(write)
    await meta.put_manifest(manifest("elsewhere", "ref", pushed_at=T0, subject=subject.digest))
    found = await meta.referrers("r", subject.digest)
    assert {m.digest for m in found} == {w.digest for w in refs}, "exactly the manifests naming the subject"
    for record in found:
        assert (record.subject, record.artifact_type, record.repository) == (subject.digest, signature_type, "r")
    assert await meta.referrers("r", refs[0].digest) == [], "a manifest nobody refers to has no referrers"


async def test_list_images_in_push_order(meta: MetadataStore):
    await repository(meta, "r", CONFIG)
    writes = [
        manifest(
            "r",
            label,
            pushed_at=T0,  # the same time: the order is the order of the pushes
            blobs=(CONFIG,),
            tags=(label,),
            image_size=size,
            config_media_type="application/vnd.oci.image.config.v1+json",
        )
        for label, size in (("zeta", 10), ("alpha", 20), ("mid", 30))
    ]
    for write in writes:
        await meta.put_manifest(write)
    images = await meta.list_images("r", 0, 10)
    assert [i.digest for i in images] == [w.digest for w in writes], "list_images gives the images in push order"
    assert [i.id for i in images] == sorted({i.id for i in images}), "image ids grow with each push"
    first = images[0]
    assert (first.repository, first.media_type, first.size, first.image_size, first.tags) == (
        "r",
        MEDIA_TYPE,
        len(writes[0].body),
        10,
        ("zeta",),
    )
    assert (first.config_media_type, first.pushed_at, first.last_pulled_at, first.storage_class) == (
        "application/vnd.oci.image.config.v1+json",
        T0,
        None,
        "STANDARD",
    )
    assert await meta.list_images("r", images[0].id, 1) == [images[1]], "after_id and limit page through them"
    assert await meta.list_images("r", images[-1].id, 10) == []
    by_digest = await meta.images_by_digest("r", [writes[1].digest, digest(b"nope")])
    assert by_digest == {writes[1].digest: images[1]}, "images_by_digest: the same records, missing ones left out"


async def test_parents_of_finds_the_indexes_listing_a_manifest(meta: MetadataStore):
    await repository(meta, "r")
    amd64, arm64, lone = (manifest("r", label, pushed_at=T0) for label in ("amd64", "arm64", "lone"))
    for write in (amd64, arm64, lone):
        await meta.put_manifest(write)
    index = manifest("r", "index", pushed_at=T0, media_type=INDEX_MEDIA_TYPE, manifests=(amd64.digest, arm64.digest))
    await meta.put_manifest(index)
    parents = await meta.parents_of("r", [amd64.digest, arm64.digest, lone.digest])
    assert parents == {amd64.digest: [index.digest], arm64.digest: [index.digest]}, "only listed ones have parents"


async def test_blob_reference_counts_count_manifests_in_every_repository(meta: MetadataStore):
    await repository(meta, "r1", CONFIG, LAYER, OTHER)
    await repository(meta, "r2", LAYER)
    await meta.put_manifest(manifest("r1", "a", pushed_at=T0, blobs=(CONFIG, LAYER)))
    await meta.put_manifest(manifest("r1", "b", pushed_at=T0, blobs=(LAYER,)))
    await meta.put_manifest(manifest("r2", "a", pushed_at=T0, blobs=(LAYER,)))
    counts = await meta.blob_reference_counts([CONFIG, LAYER, OTHER])
    assert (counts.get(CONFIG, 0), counts.get(LAYER, 0), counts.get(OTHER, 0)) == (1, 3, 0), f"counts: {counts}"


async def test_record_pulls_sets_last_pulled_at(meta: MetadataStore):
    await repository(meta, "r")
    pulled, not_pulled = manifest("r", "pulled", pushed_at=T0), manifest("r", "idle", pushed_at=T0)
    await meta.put_manifest(pulled)
    await meta.put_manifest(not_pulled)
    await meta.record_pulls([("r", pulled.digest, T0 + 10), ("nope", pulled.digest, T0 + 10)])
    await meta.record_pulls([])
    images = await meta.images_by_digest("r", [pulled.digest, not_pulled.digest])
    assert images[pulled.digest].last_pulled_at == T0 + 10, "the pulled image records when"
    assert images[not_pulled.digest].last_pulled_at is None, "an image never pulled has no last pull"


async def test_an_archived_image_is_restored_by_a_push(meta: MetadataStore):
    await repository(meta, "r", LAYER)
    write = manifest("r", "m", pushed_at=T0, blobs=(LAYER,))
    await meta.put_manifest(write)
    assert await meta.has_archived_images("r") is False
    assert await meta.set_storage_class("r", write.digest, "ARCHIVE", T0 + 1) is True, "archiving changes it"
    assert await meta.set_storage_class("r", write.digest, "ARCHIVE", T0 + 2) is False, "already archived"
    assert await meta.set_storage_class("r", digest(b"nope"), "ARCHIVE", T0) is False, "no such image"
    image = (await meta.images_by_digest("r", [write.digest]))[write.digest]
    assert (image.storage_class, image.last_archived_at) == ("ARCHIVE", T0 + 1)
    assert (await meta.get_manifest("r", write.digest)).storage_class == "ARCHIVE"  # type: ignore[union-attr]
    assert await meta.has_archived_images("r") is True
    assert await meta.blob_archived_only("r", LAYER) is True, "the only image listing the blob is archived"
    outcome = await meta.put_manifest(manifest("r", "m", pushed_at=T0 + 3, blobs=(LAYER,)))
    assert outcome.restored and not outcome.created, "pushing an archived image again restores it"
    image = (await meta.images_by_digest("r", [write.digest]))[write.digest]
    assert (image.storage_class, image.last_activated_at) == ("STANDARD", T0 + 3)
    assert await meta.blob_archived_only("r", LAYER) is False


# -- pull-through rules and upstream state ----------------------------------------------------------------


async def test_pull_through_rules_crud(meta: MetadataStore):
    rule = PullThroughRule("docker-hub", "registry-1.docker.io", "ROOT", None, "docker-hub", T0, T0)
    assert await meta.list_rules() == []
    await meta.create_rule(rule)
    await meta.create_rule(PullThroughRule("ghcr", "ghcr.io", created_at=T0, updated_at=T0))
    with pytest.raises(Conflict):
        await meta.create_rule(PullThroughRule("docker-hub", "mirror.example", created_at=T0 + 1))
    rules = {r.prefix: r for r in await meta.list_rules()}
    assert rules.keys() == {"docker-hub", "ghcr"}
    assert rules["docker-hub"] == rule, "a refused create changes nothing"
    updated = await meta.update_rule_credentials("docker-hub", "arn:aws:secretsmanager:x", T0 + 5)
    assert updated is not None and (updated.credential_arn, updated.updated_at) == ("arn:aws:secretsmanager:x", T0 + 5)
    assert updated.upstream_url == rule.upstream_url
    assert await meta.update_rule_credentials("nope", None, T0) is None
    await meta.upsert_rule(PullThroughRule("docker-hub", "mirror.example", "library", None, None, T0 + 9, T0 + 9))
    await meta.upsert_rule(PullThroughRule("quay", "quay.io", created_at=T0, updated_at=T0))
    rules = {r.prefix: r for r in await meta.list_rules()}
    assert (rules["docker-hub"].upstream_url, rules["docker-hub"].upstream_prefix) == ("mirror.example", "library")
    assert rules.keys() == {"docker-hub", "ghcr", "quay"}, "upsert_rule updates or creates"
    deleted = await meta.delete_rule("ghcr")
    assert deleted is not None and deleted.upstream_url == "ghcr.io", "delete_rule returns the deleted rule"
    assert await meta.delete_rule("ghcr") is None
    assert {r.prefix for r in await meta.list_rules()} == {"docker-hub", "quay"}


async def test_tag_checks_are_remembered_per_repository_and_tag(meta: MetadataStore):
    await repository(meta, "cache/a")
    await repository(meta, "cache/b")
    assert await meta.tag_checked_at("cache/a", "latest") is None
    await meta.set_tag_checked("cache/a", "latest", T0)
    assert await meta.tag_checked_at("cache/a", "latest") == T0
    await meta.set_tag_checked("cache/a", "latest", T0 + 60)
    assert await meta.tag_checked_at("cache/a", "latest") == T0 + 60, "a later check replaces the earlier one"
    assert await meta.tag_checked_at("cache/a", "v1") is None, "per tag"
    assert await meta.tag_checked_at("cache/b", "latest") is None, "per repository"


async def test_upstream_failures_are_noted_and_cleared(meta: MetadataStore):
    hub, tag = "https://registry-1.docker.io", "cache/a:latest"
    assert await meta.upstream_failed_at([hub, tag]) is None
    await meta.note_upstream_failure(hub, T0)
    await meta.note_upstream_failure(tag, T0 + 5)
    assert await meta.upstream_failed_at([hub, tag]) == T0 + 5, "the latest failure of any key"
    assert await meta.upstream_failed_at([hub]) == T0
    assert await meta.upstream_failed_at(["https://elsewhere"]) is None
    await meta.note_upstream_failure(hub, T0 + 10)
    assert await meta.upstream_failed_at([hub]) == T0 + 10, "a new failure replaces the old one"
    await meta.clear_upstream_failure(hub)
    assert await meta.upstream_failed_at([hub, tag]) == T0 + 5, "clearing one key leaves the others"
    await meta.clear_upstream_failure(hub)  # clearing again is fine


async def test_lifecycle_previews_are_put_and_got(meta: MetadataStore):
    await repository(meta, "r")
    assert await meta.get_lifecycle_preview("r") is None
    running = LifecyclePreview('{"rules":[]}', "IN_PROGRESS", T0)
    await meta.put_lifecycle_preview("r", running)
    assert await meta.get_lifecycle_preview("r") == running
    done = LifecyclePreview(
        '{"rules":[]}', "COMPLETE", T0, [{"imageDigest": LAYER, "action": {"type": "EXPIRE"}, "appliedRulePriority": 1}]
    )
    await meta.put_lifecycle_preview("r", done)
    assert await meta.get_lifecycle_preview("r") == done, "a later preview replaces the earlier one"
    assert await meta.get_lifecycle_preview("nope") is None


# -- templates, upload sessions, statistics ---------------------------------------------------------------


async def test_creation_templates_crud(meta: MetadataStore):
    assert await meta.list_templates() == []
    assert await meta.put_template("team", '{"a":1}', T0, create=True) is True, "creating a new template"
    assert await meta.put_template("team", '{"a":2}', T0 + 1, create=True) is False, "creating it again: False"
    assert await meta.put_template("other", "{}", T0, create=False) is False, "updating a missing one: False"
    assert await meta.list_templates() == [("team", '{"a":1}', T0, T0)], "a refused write changes nothing"
    assert await meta.put_template("team", '{"a":3}', T0 + 2, create=False) is True, "updating an existing one"
    assert await meta.list_templates() == [("team", '{"a":3}', T0, T0 + 2)], "an update keeps created_at"
    assert await meta.delete_template("team") == ("team", '{"a":3}', T0, T0 + 2), "delete returns the template"
    assert await meta.delete_template("team") is None
    assert await meta.list_templates() == []


async def test_upload_records_crud(meta: MetadataStore):
    uploads = [
        UploadRecord("u1", "r", T0, "alice"),
        UploadRecord("u2", "r", T0 + 100, ""),  # anonymous
        UploadRecord("u3", "r", T0 + 200, None),  # from before owners: anyone's
    ]
    for upload in uploads:
        await meta.create_upload(upload)
    for upload in uploads:
        assert await meta.get_upload(upload.id) == upload, f"{upload.id} round-trips (owner {upload.owner!r})"
    assert sorted(await meta.stale_uploads(T0 + 150)) == ["u1", "u2"], "stale_uploads: created before the time"
    await meta.delete_upload("u1")
    assert await meta.get_upload("u1") is None
    await meta.delete_upload("u1")  # again: no error
    assert await meta.get_upload("nope") is None


async def test_storage_stats_count_what_is_stored(meta: MetadataStore):
    assert await meta.storage_stats() == {
        "uploads_in_progress": 0,
        "blobs": 0,
        "blob_bytes": 0,
        "repositories": 0,
        "images": 0,
    }
    await repository(meta, "r1", CONFIG, LAYER)
    await repository(meta, "r2", LAYER)  # the same blob in two repositories counts once
    await meta.put_manifest(manifest("r1", "m", pushed_at=T0, blobs=(CONFIG, LAYER)))
    await meta.put_manifest(manifest("r2", "m", pushed_at=T0, blobs=(LAYER,)))
    await meta.create_upload(UploadRecord("u1", "r1", T0))
    assert await meta.storage_stats() == {
        "uploads_in_progress": 1,
        "blobs": 2,
        "blob_bytes": 1100,
        "repositories": 2,
        "images": 2,
    }


async def test_a_healthy_metadata_store_reports_no_problems(meta: MetadataStore):
    assert await meta.health() == []
