"""ECR's scanning operations, with ECR's shapes, for a registry that does not scan yet.

Configurations are stored and returned as ECR does: the registry scanning configuration
(Get/PutRegistryScanningConfiguration, BASIC with no rules until one is put) and what applies to each repository
(BatchGetRepositoryScanningConfiguration: the registry's rules, else the repository's scanOnPush).

No scanner runs. StartImageScan and DescribeImageScanFindings answer the scan status `FAILED`, with
a description saying so and no findings: boto3's paginator gets an empty page, and its `ImageScanComplete` waiter
stops at once instead of polling for five minutes; nothing ever claims an image was scanned clean.
"""

from __future__ import annotations

import json
from typing import Any

from registry.errors import ImageArchived, InvalidParameter
from registry.glob import glob_matches
from registry.naming import repository_arn
from registry.service.ecr_shapes import Caller, answered_image_id, existing_image
from registry.service.images import ImageService
from registry.service.registry_settings import SCANNING, RegistrySettings
from storage.records import ImageRecord, RepositoryRecord

NO_SCANNER = "Moorage has no vulnerability scanner: the image was not scanned, and no findings exist."
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
