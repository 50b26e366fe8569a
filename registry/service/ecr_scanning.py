"""ECR's scanning configuration operations, with ECR's shapes (the scans themselves are `registry.scanning`).

Configurations are stored and returned as ECR does: the registry scanning configuration
(Get/PutRegistryScanningConfiguration, BASIC with no rules until one is put) and what applies to each repository
(BatchGetRepositoryScanningConfiguration: the registry's rules, else the repository's scanOnPush).
"""

from __future__ import annotations

import json
from typing import Any

from registry.errors import InvalidParameter
from registry.glob import glob_matches
from registry.naming import repository_arn
from registry.service.ecr_shapes import Caller
from registry.service.images import ImageService
from registry.service.registry_settings import SCANNING, RegistrySettings
from storage.records import RepositoryRecord

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

    # -- scanning configuration ----------------------------------------------------------------------
    async def get_registry_scanning_configuration(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return {
            "registryId": self.account_id,
            "scanningConfiguration": self.settings.document(SCANNING) or DEFAULT_SCANNING,
        }

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
        config = self.settings.document(SCANNING) or DEFAULT_SCANNING
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
