"""Air-gapped transfer: `moorage export` writes images out as an OCI image layout or OCI archive, and
`moorage import` loads an OCI image layout, an OCI archive or a `docker save` tarball into a repository.

Both work on a data dir while a server runs on it (through `registry.app.Services`; SQLite serializes the
writers, and the server drops its caches when it sees another process's write).

Export copies stored bytes: manifests are written exactly as stored (never re-serialised) and every blob is
hashed while it is copied, so a damaged store is refused rather than exported. A directory export writes each
blob to `<hex>.partial` and renames it, and writes `index.json` last; re-running it skips blobs already there
with the right size. An archive is written to `<DEST>.partial` with a journal of complete members
(`<DEST>.partial.json`); re-running resumes after the last complete member, and DEST appears by rename only
when it is complete.

skopeo up to 1.18 (containers/image before 5.35: Debian 12's skopeo 1.9, for one) finds an image of a layout by
name (`oci:DIR:team/app:1`) only among `index.json` entries typed as an OCI manifest or OCI index: a Docker schema
2 manifest or manifest list named there is "no descriptor found", even in a layout skopeo wrote itself. So beside
the entry of each Docker-typed image, export writes a second entry of the same name: a small OCI index made for it
(annotated `io.moorage.oci-index-for: <the Docker manifest's digest>`, in `index.json` and in the index itself)
that lists the Docker manifest (no platform, so any host picks it) or, for a manifest list, the list's own entries.
Through it, old skopeo copies the Docker manifest and its children byte-exact (with `--all`, it also makes the index
the top of what it copied); skopeo 1.19+ and `moorage import` take the first entry, the Docker manifest itself.
Nothing stored is converted: the Docker manifests are exported as they are.

Import verifies every blob against its digest while it streams it into the store (a private file, fsynced,
renamed: a killed import leaves no partial blob), skips blobs already stored, and only then creates the
repository, links the blobs and stores the manifests byte-exact, children first and tags last, through the same
checks as a push. A `docker save` tarball becomes a Docker schema 2 image whose layers are the tarball's layer
files, byte for byte (its manifest, and so its digest, is made here).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import hashlib
import json
import os
import posixpath
import tarfile
import threading
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from registry import oci
from registry.errors import NameUnknown, RegistryError
from registry.service.images import tag_is_immutable
from storage.base import BlobNotFound, DigestMismatch, SizeMismatch

if TYPE_CHECKING:
    from registry.app import Services

REF_NAME = "org.opencontainers.image.ref.name"
REPOSITORY_ANNOTATION = "io.moorage.repository"  # export names each image's repository, so import can restore it
OCI_INDEX_FOR = "io.moorage.oci-index-for"  # an OCI index export made for a Docker manifest (see above)
DOCKER_TYPES = (oci.DOCKER_MANIFEST, oci.DOCKER_LIST)
CONTAINERD_NAME = "io.containerd.image.name"  # what `docker save` (containerd image store) names images with
LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
LAYOUT_VERSION = b'{"imageLayoutVersion": "1.0.0"}\n'
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
CHUNK = 1 << 20
MAX_JSON = 64 << 20  # the largest JSON document (a docker config with a long history) read into memory
CACHED_JSON = 8 << 20  # JSON files up to this size are kept in memory while a compressed archive is scanned
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
PARTIAL = ".partial"


class TransferError(Exception):
    """Bad input or a refused operation: the message is one line for the user."""


# -- references ------------------------------------------------------------------------------------------


def parse_reference(text: str) -> tuple[str, str | None]:
    """`REPOSITORY[:TAG]` -> (repository, tag or None), both validated."""
    if "@" in text:
        raise TransferError(f"{text!r}: digest references are not supported here; use REPOSITORY[:TAG]")
    name, sep, tag = text.rpartition(":")
    if not sep or "/" in tag:
        name, tag = text, ""
    try:
        oci.validate_name(name)
        if sep and "/" not in tag:
            oci.validate_tag(tag)
    except RegistryError as e:
        raise TransferError(f"{text!r}: {e.message}") from None
    return name, tag or None


def _split_ref(ref: str | None) -> tuple[str | None, str | None]:
    """An image reference as layouts and tarballs spell it -> (repository or None, tag or None).

    `v1` is a tag; `team/app:v1` and `registry.example:5000/team/app:v1` name a repository too (the registry
    host is dropped).
    """
    if not ref:
        return None, None
    ref = ref.split("@", 1)[0]
    name, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        name, tag = ref, ""
    if not name:
        return None, tag or None
    if "/" not in name and not sep:  # a bare word: a tag
        return None, name
    parts = name.split("/")
    if len(parts) > 1 and (parts[0] == "localhost" or "." in parts[0] or ":" in parts[0]):
        parts = parts[1:]
    return "/".join(parts) or None, tag or None


# -- progress --------------------------------------------------------------------------------------------


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


class Progress:
    """Blobs and bytes done, redrawn on one line of `stream` (stderr when it is a terminal) at most 10x a second."""

    def __init__(self, verb: str, stream: IO[str] | None) -> None:
        self.verb = verb
        self.stream = stream
        self.blobs = self.total_blobs = 0
        self.bytes = self.total_bytes = 0
        self._last = 0.0
        self._drawn = False
        self._lock = threading.Lock()

    def plan(self, blobs: int, nbytes: int) -> None:
        self.total_blobs += blobs
        self.total_bytes += nbytes
        self.draw()

    def add(self, nbytes: int) -> None:
        self.bytes += nbytes
        self.draw()

    def blob_done(self, skipped_bytes: int = 0) -> None:
        self.blobs += 1
        self.bytes += skipped_bytes
        self.draw(force=self.blobs == self.total_blobs)

    def draw(self, force: bool = False) -> None:
        if self.stream is None:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        with self._lock:
            self._last = now
            self.stream.write(
                f"\r{self.verb}: {self.blobs}/{self.total_blobs} blobs, "
                f"{_size(self.bytes)} / {_size(self.total_bytes)}\x1b[K"
            )
            self.stream.flush()
            self._drawn = True

    def close(self) -> None:
        if self._drawn and self.stream is not None:
            self.draw(force=True)
            self.stream.write("\n")
            self.stream.flush()


# -- sources: a directory, a tar, a gzip-compressed tar --------------------------------------------------


def _member(name: str) -> str | None:
    """A path inside a source, normalised; None for one that leaves it (absolute, or through '..')."""
    norm = posixpath.normpath(name)
    if norm.startswith("/") or norm == ".." or norm.startswith("../") or norm == ".":
        return None
    return norm


def _blob_member(digest: str) -> str:
    alg, _, hexpart = digest.partition(":")
    return f"blobs/{alg}/{hexpart}"


class Source:
    """Files of an image layout or a tarball, by relative path. `resolve` follows links and returns the path of
    a regular file (or None); the other methods take resolved paths."""

    kind = "directory"

    def __init__(self, path: Path) -> None:
        self.path = path

    def __str__(self) -> str:
        return str(self.path)

    def resolve(self, name: str) -> str | None:
        raise NotImplementedError

    def size(self, name: str) -> int:
        raise NotImplementedError

    def read(self, name: str, limit: int = MAX_JSON) -> bytes:
        raise NotImplementedError

    def stream(self, names: list[str]) -> Iterator[tuple[str, IO[bytes]]]:
        """Each of `names` once, with a file to read it from (valid until the next item); in the source's own
        order for compressed archives."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def _too_big(self, name: str, size: int, limit: int) -> TransferError:
        return TransferError(f"{self}: {name} is {size} bytes, more than the {limit} expected of it")


