"""`moorage export`: resolve the images named, gather their manifests, children, blobs and referrers from the
store (or through a pull-through cache), and hand them to a writer.

Export copies stored bytes: manifests are written exactly as stored (never re-serialised) and every blob is
hashed while it is copied, so a damaged store is refused rather than exported.

skopeo up to 1.18 (containers/image before 5.35: Debian 12's skopeo 1.9, for one) finds an image of a layout by
name (`oci:DIR:team/app:1`) only among `index.json` entries typed as an OCI manifest or OCI index: a Docker schema
2 manifest or manifest list named there is "no descriptor found", even in a layout skopeo wrote itself. So beside
the entry of each Docker-typed image, export writes a second entry of the same name: a small OCI index made for it
(annotated `io.moorage.oci-index-for: <the Docker manifest's digest>`, in `index.json` and in the index itself)
that lists the Docker manifest (no platform, so any host picks it) or, for a manifest list, the list's own entries.
Through it, old skopeo copies the Docker manifest and its children byte-exact (with `--all`, it also makes the index
the top of what it copied); skopeo 1.19+ and `moorage import` take the first entry, the Docker manifest itself.
Nothing stored is converted: the Docker manifests are exported as they are."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry import oci
from registry.errors import RegistryError
from registry.service.reader import ArrivingBlob
from registry.transfer.common import OCI_INDEX_FOR, REF_NAME, REPOSITORY_ANNOTATION, TransferError, parse_reference
from registry.transfer.progress import Progress
from registry.transfer.writers import ArchiveWriter, Writer, one_chunk, writer_for
from storage.errors import BlobNotFound

if TYPE_CHECKING:
    from registry.app import Services

DOCKER_TYPES = (oci.DOCKER_MANIFEST, oci.DOCKER_LIST)


@dataclass
class ExportRequest:
    references: list[tuple[str, str | None]]
    writer: Writer


def prepare_export(references: list[str], dest: Path) -> ExportRequest:
    """Check the arguments (before the data dir is opened)."""
    parsed = [parse_reference(text) for text in references]
    writer = writer_for(dest)
    writer.check()
    return ExportRequest(parsed, writer)


async def export_images(services: Services, request: ExportRequest, progress: Progress) -> dict[str, Any]:
    """`moorage export REPOSITORY[:TAG]... DEST`."""
    started = time.monotonic()
    wanted: list[tuple[str, str]] = []
    for repository, tag in request.references:
        if tag is not None:
            wanted.append((repository, tag))
            continue
        if await services.meta.get_repository(repository) is None:
            raise TransferError(f"repository {repository} does not exist")
        tags = await _list_tags(services, repository)
        if not tags:
            raise TransferError(f"repository {repository} has no tagged images")
        wanted += [(repository, tag_name) for tag_name in tags]

    # Everything is resolved before anything is written: an unknown name writes nothing.
    manifests: dict[str, bytes] = {}
    blobs: dict[str, _ExportBlob] = {}
    entries: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    extra: dict[str, bytes] = {}  # OCI indexes made for Docker-typed images
    walked: set[tuple[str, str]] = set()
    for repository, tag in dict.fromkeys(wanted):
        ref = f"{repository}:{tag}"
        try:
            if services.pull_through.rule_for(repository) is not None:  # a cache: pulled through it if need be
                digest = (await services.pull_through.get_manifest(repository, tag)).digest
            else:
                digest = await services.images.resolve(repository, tag)
        except RegistryError as e:
            raise TransferError(f"{ref}: {e.message}") from None
        media_type, _ = await _walk_export(services, repository, digest, ref, manifests, blobs, walked)
        annotations = {REF_NAME: ref, REPOSITORY_ANNOTATION: repository}
        entries.append(
            {"mediaType": media_type, "digest": digest, "size": len(manifests[digest]), "annotations": annotations}
        )
        image = {"repository": repository, "tag": tag, "digest": digest, "mediaType": media_type}
        if media_type in DOCKER_TYPES:  # second, under the same name: what skopeo before 1.19 can find
            body = _oci_index_for(media_type, digest, manifests[digest])
            image["ociIndex"] = index_digest = oci.compute_digest(body)
            extra[index_digest] = body
            entries.append(
                {
                    "mediaType": oci.OCI_INDEX,
                    "digest": index_digest,
                    "size": len(body),
                    "annotations": {**annotations, OCI_INDEX_FOR: digest},
                }
            )
        images.append(image)
    # Referrers (signatures, SBOMs, attestations: manifests whose subject is exported) go along, untagged.
    referrers = 0
    todo_subjects = sorted(walked)
    looked: set[tuple[str, str]] = set()
    while todo_subjects:
        repository, subject = todo_subjects.pop()
        if (repository, subject) in looked:
            continue
        looked.add((repository, subject))
        for record in await services.meta.referrers(repository, subject):
            if record.digest in manifests:
                continue
            found: set[tuple[str, str]] = set()
            ref = f"{repository}@{record.digest}"
            media_type, artifact_type = await _walk_export(
                services, repository, record.digest, ref, manifests, blobs, found
            )
            entry: dict[str, Any] = {"mediaType": media_type, "digest": record.digest, "size": len(record.body)}
            if artifact_type:
                entry["artifactType"] = artifact_type
            entries.append({**entry, "annotations": {REPOSITORY_ANNOTATION: repository}})
            referrers += 1
            todo_subjects += sorted(found)

    writer, dest = request.writer, request.writer.dest
    written = skipped = nbytes = 0
    try:
        await writer.begin()
        made = {digest: body for digest, body in extra.items() if digest not in manifests}
        todo: list[tuple[str, int, Any]] = [
            (digest, len(body), body) for digest, body in {**manifests, **made}.items() if digest not in blobs
        ]
        todo += [(digest, blob.size, blob) for digest, blob in blobs.items()]
        progress.plan(len(todo), sum(size for _, size, _ in todo))
        for digest, size, what in todo:
            if writer.has(digest, size):
                skipped += 1
                progress.blob_done(size)
                continue
            chunks = one_chunk(what) if isinstance(what, bytes) else _blob_chunks(services, digest, what)
            await writer.put(digest, size, chunks, progress)
            written += 1
            nbytes += size
            progress.blob_done()
        await writer.finish(entries)
    finally:
        if isinstance(writer, ArchiveWriter):
            writer.close()
        progress.close()
    return {
        "destination": str(dest),
        "format": "oci-archive" if isinstance(writer, ArchiveWriter) else "oci-layout",
        "images": images,
        "referrers": referrers,
        "manifests": len(manifests),
        "blobs": len(todo),
        "blobsWritten": written,
        "blobsSkipped": skipped,
        "bytesWritten": nbytes,
        "seconds": round(time.monotonic() - started, 3),
    }


@dataclass
class _ExportBlob:
    size: int
    repository: str  # one repository that has it (to read it through the pull-through cache if need be)


async def _list_tags(services: Services, repository: str) -> list[str]:
    tags: list[str] = []
    last = None
    while True:
        page = await services.meta.list_tags(repository, last, 1000)
        tags += page.items
        if not page.more or not page.items:
            return tags
        last = page.items[-1]


async def _walk_export(
    services: Services,
    repository: str,
    digest: str,
    ref: str,
    manifests: dict[str, bytes],
    blobs: dict[str, _ExportBlob],
    walked: set[tuple[str, str]],
) -> tuple[str, str | None]:
    """Gather a manifest, its children and blobs; returns its media type and artifact type."""
    walked.add((repository, digest))
    try:
        record = await services.pull_through.get_manifest(repository, digest)
    except RegistryError as e:
        cached = (
            " (a pull-through cache holds only what has been pulled)"
            if services.pull_through.rule_for(repository)
            else ""
        )
        raise TransferError(f"{ref}: manifest {digest} is not available: {e.message}{cached}") from None
    parsed = oci.parse_manifest(record.body, record.media_type)
    if digest in manifests:
        return record.media_type, parsed.artifact_type
    manifests[digest] = record.body
    for child in parsed.manifests:
        await _walk_export(services, repository, child.digest, ref, manifests, blobs, walked)
    for blob in [parsed.config, *parsed.layers] if parsed.config else parsed.layers:
        if blob.digest in blobs:
            continue
        size = await services.meta.linked_blob_size(repository, blob.digest)
        if size is None:
            if blob.urls:  # non-distributable: not stored, clients fetch it from its URLs
                continue
            if services.pull_through.rule_for(repository) is None:
                raise TransferError(f"{ref}: blob {blob.digest} is missing from repository {repository}")
            size = blob.size  # not cached yet: read through the cache from the upstream
        if size != blob.size:
            raise TransferError(f"{ref}: blob {blob.digest} is stored with {size} bytes; the manifest says {blob.size}")
        blobs[blob.digest] = _ExportBlob(size, repository)
    return record.media_type, parsed.artifact_type


async def _blob_chunks(services: Services, digest: str, blob: _ExportBlob) -> AsyncIterator[bytes]:
    if await services.blobs.stat(digest) is None and services.pull_through.rule_for(blob.repository) is not None:
        try:
            opened = await services.pull_through.open_blob(blob.repository, digest)
        except RegistryError as e:
            raise TransferError(f"blob {digest} of {blob.repository} is not available: {e.message}") from None
        if isinstance(opened, ArrivingBlob):
            assert opened.chunks is not None
            async for chunk in opened.chunks:
                yield chunk
            return
    try:
        async for chunk in services.blobs.read(digest):
            yield chunk
    except BlobNotFound:
        raise TransferError(f"blob {digest} of {blob.repository} is gone from the data dir") from None


def _oci_index_for(media_type: str, digest: str, body: bytes) -> bytes:
    """The OCI index that stands in for a Docker manifest (or manifest list) in `index.json`, for readers that
    take only OCI types by name: it lists the manifest itself, without a platform (so any host selects it, as it
    would the manifest), or the list's own entries, verbatim (a nested list is not selectable). Deterministic, so
    a re-run skips it."""
    if media_type == oci.DOCKER_LIST:
        children = json.loads(body)["manifests"]
    else:
        children = [{"mediaType": media_type, "digest": digest, "size": len(body)}]
    doc = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_INDEX,
        "manifests": children,
        "annotations": {OCI_INDEX_FOR: digest},
    }
    return (json.dumps(doc, indent=2) + "\n").encode()
