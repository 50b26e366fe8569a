"""ECR's image operations: ListImages, DescribeImages, BatchGetImage, BatchDeleteImage, PutImage and
ListImageReferrers, over the same manifests and tags as /v2 (the image service)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from registry import jsonsafe, oci
from registry.errors import (
    DigestInvalid,
    ImageAlreadyExists,
    ImageDigestDoesNotMatch,
    ImageNotSigned,
    InvalidParameter,
    LayersNotFound,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    RegistryError,
)
from registry.service.ecr_shapes import (
    DEFAULT_PAGE,
    Caller,
    decode_token,
    encode_token,
    existing_repository,
    find_image,
    image_detail,
    image_not_found,
    image_status,
)
from registry.service.images import ImageService, referrer_descriptor
from storage.metadata import MetadataStore
from storage.records import ImageRecord, RepositoryRecord

REFERRER_PAGE = 20  # ListImageReferrers' page without maxResults (which is at most 50), as on ECR


class ImageOperations:
    def __init__(self, images: ImageService, meta: MetadataStore, *, account_id: str) -> None:
        self.images = images
        self.meta = meta
        self.account_id = account_id
        # (repository, digests) -> DescribeImages' scan fields by digest (set where scanning is wired in)
        self.scan_details: Callable[[str, list[str]], Awaitable[dict[str, dict[str, Any]]]] | None = None

    async def _with_scans(self, name: str, details: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.scan_details is not None and details:
            scans = await self.scan_details(name, [d["imageDigest"] for d in details])
            for detail in details:
                detail.update(scans.get(detail["imageDigest"], {}))
        return details

    async def _repo(self, name: str) -> RepositoryRecord:
        return await existing_repository(self.images, name, self.account_id)

    async def list_images(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """One entry per (digest, tag) pair, an untagged image once. The token is [image id, entries of that
        image already returned]: the next page starts at that image."""
        name = params["repositoryName"]
        await self._repo(name)
        status = (params.get("filter") or {}).get("tagStatus", "ANY")
        limit = params.get("maxResults", DEFAULT_PAGE)
        start_id, skip = decode_token(params.get("nextToken"), list) or (0, 0)
        ids: list[dict[str, str]] = []
        async for img in self.images.iter_images(name, start_id - 1):
            if (status == "TAGGED" and not img.tags) or (status == "UNTAGGED" and img.tags):
                continue
            tagged = [{"imageDigest": img.digest, "imageTag": tag} for tag in img.tags]
            entries = tagged or [{"imageDigest": img.digest}]
            first = skip if img.id == start_id else 0
            for i in range(first, len(entries)):
                if len(ids) == limit:
                    return {"imageIds": ids, "nextToken": encode_token([img.id, i])}
                ids.append(entries[i])
        return {"imageIds": ids}

    async def describe_images(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = params["repositoryName"]
        await self._repo(name)
        if params.get("imageIds") is not None:
            if "nextToken" in params or "maxResults" in params:
                raise InvalidParameter("Cannot specify nextToken or maxResults together with imageIds")
            details = []
            for image_id in params["imageIds"]:
                img = await self._find(name, image_id)
                if img is None:
                    raise image_not_found(name, image_id, self.account_id)
                details.append(image_detail(img, self.account_id))
            return {"imageDetails": await self._with_scans(name, details)}
        status = (params.get("filter") or {}).get("tagStatus", "ANY")
        limit = params.get("maxResults", DEFAULT_PAGE)
        after_id = decode_token(params.get("nextToken"), int) or 0
        details = []
        async for img in self.images.iter_images(name, after_id):
            if (status == "TAGGED" and not img.tags) or (status == "UNTAGGED" and img.tags):
                continue
            if len(details) == limit:
                return {"imageDetails": await self._with_scans(name, details), "nextToken": encode_token(after_id)}
            details.append(image_detail(img, self.account_id))
            after_id = img.id
        return {"imageDetails": await self._with_scans(name, details)}

    async def _find(self, name: str, image_id: dict[str, str]) -> ImageRecord | None:
        return await find_image(self.images, name, image_id)

    def _failure(self, image_id: dict[str, str], code: str, reason: str) -> dict[str, Any]:
        return {"imageId": image_id, "failureCode": code, "failureReason": reason}

    def _check_image_id(self, image_id: dict[str, str]) -> dict[str, Any] | None:
        digest, tag = image_id.get("imageDigest"), image_id.get("imageTag")
        if digest is None and tag is None:
            return self._failure(
                image_id, "MissingDigestAndTag", "Invalid request parameters: both tag and digest cannot be null"
            )
        if digest is not None:
            try:
                oci.validate_digest(digest)
            except DigestInvalid:
                return self._failure(
                    image_id,
                    "InvalidImageDigest",
                    "Invalid request parameters: image digest should satisfy the regex '[a-zA-Z0-9-_+.]+:[a-fA-F0-9]+'",
                )
        return None

    async def batch_get_image(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = params["repositoryName"]
        await self._repo(name)
        accepted = set(params.get("acceptedMediaTypes") or [])
        images, failures = [], []
        for image_id in params["imageIds"]:
            if (bad := self._check_image_id(image_id)) is not None:
                failures.append(bad)
                continue
            digest, tag = image_id.get("imageDigest"), image_id.get("imageTag")
            try:
                record = await self.images.get_manifest(name, tag if tag is not None else digest)
            except ManifestUnknown:
                failures.append(self._failure(image_id, "ImageNotFound", "Requested image not found"))
                continue
            if digest is not None and tag is not None and record.digest != digest:
                failures.append(
                    self._failure(
                        image_id,
                        "ImageTagDoesNotMatchDigest",
                        "Invalid request parameters: image tag does not match digest",
                    )
                )
                continue
            if record.archived:
                failures.append(
                    self._failure(
                        image_id, "ImageInaccessible", "The image is archived; restore it with UpdateImageStorageClass"
                    )
                )
                continue
            try:
                await self.images.check_pull(name, record)
            except ImageNotSigned as e:  # [signing] enforce: the image is there, but not to be pulled
                failures.append(self._failure(image_id, "ImageInaccessible", e.message))
                continue
            if accepted and record.media_type not in accepted:
                failures.append(
                    self._failure(
                        image_id, "ImageNotFound", f"Requested image is {record.media_type}, not an accepted media type"
                    )
                )
                continue
            self.images.note_pull(name, record.digest, caller.principal_arn)
            images.append(
                {
                    "registryId": self.account_id,
                    "repositoryName": name,
                    "imageId": {"imageDigest": record.digest, **({"imageTag": tag} if tag is not None else {})},
                    "imageManifest": record.body.decode("utf-8", errors="replace"),
                    "imageManifestMediaType": record.media_type,
                }
            )
        return {"images": images, "failures": failures}

    async def batch_delete_image(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = params["repositoryName"]
        await self._repo(name)
        deleted, failures = [], []
        for image_id in params["imageIds"]:
            if (bad := self._check_image_id(image_id)) is not None:
                failures.append(bad)
                continue
            img = await self._find(name, image_id)
            if img is None:
                failures.append(self._failure(image_id, "ImageNotFound", "Requested image not found"))
                continue
            tag = image_id.get("imageTag")
            parents = (await self.meta.parents_of(name, [img.digest])).get(img.digest)
            if tag is not None and len(img.tags) > 1:
                await self.images.delete_manifest(name, tag)  # just the tag: the image keeps its others
            elif parents:
                failures.append(
                    self._failure(
                        image_id,
                        "ImageReferencedByManifestList",
                        f"Requested image referenced by manifest list: {parents}",
                    )
                )
                continue
            else:
                await self.images.delete_manifest(name, img.digest)
            deleted.append({"imageDigest": img.digest, **({"imageTag": tag} if tag is not None else {})})
        return {"imageIds": deleted, "failures": failures}

    async def put_image(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = params["repositoryName"]
        await self._repo(name)
        body = params["imageManifest"].encode("utf-8")
        media_type = params.get("imageManifestMediaType")
        try:
            doc = jsonsafe.loads(body)
        except ValueError:  # also a document nested too deep
            raise InvalidParameter(
                "Invalid parameter at 'imageManifest' failed to satisfy constraint: 'Invalid JSON syntax'"
            ) from None
        if media_type is None and not (isinstance(doc, dict) and doc.get("mediaType")):
            raise InvalidParameter(
                "Invalid parameter at 'imageManifestMediaType' failed to satisfy constraint: "
                "'Member must not be null when the manifest has no mediaType'"
            )
        digest = params.get("imageDigest")
        if digest is not None:
            try:
                oci.validate_digest(digest)
            except DigestInvalid as e:
                raise InvalidParameter(
                    f"Invalid parameter at 'imageDigest' failed to satisfy constraint: '{e.message}'"
                ) from None
            actual = oci.compute_digest(body, oci.digest_algorithm(digest))
            if actual != digest:
                raise ImageDigestDoesNotMatch(f"The provided digest {digest} does not match the manifest's {actual}")
        tag = params.get("imageTag")
        if tag is not None:
            try:
                oci.validate_tag(tag)
            except RegistryError as e:
                raise InvalidParameter(
                    f"Invalid parameter at 'imageTag' failed to satisfy constraint: '{e.message}'"
                ) from None
        try:
            result = await self.images.put_manifest(
                name, tag if tag is not None else oci.compute_digest(body), body, media_type
            )
        except ManifestBlobUnknown as e:
            if e.ecr_code == "ReferencedImagesNotFoundException":
                raise
            raise LayersNotFound(
                f"Layers with digests {e.detail['missing'] if e.detail else ''} required by the "
                "manifest were not found in the repository"
            ) from None
        except ManifestInvalid as e:
            raise InvalidParameter(
                f"Invalid parameter at 'imageManifest' failed to satisfy constraint: '{e.message}'"
            ) from None
        if not result.created and not result.restored and (tag is None or not result.moved_tags):
            raise ImageAlreadyExists(
                f"Image with digest '{result.digest}'{f' and tag {tag!r}' if tag else ''} already exists in the "
                f"repository with name '{name}' in registry with id '{self.account_id}'"
            )
        image_id = {"imageDigest": result.digest, **({"imageTag": tag} if tag is not None else {})}
        return {
            "image": {
                "registryId": self.account_id,
                "repositoryName": name,
                "imageId": image_id,
                "imageManifest": params["imageManifest"],
                "imageManifestMediaType": result.media_type,
            }
        }

    async def list_image_referrers(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """The artifacts whose subject is the image: the manifests `/v2/<name>/referrers/<digest>` lists, in the
        same order, filtered by artifact type and status (ACTIVE unless the filter says otherwise), 20 a page
        unless maxResults (at most 50) says otherwise, as ECR pages them."""
        name = params["repositoryName"]
        await self._repo(name)
        subject = params["subjectId"]["imageDigest"]
        try:
            oci.validate_digest(subject)
        except DigestInvalid:
            raise InvalidParameter(
                "Invalid parameter at 'subjectId.imageDigest' failed to satisfy constraint: "
                "'must satisfy regular expression '[a-zA-Z0-9-_+.]+:[a-fA-F0-9]+''"
            ) from None
        wanted = params.get("filter") or {}
        types = set(wanted.get("artifactTypes") or ())
        status = wanted.get("artifactStatus", "ACTIVE")
        referrers = []
        for m in await self.images.referrer_records(name, subject):
            artifact_status = image_status(m.storage_class)
            if (types and m.artifact_type not in types) or status not in ("ANY", artifact_status):
                continue
            referrers.append({**referrer_descriptor(m), "artifactStatus": artifact_status})
        start = decode_token(params.get("nextToken"), int) or 0
        limit = params.get("maxResults", REFERRER_PAGE)
        out: dict[str, Any] = {"referrers": referrers[start : start + limit]}
        if start + limit < len(referrers):
            out["nextToken"] = encode_token(start + limit)
        return out