class DirectorySource(Source):
    kind = "directory"

    def resolve(self, name: str) -> str | None:
        norm = _member(name)
        if norm is None:
            return None
        return norm if (self.path / norm).is_file() else None

    def size(self, name: str) -> int:
        return (self.path / name).stat().st_size

    def read(self, name: str, limit: int = MAX_JSON) -> bytes:
        size = self.size(name)
        if size > limit:
            raise self._too_big(name, size, limit)
        return (self.path / name).read_bytes()

    def stream(self, names: list[str]) -> Iterator[tuple[str, IO[bytes]]]:
        for name in names:
            with open(self.path / name, "rb") as fh:
                yield name, fh


class _TarIndex:
    """Member names of a tar (normalised) and how links among them resolve."""

    def __init__(self) -> None:
        self.members: dict[str, tarfile.TarInfo] = {}

    def add(self, info: tarfile.TarInfo) -> str | None:
        name = _member(info.name)
        if name is not None:
            self.members[name] = info  # a later member of the same name wins, as when extracting
        return name

    def resolve(self, name: str) -> str | None:
        norm = _member(name)
        for _ in range(16):
            if norm is None:
                return None
            info = self.members.get(norm)
            if info is None:
                return None
            if info.isreg():
                return norm
            if info.issym():
                norm = _member(posixpath.join(posixpath.dirname(norm), info.linkname))
            elif info.islnk():
                norm = _member(info.linkname)
            else:
                return None
        return None


class TarSource(Source):
    """An uncompressed tar: random access."""

    kind = "tar"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.tar = tarfile.open(path, "r:")
        self.index = _TarIndex()
        for info in self.tar.getmembers():
            self.index.add(info)

    def resolve(self, name: str) -> str | None:
        return self.index.resolve(name)

    def size(self, name: str) -> int:
        return self.index.members[name].size

    def _open(self, name: str) -> IO[bytes]:
        fh = self.tar.extractfile(self.index.members[name])
        assert fh is not None
        return fh

    def read(self, name: str, limit: int = MAX_JSON) -> bytes:
        size = self.size(name)
        if size > limit:
            raise self._too_big(name, size, limit)
        return self._open(name).read()

    def stream(self, names: list[str]) -> Iterator[tuple[str, IO[bytes]]]:
        for name in names:
            yield name, self._open(name)

    def close(self) -> None:
        self.tar.close()


