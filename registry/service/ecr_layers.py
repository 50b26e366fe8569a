"""ECR's layer operations: BatchCheckLayerAvailability, the layer upload (InitiateLayerUpload, UploadLayerPart,
CompleteLayerUpload) over the same upload sessions as /v2 pushes, and GetDownloadUrlForLayer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from registry import oci
from registry.auth.tokens import DOWNLOAD_PARAM
from registry.errors import (
    BlobUnknown,
    DigestInvalid,
    EmptyUpload,
    InvalidLayer,
    InvalidLayerPart,
    LayerAlreadyExists,
    LayerInaccessible,
    LayersNotFound,
    NameUnknown,
    RegistryError,
    UploadNotFound,
    UploadRangeInvalid,
)
from registry.service.ecr_shapes import Caller, existing_repository
from registry.service.images import ImageService
from registry.service.uploads import UploadService
from storage.metadata import MetadataStore
from storage.records import RepositoryRecord

PART_SIZE = 10 * 1024 * 1024


class LayerOperations:
    def __init__(
        self,
        images: ImageService,
        uploads: UploadService,
        meta: MetadataStore,
        *,
        account_id: str,
        issue_download: Callable[[str | None, str, str], tuple[str, float]],
    ) -> None:
        self.images = images
        self.uploads = uploads
        self.meta = meta
        self.account_id = account_id
        # (principal name, repository, digest) -> a download URL's signature (one blob, an hour), expires_at
        self.issue_download = issue_download

    async def _repo(self, name: str) -> RepositoryRecord:
        return await existing_repository(self.images, name, self.account_id)

    async def batch_check_layer_availability(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = params["repositoryName"]
        await self._repo(name)
        layers, failures = [], []
        for digest in params["layerDigests"]:
            try:
                oci.validate_digest(digest)
            except DigestInvalid as e:
                failures.append(
                    {"layerDigest": digest, "failureCode": "InvalidLayerDigest", "failureReason": e.message}
                )
                continue
            size = await self.meta.linked_blob_size(name, digest)
            if size is None:
                layers.append({"layerDigest": digest, "layerAvailability": "UNAVAILABLE"})
            elif await self.images.blob_archived_only(name, digest):
                layers.append({"layerDigest": digest, "layerAvailability": "ARCHIVED", "layerSize": size})
            else:
                layers.append({"layerDigest": digest, "layerAvailability": "AVAILABLE", "layerSize": size})
        return {"layers": layers, "failures": failures}

    async def initiate_layer_upload(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = params["repositoryName"]
        await self._repo(name)
        started = await self.uploads.start(name, owner=caller.principal_name)
        return {"uploadId": started.upload_id, "partSize": PART_SIZE}

    async def upload_layer_part(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name, upload_id = params["repositoryName"], params["uploadId"].lower()
        await self._repo(name)
        first, last, data = params["partFirstByte"], params["partLastByte"], params["layerPartBlob"]
        if last < first or last - first + 1 != len(data):
            raise InvalidLayerPart(
                f"partFirstByte {first} and partLastByte {last} do not match the part's {len(data)} bytes",
                fields=await self._part_fields(name, upload_id, caller),
            )
        try:
            size = await self.uploads.append(
                name,
                upload_id,
                _once(data),
                content_range=f"{first}-{last}",
                length=len(data),
                owner=caller.principal_name,
            )
        except UploadRangeInvalid:
            raise InvalidLayerPart(
                f"The part starts at byte {first}, not where the upload ends",
                fields=await self._part_fields(name, upload_id, caller),
            ) from None
        except NameUnknown:
            raise self._upload_not_found(upload_id) from None
        except RegistryError as e:
            if e.ecr_code == "UploadNotFoundException":
                raise self._upload_not_found(upload_id) from None
            raise
        return {
            "registryId": self.account_id,
            "repositoryName": name,
            "uploadId": upload_id,
            "lastByteReceived": size - 1,
        }

    async def _part_fields(self, name: str, upload_id: str, caller: Caller) -> dict[str, Any]:
        try:
            size = await self.uploads.size(name, upload_id, caller.principal_name)
        except RegistryError:
            raise self._upload_not_found(upload_id) from None
        return {
            "registryId": self.account_id,
            "repositoryName": name,
            "uploadId": upload_id,
            **({"lastValidByteReceived": size - 1} if size else {}),  # the model's minimum is 0
        }

    def _upload_not_found(self, upload_id: str) -> RegistryError:
        return UploadNotFound(f"Upload with id '{upload_id}' was not found")

    async def complete_layer_upload(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name, upload_id = params["repositoryName"], params["uploadId"].lower()
        await self._repo(name)
        digest = params["layerDigests"][0]
        try:
            oci.validate_digest(digest)
        except DigestInvalid as e:
            raise InvalidLayer(e.message) from None
        try:
            size = await self.uploads.size(name, upload_id, caller.principal_name)
        except RegistryError:
            raise self._upload_not_found(upload_id) from None
        if size == 0:
            raise EmptyUpload(f"The upload with id '{upload_id}' contains no layer parts")
        if await self.meta.linked_blob_size(name, digest) is not None:
            await self.uploads.cancel(name, upload_id, caller.principal_name)
            raise LayerAlreadyExists(
                f"The layer '{digest}' already exists in the repository with name '{name}' "
                f"in registry with id '{self.account_id}'"
            )
        try:
            await self.uploads.finish(
                name, upload_id, digest, None, content_range=None, length=None, owner=caller.principal_name
            )
        except DigestInvalid as e:
            raise InvalidLayer(f"The layer digest does not match the uploaded content: {e.message}") from None
        return {"registryId": self.account_id, "repositoryName": name, "uploadId": upload_id, "layerDigest": digest}

    async def get_download_url_for_layer(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name, digest = params["repositoryName"], params["layerDigest"]
        await self._repo(name)
        try:
            await self.images.blob_size(name, digest)
        except BlobUnknown:
            raise LayersNotFound(
                f"The layer '{digest}' does not exist in the repository with name '{name}' in "
                f"the registry with id '{self.account_id}'"
            ) from None
        if not await self.meta.blob_referenced(name, digest):
            raise LayerInaccessible(
                f"The layer '{digest}' is not referenced by any image in the repository with name '{name}'"
            )
        # A presigned URL, as ECR's S3 ones: a plain GET of this one blob for an hour, signed for the caller (whose
        # permission to pull is checked again when it is used). Never a token: that would push and delete too.
        signature, _ = self.issue_download(caller.principal_name, name, digest)
        return {
            "downloadUrl": f"{caller.base_url}/v2/{name}/blobs/{digest}?{DOWNLOAD_PARAM}={signature}",
            "layerDigest": digest,
        }


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data
