"""Build OCI image layouts on disk (oci-layout, index.json, blobs/sha256/...) and read them back.

Real-client tests (skopeo) copy these layouts into the registry and back out again, then compare
bytes. Manifests and indexes are deliberately written with non-canonical JSON (indent=3, odd key
order) so that any re-serialisation on the registry side would change a digest and be caught.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.oci import OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, digest_of

REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}


def _json_manifest(doc: dict) -> bytes:
    """Non-canonical JSON: indented with 3 spaces and a trailing newline."""
    return (json.dumps(doc, indent=3) + "\n").encode()


def make_layer(n_files: int = 3, file_size: int = 4096) -> tuple[bytes, bytes, dict[str, bytes]]:
    """A real gzip-compressed tar layer with random files.

    Returns (compressed, uncompressed, {path: content}); the diff_id is the digest of `uncompressed`.
    """
    files: dict[str, bytes] = {}
    raw = io.BytesIO()
    tag = os.urandom(4).hex()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        d = tarfile.TarInfo(f"data-{tag}")
        d.type = tarfile.DIRTYPE
        d.mode = 0o755
        tar.addfile(d)
        for i in range(n_files):
            content = os.urandom(file_size + i)
            name = f"data-{tag}/file{i}.bin"
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(content))
            files[name] = content
    uncompressed = raw.getvalue()
    compressed = gzip.compress(uncompressed, compresslevel=6, mtime=0)
    return compressed, uncompressed, files


@dataclass
class LayoutImage:
    """A single-platform image as written into a layout."""

    manifest: bytes
    config: bytes
    layers: list[bytes]
    diff_ids: list[str]
    files: dict[str, bytes] = field(default_factory=dict)
    platform: dict = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return digest_of(self.manifest)

    @property
    def blobs(self) -> dict[str, bytes]:
        out = {digest_of(b): b for b in [self.config, *self.layers]}
        out[self.digest] = self.manifest
        return out


@dataclass
class LayoutIndex:
    """A multi-platform image (an OCI index and its child images) as written into a layout."""

    index: bytes
    children: list[LayoutImage]

    @property
    def digest(self) -> str:
        return digest_of(self.index)

    @property
    def blobs(self) -> dict[str, bytes]:
        out: dict[str, bytes] = {self.digest: self.index}
        for child in self.children:
            out.update(child.blobs)
        return out


def _init_layout(path: Path) -> None:
    (path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (path / "oci-layout").write_text(json.dumps(LAYOUT_VERSION))
    if not (path / "index.json").exists():
        (path / "index.json").write_bytes(_json_manifest({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}))


def _write_blob(path: Path, data: bytes) -> str:
    d = digest_of(data)
    alg, hexd = d.split(":", 1)
    p = path / "blobs" / alg / hexd
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return d


def _tag(path: Path, media_type: str, data: bytes, tag: str) -> None:
    """Add (or replace) the index.json entry carrying ref.name `tag`."""
    idx = json.loads((path / "index.json").read_text())
    idx["manifests"] = [m for m in idx["manifests"] if m.get("annotations", {}).get(REF_NAME) != tag]
    idx["manifests"].append(
        {
            "mediaType": media_type,
            "digest": digest_of(data),
            "size": len(data),
            "annotations": {REF_NAME: tag},
        }
    )
    (path / "index.json").write_bytes(_json_manifest(idx))


def _build_image(path: Path, n_layers: int, arch: str, os_name: str = "linux") -> LayoutImage:
    layers: list[bytes] = []
    diff_ids: list[str] = []
    files: dict[str, bytes] = {}
    for i in range(n_layers):
        compressed, uncompressed, layer_files = make_layer(n_files=2 + i, file_size=3000 + 1000 * i)
        layers.append(compressed)
        diff_ids.append(digest_of(uncompressed))
        files.update(layer_files)
    config_doc = {
        "created": "2024-01-01T00:00:00Z",
        "architecture": arch,
        "os": os_name,
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Labels": {"moorage.test.nonce": os.urandom(8).hex()}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": f"layer {i}"} for i in range(n_layers)],
    }
    config = json.dumps(config_doc, indent=2).encode()
    # Key order deliberately not sorted ("mediaType" before "schemaVersion") plus indent=3.
    manifest_doc = {
        "mediaType": OCI_MANIFEST,
        "schemaVersion": 2,
        "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": digest_of(b), "size": len(b)} for b in layers],
        "annotations": {"moorage.test.arch": arch},
    }
    manifest = _json_manifest(manifest_doc)
    for blob in [config, *layers, manifest]:
        _write_blob(path, blob)
    return LayoutImage(manifest, config, layers, diff_ids, files, {"architecture": arch, "os": os_name})


def write_single_image(path: Path | str, tag: str = "latest", n_layers: int = 3, arch: str = "amd64") -> LayoutImage:
    """Write a single-platform image (config + `n_layers` gzip tar layers) tagged `tag` into `path`."""
    path = Path(path)
    _init_layout(path)
    img = _build_image(path, n_layers, arch)
    _tag(path, OCI_MANIFEST, img.manifest, tag)
    return img


def write_multi_platform_image(
    path: Path | str, tag: str = "latest", arches: tuple[str, ...] = ("amd64", "arm64"), n_layers: int = 2
) -> LayoutIndex:
    """Write an OCI index over one image per architecture (each with its own config/layers) into `path`."""
    path = Path(path)
    _init_layout(path)
    children = [_build_image(path, n_layers, arch) for arch in arches]
    index_doc = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": c.digest,
                "size": len(c.manifest),
                "platform": c.platform,
            }
            for c in children
        ],
        "annotations": {"moorage.test.kind": "multi-platform"},
    }
    index = _json_manifest(index_doc)
    _write_blob(path, index)
    _tag(path, OCI_INDEX, index, tag)
    return LayoutIndex(index, children)


@dataclass
class ReadLayout:
    top_digest: str
    top_media_type: str
    blobs: dict[str, bytes]


def read_layout(path: Path | str, tag: str) -> ReadLayout:
    """Read a layout back: the manifest/index digest tagged `tag` and {digest: bytes} of every blob.

    Every blob file's content is checked against its file name.
    """
    path = Path(path)
    layout = json.loads((path / "oci-layout").read_text())
    assert layout.get("imageLayoutVersion") == "1.0.0", layout
    idx = json.loads((path / "index.json").read_text())
    tops = [m for m in idx.get("manifests", []) if m.get("annotations", {}).get(REF_NAME) == tag]
    assert len(tops) == 1, f"expected one entry tagged {tag!r} in index.json, got {idx}"
    blobs: dict[str, bytes] = {}
    for alg_dir in sorted((path / "blobs").iterdir()):
        for f in sorted(alg_dir.iterdir()):
            data = f.read_bytes()
            d = f"{alg_dir.name}:{f.name}"
            assert digest_of(data, alg_dir.name) == d, f"blob {f} does not match its digest"
            blobs[d] = data
    top = tops[0]
    assert top["digest"] in blobs, f"tagged digest {top['digest']} missing from blobs/"
    assert top["size"] == len(blobs[top["digest"]]), top
    return ReadLayout(top["digest"], top["mediaType"], blobs)


def reachable(blobs: dict[str, bytes], digest: str) -> set[str]:
    """Digests reachable from a manifest/index `digest` (itself included), walking only `blobs`."""
    seen: set[str] = set()
    todo = [digest]
    while todo:
        d = todo.pop()
        if d in seen:
            continue
        seen.add(d)
        doc = json.loads(blobs[d])
        if doc.get("mediaType") == OCI_INDEX or "manifests" in doc:
            todo.extend(m["digest"] for m in doc["manifests"])
        else:
            seen.add(doc["config"]["digest"])
            seen.update(layer["digest"] for layer in doc["layers"])
    return seen
