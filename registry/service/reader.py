"""What the /v2 read routes ask of a repository, the same for a local one and a pull-through cache one.

`ImageService` answers for what is stored; `registry.proxy.pullthrough.PullThrough` wraps it behind the same
calls (Distribution's proxied repository), fetching from the upstream what a cache repository lacks. The
routes hold one `ImageReader` and cannot tell the two apart.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from storage.records import ManifestRecord

# Called before the first pull of an image through the cache, with "the repository must be created first".
AuthorizeImport = Callable[[bool], Awaitable[None]]


async def no_import_check(needs_create: bool) -> None:
    return None


@dataclass(frozen=True, slots=True)
class StoredBlob:
    """A blob in the blob store: the route opens the byte range it needs."""

    digest: str
    size: int


@dataclass(slots=True)
class ArrivingBlob:
    """A blob arriving from an upstream right now, streamed as it comes."""

    size: int | None
    chunks: AsyncIterator[bytes] | None  # None for a HEAD


BlobAnswer = StoredBlob | ArrivingBlob


class ImageReader(Protocol):
    async def get_manifest(
        self, repository: str, reference: str, authorize_import: AuthorizeImport = no_import_check
    ) -> ManifestRecord: ...

    async def open_blob(
        self,
        repository: str,
        digest: str,
        authorize_import: AuthorizeImport = no_import_check,
        *,
        head: bool = False,
    ) -> BlobAnswer: ...