class GzipTarSource(Source):
    """A gzip-compressed tar: read front to back. Opening it scans it once, keeping small JSON files (index,
    manifests, configs) in memory; `stream` is another pass."""

    kind = "tar.gz"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.index = _TarIndex()
        self.cache: dict[str, bytes] = {}
        for name, info, fh in self._scan():
            if info.isreg() and info.size <= CACHED_JSON:
                head = fh.read(1)
                if head in (b"{", b"["):
                    self.cache[name] = head + fh.read()

    def _scan(self) -> Iterator[tuple[str, tarfile.TarInfo, IO[bytes]]]:
        with gzip.open(self.path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
            for info in tar:
                name = self.index.add(info)
                if name is None or not info.isreg():
                    continue
                fh = tar.extractfile(info)
                assert fh is not None
                yield name, info, fh

    def resolve(self, name: str) -> str | None:
        return self.index.resolve(name)

    def size(self, name: str) -> int:
        return self.index.members[name].size

    def read(self, name: str, limit: int = MAX_JSON) -> bytes:
        size = self.size(name)
        if size > limit:
            raise self._too_big(name, size, limit)
        if name not in self.cache:
            for got, fh in self.stream([name]):
                self.cache[got] = fh.read()
        return self.cache[name]

    def stream(self, names: list[str]) -> Iterator[tuple[str, IO[bytes]]]:
        wanted = set(names)
        if not wanted:
            return
        for name, _info, fh in self._scan():
            if name in wanted:
                wanted.discard(name)
                yield name, fh
                if not wanted:
                    return
        if wanted:
            raise TransferError(f"{self}: {sorted(wanted)[0]} vanished from the archive while it was read")


def open_source(path: Path) -> Source:
    if not path.exists():
        raise TransferError(f"{path}: no such file or directory")
    if path.is_dir():
        return DirectorySource(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
        if head == GZIP_MAGIC:
            return GzipTarSource(path)
        return TarSource(path)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        if isinstance(e, tarfile.ReadError) and head != GZIP_MAGIC:
            raise TransferError(
                f"{path}: not an OCI image layout, an OCI archive or a docker save tarball "
                "(expected a directory, a tar or a gzip-compressed tar)"
            ) from None
        raise TransferError(f"{path}: corrupt or truncated archive ({e})") from None


# -- import ----------------------------------------------------------------------------------------------


@dataclass
class _Candidate:
    entry: int  # which image of the source
    repository: str | None
    tag: str | None
    ref: str  # how the source names it, for messages


@dataclass
class _Image:
    repository: str
    tags: list[str]
    digest: str = ""
    media_type: str = ""
    manifests: list[str] = field(default_factory=list)  # children (and referrers) first, itself last
    blobs: list[str] = field(default_factory=list)
    referrers: int = 0


@dataclass
class _Plan:
    kind: str
    images: list[_Image] = field(default_factory=list)
    manifests: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # digest -> (media type, body)
    blobs: dict[str, tuple[int, str]] = field(default_factory=dict)  # digest -> (size, source path)
    stored: set[str] = field(default_factory=set)  # blobs already in the blob store


@dataclass
class _Counts:
    stored: int = 0
    skipped: int = 0
    bytes: int = 0


def _narrow(cands: list[_Candidate], repository: str) -> list[_Candidate]:
    """Prefer images the source says belong to `repository` (exactly, else as its suffix: `hub/team/app` for
    `team/app`)."""
    exact = [c for c in cands if c.repository == repository]
    if exact:
        return exact
    suffix = [c for c in cands if c.repository and repository.endswith("/" + c.repository)]
    return suffix or cands


def _select(
    source: Source, cands: list[_Candidate], repository: str | None, tag: str | None
) -> list[tuple[int, str, list[str]]]:
    """Which images of the source to import, into which repository, under which tags. Untagged entries beside
    tagged ones (referrers: signatures, SBOMs) are not images of their own."""
    named = [c for c in cands if c.tag]
    entries = sorted({c.entry for c in named}) or sorted({c.entry for c in cands})
    if not entries:
        raise TransferError(f"{source}: holds no images")
    chosen: list[tuple[int, str, str]] = []
    if repository is None:
        if not named:
            raise TransferError(f"{source}: its images have no names; give REPOSITORY[:TAG]")
        for c in named:
            if not c.repository:
                raise TransferError(f"{source}: image {c.ref!r} does not name its repository; give REPOSITORY[:TAG]")
            chosen.append((c.entry, c.repository, c.tag or ""))
    elif tag is not None:
        if len(entries) == 1:
            return [(entries[0], repository, [tag])]
        matching = _narrow([c for c in named if c.tag == tag], repository)
        found = sorted({c.entry for c in matching})
        if not found:
            have = ", ".join(sorted({c.ref for c in named})) or "no tagged images"
            raise TransferError(f"{source}: no image is tagged {tag} (it has {have})")
        if len(found) > 1:
            refs = ", ".join(sorted({c.ref for c in matching}))
            raise TransferError(f"{source}: several images are tagged {tag} ({refs}); name one as REPOSITORY:TAG")
        return [(found[0], repository, [tag])]
    else:
        if not named:
            if len(entries) == 1:
                raise TransferError(f"{source}: its image has no tag ({REF_NAME}); give REPOSITORY:TAG")
            raise TransferError(f"{source}: none of its {len(entries)} images has a tag; give REPOSITORY:TAG")
        matching = _narrow(named, repository)
        by_tag: dict[str, set[int]] = {}
        for c in matching:
            by_tag.setdefault(c.tag or "", set()).add(c.entry)
        for t, found in by_tag.items():
            if len(found) > 1:
                refs = ", ".join(sorted({c.ref for c in matching if c.tag == t}))
                raise TransferError(
                    f"{source}: tag {t} names several images ({refs}); import one at a time as REPOSITORY:TAG"
                )
        chosen = [(c.entry, repository, c.tag or "") for c in matching]
    grouped: dict[tuple[int, str], list[str]] = {}
    for entry, repo, t in chosen:
        try:
            oci.validate_name(repo)
            oci.validate_tag(t)
        except RegistryError as e:
            raise TransferError(f"{source}: cannot import as {repo}:{t}: {e.message}") from None
        tags = grouped.setdefault((entry, repo), [])
        if t not in tags:
            tags.append(t)
    return [(entry, repo, tags) for (entry, repo), tags in grouped.items()]


class _MissingContent(TransferError):
    """The layout lacks a blob it references (a `docker save` tarball may still hold the image its own way)."""


def _plan_oci(source: Source, repository: str | None, tag: str | None) -> _Plan:
    plan = _Plan("oci")
    index_path = source.resolve(INDEX_FILE)
    assert index_path is not None
    body = source.read(index_path, oci.MAX_MANIFEST_BYTES)
    try:
        index = oci.parse_manifest(body, oci.OCI_INDEX)
    except RegistryError as e:
        raise TransferError(f"{source}: index.json: {e.message}") from None
    descs = [_unwrap(source, d, index.manifests) for d in index.manifests]
    cands: list[_Candidate] = []
    first: dict[str, int] = {}  # entries naming the same manifest are one image (with several tags)
    for n, d in enumerate(descs):
        i = first.setdefault(d.digest, n)
        ann = d.annotations or {}
        ref = ann.get(REF_NAME)
        repo, t = _split_ref(ref)
        c_repo, c_tag = _split_ref(ann.get(CONTAINERD_NAME))
        repo = ann.get(REPOSITORY_ANNOTATION) or repo or c_repo
        cands.append(_Candidate(i, repo, t or c_tag, ref or d.digest))
    chosen = _select(source, cands, repository, tag)
    for entry, repo, tags in chosen:
        top = descs[entry]
        image = _Image(repo, tags, top.digest, top.media_type)
        _walk_oci(source, plan, image, top, set())
        image.media_type = plan.manifests[top.digest][0]
        plan.images.append(image)
    picked = {entry for entry, _, _ in chosen}
    _plan_referrers(source, plan, [d for i, d in enumerate(descs) if i not in picked and not cands[i].tag])
    return plan


def _unwrap(source: Source, desc: oci.Descriptor, entries: tuple[oci.Descriptor, ...]) -> oci.Descriptor:
    """An `index.json` entry for an OCI index that an export made for a Docker manifest (`OCI_INDEX_FOR`) stands
    for that manifest, under the entry's own names: import stores the Docker manifest, never the made index.
    The manifest's descriptor is its own entry's, or read from its blob (checked when walked); without either,
    the entry is what it says it is."""
    wrapped = (desc.annotations or {}).get(OCI_INDEX_FOR)
    if not wrapped or desc.media_type != oci.OCI_INDEX:
        return desc
    own = next((d for d in entries if d.digest == wrapped), None)
    if own is not None:
        return dataclasses.replace(own, annotations=desc.annotations)
    try:
        path = source.resolve(_blob_member(oci.validate_digest(wrapped)))
        if path is None:
            return desc
        media_type = oci.parse_manifest(source.read(path, oci.MAX_MANIFEST_BYTES), None).media_type
    except RegistryError:
        return desc
    return oci.Descriptor(media_type, wrapped, source.size(path), annotations=desc.annotations)


def _plan_referrers(source: Source, plan: _Plan, loose: list[oci.Descriptor]) -> None:
    """Untagged manifests of the layout whose `subject` is part of an imported image (signatures, SBOMs,
    attestations, and their own referrers) go with that image, stored before its tags move."""
    while loose:
        found = []
        for desc in loose:
            path = source.resolve(_blob_member(desc.digest))
            if path is None:
                continue
            try:
                subject = oci.parse_manifest(source.read(path, oci.MAX_MANIFEST_BYTES), None).subject
            except RegistryError:
                continue
            for image in plan.images:
                if subject is None or subject.digest not in image.manifests:
                    continue
                # Walked on the side: a referrer the layout holds only in part is left out, not an error.
                side = _Plan(plan.kind, manifests=dict(plan.manifests))
                part = _Image(image.repository, image.tags, manifests=list(image.manifests))
                try:
                    _walk_oci(source, side, part, desc, set(image.manifests))
                except _MissingContent:
                    continue
                plan.manifests.update(side.manifests)
                plan.blobs.update(side.blobs)
                image.manifests = part.manifests
                image.blobs += [d for d in part.blobs if d not in image.blobs]
                image.referrers += 1
                found.append(desc)
        if not found:
            return
        loose = [d for d in loose if d not in found]
        for image in plan.images:  # the tagged manifest last: its tags move once everything else is in
            image.manifests.remove(image.digest)
            image.manifests.append(image.digest)


def _walk_oci(source: Source, plan: _Plan, image: _Image, desc: oci.Descriptor, seen: set[str]) -> None:
    digest = desc.digest
    if digest in seen:
        return
    seen.add(digest)
    if digest not in plan.manifests:
        path = source.resolve(_blob_member(digest))
        if path is None:
            raise _MissingContent(f"{source}: manifest {digest} is missing (blobs/ has no such file)")
        body = source.read(path, oci.MAX_MANIFEST_BYTES)
        if len(body) != desc.size or oci.compute_digest(body, oci.digest_algorithm(digest)) != digest:
            raise TransferError(f"{source}: manifest {digest} does not match its digest or size")
        content_type = desc.media_type if desc.media_type in oci.MANIFEST_TYPES else None
        try:
            parsed = oci.parse_manifest(body, content_type)
        except RegistryError as e:
            raise TransferError(f"{source}: manifest {digest}: {e.message}") from None
        plan.manifests[digest] = (parsed.media_type, body)
    else:
        parsed = oci.parse_manifest(plan.manifests[digest][1], plan.manifests[digest][0])
    for child in parsed.manifests:
        _walk_oci(source, plan, image, child, seen)
    for blob in [parsed.config, *parsed.layers] if parsed.config else parsed.layers:
        if blob.digest in image.blobs:
            continue
        path = source.resolve(_blob_member(blob.digest))
        if path is None:
            if blob.urls:  # a non-distributable layer: fetched from its URLs, not stored
                continue
            raise _MissingContent(f"{source}: blob {blob.digest} is missing (referenced by {digest})")
        size = source.size(path)
        if size != blob.size:
            raise TransferError(f"{source}: blob {blob.digest} is {size} bytes; {digest} says {blob.size}")
        plan.blobs[blob.digest] = (blob.size, path)
        image.blobs.append(blob.digest)
    image.manifests.append(digest)


@dataclass
class _DockerImage:
    image: _Image
    config: bytes
    config_path: str
    layers: list[str]  # source paths, resolved
    diff_ids: list[Any]


async def _plan_docker(
    s: Services, source: Source, repository: str | None, tag: str | None, progress: Progress, counts: _Counts
) -> _Plan:
    plan = _Plan("docker")
    path = source.resolve("manifest.json")
    assert path is not None
    try:
        entries = json.loads(source.read(path))
    except ValueError as e:
        raise TransferError(f"{source}: manifest.json is not JSON ({e})") from None
    if not isinstance(entries, list) or not all(
        isinstance(e, dict)
        and isinstance(e.get("Config"), str)
        and isinstance(e.get("Layers"), list)
        and all(isinstance(x, str) for x in e["Layers"])
        and isinstance(e.get("RepoTags") or [], list)
        for e in entries
    ):
        raise TransferError(f"{source}: manifest.json is not a docker save manifest (Config, RepoTags, Layers)")
    cands: list[_Candidate] = []
    for i, e in enumerate(entries):
        names = [n for n in e.get("RepoTags") or [] if isinstance(n, str)]
        for n in names:
            repo, t = _split_ref(n)
            cands.append(_Candidate(i, repo, t, n))
        if not names:
            cands.append(_Candidate(i, None, None, e["Config"]))

    # Everything that can be checked without reading layers first.
    images: list[_DockerImage] = []
    for entry, repo, tags in _select(source, cands, repository, tag):
        e = entries[entry]
        config_path = source.resolve(e["Config"])
        if config_path is None:
            raise TransferError(f"{source}: config {e['Config']} is missing")
        config = source.read(config_path)
        try:
            doc = json.loads(config)
            assert isinstance(doc, dict)
        except (ValueError, AssertionError):
            raise TransferError(f"{source}: config {e['Config']} is not a JSON object") from None
        config_digest = oci.compute_digest(config)
        named = _digest_in_name(e["Config"])
        if named is not None and named != config_digest:
            raise TransferError(f"{source}: config {e['Config']} does not match its digest (it is {config_digest})")
        layers = []
        for name in e["Layers"]:
            resolved = source.resolve(name)
            if resolved is None:
                raise TransferError(f"{source}: layer {name} is missing")
            layers.append(resolved)
        diff_ids = (doc.get("rootfs") or {}).get("diff_ids") if isinstance(doc.get("rootfs"), dict) else None
        if isinstance(diff_ids, list) and len(diff_ids) != len(layers):
            raise TransferError(
                f"{source}: {e['Config']} lists {len(diff_ids)} layers but manifest.json gives {len(layers)}"
            )
        image = _Image(repo, tags)
        images.append(_DockerImage(image, config, config_path, layers, diff_ids or []))
        plan.blobs[config_digest] = (len(config), config_path)

    # Layers: hashed while they are spooled into the blob store (their digests are only known then).
    wanted = list(dict.fromkeys(p for d in images for p in d.layers))
    progress.plan(len(wanted), sum(source.size(p) for p in wanted))
    layers: dict[str, tuple[str, int, str]] = {}  # path -> (digest, size, media type)
    it = source.stream(wanted)
    while (item := await asyncio.to_thread(next, it, None)) is not None:
        name, fh = item
        layers[name] = await _spool_layer(s, source, name, fh, progress, counts)
    for d in images:
        descs = []
        for i, name in enumerate(d.layers):
            digest, size, media_type = layers[name]
            if media_type == DOCKER_LAYER and i < len(d.diff_ids) and d.diff_ids[i] != digest:
                raise TransferError(f"{source}: layer {name} does not match the config's diff_id {d.diff_ids[i]}")
            plan.blobs[digest] = (size, name)
            plan.stored.add(digest)
            descs.append({"mediaType": media_type, "size": size, "digest": digest})
        config_digest = oci.compute_digest(d.config)
        body = (
            json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": oci.DOCKER_MANIFEST,
                    "config": {"mediaType": DOCKER_CONFIG, "size": len(d.config), "digest": config_digest},
                    "layers": descs,
                },
                indent=3,
            )
            + "\n"
        ).encode()
        digest = oci.compute_digest(body)
        plan.manifests[digest] = (oci.DOCKER_MANIFEST, body)
        d.image.digest, d.image.media_type, d.image.manifests = digest, oci.DOCKER_MANIFEST, [digest]
        d.image.blobs = list(dict.fromkeys([config_digest, *(x["digest"] for x in descs)]))
        plan.images.append(d.image)
    return plan


