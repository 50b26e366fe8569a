"""Garbage collection's claims (`storage.metadata.GarbageStore`), and how they meet links and manifest writes.

Collection takes three steps: `claim_blob` (a tombstone that refuses new links), `BlobStore.delete`, then
`drop_blob`. These cases hold the metadata side to that: what is collectable, what a tombstone refuses, and that
a collection interrupted between the steps is finished by the next one. CUTOFF is the grace period's end:
blobs touched before it (and referenced by no manifest) are collectable.
"""

from __future__ import annotations

import pytest

from storage.blobs import BlobStore
from storage.errors import BlobNotFound
from storage.metadata import MetadataStore
from storage.records import BlobRow, RepositorySettings
from tests.contract.helpers import content, digest, manifest, store_blob, stored_digests

T0 = 1_700_000_000.0
CUTOFF = T0
OLD, LATER = T0 - 100, T0 + 100  # touched before the cutoff, and after it
UNREFERENCED, REFERENCED, FRESH = digest(b"unreferenced"), digest(b"referenced"), digest(b"fresh")
SIZES = {UNREFERENCED: 10, REFERENCED: 20, FRESH: 30}


async def scene(meta: MetadataStore) -> None:
    """In repository r: an old unreferenced blob, an old blob a manifest references, a fresh unreferenced one."""
    await meta.create_repository("r", T0 - 1000, RepositorySettings(), {})
    for blob, touched in ((UNREFERENCED, OLD), (REFERENCED, OLD), (FRESH, LATER)):
        await meta.link_blob("r", blob, SIZES[blob], touched)
    await meta.put_manifest(manifest("r", "m", pushed_at=OLD, blobs=(REFERENCED,), tags=("latest",)))


async def unreferenced(meta: MetadataStore, touched_before: float = CUTOFF) -> list[BlobRow]:
    return await meta.unreferenced_blobs(touched_before, "", 100)


async def test_unreferenced_blobs_are_the_old_ones_no_manifest_lists(meta: MetadataStore):
    await scene(meta)
    assert await unreferenced(meta) == [BlobRow(UNREFERENCED, 10, OLD, False)], (
        "only the blob no manifest references and nothing touched since the cutoff"
    )
    assert await unreferenced(meta, LATER + 1) == sorted(
        [BlobRow(UNREFERENCED, 10, OLD, False), BlobRow(FRESH, 30, LATER, False)], key=lambda row: row.digest
    ), "a later cutoff takes the fresh one too, never the referenced one"


async def test_unreferenced_blobs_page_by_digest(meta: MetadataStore):
    await meta.create_repository("r", T0, RepositorySettings(), {})
    digests = sorted(digest(content(f"blob{i}")) for i in range(5))
    for d in reversed(digests):
        await meta.link_blob("r", d, 1, OLD)
    first = await meta.unreferenced_blobs(CUTOFF, "", 2)
    assert [row.digest for row in first] == digests[:2], "the first page: the lowest digests"
    rest = await meta.unreferenced_blobs(CUTOFF, first[-1].digest, 10)
    assert [row.digest for row in rest] == digests[2:], "the next page starts after the last digest seen"


@pytest.mark.parametrize("how", ["its manifest is deleted", "it is unlinked"])
async def test_a_blob_becomes_collectable_when_nothing_references_it(meta: MetadataStore, how: str):
    await scene(meta)
    if how == "its manifest is deleted":
        image = await meta.resolve_tag("r", "latest")
        assert image is not None
        await meta.delete_manifest("r", image)
    else:
        await meta.unlink_blob("r", UNREFERENCED)  # an unlinked blob's row stays for collection to find
    assert {row.digest for row in await unreferenced(meta)} == (
        {UNREFERENCED, REFERENCED} if how == "its manifest is deleted" else {UNREFERENCED}
    )


