"""A `docker save` tarball as an import plan: each image becomes a Docker schema 2 image whose layers are the
tarball's layer files, byte for byte (its manifest, and so its digest, is made here). A layer's digest is only
known once it is read, so layers are hashed while they are spooled into the blob store, during planning."""

from __future__ import annotations

import asyncio
import hashlib
import json
import posixpath
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from registry import oci
from registry.transfer.common import CHUNK, GZIP_MAGIC, ZSTD_MAGIC, TransferError, split_ref
from registry.transfer.planning import Candidate, Counts, Image, Plan, select_images
from registry.transfer.progress import Progress
from registry.transfer.sources import Source

if TYPE_CHECKING:
    from registry.app import Services

DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"


@dataclass
class _DockerImage:
    image: Image
    config: bytes
    config_path: str
    layers: list[str]  # source paths, resolved
    diff_ids: list[Any]


async def plan_docker(
    services: Services, source: Source, repository: str | None, tag: str | None, progress: Progress, counts: Counts
) -> Plan:
    plan = Plan("docker")
    path = source.resolve("manifest.json")
    assert path is not None
    try:
        entries = json.loads(source.read(path))
    except ValueError as e:
        raise TransferError(f"{source}: manifest.json is not JSON ({e})") from None
    if not isinstance(entries, list) or not all(
        isinstance(entry, dict)
        and isinstance(entry.get("Config"), str)
        and isinstance(entry.get("Layers"), list)
        and all(isinstance(layer_name, str) for layer_name in entry["Layers"])
        and isinstance(entry.get("RepoTags") or [], list)
        for entry in entries
    ):
        raise TransferError(f"{source}: manifest.json is not a docker save manifest (Config, RepoTags, Layers)")
    candidates: list[Candidate] = []
    for index, entry in enumerate(entries):
        names = [repo_tag for repo_tag in entry.get("RepoTags") or [] if isinstance(repo_tag, str)]
        for repo_tag in names:
            repo, tag_name = split_ref(repo_tag)
            candidates.append(Candidate(index, repo, tag_name, repo_tag))
        if not names:
            candidates.append(Candidate(index, None, None, entry["Config"]))

    # Everything that can be checked without reading layers first.
    images: list[_DockerImage] = []
    for index, repo, tags in select_images(source, candidates, repository, tag):
        entry = entries[index]
        config_path = source.resolve(entry["Config"])
        if config_path is None:
            raise TransferError(f"{source}: config {entry['Config']} is missing")
        config = source.read(config_path)
        try:
            doc = json.loads(config)
            assert isinstance(doc, dict)
        except (ValueError, AssertionError):
            raise TransferError(f"{source}: config {entry['Config']} is not a JSON object") from None
        config_digest = oci.compute_digest(config)
        named = _digest_in_name(entry["Config"])
        if named is not None and named != config_digest:
            raise TransferError(f"{source}: config {entry['Config']} does not match its digest (it is {config_digest})")
        layers = []
        for name in entry["Layers"]:
            resolved = source.resolve(name)
            if resolved is None:
                raise TransferError(f"{source}: layer {name} is missing")
            layers.append(resolved)
        diff_ids = (doc.get("rootfs") or {}).get("diff_ids") if isinstance(doc.get("rootfs"), dict) else None
        if isinstance(diff_ids, list) and len(diff_ids) != len(layers):
            raise TransferError(
                f"{source}: {entry['Config']} lists {len(diff_ids)} layers but manifest.json gives {len(layers)}"
            )
        image = Image(repo, tags)
        images.append(_DockerImage(image, config, config_path, layers, diff_ids or []))
        plan.blobs[config_digest] = (len(config), config_path)

    # Layers: hashed while they are spooled into the blob store (their digests are only known then).
    wanted = list(dict.fromkeys(layer_path for docker_image in images for layer_path in docker_image.layers))
    progress.plan(len(wanted), sum(source.size(layer_path) for layer_path in wanted))
    spooled: dict[str, tuple[str, int, str]] = {}  # path -> (digest, size, media type)
    layer_files = source.stream(wanted)
    while (item := await asyncio.to_thread(next, layer_files, None)) is not None:
        name, fh = item
        spooled[name] = await _spool_layer(services, source, name, fh, progress, counts)
    for docker_image in images:
        layer_descs = []
        for position, name in enumerate(docker_image.layers):
            digest, size, media_type = spooled[name]
            if (
                media_type == DOCKER_LAYER
                and position < len(docker_image.diff_ids)
                and docker_image.diff_ids[position] != digest
            ):
                raise TransferError(
                    f"{source}: layer {name} does not match the config's diff_id {docker_image.diff_ids[position]}"
                )
            plan.blobs[digest] = (size, name)
            plan.stored.add(digest)
            layer_descs.append({"mediaType": media_type, "size": size, "digest": digest})
        config_digest = oci.compute_digest(docker_image.config)
        body = (
            json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": oci.DOCKER_MANIFEST,
                    "config": {"mediaType": DOCKER_CONFIG, "size": len(docker_image.config), "digest": config_digest},
                    "layers": layer_descs,
                },
                indent=3,
            )
            + "\n"
        ).encode()
        digest = oci.compute_digest(body)
        plan.manifests[digest] = (oci.DOCKER_MANIFEST, body)
        image = docker_image.image
        image.digest, image.media_type, image.manifests = digest, oci.DOCKER_MANIFEST, [digest]
        image.blobs = list(dict.fromkeys([config_digest, *(str(desc["digest"]) for desc in layer_descs)]))
        plan.images.append(image)
    return plan


def _digest_in_name(name: str) -> str | None:
    """`blobs/sha256/<hex>` or `<hex>.json` name their content's sha256."""
    base = posixpath.basename(name).removesuffix(".json")
    if len(base) == 64 and all(char in "0123456789abcdef" for char in base):
        return f"sha256:{base}"
    return None


async def _spool_layer(
    services: Services, source: Source, name: str, fh: IO[bytes], progress: Progress, counts: Counts
) -> tuple[str, int, str]:
    """Copy a docker-save layer into the blob store (privately, then installed atomically under its digest).
    Its digest is known only at the end: it is hashed here while it is written (the writer hashes again)."""
    async with services.blobs.writer() as writer:
        hasher, head = hashlib.sha256(), b""
        while chunk := await asyncio.to_thread(fh.read, CHUNK):
            if not head:
                head = chunk[:4]
            hasher.update(chunk)
            progress.add(len(chunk))
            await writer.write(chunk)
        digest, size = f"sha256:{hasher.hexdigest()}", writer.size
        named = _digest_in_name(name) if name.startswith("blobs/") else None
        if named is not None and named != digest:
            raise TransferError(f"{source}: layer {name} does not match its digest (it is {digest})")
        if await services.blobs.stat(digest) is None:
            await writer.commit(digest)
            counts.stored += 1
            counts.bytes += size
        else:
            counts.skipped += 1
    progress.blob_done()
    media_type = (
        DOCKER_LAYER_GZIP if head[:2] == GZIP_MAGIC else DOCKER_LAYER_ZSTD if head == ZSTD_MAGIC else DOCKER_LAYER
    )
    return digest, size, media_type