def _digest_in_name(name: str) -> str | None:
    """`blobs/sha256/<hex>` or `<hex>.json` name their content's sha256."""
    base = posixpath.basename(name).removesuffix(".json")
    if len(base) == 64 and all(c in "0123456789abcdef" for c in base):
        return f"sha256:{base}"
    return None


async def _spool_layer(
    s: Services, source: Source, name: str, fh: IO[bytes], progress: Progress, counts: _Counts
) -> tuple[str, int, str]:
    """Copy a docker-save layer into the blob store (privately, then installed atomically under its digest)."""
    spool = s.blobs.spool_path()

    def write() -> tuple[str, int, bytes]:
        hasher, size, head = hashlib.sha256(), 0, b""
        with open(spool, "xb") as out:
            while chunk := fh.read(CHUNK):
                if not head:
                    head = chunk[:4]
                hasher.update(chunk)
                out.write(chunk)
                size += len(chunk)
                progress.add(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        return f"sha256:{hasher.hexdigest()}", size, head

    try:
        digest, size, head = await asyncio.to_thread(write)
        named = _digest_in_name(name) if name.startswith("blobs/") else None
        if named is not None and named != digest:
            raise TransferError(f"{source}: layer {name} does not match its digest (it is {digest})")
        if await s.blobs.stat(digest) is None:
            await s.blobs.install_spooled(spool, digest)
            counts.stored += 1
            counts.bytes += size
        else:
            counts.skipped += 1
    finally:
        await asyncio.to_thread(spool.unlink, True)
    progress.blob_done()
    media_type = (
        DOCKER_LAYER_GZIP if head[:2] == GZIP_MAGIC else DOCKER_LAYER_ZSTD if head == ZSTD_MAGIC else DOCKER_LAYER
    )
    return digest, size, media_type


async def _chunks(fh: IO[bytes], progress: Progress) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(fh.read, CHUNK):
        progress.add(len(chunk))
        yield chunk


async def _ingest_blobs(
    s: Services, source: Source, plan: _Plan, digests: list[str], progress: Progress, counts: _Counts
) -> None:
    """Store the blobs the store does not have, verifying each against its digest (atomically, one by one)."""
    todo = []
    for digest in digests:
        size, _ = plan.blobs[digest]
        have = await s.blobs.stat(digest)
        if have == size:
            counts.skipped += 1
            progress.blob_done(size)
        elif have is not None:
            raise TransferError(f"stored blob {digest} is {have} bytes, not {size}: the data dir is damaged")
        else:
            todo.append(digest)
    by_path = {plan.blobs[d][1]: d for d in todo}
    it = source.stream(list(by_path))
    while (item := await asyncio.to_thread(next, it, None)) is not None:
        path, fh = item
        digest = by_path[path]
        size = plan.blobs[digest][0]
        try:
            await s.blobs.ingest(_chunks(fh, progress), digest, size)
        except DigestMismatch as e:
            raise TransferError(
                f"{source}: blob {digest} does not match its digest (its content is {e.actual})"
            ) from None
        except SizeMismatch as e:
            raise TransferError(f"{source}: blob {digest} is {e.got} bytes, not the {e.expected} expected") from None
        counts.stored += 1
        counts.bytes += size
        progress.blob_done()
        plan.stored.add(digest)


async def _commit(s: Services, source: Source, plan: _Plan, progress: Progress, counts: _Counts) -> None:
    """Create repositories, link blobs, store manifests (children first) and move tags (last)."""
    for image in plan.images:  # refuse before writing anything when an immutable tag is in the way
        try:
            repo = await s.images.repository(image.repository)
        except NameUnknown:
            continue
        for t in image.tags:
            current = await s.meta.resolve_tag(image.repository, t)
            if current and current != image.digest and tag_is_immutable(repo.settings, t):
                raise TransferError(
                    f"{image.repository}:{t} is immutable and already points at {current}; not importing"
                )
    for image in plan.images:
        rule = s.pull_through.rule_for(image.repository)
        await s.images.create_repository(image.repository, "PULL_THROUGH_CACHE" if rule else "CREATE_ON_PUSH")
        for digest in image.blobs:
            await _link(s, source, plan, image.repository, digest, progress, counts)
        for digest in image.manifests:
            media_type, body = plan.manifests[digest]
            tags = tuple(image.tags) if digest == image.digest else ()
            await s.images.put_manifest(image.repository, digest, body, media_type, tags)
        if rule is not None:  # a pre-warmed cache: confirmed upstream now (offline mode serves it regardless)
            for t in image.tags:
                await s.meta.set_tag_checked(image.repository, t, time.time())


async def _link(
    s: Services, source: Source, plan: _Plan, repository: str, digest: str, progress: Progress, counts: _Counts
) -> None:
    size = plan.blobs[digest][0]
    path = s.blobs.local_path(digest)
    check = (lambda: path.exists()) if path is not None else None
    try:
        await s.meta.link_blob(repository, digest, size, time.time(), check)
    except BlobNotFound:
        # Garbage collection removed it (an unreferenced file older than its grace period) since it was
        # stored or found: store it again.
        progress.plan(1, size)
        await _ingest_blobs(s, source, plan, [digest], progress, counts)
        await s.meta.link_blob(repository, digest, size, time.time(), check)


@dataclass
class ImportRequest:
    source: Source
    repository: str | None
    tag: str | None


def prepare_import(source_path: Path, reference: str | None) -> ImportRequest:
    """Check the arguments and open the source (before the data dir is touched)."""
    repository, tag = parse_reference(reference) if reference else (None, None)
    return ImportRequest(open_source(source_path), repository, tag)


async def import_source(s: Services, request: ImportRequest, progress: Progress) -> dict[str, Any]:
    """`moorage import SOURCE [REPOSITORY[:TAG]]`."""
    started = time.monotonic()
    source, repository, tag = request.source, request.repository, request.tag
    counts = _Counts()
    try:
        try:
            plan = await _plan(s, source, repository, tag, progress, counts)
            pending = [d for d in plan.blobs if d not in plan.stored]
            progress.plan(len(pending), sum(plan.blobs[d][0] for d in pending))
            await _ingest_blobs(s, source, plan, pending, progress, counts)
            await _commit(s, source, plan, progress, counts)
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
                "repository": i.repository,
                "tags": i.tags,
                "digest": i.digest,
                "mediaType": i.media_type,
                "referrers": i.referrers,
            }
            for i in plan.images
        ],
        "manifests": len(plan.manifests),
        "blobs": len(plan.blobs),
        "blobsStored": counts.stored,
        "blobsSkipped": counts.skipped,
        "bytesStored": counts.bytes,
        "seconds": round(time.monotonic() - started, 3),
    }


