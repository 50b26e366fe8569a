"""What the console's pages show, from records (pure: no I/O, `now` is an argument where time matters).

An image list is drawn as a tree: an index with its platforms under it, and referrers (signatures, SBOMs,
attestations: manifests whose `subject` is another image) under their subject, as ECR's console and `oras
discover` show them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from registry import oci
from registry.errors import RegistryError
from storage.records import ImageRecord, ManifestRecord

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
NONE = "\N{EN DASH}"  # what a page shows for no value
# Config media types of plain container images: an artifactType of one of these says nothing worth showing.
IMAGE_CONFIGS = frozenset(
    {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
)


def human_size(n: int | None) -> str:
    if n is None:
        return NONE
    size = float(n)
    for unit in _UNITS:
        if size < 1024 or unit == _UNITS[-1]:
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def timestamp(t: float | None) -> str:
    """An epoch time as UTC, to the second ("2025-01-31 12:00:00 UTC"); a dash for none."""
    if not t:
        return NONE
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def short_digest(digest: str) -> str:
    """sha256:0123456789ab (12 hex digits, as docker shows image ids)."""
    algorithm, _, hex_part = digest.partition(":")
    return f"{algorithm}:{hex_part[:12]}" if hex_part else digest


def artifact_kind(artifact_type: str | None, media_type: str = "") -> str:
    """What a referrer is, in a word, from its artifactType (cosign, Notation, SPDX, CycloneDX, in-toto)."""
    kind = (artifact_type or media_type or "").lower()
    if "signature" in kind or "cosign" in kind or "notary" in kind:
        return "signature"
    if "spdx" in kind or "cyclonedx" in kind or "sbom" in kind or "syft" in kind:
        return "SBOM"
    if "in-toto" in kind or "intoto" in kind or "attestation" in kind or "provenance" in kind or "slsa" in kind:
        return "attestation"
    return "artifact"


def platform_of(descriptor: Mapping[str, Any]) -> str:
    """linux/arm64/v8 from an index entry's platform (its annotations' "unknown/unknown" for attestations)."""
    platform = descriptor.get("platform") or {}
    if not isinstance(platform, dict):
        return "unknown"
    parts = [str(platform.get("os") or "?"), str(platform.get("architecture") or "?")]
    if platform.get("variant"):
        parts.append(str(platform["variant"]))
    return "/".join(parts)


# -- the image tree of a repository page -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Platform:
    name: str  # linux/amd64
    digest: str
    size: int
    row: ImageRow | None  # the child's own row (its record, its referrers), when it is stored in the repository


@dataclass(slots=True)
class ImageRow:
    image: ImageRecord
    platforms: list[Platform] = field(default_factory=list)  # an index's manifests
    referrers: list[ImageRow] = field(default_factory=list)  # what has this image as its subject

    @property
    def artifact_type(self) -> str | None:
        """The artifactType worth showing (a plain image's config type is not)."""
        value = self.image.artifact_type
        return value if value and value not in IMAGE_CONFIGS else None

    @property
    def kind(self) -> str:
        if self.image.subject:
            return artifact_kind(self.image.artifact_type, self.image.config_media_type or "")
        return "index" if self.image.media_type in oci.INDEX_TYPES else "image"


def image_tree(images: Sequence[ImageRecord], indexes: Mapping[str, bytes]) -> list[ImageRow]:
    """`images` as rows: an index's platforms under it (`indexes`: the index bodies by digest), referrers under
    their subject (anywhere in the tree: a platform's too), the rest at the top level in the order given. A
    platform manifest shows under every index that lists it and not on its own; a referrer whose subject is not
    among `images` is a row of its own."""
    rows = {img.digest: ImageRow(img) for img in images}
    children: set[str] = set()
    for digest, body in indexes.items():
        row = rows.get(digest)
        if row is None:
            continue
        for entry in _index_entries(body):
            child = str(entry.get("digest", ""))
            size = entry.get("size")
            row.platforms.append(
                Platform(platform_of(entry), child, size if isinstance(size, int) else 0, rows.get(child))
            )
            if child in rows and child != digest:
                children.add(child)
    top: list[ImageRow] = []
    for img in images:
        row = rows[img.digest]
        if img.subject and img.subject in rows and img.subject != img.digest:
            rows[img.subject].referrers.append(row)
        elif img.digest not in children:
            top.append(row)
    return top


def _index_entries(body: bytes) -> list[dict[str, Any]]:
    try:
        doc = json.loads(body)
    except ValueError:
        return []
    manifests = doc.get("manifests") if isinstance(doc, dict) else None
    return [m for m in manifests if isinstance(m, dict)] if isinstance(manifests, list) else []


# -- an image page -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Layer:
    digest: str
    size: int
    media_type: str


@dataclass(frozen=True, slots=True)
class ManifestView:
    digest: str  # the digest it is stored under
    computed: str  # sha256 (or the digest's algorithm) of the stored bytes
    pretty: str  # the manifest as indented JSON (its bytes are what `computed` hashes, not this)
    size: int
    media_type: str
    artifact_type: str | None
    config: Layer | None
    layers: tuple[Layer, ...]
    platforms: tuple[tuple[str, str, int], ...]  # an index's entries: (platform, digest, size)
    subject: str | None
    annotations: Mapping[str, str]
    error: str | None = None  # the stored bytes do not parse (shown, not hidden)

    @property
    def verified(self) -> bool:
        return self.digest == self.computed

    @property
    def total_size(self) -> int:
        return sum(layer.size for layer in self.layers)


def manifest_view(record: ManifestRecord) -> ManifestView:
    algorithm = oci.digest_algorithm(record.digest) if oci.is_digest(record.digest) else "sha256"
    computed = "sha256:" + hashlib.sha256(record.body).hexdigest()
    if algorithm != "sha256":
        computed = oci.compute_digest(record.body, algorithm)
    try:
        pretty = json.dumps(json.loads(record.body), indent=2, ensure_ascii=False)
    except ValueError:
        pretty = record.body.decode("utf-8", errors="replace")
    try:
        parsed = oci.parse_manifest(record.body, record.media_type)
    except RegistryError as e:
        return ManifestView(
            record.digest,
            computed,
            pretty,
            len(record.body),
            record.media_type,
            None,
            None,
            (),
            (),
            None,
            {},
            e.message,
        )

    def layer(d: oci.Descriptor) -> Layer:
        return Layer(d.digest, d.size, d.media_type)

    return ManifestView(
        digest=record.digest,
        computed=computed,
        pretty=pretty,
        size=len(record.body),
        media_type=parsed.media_type,
        artifact_type=parsed.artifact_type if parsed.artifact_type not in IMAGE_CONFIGS else None,
        config=layer(parsed.config) if parsed.config else None,
        layers=tuple(layer(d) for d in parsed.layers),
        platforms=tuple(
            (platform_of(e), str(e.get("digest", "")), int(e.get("size") or 0)) for e in _index_entries(record.body)
        ),
        subject=parsed.subject.digest if parsed.subject else None,
        annotations=parsed.annotations or {},
    )


@dataclass(frozen=True, slots=True)
class ConfigView:
    os: str
    architecture: str
    created: str
    user: str
    workdir: str
    env: tuple[str, ...]
    entrypoint: tuple[str, ...] | None
    cmd: tuple[str, ...] | None
    exposed_ports: tuple[str, ...]
    labels: tuple[tuple[str, str], ...]
    history: tuple[tuple[str, str, bool], ...]  # (created, created_by, empty_layer)
    raw: str  # the config as indented JSON


def config_view(body: bytes) -> ConfigView | None:
    """An image config (`application/vnd.oci.image.config.v1+json` or Docker's); None if it is not JSON."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    runtime = doc.get("config") if isinstance(doc.get("config"), dict) else {}
    assert isinstance(runtime, dict)

    def strings(value: object) -> tuple[str, ...] | None:
        if isinstance(value, list):
            return tuple(str(v) for v in value)
        if isinstance(value, str):
            return (value,)
        return None

    labels = runtime.get("Labels") if isinstance(runtime.get("Labels"), dict) else {}
    assert isinstance(labels, dict)
    history = doc.get("history") if isinstance(doc.get("history"), list) else []
    assert isinstance(history, list)
    ports = runtime.get("ExposedPorts") if isinstance(runtime.get("ExposedPorts"), dict) else {}
    assert isinstance(ports, dict)
    return ConfigView(
        os=str(doc.get("os") or ""),
        architecture="/".join(str(doc[k]) for k in ("architecture", "variant") if doc.get(k)),
        created=str(doc.get("created") or ""),
        user=str(runtime.get("User") or ""),
        workdir=str(runtime.get("WorkingDir") or ""),
        env=strings(runtime.get("Env")) or (),
        entrypoint=strings(runtime.get("Entrypoint")),
        cmd=strings(runtime.get("Cmd")),
        exposed_ports=tuple(sorted(str(p) for p in ports)),
        labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
        history=tuple(
            (
                str(h.get("created") or ""),
                str(h.get("created_by") or h.get("comment") or ""),
                bool(h.get("empty_layer")),
            )
            for h in history
            if isinstance(h, dict)
        ),
        raw=json.dumps(doc, indent=2, ensure_ascii=False),
    )


def command_line(parts: Iterable[str] | None) -> str:
    """An exec-form command as one line, JSON-quoted as a Dockerfile writes it."""
    return json.dumps(list(parts), ensure_ascii=False) if parts is not None else NONE


def pretty_json(text: str | None) -> str:
    """A stored (minified) policy document indented for an editor; the text as it is if it is not JSON."""
    if not text:
        return ""
    try:
        return json.dumps(json.loads(text), indent=2)
    except ValueError:
        return text
