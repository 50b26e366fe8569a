"""Blob upload sessions: monolithic, chunked, streamed, resumable across restarts, and cross-repository mounts.

A session is a row in the metadata store (so it survives a restart) plus the bytes received so far in the
blob store (a session writer, `storage.blobs.BlobIngester.resume_upload`). Finishing one verifies the digest,
installs the blob atomically and links it to the repository.

A session belongs to the principal that started it: for anyone else (even one allowed to push to the
repository) it does not exist (BLOB_UPLOAD_UNKNOWN, or UploadNotFoundException on the ECR API). An owner is a
principal's name, "" for an anonymous caller; None means nobody, and such a session is anyone's: those started
with auth off, or recorded before owners were (schema version 6 and older). Callers pass the requester the same
way (None with auth off: no check).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from registry import oci
from registry.errors import (
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    SizeInvalid,
    UploadRangeInvalid,
)
from registry.service.images import ImageService
from storage.blobs import BlobStore, BlobWriter
from storage.errors import BlobNotFound, DigestMismatch, UploadNotFound
from storage.metadata import MetadataStore
from storage.records import UploadRecord

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True, slots=True)
class Started:
    """What POST /blobs/uploads/ did: either made a blob (monolithic or mount) or opened a session."""

    digest: str | None = None
    upload_id: str | None = None


class UploadService:
    def __init__(
        self,
        images: ImageService,
        meta: MetadataStore,
        blobs: BlobStore,
        clock: Callable[[], float] = time.time,
        mounting: Callable[[], bool] = lambda: True,
    ) -> None:
        self.images = images
        self.meta = meta
        self.blobs = blobs
        self.clock = clock
        # Whether cross-repository mounts link (the account setting BLOB_MOUNTING); otherwise a mount request
        # opens an upload session, as the OCI spec's fallback says.
        self.mounting = mounting

    async def start(
        self,
        name: str,
        *,
        owner: str | None,
        digest: str | None = None,
        body: AsyncIterator[bytes] | None = None,
        length: int | None = None,
        mount: str | None = None,
        mount_from: str | None = None,
    ) -> Started:
        if mount is not None:
            oci.validate_digest(mount)
            if mount_from is not None:
                oci.validate_name(mount_from)
        if digest is not None:
            oci.validate_digest(digest)
        await self.images.repository_for_push(name)

        if mount is not None and self.mounting():
            size = await self._mountable(mount, mount_from)
            if size is not None:
                await self._link(name, mount, size)
                return Started(digest=mount)
        if digest is not None and body is not None:
            size = await self._ingest(body, digest, length)
            await self._link(name, digest, size)
            return Started(digest=digest)

        upload_id = str(uuid.uuid4())
        await self.blobs.create_upload(upload_id)
        await self.meta.create_upload(UploadRecord(upload_id, name, self.clock(), owner))
        return Started(upload_id=upload_id)

    async def _link(self, name: str, digest: str, size: int) -> None:
        """Link a stored blob into the repository; when garbage collection removed the bytes in between, the
        client is told to retry, and nothing is acknowledged."""
        try:
            await self.images.link_blob(name, digest, size)
        except BlobNotFound:
            raise BlobUploadInvalid(f"blob {digest} was garbage-collected while it was uploaded; retry") from None

    async def _mountable(self, digest: str, mount_from: str | None) -> int | None:
        size = (
            await self.meta.linked_blob_size(mount_from, digest)
            if mount_from is not None
            else await self.meta.blob_size(digest)
        )
        if size is None or await self.blobs.stat(digest) is None:
            return None
        return size

    async def _ingest(self, body: AsyncIterator[bytes], digest: str, length: int | None) -> int:
        async with self.blobs.writer() as writer:
            received = await _pour(body, writer)
            if length is not None and received != length:
                raise SizeInvalid(f"Content-Length is {length} but {received} bytes arrived")
            try:
                return await writer.commit(digest)
            except DigestMismatch as e:
                raise digest_invalid(e) from None

    async def session(self, name: str, upload_id: str, owner: str | None) -> UploadRecord:
        """The session, if it is `owner`'s in repository `name` (someone else's answers exactly as a missing one)."""
        if not _UUID.fullmatch(upload_id):
            raise BlobUploadUnknown("no such upload", detail={"uuid": upload_id[:100]})
        record = await self.meta.get_upload(upload_id)
        if (
            record is None
            or record.repository != name
            or (owner is not None and record.owner is not None and record.owner != owner)
        ):
            raise BlobUploadUnknown("no such upload", detail={"uuid": upload_id})
        return record

    async def size(self, name: str, upload_id: str, owner: str | None) -> int:
        await self.session(name, upload_id, owner)
        try:
            return await self.blobs.upload_size(upload_id)
        except UploadNotFound:
            raise BlobUploadUnknown("upload data is gone", detail={"uuid": upload_id}) from None

    async def append(
        self,
        name: str,
        upload_id: str,
        body: AsyncIterator[bytes],
        *,
        content_range: str | None,
        length: int | None,
        owner: str | None,
    ) -> int:
        await self.session(name, upload_id, owner)
        offset = None
        if content_range is not None:
            start, end = oci.parse_content_range(content_range)
            if length is not None and length != end - start + 1:
                raise BlobUploadInvalid(
                    f"Content-Range {content_range} is {end - start + 1} bytes but Content-Length is {length}"
                )
            offset, length = start, end - start + 1
        try:
            async with self.blobs.resume_upload(upload_id) as writer:
                return await self._append(writer, body, offset, length)
        except UploadNotFound:
            raise BlobUploadUnknown("upload data is gone", detail={"uuid": upload_id}) from None

    @staticmethod
    async def _append(writer: BlobWriter, body: AsyncIterator[bytes], offset: int | None, length: int | None) -> int:
        """A chunk: it must start where the session ends, and be as long as it says (what arrived is kept)."""
        start = writer.size
        if offset is not None and offset != start:
            raise UploadRangeInvalid(
                f"upload is at offset {start}; chunk starts at {offset}", headers={"Range": upload_range(start)}
            )
        received = await _pour(body, writer)
        if length is not None and received != length:
            raise SizeInvalid(f"expected {length} bytes, received {received}")
        return writer.size

    async def finish(
        self,
        name: str,
        upload_id: str,
        digest: str | None,
        body: AsyncIterator[bytes] | None,
        *,
        content_range: str | None,
        length: int | None,
        owner: str | None,
    ) -> str:
        if digest is None:
            raise DigestInvalid("the digest query parameter is required to finish an upload")
        oci.validate_digest(digest)
        if body is not None:
            await self.append(name, upload_id, body, content_range=content_range, length=length, owner=owner)
        else:
            await self.session(name, upload_id, owner)
        try:
            async with self.blobs.resume_upload(upload_id) as writer:
                size = await writer.commit(digest)
        except DigestMismatch as e:
            await self.meta.delete_upload(upload_id)
            raise digest_invalid(e) from None
        except UploadNotFound:
            raise BlobUploadUnknown("upload data is gone", detail={"uuid": upload_id}) from None
        await self.meta.delete_upload(upload_id)
        await self._link(name, digest, size)
        return digest

    async def cancel(self, name: str, upload_id: str, owner: str | None) -> None:
        await self.session(name, upload_id, owner)
        await self.blobs.delete_upload(upload_id)
        await self.meta.delete_upload(upload_id)


def upload_range(size: int) -> str:
    """The `Range` header of an upload holding `size` bytes (`0-0` when empty, as Distribution sends)."""
    return f"0-{max(size - 1, 0)}"


async def _pour(body: AsyncIterator[bytes], writer: BlobWriter) -> int:
    """Write a request body; returns how many bytes it had."""
    received = 0
    async for chunk in body:
        received += len(chunk)
        await writer.write(chunk)
    return received


def digest_invalid(e: DigestMismatch) -> DigestInvalid:
    """The one wire error for bytes whose digest is not the one claimed."""
    return DigestInvalid(
        f"content digest is {e.actual}, not {e.expected}", detail={"expected": e.expected, "actual": e.actual}
    )
