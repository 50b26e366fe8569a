"""ECR's signing operations, with ECR's shapes, for a registry that does not sign yet: the signing configuration
(Put/Get/DeleteSigningConfiguration) is stored and returned; an image that a signing rule covers reports
`FAILED` (not signed) in DescribeImageSigningStatus; one no rule covers, no status.
"""

from __future__ import annotations

import json
from typing import Any

from registry.errors import SigningConfigurationNotFound
from registry.service.ecr_scanning import matching_filters
from registry.service.ecr_shapes import Caller, answered_image_id, existing_image
from registry.service.images import ImageService
from registry.service.registry_settings import SIGNING, RegistrySettings

NOT_SIGNED = "Moorage does not sign images: no signature was made with this signing profile."
NOT_SIGNED_CODE = "SigningNotAvailable"


class SigningOperations:
    def __init__(self, images: ImageService, settings: RegistrySettings, *, account_id: str) -> None:
        self.images = images
        self.settings = settings
        self.account_id = account_id

    def _document(self, name: str) -> dict[str, Any] | None:
        text = self.settings.get(name)
        return json.loads(text) if text is not None else None

    # -- signing -------------------------------------------------------------------------------------
    async def put_signing_configuration(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        config = params["signingConfiguration"]
        await self.settings.put(SIGNING, json.dumps(config))
        return {"signingConfiguration": config}

    async def get_signing_configuration(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        config = self._document(SIGNING)
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
        for rule in (self._document(SIGNING) or {}).get("rules") or ():
            filters = rule.get("repositoryFilters")
            if filters is None or matching_filters(filters, name):
                statuses.append(
                    {
                        "signingProfileArn": rule["signingProfileArn"],
                        "status": "FAILED",
                        "failureCode": NOT_SIGNED_CODE,
                        "failureReason": NOT_SIGNED,
                    }
                )
        return {
            "repositoryName": name,
            "imageId": answered_image_id(img, params["imageId"]),
            "registryId": self.account_id,
            "signingStatuses": statuses,
        }
