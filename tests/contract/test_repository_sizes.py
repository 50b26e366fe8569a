"""`MetadataStore.repository_sizes`: every repository's image count and summed image sizes, in one query (the
console's storage page and its chart of storage by repository)."""

from __future__ import annotations

from storage.metadata import MetadataStore
from storage.records import RepositorySettings
from tests.contract.helpers import digest, manifest

T0 = 1_700_000_000.0
LAYER = digest(b"a layer")


async def test_repository_sizes_sum_image_sizes_per_repository(meta: MetadataStore):
    assert await meta.repository_sizes() == []
    for name in ("b/two", "a/one", "c/empty"):
        await meta.create_repository(name, T0, RepositorySettings(), {})
        await meta.link_blob(name, LAYER, 1000, T0)
    await meta.put_manifest(manifest("a/one", "x", pushed_at=T0, blobs=(LAYER,), image_size=1200))
    await meta.put_manifest(manifest("b/two", "y", pushed_at=T0, blobs=(LAYER,), image_size=1300))
    await meta.put_manifest(manifest("b/two", "z", pushed_at=T0, blobs=(LAYER,), image_size=5_000_000_000))
    assert await meta.repository_sizes() == [
        ("a/one", 1, 1200),
        ("b/two", 2, 5_000_001_300),  # past 32 bits
        ("c/empty", 0, 0),
    ]
    await meta.delete_manifest("b/two", manifest("b/two", "z", pushed_at=T0).digest)
    assert ("b/two", 1, 1300) in await meta.repository_sizes()
