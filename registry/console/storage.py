"""What the console's storage and health page shows, from the stores and services (no HTTP here).

- The images' bytes: every image's size summed, as DescribeImages reports them (`imageSizeInBytes`: a layer two
  images share counts twice), from one query per registry (`MetadataStore.repository_sizes`);
- the bytes stored: each distinct blob once (`MetadataStore.storage_stats`), which is what the disk or bucket
  holds; the difference is what deduplication saves;
- the pull-through cache's size as eviction counts it against `[pull_through] max_cache_bytes`;
- garbage collection's last run (recorded by whichever process ran it) and the stores' readiness problems
  (what `/readyz` says);
- the charts: storage by repository (the ten largest the viewer may see) and the cache's hits and misses per
  minute (this process's, as its counters).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from registry.console.charts import BarChart, ColumnChart, bar_chart, hits_chart
from registry.gc import GarbageCollector, GcReport
from registry.proxy.eviction import cache_usage
from registry.proxy.pullthrough import PullThrough
from registry.service.lifecycle import LifecycleService
from storage.factory import Stores

TOP = 10  # repositories in the storage chart


@dataclass(frozen=True, slots=True)
class StoragePage:
    repositories: int
    images: int
    image_bytes: int  # the images' sizes summed
    blobs: int
    stored_bytes: int  # the distinct blobs' sizes summed
    uploads: int  # upload sessions in progress
    cache_rules: int
    cache_bytes: int
    max_cache_bytes: int  # 0: no bound
    gc: GcReport | None
    problems: list[str]
    by_repository: BarChart
    hits: ColumnChart

    @property
    def saved_bytes(self) -> int:
        return max(self.image_bytes - self.stored_bytes, 0)

    @property
    def cache_share(self) -> float | None:
        """The cache's size as a fraction of its bound (None without one)."""
        return self.cache_bytes / self.max_cache_bytes if self.max_cache_bytes else None


async def storage_page(
    stores: Stores,
    gc: GarbageCollector,
    pull_through: PullThrough,
    lifecycle: LifecycleService,
    *,
    max_cache_bytes: int,
    visible: Callable[[str], Awaitable[bool]],
    now: float,
) -> StoragePage:
    meta = stores.meta
    stats = await meta.storage_stats()
    sizes = await meta.repository_sizes()
    top: list[tuple[str, int]] = []
    for name, _, size in sorted(sizes, key=lambda row: (-row[2], row[0])):
        if len(top) == TOP or size == 0:
            break
        if await visible(name):
            top.append((name, size))
    await pull_through.sync()
    await pull_through.sample_history()
    return StoragePage(
        repositories=len(sizes),
        images=sum(images for _, images, _ in sizes),
        image_bytes=sum(size for _, _, size in sizes),
        blobs=stats["blobs"],
        stored_bytes=stats["blob_bytes"],
        uploads=stats["uploads_in_progress"],
        cache_rules=len(pull_through.rules),
        cache_bytes=await cache_usage(pull_through, lifecycle, meta),
        max_cache_bytes=max_cache_bytes,
        gc=await gc.last_run(),
        problems=await stores.health(),
        by_repository=bar_chart(top),
        hits=hits_chart(pull_through.history.series(now)),
    )