async def _plan(
    s: Services, source: Source, repository: str | None, tag: str | None, progress: Progress, counts: _Counts
) -> _Plan:
    is_oci = source.resolve(INDEX_FILE) is not None
    is_docker = source.resolve("manifest.json") is not None
    if not is_oci and not is_docker:
        raise TransferError(
            f"{source}: not an OCI image layout, an OCI archive or a docker save tarball "
            "(it has neither index.json nor manifest.json)"
        )
    if is_oci:
        try:
            return await asyncio.to_thread(_plan_oci, source, repository, tag)
        except _MissingContent:
            if not is_docker:  # a `docker save` that is also a layout may omit other platforms' content
                raise
    return await _plan_docker(s, source, repository, tag, progress, counts)


# -- export ----------------------------------------------------------------------------------------------


@dataclass
class _ExportBlob:
    size: int
    repository: str  # one repository that has it (to read it through the pull-through cache if need be)


async def _list_tags(s: Services, repository: str) -> list[str]:
    tags: list[str] = []
    last = None
    while True:
        page = await s.meta.list_tags(repository, last, 1000)
        tags += page.items
        if not page.more or not page.items:
            return tags
        last = page.items[-1]


async def _walk_export(
    s: Services,
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
        record = await s.pull_through.get_manifest(repository, digest)
    except RegistryError as e:
        cached = (
            " (a pull-through cache holds only what has been pulled)" if s.pull_through.rule_for(repository) else ""
        )
        raise TransferError(f"{ref}: manifest {digest} is not available: {e.message}{cached}") from None
    parsed = oci.parse_manifest(record.body, record.media_type)
    if digest in manifests:
        return record.media_type, parsed.artifact_type
    manifests[digest] = record.body
    for child in parsed.manifests:
        await _walk_export(s, repository, child.digest, ref, manifests, blobs, walked)
    for blob in [parsed.config, *parsed.layers] if parsed.config else parsed.layers:
        if blob.digest in blobs:
            continue
        size = await s.meta.linked_blob_size(repository, blob.digest)
        if size is None:
            if blob.urls:  # non-distributable: not stored, clients fetch it from its URLs
                continue
            if s.pull_through.rule_for(repository) is None:
                raise TransferError(f"{ref}: blob {blob.digest} is missing from repository {repository}")
            size = blob.size  # not cached yet: read through the cache from the upstream
        if size != blob.size:
            raise TransferError(f"{ref}: blob {blob.digest} is stored with {size} bytes; the manifest says {blob.size}")
        blobs[blob.digest] = _ExportBlob(size, repository)
    return record.media_type, parsed.artifact_type


async def _blob_chunks(s: Services, digest: str, blob: _ExportBlob) -> AsyncIterator[bytes]:
    if await s.blobs.stat(digest) is None and s.pull_through.rule_for(blob.repository) is not None:
        from registry.proxy.pullthrough import StreamingBlob

        try:
            opened = await s.pull_through.open_blob(blob.repository, digest)
        except RegistryError as e:
            raise TransferError(f"blob {digest} of {blob.repository} is not available: {e.message}") from None
        if isinstance(opened, StreamingBlob):
            assert opened.chunks is not None
            async for chunk in opened.chunks:
                yield chunk
            return
    try:
        async for chunk in s.blobs.read(digest):
            yield chunk
    except BlobNotFound:
        raise TransferError(f"blob {digest} of {blob.repository} is gone from the data dir") from None


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


class _Writer:
    """Where an export goes."""

    dest: Path

    def check(self) -> None:
        """Refuse a destination that can't be written, before anything is."""

    def has(self, digest: str, size: int) -> bool:
        raise NotImplementedError

    async def begin(self) -> None:
        raise NotImplementedError

    async def put(self, digest: str, size: int, chunks: AsyncIterator[bytes], progress: Progress) -> None:
        raise NotImplementedError

    async def finish(self, entries: list[dict[str, Any]]) -> None:
        raise NotImplementedError


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


def _index_json(entries: list[dict[str, Any]]) -> bytes:
    doc = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": entries}
    return (json.dumps(doc, indent=2) + "\n").encode()


def _mismatch(digest: str, actual: str, size: int, got: int) -> TransferError:
    if got != size:
        return TransferError(f"blob {digest} is damaged in the data dir: {got} bytes, not {size}")
    return TransferError(f"blob {digest} is damaged in the data dir: its content is {actual}")


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + PARTIAL)
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirectoryWriter(_Writer):
    """An OCI image layout directory (merged into one that is already there)."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest

    def _path(self, digest: str) -> Path:
        return self.dest / _blob_member(digest)

    def check(self) -> None:
        dest = self.dest
        if dest.exists() and not dest.is_dir():
            raise TransferError(f"{dest} exists and is not a directory (archives end in .tar, .tar.gz or .tgz)")
        if dest.is_dir() and any(dest.iterdir()) and not (dest / LAYOUT_FILE).is_file():
            raise TransferError(f"{dest} is a directory that is not an OCI image layout; choose an empty one")

    async def begin(self) -> None:
        dest = self.dest
        self.check()
        dest.mkdir(parents=True, exist_ok=True)
        if not (dest / LAYOUT_FILE).is_file():
            await asyncio.to_thread(_write_atomically, dest / LAYOUT_FILE, LAYOUT_VERSION)

    def has(self, digest: str, size: int) -> bool:
        try:
            return self._path(digest).stat().st_size == size
        except FileNotFoundError:
            return False

    async def put(self, digest: str, size: int, chunks: AsyncIterator[bytes], progress: Progress) -> None:
        final = self._path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(final.name + PARTIAL)
        hasher = hashlib.new(oci.digest_algorithm(digest))
        fh = await asyncio.to_thread(open, tmp, "wb")
        written = 0
        try:
            try:
                async for chunk in chunks:
                    await asyncio.to_thread(_write_hashed, fh, hasher, chunk)
                    written += len(chunk)
                    progress.add(len(chunk))
                await asyncio.to_thread(_flush, fh)
            finally:
                await asyncio.to_thread(fh.close)
            actual = f"{hasher.name}:{hasher.hexdigest()}"
            if actual != digest or written != size:
                raise _mismatch(digest, actual, size, written)
            await asyncio.to_thread(os.replace, tmp, final)
        finally:
            await asyncio.to_thread(tmp.unlink, True)

    async def finish(self, entries: list[dict[str, Any]]) -> None:
        index_path = self.dest / INDEX_FILE
        # Entries already there stay, unless this export replaces them (same name; same untagged manifest).
        names = {e["annotations"].get(REF_NAME) for e in entries} - {None}
        untagged = {e["digest"] for e in entries if REF_NAME not in e["annotations"]}
        kept: list[dict[str, Any]] = []
        if index_path.is_file():
            try:
                old = json.loads(index_path.read_bytes())
                for m in old.get("manifests", []):
                    name = (m.get("annotations") or {}).get(REF_NAME)
                    if name in names or (name is None and m.get("digest") in untagged):
                        continue
                    kept.append(m)
            except (ValueError, AttributeError, TypeError):
                kept = []
        for alg_dir in (self.dest / "blobs").glob("*"):
            if alg_dir.is_dir():
                for leftover in alg_dir.glob("*" + PARTIAL):  # from an export that was killed
                    leftover.unlink(missing_ok=True)
                await asyncio.to_thread(_fsync_dir, alg_dir)
        await asyncio.to_thread(_write_atomically, index_path, _index_json(kept + entries))
        await asyncio.to_thread(_fsync_dir, self.dest)


def _write_hashed(fh: IO[bytes], hasher: Any, chunk: bytes) -> None:
    fh.write(chunk)
    hasher.update(chunk)


def _flush(fh: IO[bytes]) -> None:
    fh.flush()
    os.fsync(fh.fileno())


class ArchiveWriter(_Writer):
    """An OCI archive: a tar of a layout (each member compressed as its own gzip member for .tar.gz, so the
    file can be cut back to any member boundary). Written to DEST.partial with a journal of the members that
    are complete; a re-run resumes after the last of them."""

    def __init__(self, dest: Path, compress: bool) -> None:
        self.dest = dest
        self.compress = compress
        self.partial = dest.with_name(dest.name + PARTIAL)
        self.journal = dest.with_name(dest.name + PARTIAL + ".json")
        self.members: dict[str, int] = {}
        self.offset = 0
        self.fh: IO[bytes] | None = None

    def check(self) -> None:
        if self.dest.is_dir():
            raise TransferError(f"{self.dest} is a directory; an archive must be a file")

    async def begin(self) -> None:
        self.check()
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        state = await asyncio.to_thread(self._resumable)
        if state is not None:
            self.members, self.offset = state
            self.fh = await asyncio.to_thread(open, self.partial, "r+b")  # closed by finish() or close()
            self.fh.truncate(self.offset)
            self.fh.seek(self.offset)
        else:
            self.fh = await asyncio.to_thread(open, self.partial, "wb")
            self.journal.unlink(missing_ok=True)
        if LAYOUT_FILE not in self.members:
            await self._add(LAYOUT_FILE, len(LAYOUT_VERSION), _one(LAYOUT_VERSION), None)
        if "blobs" not in self.members:
            await self._add_dir("blobs")

    def _resumable(self) -> tuple[dict[str, int], int] | None:
        try:
            state = json.loads(self.journal.read_bytes())
            members, offset = dict(state["members"]), int(state["offset"])
            if state.get("compress") != self.compress or self.partial.stat().st_size < offset:
                return None
            return members, offset
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def has(self, digest: str, size: int) -> bool:
        return self.members.get(_blob_member(digest)) == size

    async def put(self, digest: str, size: int, chunks: AsyncIterator[bytes], progress: Progress) -> None:
        alg_dir = posixpath.dirname(_blob_member(digest))
        if alg_dir not in self.members:
            await self._add_dir(alg_dir)
        await self._add(_blob_member(digest), size, chunks, progress, digest)

    async def _add_dir(self, name: str) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
        await self._add_member(name, info, _one(b""), None, None)

    async def _add(
        self, name: str, size: int, chunks: AsyncIterator[bytes], progress: Progress | None, digest: str | None = None
    ) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o644, 0
        await self._add_member(name, info, chunks, progress, digest)

    async def _add_member(
        self,
        name: str,
        info: tarfile.TarInfo,
        chunks: AsyncIterator[bytes],
        progress: Progress | None,
        digest: str | None,
        *,
        journal: bool = True,
    ) -> None:
        """Append one member (header, data, padding), then record it in the journal. On any failure the file is
        cut back to where the member started."""
        fh = self.fh
        assert fh is not None
        start = self.offset
        header: bytes | None = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        hasher = hashlib.new(oci.digest_algorithm(digest)) if digest else None
        comp: Any = None
        written = 0
        try:
            async for chunk in chunks:
                if not chunk:
                    continue
                if comp is None and self.compress:
                    # Compressed layers don't shrink: store them (fast); compress the rest.
                    level = 0 if chunk[:2] == GZIP_MAGIC or chunk[:4] == ZSTD_MAGIC else 6
                    comp = zlib.compressobj(level, zlib.DEFLATED, 31)
                if header is not None:
                    await asyncio.to_thread(self._emit, comp, header, None)
                    header = None
                await asyncio.to_thread(self._emit, comp, chunk, hasher)
                written += len(chunk)
                if progress is not None:
                    progress.add(len(chunk))
            if self.compress and comp is None:
                comp = zlib.compressobj(6, zlib.DEFLATED, 31)
            if header is not None:
                await asyncio.to_thread(self._emit, comp, header, None)
            if digest is not None:
                assert hasher is not None
                actual = f"{hasher.name}:{hasher.hexdigest()}"
                if actual != digest or written != info.size:
                    raise _mismatch(digest, actual, info.size, written)
            elif written != info.size:
                raise TransferError(f"{name}: wrote {written} bytes, not {info.size}")
            padding = (-written) % tarfile.BLOCKSIZE
            await asyncio.to_thread(self._emit, comp, b"\0" * padding, None)
            if comp is not None:
                await asyncio.to_thread(self._emit_raw, comp.flush())
            await asyncio.to_thread(_flush, fh)
        except BaseException:
            with contextlib.suppress(Exception):
                fh.truncate(start)
                fh.seek(start)
            self.offset = start
            raise
        self.offset = fh.tell()
        if journal:
            self.members[name] = info.size
            await asyncio.to_thread(self._save_journal)

    def _emit(self, comp: Any, data: bytes, hasher: Any) -> None:
        if hasher is not None:
            hasher.update(data)
        self._emit_raw(comp.compress(data) if comp is not None else data)

    def _emit_raw(self, data: bytes) -> None:
        assert self.fh is not None
        if data:
            self.fh.write(data)

    def _save_journal(self) -> None:
        state = {"compress": self.compress, "offset": self.offset, "members": self.members}
        _write_atomically(self.journal, json.dumps(state).encode())

    async def finish(self, entries: list[dict[str, Any]]) -> None:
        index = _index_json(entries)
        info = tarfile.TarInfo(INDEX_FILE)
        info.size, info.mode, info.mtime = len(index), 0o644, 0
        await self._add_member(INDEX_FILE, info, _one(index), None, None, journal=False)  # a re-run rewrites it
        end = b"\0" * (2 * tarfile.BLOCKSIZE)
        await asyncio.to_thread(self._emit_raw, gzip.compress(end, mtime=0) if self.compress else end)
        assert self.fh is not None
        await asyncio.to_thread(_flush, self.fh)
        self.fh.close()
        self.fh = None
        await asyncio.to_thread(os.replace, self.partial, self.dest)
        self.journal.unlink(missing_ok=True)
        await asyncio.to_thread(_fsync_dir, self.dest.parent)

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


def _writer(dest: Path) -> _Writer:
    name = dest.name.lower()
    if name.endswith(ARCHIVE_SUFFIXES):
        return ArchiveWriter(dest, compress=not name.endswith(".tar"))
    return DirectoryWriter(dest)


@dataclass
class ExportRequest:
    references: list[tuple[str, str | None]]
    writer: _Writer


def prepare_export(references: list[str], dest: Path) -> ExportRequest:
    """Check the arguments (before the data dir is opened)."""
    parsed = [parse_reference(text) for text in references]
    writer = _writer(dest)
    writer.check()
    return ExportRequest(parsed, writer)


async def export_images(s: Services, request: ExportRequest, progress: Progress) -> dict[str, Any]:
    """`moorage export REPOSITORY[:TAG]... DEST`."""
    started = time.monotonic()
    wanted: list[tuple[str, str]] = []
    for repository, tag in request.references:
        if tag is not None:
            wanted.append((repository, tag))
            continue
        if await s.meta.get_repository(repository) is None:
            raise TransferError(f"repository {repository} does not exist")
        tags = await _list_tags(s, repository)
        if not tags:
            raise TransferError(f"repository {repository} has no tagged images")
        wanted += [(repository, t) for t in tags]

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
            if s.pull_through.rule_for(repository) is not None:  # a cache: pulled through it if need be
                digest = (await s.pull_through.get_manifest(repository, tag)).digest
            else:
                digest = await s.images.resolve(repository, tag)
        except RegistryError as e:
            raise TransferError(f"{ref}: {e.message}") from None
        media_type, _ = await _walk_export(s, repository, digest, ref, manifests, blobs, walked)
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
        for record in await s.meta.referrers(repository, subject):
            if record.digest in manifests:
                continue
            found: set[tuple[str, str]] = set()
            ref = f"{repository}@{record.digest}"
            media_type, artifact_type = await _walk_export(s, repository, record.digest, ref, manifests, blobs, found)
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
        made = {d: body for d, body in extra.items() if d not in manifests}
        todo: list[tuple[str, int, Any]] = [
            (d, len(body), body) for d, body in {**manifests, **made}.items() if d not in blobs
        ]
        todo += [(d, b.size, b) for d, b in blobs.items()]
        progress.plan(len(todo), sum(size for _, size, _ in todo))
        for digest, size, what in todo:
            if writer.has(digest, size):
                skipped += 1
                progress.blob_done(size)
                continue
            chunks = _one(what) if isinstance(what, bytes) else _blob_chunks(s, digest, what)
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
