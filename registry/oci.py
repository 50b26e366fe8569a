"""OCI grammar and manifest parsing: pure functions, no I/O, no clock.

Names, tags and digests follow the OCI distribution spec v1.1; manifests are parsed only as far as the
registry needs (what they reference, their subject and artifact type), and never re-serialised: the bytes a
client pushed are the bytes it gets back.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from typing import Any

from registry import jsonsafe
from registry.errors import (
    BlobUploadInvalid,
    DigestInvalid,
    ManifestInvalid,
    ManifestTooLarge,
    NameInvalid,
    RangeNotSatisfiable,
    TagInvalid,
)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

IMAGE_MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = IMAGE_MANIFEST_TYPES | INDEX_TYPES

MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # ECR's limit, and Distribution's default
MAX_NAME_LENGTH = 256
MAX_TAG_LENGTH = 128

_NAME_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"{_NAME_COMPONENT}(?:/{_NAME_COMPONENT})*")
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
DIGEST_RE = re.compile(r"([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)")
# Registered algorithms the registry verifies: name -> hex length.
ALGORITHMS = {"sha256": 64, "sha512": 128}
_HEX = re.compile(r"[a-f0-9]+")
# ASCII digits only (\d and int() take any script's digits), and no more than 18 of them (int() refuses
# more than 4300, and no blob is an exabyte).
_CONTENT_RANGE = re.compile(r"(?:bytes )?([0-9]{1,18})-([0-9]{1,18})(?:/(?:[0-9]+|\*))?")
_RANGE_NUMBER = re.compile(r"[0-9]*")
MAX_OFFSET = 10**18


# -- names, tags, digests ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)  # valid values repeat; invalid ones raise and are not cached
def validate_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH:
        raise NameInvalid(f"repository name is longer than {MAX_NAME_LENGTH} characters", detail={"name": name})
    if not NAME_RE.fullmatch(name):
        raise NameInvalid(
            "repository name must be lower-case components of [a-z0-9] separated by '.', '_', '__' or '-', "
            "joined by '/'",
            detail={"name": name},
        )
    return name


@functools.lru_cache(maxsize=4096)  # valid values repeat; invalid ones raise and are not cached
def validate_tag(tag: str) -> str:
    if not TAG_RE.fullmatch(tag):
        raise TagInvalid("tag must match [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}", detail={"tag": tag[: MAX_TAG_LENGTH + 8]})
    return tag


def is_digest(reference: str) -> bool:
    return ":" in reference


@functools.lru_cache(maxsize=4096)  # valid values repeat; invalid ones raise and are not cached
def validate_digest(digest: str) -> str:
    """Return the digest if it is well formed and uses an algorithm this registry verifies."""
    m = DIGEST_RE.fullmatch(digest)
    if not m:
        raise DigestInvalid("invalid digest format", detail={"digest": digest[:200]})
    alg, hexpart = m.groups()
    want = ALGORITHMS.get(alg)
    if want is None:
        raise DigestInvalid(
            f"unsupported digest algorithm {alg!r} (sha256 and sha512 are supported)",
            detail={"digest": digest[:200]},
        )
    if len(hexpart) != want or not _HEX.fullmatch(hexpart):
        raise DigestInvalid(f"{alg} digest must be {want} lower-case hex characters", detail={"digest": digest[:200]})
    return digest


def digest_algorithm(digest: str) -> str:
    return digest.split(":", 1)[0]


def compute_digest(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def validate_reference(reference: str) -> str:
    return validate_digest(reference) if is_digest(reference) else validate_tag(reference)


# -- ranges ----------------------------------------------------------------------------------------


def parse_content_range(value: str) -> tuple[int, int]:
    """An upload chunk's `Content-Range: <start>-<end>` (inclusive); `bytes a-b/total` is accepted too."""
    m = _CONTENT_RANGE.fullmatch(value.strip())
    if not m:
        raise BlobUploadInvalid(
            "malformed Content-Range; expected <start>-<end>", detail={"Content-Range": value[:100]}
        )
    start, end = int(m.group(1)), int(m.group(2))
    if end < start:
        raise BlobUploadInvalid("Content-Range end is before its start", detail={"Content-Range": value[:100]})
    return start, end


