"""Benchmark content written to disk: OCI image layouts (for skopeo) and raw blobs, streamed with bounded memory.

Layers are uncompressed tar archives of random (incompressible) bytes, so no client or server spends time on
gzip and every layer has its own digest. Manifests use OCI media types, which both registries store as is.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
# What a pulling client sends: Distribution answers 404 to an OCI manifest GET without it.
ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])
REF_NAME = "org.opencontainers.image.ref.name"
CHUNK = 1 << 20
MiB = 1 << 20


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Image:
    """An image written into an OCI layout at `layout` under `tag`."""

    layout: Path
    tag: str
    manifest: bytes
    config_digest: str
    layer_digests: tuple[str, ...]
    layer_sizes: tuple[int, ...]

    @property
    def digest(self) -> str:
        return digest_of(self.manifest)

    @property
    def blob_digests(self) -> tuple[str, ...]:
        return (self.config_digest, *self.layer_digests)

    def blob_path(self, digest: str) -> Path:
        return self.layout / "blobs" / "sha256" / digest.split(":", 1)[1]

    @property
    def ref(self) -> str:
        """The skopeo source name of the image."""
        return f"oci:{self.layout}:{self.tag}"


def _write_blob_bytes(layout: Path, data: bytes) -> str:
    digest = digest_of(data)
    path = layout / "blobs" / "sha256" / digest.split(":", 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


def write_random_file(path: Path, size: int) -> str:
    """`size` random bytes at `path`, written 1 MiB at a time; returns the digest."""
    hasher = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            chunk = os.urandom(min(CHUNK, left))
            hasher.update(chunk)
            fh.write(chunk)
            left -= len(chunk)
    return "sha256:" + hasher.hexdigest()


def write_tar_layer(layout: Path, payload: int, name: str) -> tuple[str, int]:
    """An uncompressed tar holding one file of `payload` random bytes, as a blob of `layout`."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    tmp = blobs / f".partial-{os.getpid()}-{name.replace('/', '_')}"
    info = tarfile.TarInfo(name)
    info.size = payload
    info.mode = 0o644
    info.mtime = 1_700_000_000
    hasher = hashlib.sha256()
    size = 0
    with open(tmp, "wb") as fh:

        def put(data: bytes) -> None:
            nonlocal size
            hasher.update(data)
            fh.write(data)
            size += len(data)

        put(info.tobuf(format=tarfile.GNU_FORMAT))
        left = payload
        while left > 0:
            put(os.urandom(min(CHUNK, left)))
            left -= min(CHUNK, left)
        if payload % 512:
            put(b"\0" * (512 - payload % 512))
        put(b"\0" * 1024)  # end-of-archive marker
    digest = "sha256:" + hasher.hexdigest()
    tmp.rename(blobs / digest.split(":", 1)[1])
    return digest, size


def write_image(layout: Path, tag: str, layer_payloads: list[int], label: str) -> Image:
    """An OCI layout at `layout` holding one single-platform image tagged `tag` with these layer sizes."""
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    layers = [
        write_tar_layer(layout, size, f"{label}-{i}-{os.urandom(4).hex()}.bin") for i, size in enumerate(layer_payloads)
    ]
    config = json.dumps(
        {
            "created": "2024-01-01T00:00:00Z",
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"moorage.bench": label, "nonce": os.urandom(8).hex()}},
            "rootfs": {"type": "layers", "diff_ids": [d for d, _ in layers]},
        },
        indent=2,
    ).encode()
    config_digest = _write_blob_bytes(layout, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER_TAR, "digest": d, "size": s} for d, s in layers],
        },
        indent=2,
    ).encode()
    _write_blob_bytes(layout, manifest)
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": digest_of(manifest),
                "size": len(manifest),
                "annotations": {REF_NAME: tag},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    return Image(layout, tag, manifest, config_digest, tuple(d for d, _ in layers), tuple(s for _, s in layers))
