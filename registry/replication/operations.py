"""Replication's ECR operations: the registry's replication configuration (PutReplicationConfiguration, shown by
DescribeRegistry) and each image's replication status (DescribeImageReplicationStatus).

Copying images to destinations is not done yet. The seam for it is `ReplicationStatuses`: what a replicator
reports for an image and the destinations its repository is replicated to. Until one exists, `NotCopied` reports
every such destination `FAILED`, saying why; an image no rule covers has no status, as on ECR.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from registry.errors import InvalidParameter
from registry.service.ecr_shapes import Caller, answered_image_id, existing_image
from registry.service.images import ImageService
from registry.service.registry_settings import REPLICATION, RegistrySettings

MAX_DESTINATIONS = 25  # unique destinations over all rules (ECR's quota)
NOT_COPIED = "Moorage does not copy images to replication destinations yet"


def destinations_for(config: dict[str, Any], repository: str) -> list[dict[str, str]]:
    """The destinations (`{region, registryId}`, each once, in rule order) a repository is replicated to: those of
    every rule without repository filters or with a PREFIX_MATCH filter the name starts with."""
    found: list[dict[str, str]] = []
    for rule in config.get("rules") or ():
        filters = rule.get("repositoryFilters")
        if filters is not None and not any(repository.startswith(f["filter"]) for f in filters):
            continue
        for d in rule["destinations"]:
            destination = {"region": d["region"], "registryId": d["registryId"]}
            if destination not in found:
                found.append(destination)
    return found


def check_configuration(config: dict[str, Any], region: str, account_id: str) -> None:
    """ECR's rules for a replication configuration beyond the model's: no destination is the registry itself, and
    at most MAX_DESTINATIONS unique destinations."""
    unique = {(d["region"], d["registryId"]) for rule in config["rules"] for d in rule["destinations"]}
    if (region, account_id) in unique:
        raise InvalidParameter(
            "Invalid parameter at 'replicationConfiguration' failed to satisfy constraint: 'Replication destination "
            "cannot be the same as the source registry'"
        )
    if len(unique) > MAX_DESTINATIONS:
        raise InvalidParameter(
            "Invalid parameter at 'replicationConfiguration' failed to satisfy constraint: 'A replication "
            f"configuration can have at most {MAX_DESTINATIONS} unique destinations'"
        )


class ReplicationStatuses(Protocol):
    async def statuses(self, repository: str, digest: str, destinations: list[dict[str, str]]) -> list[dict[str, str]]:
        """An ImageReplicationStatus (region, registryId, status, failureCode) per destination."""


class NotCopied:
    """No replicator: every destination reports FAILED, with the reason."""

    async def statuses(self, repository: str, digest: str, destinations: list[dict[str, str]]) -> list[dict[str, str]]:
        return [{**d, "status": "FAILED", "failureCode": NOT_COPIED} for d in destinations]


class ReplicationOperations:
    def __init__(
        self,
        images: ImageService,
        settings: RegistrySettings,
        *,
        account_id: str,
        region: str,
        replicator: ReplicationStatuses | None = None,
    ) -> None:
        self.images = images
        self.settings = settings
        self.account_id = account_id
        self.region = region
        self.replicator = replicator or NotCopied()

    def configuration(self) -> dict[str, Any]:
        text = self.settings.get(REPLICATION)
        return json.loads(text) if text is not None else {"rules": []}

    async def describe_registry(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return {"registryId": self.account_id, "replicationConfiguration": self.configuration()}

    async def put_replication_configuration(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        config = params["replicationConfiguration"]
        check_configuration(config, self.region, self.account_id)
        await self.settings.put(REPLICATION, json.dumps(config))
        return {"replicationConfiguration": config}

    async def describe_image_replication_status(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = params["repositoryName"]
        img = await existing_image(self.images, name, params["imageId"], self.account_id)
        destinations = destinations_for(self.configuration(), name)
        return {
            "repositoryName": name,
            "imageId": answered_image_id(img, params["imageId"]),
            "replicationStatuses": await self.replicator.statuses(name, img.digest, destinations),
        }