def _offset(digits: str) -> int:
    """ASCII digits as a byte offset; anything past MAX_OFFSET (longer than int() would parse) is MAX_OFFSET."""
    digits = digits.lstrip("0")
    return MAX_OFFSET if len(digits) > 18 else int(digits or "0")


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """A blob GET's single `Range: bytes=...` as (offset, length), None for the whole blob.

    Multiple ranges and unsatisfiable ranges raise RangeNotSatisfiable; a header that is not a bytes range
    at all is ignored, as HTTP says.
    """
    if value is None:
        return None
    value = value.strip()
    if not value.startswith("bytes="):
        return None
    spec = value[len("bytes=") :].strip()
    if "," in spec:
        raise RangeNotSatisfiable("multiple ranges are not supported", headers={"Content-Range": f"bytes */{size}"})
    first, sep, last = spec.partition("-")
    first, last = first.strip(), last.strip()
    if not sep or not _RANGE_NUMBER.fullmatch(first) or not _RANGE_NUMBER.fullmatch(last) or first == last == "":
        raise RangeNotSatisfiable("malformed range", headers={"Content-Range": f"bytes */{size}"})
    if first == "":  # suffix: the last N bytes
        n = _offset(last)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
        n = min(n, size)
        return size - n, n
    start = _offset(first)
    end = size - 1 if last == "" else min(_offset(last), size - 1)
    if start >= size or (last != "" and _offset(last) < start):
        raise RangeNotSatisfiable(
            f"range starts beyond the blob's {size} bytes", headers={"Content-Range": f"bytes */{size}"}
        )
    return start, end - start + 1


# -- manifests -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None
    urls: tuple[str, ...] = ()
    platform: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ParsedManifest:
    media_type: str
    config: Descriptor | None
    layers: tuple[Descriptor, ...]
    manifests: tuple[Descriptor, ...]
    subject: Descriptor | None
    artifact_type: str | None
    annotations: dict[str, str] | None

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    @property
    def required_blobs(self) -> tuple[str, ...]:
        """Blob digests that must already be in the repository (non-distributable layers with urls excepted)."""
        blobs = [self.config.digest] if self.config else []
        blobs += [d.digest for d in self.layers if not d.urls]
        return tuple(dict.fromkeys(blobs))

    @property
    def referenced_blobs(self) -> tuple[str, ...]:
        """Every blob digest the manifest names (what garbage collection must keep)."""
        blobs = [self.config.digest] if self.config else []
        blobs += [d.digest for d in self.layers]
        return tuple(dict.fromkeys(blobs))

    @property
    def referenced_manifests(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(d.digest for d in self.manifests))


def media_type_of(content_type: str | None) -> str | None:
    if not content_type:
        return None
    return content_type.split(";", 1)[0].strip().lower() or None


def _descriptor(obj: Any, where: str) -> Descriptor:
    if not isinstance(obj, dict):
        raise ManifestInvalid(f"{where} must be a descriptor object")
    mt, digest, size = obj.get("mediaType"), obj.get("digest"), obj.get("size")
    if not isinstance(mt, str) or not mt:
        raise ManifestInvalid(f"{where}.mediaType must be a non-empty string")
    if not isinstance(digest, str):
        raise ManifestInvalid(f"{where}.digest must be a string")
    try:
        validate_digest(digest)
    except DigestInvalid as e:
        raise ManifestInvalid(f"{where}.digest: {e.message}") from None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestInvalid(f"{where}.size must be a non-negative integer")
    urls = obj.get("urls") or ()
    if not isinstance(urls, list | tuple) or not all(isinstance(u, str) for u in urls):
        raise ManifestInvalid(f"{where}.urls must be a list of strings")
    annotations = obj.get("annotations")
    if annotations is not None and not _is_str_map(annotations):
        raise ManifestInvalid(f"{where}.annotations must map strings to strings")
    artifact_type = obj.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise ManifestInvalid(f"{where}.artifactType must be a string")
    platform = obj.get("platform")
    if platform is not None and not isinstance(platform, dict):
        raise ManifestInvalid(f"{where}.platform must be an object")
    return Descriptor(mt, digest, size, artifact_type, annotations, tuple(urls), platform)