async def test_a_claimed_blob_refuses_links_and_is_linked_nowhere(meta: MetadataStore):
    await scene(meta)
    await meta.create_repository("r2", T0, RepositorySettings(), {})
    await meta.link_blob("r2", UNREFERENCED, 10, OLD)
    assert await meta.claim_blob(UNREFERENCED, CUTOFF) is True, "an unreferenced old blob is claimed"
    with pytest.raises(BlobNotFound):
        await meta.link_blob("r", UNREFERENCED, 10, LATER)
    assert await meta.linked_blobs("r", [UNREFERENCED]) == set(), "a claim removes the blob's links"
    assert await meta.linked_blob_size("r2", UNREFERENCED) is None, "... in every repository"
    assert await meta.repositories_with_blob(UNREFERENCED) == []
    assert await meta.blob_size(UNREFERENCED) is None, "a claimed blob can't be mounted"
    assert await meta.known_blobs([UNREFERENCED]) == {UNREFERENCED}, "the tombstone is a row until dropped"
    assert await meta.linked_blobs("r", [REFERENCED, FRESH]) == {REFERENCED, FRESH}, "other blobs are untouched"


async def test_a_manifest_requiring_a_claimed_blob_is_refused(meta: MetadataStore):
    await scene(meta)
    assert await meta.claim_blob(UNREFERENCED, CUTOFF) is True
    write = manifest("r", "late", pushed_at=LATER, blobs=(UNREFERENCED,), tags=("late",))
    with pytest.raises(BlobNotFound):
        await meta.put_manifest(write)
    assert await meta.get_manifest("r", write.digest) is None, "nothing of the refused manifest is written"
    assert await meta.resolve_tag("r", "late") is None


@pytest.mark.parametrize(
    ("blob", "why"),
    [
        pytest.param(REFERENCED, "a manifest references it", id="referenced"),
        pytest.param(FRESH, "it was touched after the cutoff", id="fresh"),
    ],
)
async def test_a_blob_still_in_use_is_not_claimed(meta: MetadataStore, blob: str, why: str):
    await scene(meta)
    assert await meta.claim_blob(blob, CUTOFF) is False, f"claim_blob must refuse: {why}"
    assert await meta.linked_blobs("r", [blob]) == {blob}, "a refused claim keeps the links"
    await meta.link_blob("r", blob, SIZES[blob], LATER)  # and links keep working


async def test_a_blob_referenced_in_another_repository_is_not_claimed(meta: MetadataStore):
    await scene(meta)
    await meta.create_repository("r2", T0, RepositorySettings(), {})
    await meta.link_blob("r2", UNREFERENCED, 10, OLD)
    await meta.put_manifest(manifest("r2", "m", pushed_at=OLD, blobs=(UNREFERENCED,)))
    assert await meta.claim_blob(UNREFERENCED, CUTOFF) is False, "a reference in any repository keeps a blob"
    assert await meta.linked_blobs("r", [UNREFERENCED]) == {UNREFERENCED}


async def test_a_link_after_the_cutoff_saves_a_blob(meta: MetadataStore):
    await scene(meta)
    await meta.link_blob("r", UNREFERENCED, 10, LATER)  # a push or mount touches it again
    assert UNREFERENCED not in {row.digest for row in await unreferenced(meta)}
    assert await meta.claim_blob(UNREFERENCED, CUTOFF) is False, "a blob touched since the cutoff is kept"


async def test_bytes_with_no_row_are_claimed_as_a_tombstone(meta: MetadataStore):
    orphan = digest(b"stored bytes nothing recorded")
    assert await meta.known_blobs([orphan]) == set()
    assert await meta.claim_blob(orphan, CUTOFF) is True, "a digest with no row is claimable (orphan bytes)"
    assert await meta.known_blobs([orphan]) == {orphan}, "the claim leaves a tombstone row"
    await meta.create_repository("r", T0, RepositorySettings(), {})
    with pytest.raises(BlobNotFound):
        await meta.link_blob("r", orphan, 5, LATER)  # the tombstone refuses links while the bytes go


