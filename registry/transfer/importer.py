"""`moorage import`: plan what the source holds, store the blobs the store lacks, then create the repositories,
link the blobs and store the manifests.

Import verifies every blob against its digest while it streams it into the store (a private file, fsynced,
renamed: a killed import leaves no partial blob), skips blobs already stored, and only then creates the
repository, links the blobs and stores the manifests byte-exact, children first and tags last, through the same
checks as a push."""

from __future__ import annotations

import asyncio
import gzip
import tarfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry import oci, sigstore
from registry.errors import NameUnknown, RegistryError
from registry.service.images import tag_is_immutable
from registry.transfer.common import CHUNK, INDEX_FILE, TransferError, parse_reference
from registry.transfer.docker_archive import plan_docker
from registry.transfer.planning import Counts, MissingContent, Plan, plan_oci
from registry.transfer.progress import Progress
from registry.transfer.sources import Source, open_source
from storage.errors import BlobNotFound, DigestMismatch

if TYPE_CHECKING:
    from registry.app import Services


@dataclass
class ImportRequest:
    source: Source
    repository: str | None
    tag: str | None


def prepare_import(source_path: Path, reference: str | None) -> ImportRequest:
    """Check the arguments and open the source (before the data dir is touched)."""
    repository, tag = parse_reference(reference) if reference else (None, None)
    return ImportRequest(open_source(source_path), repository, tag)


async def import_source(services: Services, request: ImportRequest, progress: Progress) -> dict[str, Any]:
    """`moorage import SOURCE [REPOSITORY[:TAG]]`."""
    started = time.monotonic()
    source, repository, tag = request.source, request.repository, request.tag
    counts = Counts()
    try:
        try:
            plan = await _plan(services, source, repository, tag, progress, counts)
            pending = [digest for digest in plan.blobs if digest not in plan.stored]
            progress.plan(len(pending), sum(plan.blobs[digest][0] for digest in pending))
            await _ingest_blobs(services, source, plan, pending, progress, counts)
            await _commit(services, source, plan, progress, counts)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise TransferError(f"{source}: corrupt or truncated archive ({e})") from None
    finally:
        await asyncio.to_thread(source.close)
        progress.close()
    return {
        "source": str(source.path),
        "format": {"oci": "oci-layout" if source.kind == "directory" else "oci-archive"}.get(
            plan.kind, "docker-archive"
        ),
        "images": [
            {
                "repository": image.repository,
                "tags": image.tags,
                "digest": image.digest,
                "mediaType": image.media_type,
                "referrers": image.referrers,
            }
            for image in plan.images
        ],
        "manifests": len(plan.manifests),
        "blobs": len(plan.blobs),
        "blobsStored": counts.stored,
        "blobsSkipped": counts.skipped,
        "bytesStored": counts.bytes,
        "seconds": round(time.monotonic() - started, 3),
    }


async def _plan(
    services: Services, source: Source, repository: str | None, tag: str | None, progress: Progress, counts: Counts
) -> Plan:
    is_oci = source.resolve(INDEX_FILE) is not None
    is_docker = source.resolve("manifest.json") is not None
    if not is_oci and not is_docker:
        raise TransferError(
            f"{source}: not an OCI image layout, an OCI archive or a docker save tarball "
            "(it has neither index.json nor manifest.json)"
        )
    if is_oci:
        try:
            return await asyncio.to_thread(plan_oci, source, repository, tag)
        except MissingContent:
            if not is_docker:  # a `docker save` that is also a layout may omit other platforms' content
                raise
    return await plan_docker(services, source, repository, tag, progress, counts)