def _is_str_map(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str) for k, x in v.items())


def parse_manifest(body: bytes, content_type: str | None) -> ParsedManifest:
    """Validate a pushed manifest and say what it references.

    The media type is the request's Content-Type when that names a manifest type, else the document's
    `mediaType`, else inferred from its shape (as the OCI spec allows for documents without `mediaType`).
    """
    if len(body) > MAX_MANIFEST_BYTES:
        raise ManifestTooLarge(f"manifest is {len(body)} bytes; the limit is {MAX_MANIFEST_BYTES}")
    try:
        doc = jsonsafe.loads(body)
    except ValueError as e:  # not JSON, not UTF-8, or nested too deep
        raise ManifestInvalid(f"manifest is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ManifestInvalid("manifest must be a JSON object")
    if doc.get("schemaVersion") != 2:
        raise ManifestInvalid("only schemaVersion 2 manifests are supported (Docker schema 1 is not)")
    declared = doc.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise ManifestInvalid("mediaType must be a string")
    header = media_type_of(content_type)
    if header in (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED):
        raise ManifestInvalid("Docker schema 1 manifests are not supported")
    if header in MANIFEST_TYPES:
        if declared is not None and declared != header:
            raise ManifestInvalid(f"Content-Type {header} does not match the manifest's mediaType {declared}")
        media_type = header
    elif declared in MANIFEST_TYPES:
        media_type = declared
    elif declared is not None:
        raise ManifestInvalid(f"unsupported manifest mediaType {declared}")
    elif "manifests" in doc:
        media_type = OCI_INDEX
    elif "config" in doc:
        media_type = OCI_MANIFEST
    else:
        raise ManifestInvalid("cannot tell the manifest's type: no mediaType, config or manifests")

    annotations = doc.get("annotations")
    if annotations is not None and not _is_str_map(annotations):
        raise ManifestInvalid("annotations must map strings to strings")
    artifact_type = doc.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise ManifestInvalid("artifactType must be a string")
    subject = _descriptor(doc["subject"], "subject") if doc.get("subject") is not None else None

    config: Descriptor | None = None
    layers: tuple[Descriptor, ...] = ()
    manifests: tuple[Descriptor, ...] = ()
    if media_type in INDEX_TYPES:
        raw = doc.get("manifests")
        if not isinstance(raw, list):
            raise ManifestInvalid("an index must have a manifests list")
        manifests = tuple(_descriptor(m, f"manifests[{i}]") for i, m in enumerate(raw))
    else:
        config = _descriptor(doc.get("config"), "config")
        raw = doc.get("layers")
        if not isinstance(raw, list):
            raise ManifestInvalid("an image manifest must have a layers list")
        layers = tuple(_descriptor(layer, f"layers[{i}]") for i, layer in enumerate(raw))
        if artifact_type is None:
            artifact_type = config.media_type
    return ParsedManifest(media_type, config, layers, manifests, subject, artifact_type, annotations)


# -- content negotiation ---------------------------------------------------------------------------


def accepts(accept_headers: list[str], media_type: str) -> bool:
    """Cached wrapper of `_accepts` (clients send the same few Accept headers over and over)."""
    return _accepts(tuple(accept_headers), media_type)


@functools.lru_cache(maxsize=512)
def _accepts(accept_headers: tuple[str, ...], media_type: str) -> bool:
    """Whether a manifest of `media_type` may be served to a client that sent these Accept headers.

    No Accept header, a wildcard, or the type itself: yes. A client that lists only other manifest types
    gets a 404 rather than a document it said it cannot read (the registry never converts manifests, since
    conversion changes digests).
    """
    types: set[str] = set()
    for header in accept_headers:
        for part in header.split(","):
            mt, _, params = part.partition(";")
            mt = mt.strip().lower()
            if not mt:
                continue
            if _quality(params) <= 0:
                continue
            types.add(mt)
    if not types:
        return True
    return bool(types & {"*/*", "application/*", media_type, "application/json"})


def _quality(params: str) -> float:
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "q":
            try:
                return float(value)
            except ValueError:
                return 1.0
    return 1.0