async def test_drop_blob_removes_the_tombstone_and_the_digest_can_live_again(meta: MetadataStore):
    await scene(meta)
    assert await meta.claim_blob(UNREFERENCED, CUTOFF) is True
    await meta.drop_blob(UNREFERENCED)
    assert await meta.known_blobs([UNREFERENCED, REFERENCED]) == {REFERENCED}, "a dropped blob has no row"
    assert UNREFERENCED not in {row.digest for row in await unreferenced(meta, LATER + 1)}
    await meta.link_blob("r", UNREFERENCED, 10, LATER)  # pushed again after its collection
    assert await meta.linked_blob_size("r", UNREFERENCED) == 10, "a fresh link after the drop works"
    assert await meta.claim_blob(UNREFERENCED, CUTOFF) is False, "... and is fresh (touched after the cutoff)"


async def test_drop_blob_leaves_an_unclaimed_blob_alone(meta: MetadataStore):
    await scene(meta)
    await meta.drop_blob(UNREFERENCED)  # not claimed: a collection that lost the race must not remove it
    assert await meta.linked_blobs("r", [UNREFERENCED]) == {UNREFERENCED}
    assert await meta.known_blobs([UNREFERENCED]) == {UNREFERENCED}


async def test_an_interrupted_collection_is_finished_by_the_next(meta: MetadataStore):
    await scene(meta)
    assert await meta.claim_blob(UNREFERENCED, CUTOFF) is True  # ... and the collector crashed here
    rows = await unreferenced(meta, touched_before=0.0)  # whatever the next run's cutoff
    assert [(row.digest, row.claimed) for row in rows] == [(UNREFERENCED, True)], (
        "a tombstone is listed, marked claimed, for the next run to finish"
    )
    assert await meta.claim_blob(UNREFERENCED, 0.0) is True, "claiming a tombstone again succeeds"
    await meta.drop_blob(UNREFERENCED)
    assert await unreferenced(meta, touched_before=0.0) == []


async def test_storage_stats_do_not_count_claimed_blobs(meta: MetadataStore):
    await scene(meta)
    before = await meta.storage_stats()
    assert (before["blobs"], before["blob_bytes"]) == (3, 60)
    assert await meta.claim_blob(UNREFERENCED, CUTOFF) is True
    after = await meta.storage_stats()
    assert (after["blobs"], after["blob_bytes"]) == (2, 50), "a claimed blob is no longer counted"
    assert await meta.claim_blob(digest(b"orphan"), CUTOFF) is True
    assert (await meta.storage_stats())["blobs"] == 2, "nor is an orphan's tombstone"


async def test_a_whole_collection_through_both_stores(meta: MetadataStore, blobs: BlobStore):
    """The three steps as garbage collection takes them, with real bytes: claim, delete the bytes, drop."""
    await meta.create_repository("r", T0, RepositorySettings(), {})
    kept_data, gone_data, orphan_data = content("kept"), content("gone"), content("orphan")
    kept, gone, orphan = [await store_blob(blobs, data) for data in (kept_data, gone_data, orphan_data)]
    await meta.link_blob("r", kept, len(kept_data), OLD)
    await meta.link_blob("r", gone, len(gone_data), OLD)
    await meta.put_manifest(manifest("r", "m", pushed_at=OLD, blobs=(kept,)))
    candidates = [row.digest for row in await unreferenced(meta)]
    candidates += [d for d in await stored_digests(blobs) if d not in await meta.known_blobs([d])]
    assert sorted(candidates) == sorted([gone, orphan]), "collectable: the unreferenced blob and the orphan bytes"
    for d in candidates:
        assert await meta.claim_blob(d, CUTOFF) is True
        assert await blobs.delete(d) is True
        await meta.drop_blob(d)
    assert await stored_digests(blobs) == {kept}, "only the referenced blob's bytes remain"
    assert await meta.known_blobs([kept, gone, orphan]) == {kept}
    assert await meta.unreferenced_blobs(LATER, "", 10) == []
