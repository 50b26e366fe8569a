"""ECR's scanning and signing operations, with ECR's shapes, for a registry that neither scans nor signs yet.

Configurations are stored and returned as ECR does: the registry scanning configuration
(Get/PutRegistryScanningConfiguration, BASIC with no rules until one is put), what applies to each repository
(BatchGetRepositoryScanningConfiguration: the registry's rules, else the repository's scanOnPush), and the
signing configuration (Put/Get/DeleteSigningConfiguration).

No scanner and no signer run. StartImageScan and DescribeImageScanFindings answer the scan status `FAILED`, with
a description saying so and no findings: boto3's paginator gets an empty page, and its `ImageScanComplete` waiter
stops at once instead of polling for five minutes; nothing ever claims an image was scanned clean. An image that a
signing rule covers reports `FAILED` (not signed) in DescribeImageSigningStatus; one no rule covers, no status.
"""

from __future__ import annotations

import json
from typing import Any

from registry.errors import ImageArchived, InvalidParameter, SigningConfigurationNotFound
from registry.glob import glob_matches
from registry.naming import repository_arn
from registry.service.ecr_shapes import Caller, answered_image_id, existing_image
from registry.service.images import ImageService
from registry.service.registry_settings import SCANNING, SIGNING, RegistrySettings
from storage.records import ImageRecord, RepositoryRecord

NO_SCANNER = "Moorage has no vulnerability scanner: the image was not scanned, and no findings exist."
NOT_SIGNED = "Moorage does not sign images: no signature was made with this signing profile."
NOT_SIGNED_CODE = "SigningNotAvailable"
DEFAULT_SCANNING = {"scanType": "BASIC", "rules": []}
# When several registry scanning rules cover a repository, the more thorough frequency applies (as on ECR).
FREQUENCY_ORDER = ("CONTINUOUS_SCAN", "SCAN_ON_PUSH", "MANUAL")


def matching_filters(filters: list[dict[str, str]], repository: str) -> list[dict[str, str]]:
    """The wildcard repository filters (`*` any run of characters) that match the repository's name."""
    return [f for f in filters if glob_matches(f["filter"], repository, single=False)]


def repository_scanning(config: dict[str, Any], repo: RepositoryRecord) -> tuple[str, list[dict[str, str]]]:
    """(scanFrequency, appliedScanFilters) for a repository under a registry scanning configuration."""
    applied: dict[str, list[dict[str, str]]] = {}
    for rule in config.get("rules") or ():
        found = matching_filters(rule["repositoryFilters"], repo.name)
        if found:
            applied.setdefault(rule["scanFrequency"], []).extend(found)
    for frequency in FREQUENCY_ORDER:
        if frequency in applied:
            return frequency, applied[frequency]
    return ("SCAN_ON_PUSH" if repo.settings.scan_on_push else "MANUAL"), []


class ScanningOperations:
    def __init__(self, images: ImageService, settings: RegistrySettings, *, account_id: str, region: str) -> None:
        self.images = images
        self.settings = settings
        self.account_id = account_id
        self.region = region

    def _document(self, name: str) -> dict[str, Any] | None:
        text = self.settings.get(name)
        return json.loads(text) if text is not None else None

    # -- scanning configuration ----------------------------------------------------------------------
    async def get_registry_scanning_configuration(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return {"registryId": self.account_id, "scanningConfiguration": self._document(SCANNING) or DEFAULT_SCANNING}

    async def put_registry_scanning_configuration(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        config = {"scanType": params.get("scanType", "BASIC"), "rules": params.get("rules") or []}
        for i, rule in enumerate(config["rules"]):
            if config["scanType"] == "BASIC" and rule["scanFrequency"] == "CONTINUOUS_SCAN":
                raise InvalidParameter(
                    f"Invalid parameter at 'rules.{i + 1}.member.scanFrequency' failed to satisfy constraint: "
                    "'CONTINUOUS_SCAN is only supported with the ENHANCED scan type'"
                )
        await self.settings.put(SCANNING, json.dumps(config))
        return {"registryScanningConfiguration": config}

    async def batch_get_repository_scanning_configuration(
        self, params: dict[str, Any], caller: Caller
    ) -> dict[str, Any]:
        config = self._document(SCANNING) or DEFAULT_SCANNING
        found, failures = [], []
        for name in params["repositoryNames"]:
            if not await self.images.has_repository(name):
                code = "REPOSITORY_NOT_FOUND"
                failures.append({"repositoryName": name, "failureCode": code, "failureReason": code})
                continue
            repo = await self.images.repository(name)
            frequency, filters = repository_scanning(config, repo)
            found.append(
                {
                    "repositoryArn": repository_arn(self.region, self.account_id, name),
                    "repositoryName": name,
                    "scanOnPush": frequency == "SCAN_ON_PUSH",
                    "scanFrequency": frequency,
                    "appliedScanFilters": filters,
                }
            )
        return {"scanningConfigurations": found, "failures": failures}

    # -- scans ---------------------------------------------------------------------------------------
    async def _scannable(self, params: dict[str, Any]) -> ImageRecord:
        img = await existing_image(self.images, params["repositoryName"], params["imageId"], self.account_id)
        if img.archived:
            raise ImageArchived(f"The image {img.digest} is archived; restore it with UpdateImageStorageClass.")
        return img

    async def start_image_scan(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        img = await self._scannable(params)
        return {
            "registryId": self.account_id,
            "repositoryName": params["repositoryName"],
            "imageId": answered_image_id(img, params["imageId"]),
            "imageScanStatus": {"status": "FAILED", "description": NO_SCANNER},
        }

    async def describe_image_scan_findings(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        img = await existing_image(self.images, params["repositoryName"], params["imageId"], self.account_id)
        status = {"status": "FAILED", "description": NO_SCANNER}
        if img.archived:  # ECR's status for an archived image (this operation does not list ImageArchivedException)
            status = {"status": "IMAGE_ARCHIVED", "description": "The image is archived."}
        return {
            "registryId": self.account_id,
            "repositoryName": params["repositoryName"],
            "imageId": answered_image_id(img, params["imageId"]),
            "imageScanStatus": status,
            "imageScanFindings": {"findings": [], "findingSeverityCounts": {}},
        }

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
