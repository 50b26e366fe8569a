"""Keep pull-through cache repositories under `[pull_through] max_cache_bytes`.

Usage is the bytes of the distinct blobs the cache repositories' images reference. Past the bound, the least
recently pulled cached images (never pulled: by push time) are deleted first, skipping images an index still
lists; a blob counts as freed only when no other image anywhere references it. Garbage collection then
reclaims the bytes.
"""

from __future__ import annotations

import logging

from registry.proxy import rules
from registry.proxy.pullthrough import PullThrough
from registry.service.lifecycle import LifecycleService
from storage.metadata import MetadataStore
from storage.records import ImageRecord

log = logging.getLogger("moorage.eviction")


async def _cached_images(
    pull_through: PullThrough, lifecycle: LifecycleService, meta: MetadataStore
) -> tuple[list[ImageRecord], dict[str, list[tuple[str, int]]]]:
    """The cache repositories' images, and the (digest, size) of the blobs each references."""
    images: list[ImageRecord] = []
    last: str | None = None
    while batch := await meta.describe_repositories(last, 500):
        for repo in batch:
            if rules.match(pull_through.rules, repo.name) is not None:
                images += await lifecycle.images_of(repo.name)
        last = batch[-1].name
    return images, {img.digest: await meta.manifest_blobs(img.repository, img.digest) for img in images}


async def cache_usage(pull_through: PullThrough, lifecycle: LifecycleService, meta: MetadataStore) -> int:
    """The bytes the cache holds, as eviction counts them against `max_cache_bytes`: the distinct blobs its
    repositories' images reference."""
    if not pull_through.rules:
        return 0
    _, blobs = await _cached_images(pull_through, lifecycle, meta)
    return sum({digest: size for refs in blobs.values() for digest, size in refs}.values())


async def evict(
    pull_through: PullThrough,
    lifecycle: LifecycleService,
    meta: MetadataStore,
    max_bytes: int,
    *,
    dry_run: bool = False,
) -> int:
    """Evict until the cache fits; returns the number of images evicted (that would be, with `dry_run`)."""
    if max_bytes <= 0 or not pull_through.rules:
        return 0
    images, blobs = await _cached_images(pull_through, lifecycle, meta)
    sizes = {digest: size for refs in blobs.values() for digest, size in refs}
    refcount = await meta.blob_reference_counts(list(sizes))
    usage = sum(sizes.values())
    evicted = 0
    for img in sorted(images, key=lambda image: (image.last_pulled_at or image.pushed_at, image.id)):
        if usage <= max_bytes:
            break
        if (await meta.parents_of(img.repository, [img.digest])).get(img.digest):
            continue
        if not dry_run:
            await pull_through.images.delete_manifest(img.repository, img.digest)
        evicted += 1
        for digest, size in blobs[img.digest]:
            refcount[digest] = refcount.get(digest, 1) - 1
            if refcount[digest] == 0:
                usage -= size
        log.info(
            "cache eviction%s: removed %s@%s (last pulled %s); cache now %d bytes of %d",
            " (dry run)" if dry_run else "",
            img.repository,
            img.digest,
            img.last_pulled_at,
            usage,
            max_bytes,
        )
    return evicted
