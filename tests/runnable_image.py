"""A small image that real runtimes accept: a gzipped tar layer whose diff_id the config names, a config for this
machine's platform and a Docker schema 2 manifest. docker, podman and containerd unpack it (a pull verifies the
layer against the config), and its image id is the config's digest."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import tarfile
from dataclasses import dataclass

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
ARCH = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), platform.machine())


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class RunnableImage:
    config: bytes
    layer: bytes  # gzipped tar
    manifest: bytes
    files: dict[str, bytes]  # path in the image -> content
    media_type: str = DOCKER_MANIFEST

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    @property
    def image_id(self) -> str:
        """What `docker image inspect --format {{.Id}}` (and podman) say: the config's digest."""
        return sha256(self.config)

    @property
    def blobs(self) -> list[bytes]:
        return [self.config, self.layer]


def runnable_image(label: str = "", payload: int = 32 * 1024) -> RunnableImage:
    """An image whose layer holds a text file and `payload` random bytes (its gzipped size is about that)."""
    nonce = os.urandom(8).hex()
    files = {
        "moorage/hello.txt": f"hello from moorage {label} {nonce}\n".encode(),
        "moorage/blob.bin": os.urandom(payload),
    }
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("moorage")
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
        tar.addfile(info)
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    layer = gzip.compress(tar_bytes, mtime=0)
    config = json.dumps(
        {
            "architecture": ARCH,
            "os": "linux",
            "config": {"Labels": {"moorage.test": nonce}},
            "rootfs": {"type": "layers", "diff_ids": [sha256(tar_bytes)]},
            "history": [{"created_by": "tests/runnable_image.py"}],
        },
        sort_keys=True,
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "size": len(config), "digest": sha256(config)},
            "layers": [{"mediaType": DOCKER_LAYER_GZIP, "size": len(layer), "digest": sha256(layer)}],
        },
        indent=3,
    ).encode()
    return RunnableImage(config, layer, manifest, files)
