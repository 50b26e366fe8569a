"""One image's copy to a destination, byte-exact: for a manifest, its blobs (those the destination lacks), then
the manifest by digest; for an index, each child manifest first; then the pushed tags; then the image's
referrers (signatures, SBOMs, attestations), each copied the same way. Whatever the destination holds already
is not sent again, so a retried or repeated copy costs a few HEADs."""

from __future__ import annotations

from collections.abc import AsyncIterator

from registry import oci
from registry.replication.peer import PeerClient
from storage.blobs import BlobStore
from storage.errors import BlobNotFound
from storage.metadata import MetadataStore

MAX_DEPTH = 4  # an index's children, and referrers of referrers, this deep at most


class SourceGone(Exception):
    """The image (or something it needs) is no longer in this registry: the copy cannot succeed by retrying."""


class Copier:
    def __init__(self, meta: MetadataStore, blobs: BlobStore) -> None:
        self.meta = meta
        self.blobs = blobs

    async def copy(self, peer: PeerClient, repository: str, digest: str, tags: tuple[str, ...]) -> int:
        """Copy the image and its referrers, then set the tags; returns the bytes of blobs sent."""
        sent = await self._manifest(peer, repository, digest, set(), 0)
        record = await self.meta.get_manifest(repository, digest)
        if record is None:
            raise SourceGone(f"{repository}@{digest} was deleted before its tags were copied")
        for tag in tags:
            await peer.put_manifest(repository, tag, record.body, record.media_type)
        return sent

    async def _manifest(self, peer: PeerClient, repository: str, digest: str, done: set[str], depth: int) -> int:
        if digest in done:
            return 0
        done.add(digest)
        record = await self.meta.get_manifest(repository, digest)
        if record is None:
            raise SourceGone(f"{repository}@{digest} is not in this registry")
        sent = 0
        if not await peer.has_manifest(repository, digest):
            parsed = oci.parse_manifest(record.body, record.media_type)
            if depth < MAX_DEPTH:
                for child in parsed.referenced_manifests:
                    sent += await self._manifest(peer, repository, child, done, depth + 1)
            for blob, size in await self.meta.manifest_blobs(repository, digest):
                sent += await self._blob(peer, repository, blob, size)
            await peer.put_manifest(repository, digest, record.body, record.media_type)
        if depth < MAX_DEPTH:
            for referrer in await self.meta.referrers(repository, digest):
                sent += await self._manifest(peer, repository, referrer.digest, done, depth + 1)
        return sent

    async def _blob(self, peer: PeerClient, repository: str, digest: str, size: int) -> int:
        if await peer.has_blob(repository, digest):
            return 0
        info = await self.blobs.stat(digest)
        if info is None:
            raise SourceGone(f"blob {digest} of {repository} is not stored in this registry")
        await peer.put_blob(repository, digest, info.size, lambda: self._read(digest))
        return info.size

    async def _read(self, digest: str) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.blobs.read(digest):
                yield chunk
        except BlobNotFound:
            raise SourceGone(f"blob {digest} was deleted while it was copied") from None
