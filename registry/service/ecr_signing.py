"""ECR's signing operations, with ECR's shapes: the signing configuration (Put/Get/DeleteSigningConfiguration),
whose rules decide which pushes `registry.service.signing.ImageSigner` signs, and DescribeImageSigningStatus.

Every rule that covers an image's repository gets a status, the same for all of them: Moorage signs an image once,
with its own key, whatever the profiles (`signingProfileArn` is an ECR name, stored and echoed; no AWS Signer is
involved). An image no rule covers has no status, nor has a signature manifest (it is never signed itself).
"""

from __future__ import annotations

import json
from typing import Any

from registry import oci, sigstore
from registry.errors import SigningConfigurationNotFound
from registry.service.ecr_shapes import Caller, answered_image_id, existing_image
from registry.service.images import ImageService
from registry.service.registry_settings import SIGNING, RegistrySettings
from registry.service.signing import ImageSigner


class SigningOperations:
    def __init__(
        self, images: ImageService, settings: RegistrySettings, signer: ImageSigner, *, account_id: str
    ) -> None:
        self.images = images
        self.settings = settings
        self.signer = signer
        self.account_id = account_id

    # -- signing -------------------------------------------------------------------------------------
    async def put_signing_configuration(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        config = params["signingConfiguration"]
        await self.settings.put(SIGNING, json.dumps(config))
        return {"signingConfiguration": config}

    async def get_signing_configuration(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        config = self.settings.document(SIGNING)
        if config is None:
            raise SigningConfigurationNotFound(
                f"Signing configuration does not exist in the registry with id '{self.account_id}'"
            )
        return {"registryId": self.account_id, "signingConfiguration": config}

    async def delete_signing_configuration(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        out = await self.get_signing_configuration(params, caller)
        await self.settings.delete(SIGNING)
        return out

    async def describe_image_signing_status(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = params["repositoryName"]
        img = await existing_image(self.images, name, params["imageId"], self.account_id)
        statuses = []
        profiles = self.signer.profiles_for(name)
        if profiles and not await self._is_signature(name, img.digest):
            status, code, reason = await self.signer.status(name, img.digest)
            for profile in profiles:
                entry = {"signingProfileArn": profile, "status": status}
                if code is not None:
                    entry |= {"failureCode": code, "failureReason": reason or ""}
                statuses.append(entry)
        return {
            "repositoryName": name,
            "imageId": answered_image_id(img, params["imageId"]),
            "registryId": self.account_id,
            "signingStatuses": statuses,
        }

    async def _is_signature(self, name: str, digest: str) -> bool:
        record = await self.images.get_manifest(name, digest)
        return sigstore.is_signature_manifest(oci.parse_manifest(record.body, record.media_type))