async def _ingest_blobs(
    services: Services, source: Source, plan: Plan, digests: list[str], progress: Progress, counts: Counts
) -> None:
    """Store the blobs the store does not have, verifying each against its digest (atomically, one by one)."""
    todo = []
    for digest in digests:
        size, _ = plan.blobs[digest]
        info = await services.blobs.stat(digest)
        have = None if info is None else info.size
        if have == size:
            counts.skipped += 1
            progress.blob_done(size)
        elif have is not None:
            raise TransferError(f"stored blob {digest} is {have} bytes, not {size}: the data dir is damaged")
        else:
            todo.append(digest)
    by_path = {plan.blobs[blob_digest][1]: blob_digest for blob_digest in todo}
    files = source.stream(list(by_path))
    while (item := await asyncio.to_thread(next, files, None)) is not None:
        path, fh = item
        digest = by_path[path]
        size = plan.blobs[digest][0]
        async with services.blobs.writer() as writer:
            while chunk := await asyncio.to_thread(fh.read, CHUNK):
                progress.add(len(chunk))
                await writer.write(chunk)
            if writer.size != size:
                raise TransferError(f"{source}: blob {digest} is {writer.size} bytes, not the {size} expected")
            try:
                await writer.commit(digest)
            except DigestMismatch as e:
                raise TransferError(
                    f"{source}: blob {digest} does not match its digest (its content is {e.actual})"
                ) from None
        counts.stored += 1
        counts.bytes += size
        progress.blob_done()
        plan.stored.add(digest)


async def _commit(services: Services, source: Source, plan: Plan, progress: Progress, counts: Counts) -> None:
    """Create repositories, link blobs, store manifests (children first) and move tags (last)."""
    for image in plan.images:  # refuse before writing anything when an immutable tag is in the way
        try:
            existing = await services.images.repository(image.repository)
        except NameUnknown:
            continue
        for tag in image.tags:
            current = await services.meta.resolve_tag(image.repository, tag)
            if current and current != image.digest and tag_is_immutable(existing.settings, tag):
                raise TransferError(
                    f"{image.repository}:{tag} is immutable and already points at {current}; not importing"
                )
    for image in plan.images:
        rule = services.pull_through.rule_for(image.repository)
        await services.images.create_repository(image.repository, "PULL_THROUGH_CACHE" if rule else "CREATE_ON_PUSH")
        for digest in image.blobs:
            await _link(services, source, plan, image.repository, digest, progress, counts)
        for digest in image.manifests:
            media_type, body = plan.manifests[digest]
            if digest == image.digest:
                tags = tuple(image.tags)
            else:
                tags = await _attachment_tag(services, image.repository, body)
            await services.images.put_manifest(image.repository, digest, body, media_type, tags)
        if rule is not None:  # a pre-warmed cache: confirmed upstream now (offline mode serves it regardless)
            for tag in image.tags:
                await services.meta.set_tag_checked(image.repository, tag, time.time())


async def _attachment_tag(services: Services, repository: str, body: bytes) -> tuple[str, ...]:
    """A referrer that is a cosign signature attachment gets back the tag containers/image finds it by
    (`sha256-<subject hex>.sig`: an export of one tag carries it untagged), unless the repository has that tag."""
    parsed = oci.parse_manifest(body, None)
    if parsed.subject is None or not sigstore.is_signature_manifest(parsed):
        return ()
    tag = sigstore.attachment_tag(parsed.subject.digest)
    try:
        oci.validate_tag(tag)
    except RegistryError:  # (a sha512 subject's would be too long: no tag)
        return ()
    return () if await services.meta.resolve_tag(repository, tag) else (tag,)


async def _link(
    services: Services, source: Source, plan: Plan, repository: str, digest: str, progress: Progress, counts: Counts
) -> None:
    size = plan.blobs[digest][0]
    try:
        await services.images.link_blob(repository, digest, size)
    except BlobNotFound:
        # Garbage collection removed it (an unreferenced file older than its grace period) since it was
        # stored or found: store it again.
        progress.plan(1, size)
        await _ingest_blobs(services, source, plan, [digest], progress, counts)
        await services.images.link_blob(repository, digest, size)
