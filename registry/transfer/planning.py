"""What an import copies: which images of a source are chosen (by REPOSITORY[:TAG], or by the names the source
gives them), and, for an OCI image layout, each image's manifests (children first), blobs and referrers. Reads
the source only; nothing is stored here."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from registry import oci
from registry.errors import RegistryError
from registry.transfer.common import (
    INDEX_FILE,
    OCI_INDEX_FOR,
    REF_NAME,
    REPOSITORY_ANNOTATION,
    TransferError,
    blob_member,
    split_ref,
)
from registry.transfer.sources import Source

CONTAINERD_NAME = "io.containerd.image.name"  # what `docker save` (containerd image store) names images with


@dataclass
class Candidate:
    """An image a source names (one per name it gives it), before the choice of what to import."""

    entry: int  # which image of the source
    repository: str | None
    tag: str | None
    ref: str  # how the source names it, for messages


@dataclass
class Image:
    """An image to import: where it goes, under which tags, and what it is made of."""

    repository: str
    tags: list[str]
    digest: str = ""
    media_type: str = ""
    manifests: list[str] = field(default_factory=list)  # children (and referrers) first, itself last
    blobs: list[str] = field(default_factory=list)
    referrers: int = 0


@dataclass
class Plan:
    """Everything an import stores, as the source holds it (a docker save tarball's layers are stored while planned)."""

    kind: str
    images: list[Image] = field(default_factory=list)
    manifests: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # digest -> (media type, body)
    blobs: dict[str, tuple[int, str]] = field(default_factory=dict)  # digest -> (size, source path)
    stored: set[str] = field(default_factory=set)  # blobs already in the blob store


@dataclass
class Counts:
    """Blobs stored and skipped, and bytes stored, for the summary."""

    stored: int = 0
    skipped: int = 0
    bytes: int = 0


def _narrow(candidates: list[Candidate], repository: str) -> list[Candidate]:
    """Prefer images the source says belong to `repository` (exactly, else as its suffix: `hub/team/app` for
    `team/app`)."""
    exact = [candidate for candidate in candidates if candidate.repository == repository]
    if exact:
        return exact
    suffix = [
        candidate
        for candidate in candidates
        if candidate.repository and repository.endswith("/" + candidate.repository)
    ]
    return suffix or candidates


def select_images(
    source: Source, candidates: list[Candidate], repository: str | None, tag: str | None
) -> list[tuple[int, str, list[str]]]:
    """Which images of the source to import, into which repository, under which tags. Untagged entries beside
    tagged ones (referrers: signatures, SBOMs) are not images of their own."""
    named = [candidate for candidate in candidates if candidate.tag]
    entries = sorted({candidate.entry for candidate in named}) or sorted({candidate.entry for candidate in candidates})
    if not entries:
        raise TransferError(f"{source}: holds no images")
    chosen: list[tuple[int, str, str]] = []
    if repository is None:
        if not named:
            raise TransferError(f"{source}: its images have no names; give REPOSITORY[:TAG]")
        for candidate in named:
            if not candidate.repository:
                raise TransferError(
                    f"{source}: image {candidate.ref!r} does not name its repository; give REPOSITORY[:TAG]"
                )
            chosen.append((candidate.entry, candidate.repository, candidate.tag or ""))
    elif tag is not None:
        if len(entries) == 1:
            return [(entries[0], repository, [tag])]
        matching = _narrow([candidate for candidate in named if candidate.tag == tag], repository)
        found = sorted({candidate.entry for candidate in matching})
        if not found:
            have = ", ".join(sorted({candidate.ref for candidate in named})) or "no tagged images"
            raise TransferError(f"{source}: no image is tagged {tag} (it has {have})")
        if len(found) > 1:
            refs = ", ".join(sorted({candidate.ref for candidate in matching}))
            raise TransferError(f"{source}: several images are tagged {tag} ({refs}); name one as REPOSITORY:TAG")
        return [(found[0], repository, [tag])]
    else:
        if not named:
            if len(entries) == 1:
                raise TransferError(f"{source}: its image has no tag ({REF_NAME}); give REPOSITORY:TAG")
            raise TransferError(f"{source}: none of its {len(entries)} images has a tag; give REPOSITORY:TAG")
        matching = _narrow(named, repository)
        by_tag: dict[str, set[int]] = {}
        for candidate in matching:
            by_tag.setdefault(candidate.tag or "", set()).add(candidate.entry)
        for image_tag, entries_tagged in by_tag.items():
            if len(entries_tagged) > 1:
                refs = ", ".join(sorted({candidate.ref for candidate in matching if candidate.tag == image_tag}))
                raise TransferError(
                    f"{source}: tag {image_tag} names several images ({refs}); import one at a time as REPOSITORY:TAG"
                )
        chosen = [(candidate.entry, repository, candidate.tag or "") for candidate in matching]
    grouped: dict[tuple[int, str], list[str]] = {}
    for entry, repo, image_tag in chosen:
        try:
            oci.validate_name(repo)
            oci.validate_tag(image_tag)
        except RegistryError as e:
            raise TransferError(f"{source}: cannot import as {repo}:{image_tag}: {e.message}") from None
        tags = grouped.setdefault((entry, repo), [])
        if image_tag not in tags:
            tags.append(image_tag)
    return [(entry, repo, tags) for (entry, repo), tags in grouped.items()]


class MissingContent(TransferError):
    """The layout lacks a blob it references (a `docker save` tarball may still hold the image its own way)."""


def plan_oci(source: Source, repository: str | None, tag: str | None) -> Plan:
    plan = Plan("oci")
    index_path = source.resolve(INDEX_FILE)
    assert index_path is not None
    body = source.read(index_path, oci.MAX_MANIFEST_BYTES)
    try:
        index = oci.parse_manifest(body, oci.OCI_INDEX)
    except RegistryError as e:
        raise TransferError(f"{source}: index.json: {e.message}") from None
    descs = [_unwrap(source, desc, index.manifests) for desc in index.manifests]
    candidates: list[Candidate] = []
    first: dict[str, int] = {}  # entries naming the same manifest are one image (with several tags)
    for position, desc in enumerate(descs):
        first_entry = first.setdefault(desc.digest, position)
        annotations = desc.annotations or {}
        ref = annotations.get(REF_NAME)
        ref_repository, ref_tag = split_ref(ref)
        containerd_repository, containerd_tag = split_ref(annotations.get(CONTAINERD_NAME))
        repo = annotations.get(REPOSITORY_ANNOTATION) or ref_repository or containerd_repository
        candidates.append(Candidate(first_entry, repo, ref_tag or containerd_tag, ref or desc.digest))
    chosen = select_images(source, candidates, repository, tag)
    for entry, repo, tags in chosen:
        top = descs[entry]
        image = Image(repo, tags, top.digest, top.media_type)
        _walk_oci(source, plan, image, top, set())
        image.media_type = plan.manifests[top.digest][0]
        plan.images.append(image)
    picked = {entry for entry, _, _ in chosen}
    _plan_referrers(
        source,
        plan,
        [desc for position, desc in enumerate(descs) if position not in picked and not candidates[position].tag],
    )
    return plan


def _unwrap(source: Source, desc: oci.Descriptor, entries: tuple[oci.Descriptor, ...]) -> oci.Descriptor:
    """An `index.json` entry for an OCI index that an export made for a Docker manifest (`OCI_INDEX_FOR`) stands
    for that manifest, under the entry's own names: import stores the Docker manifest, never the made index.
    The manifest's descriptor is its own entry's, or read from its blob (checked when walked); without either,
    the entry is what it says it is."""
    wrapped = (desc.annotations or {}).get(OCI_INDEX_FOR)
    if not wrapped or desc.media_type != oci.OCI_INDEX:
        return desc
    own = next((entry for entry in entries if entry.digest == wrapped), None)
    if own is not None:
        return dataclasses.replace(own, annotations=desc.annotations)
    try:
        path = source.resolve(blob_member(oci.validate_digest(wrapped)))
        if path is None:
            return desc
        media_type = oci.parse_manifest(source.read(path, oci.MAX_MANIFEST_BYTES), None).media_type
    except RegistryError:
        return desc
    return oci.Descriptor(media_type, wrapped, source.size(path), annotations=desc.annotations)


def _plan_referrers(source: Source, plan: Plan, loose: list[oci.Descriptor]) -> None:
    """Untagged manifests of the layout whose `subject` is part of an imported image (signatures, SBOMs,
    attestations, and their own referrers) go with that image, stored before its tags move."""
    while loose:
        found = []
        for desc in loose:
            path = source.resolve(blob_member(desc.digest))
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
                side = Plan(plan.kind, manifests=dict(plan.manifests))
                part = Image(image.repository, image.tags, manifests=list(image.manifests))
                try:
                    _walk_oci(source, side, part, desc, set(image.manifests))
                except MissingContent:
                    continue
                plan.manifests.update(side.manifests)
                plan.blobs.update(side.blobs)
                image.manifests = part.manifests
                image.blobs += [digest for digest in part.blobs if digest not in image.blobs]
                image.referrers += 1
                found.append(desc)
        if not found:
            return
        loose = [desc for desc in loose if desc not in found]
        for image in plan.images:  # the tagged manifest last: its tags move once everything else is in
            image.manifests.remove(image.digest)
            image.manifests.append(image.digest)


def _walk_oci(source: Source, plan: Plan, image: Image, desc: oci.Descriptor, seen: set[str]) -> None:
    digest = desc.digest
    if digest in seen:
        return
    seen.add(digest)
    if digest not in plan.manifests:
        path = source.resolve(blob_member(digest))
        if path is None:
            raise MissingContent(f"{source}: manifest {digest} is missing (blobs/ has no such file)")
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
        path = source.resolve(blob_member(blob.digest))
        if path is None:
            if blob.urls:  # a non-distributable layer: fetched from its URLs, not stored
                continue
            raise MissingContent(f"{source}: blob {blob.digest} is missing (referenced by {digest})")
        size = source.size(path)
        if size != blob.size:
            raise TransferError(f"{source}: blob {blob.digest} is {size} bytes; {digest} says {blob.size}")
        plan.blobs[blob.digest] = (blob.size, path)
        image.blobs.append(blob.digest)
    image.manifests.append(digest)
