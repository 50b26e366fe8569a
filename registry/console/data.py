"""What the console's pages show, gathered from the services (the image service, the pull-through cache's
rules): no SQL and no storage driver here, and nothing about HTTP.

The repositories page reuses the paging of DescribeRepositories and `_catalog` (`visible_repositories`: by
name, after a cursor, only what the caller may see), so a page costs the same at 10 or 10,000 repositories;
each row's image count and size are summed from the repository's images, up to `STATS_CAP` images (a page
shows "1000+" beyond).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from registry import oci
from registry.console.views import ConfigView, ImageRow, ManifestView, config_view, image_tree, manifest_view
from registry.errors import ManifestUnknown
from registry.proxy.pullthrough import PullThrough
from registry.service.images import ImageService
from storage.records import ImageRecord, PullThroughRule, RepositoryRecord, ScanRecord

SEVERITIES = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "INFORMATIONAL", "UNDEFINED")

STATS_CAP = 1000  # images counted per repository row; beyond, the row says "1000+"
IMAGES_MAX = 2000  # images read for a repository page (newest first); beyond, the page says so
CONFIG_MAX = 1024 * 1024  # a config blob larger than this is not shown parsed


@dataclass(frozen=True, slots=True)
class RepositoryRow:
    record: RepositoryRecord
    images: int
    capped: bool  # more than `images` images
    size: int  # the images' sizes summed (ECR's imageSizeInBytes: layers, shared ones counted per image)
    rule: PullThroughRule | None  # the pull-through cache rule whose prefix it is under


@dataclass(frozen=True, slots=True)
class RepositoryImages:
    rows: list[ImageRow]  # top level, newest first
    total: int  # images read
    truncated: bool  # more than IMAGES_MAX


@dataclass(frozen=True, slots=True)
class ImagePage:
    image: ImageRecord | None  # None for a manifest stored only as a child (its record lacks nothing though)
    manifest: ManifestView
    config: ConfigView | None
    config_missing: bool  # the image has a config whose bytes are not here (a cache repository) or too large
    parents: list[str]  # indexes of the repository that list it
    scan: ScanView | None = None  # its latest vulnerability scan (None: never scanned)


@dataclass(frozen=True, slots=True)
class ScanView:
    status: str
    description: str
    completed_at: float | None
    counts: list[tuple[str, int]]  # by severity, most severe first
    findings: list[dict[str, Any]]  # as stored (registry.scanning.findings.stored), most severe first


def scan_view(scan: ScanRecord) -> ScanView:
    found = json.loads(scan.findings) if scan.status == "COMPLETE" else []
    counts = Counter(f["severity"] for f in found)
    return ScanView(
        scan.status,
        scan.description,
        scan.completed_at,
        [(s, counts[s]) for s in SEVERITIES if counts[s]],
        found,
    )


class ConsoleData:
    def __init__(self, images: ImageService, pull_through: PullThrough) -> None:
        self.images = images
        self.pull_through = pull_through

    async def repositories(
        self, query: str, after: str | None, limit: int, visible: Callable[[RepositoryRecord], bool]
    ) -> tuple[list[RepositoryRow], bool]:
        """A page of repositories whose name contains `query`, after `after` (by name), that `visible` accepts;
        and whether another follows."""
        await self.pull_through.sync()
        needle = query.lower()
        records, more = await self.images.visible_repositories(after, limit, lambda r: needle in r.name and visible(r))
        return [await self._row(record) for record in records], more

    async def _row(self, record: RepositoryRecord) -> RepositoryRow:
        count, size = 0, 0
        async for image in self.images.iter_images(record.name):
            if count == STATS_CAP:
                return RepositoryRow(record, count, True, size, self.pull_through.rule_for(record.name))
            count += 1
            size += image.image_size
        return RepositoryRow(record, count, False, size, self.pull_through.rule_for(record.name))

    async def repository(self, name: str) -> RepositoryRow:
        await self.pull_through.sync()
        return await self._row(await self.images.repository(name))

    async def repository_images(self, name: str) -> RepositoryImages:
        images: list[ImageRecord] = []
        truncated = False
        async for image in self.images.iter_images(name):
            if len(images) == IMAGES_MAX:
                truncated = True
                break
            images.append(image)
        images.reverse()  # newest first
        indexes = {}
        for image in images:
            if image.media_type in oci.INDEX_TYPES:
                try:
                    indexes[image.digest] = (await self.images.get_manifest(name, image.digest)).body
                except ManifestUnknown:  # deleted meanwhile
                    continue
        return RepositoryImages(image_tree(images, indexes), len(images), truncated)

    async def image(self, name: str, reference: str) -> ImagePage:
        """An image by digest or tag: its manifest as stored, and its config parsed."""
        record = await self.images.get_manifest(name, reference)
        view = manifest_view(record)
        image = await self.images.image(name, record.digest)
        config, missing = None, False
        if view.config is not None:
            body = await self.images.read_small_blob(name, view.config.digest, CONFIG_MAX)
            config = config_view(body) if body is not None else None
            missing = body is None
        scan = (await self.images.meta.get_scans(name, [record.digest])).get(record.digest)
        return ImagePage(
            image,
            view,
            config,
            missing,
            await self.images.parents_of(name, record.digest),
            scan_view(scan) if scan is not None else None,
        )
