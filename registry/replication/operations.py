"""Replication's ECR operations: the registry's replication configuration (PutReplicationConfiguration, shown by
DescribeRegistry), each image's replication status (DescribeImageReplicationStatus) and backfills
(Start/StopReplicationBackfill, ListReplicationBackfills, DescribeReplicationBackfillResults).

The copying is `registry.replication`: a destination `{region, registryId}` is a peer registry named in the
configuration (`[[replication.destinations]]`).
"""

from __future__ import annotations

import json
from typing import Any

from registry.errors import BackfillInProgress, BackfillInvalidStatus, BackfillNotFound, InvalidParameter
from registry.replication.backfill import Backfills
from registry.replication.runner import Replicator, destination_key, destinations_for
from registry.service.ecr_shapes import Caller, answered_image_id, existing_image, offset_page
from registry.service.images import ImageService
from registry.service.registry_settings import REPLICATION, RegistrySettings
from storage.records import BackfillRecord

MAX_DESTINATIONS = 25  # unique destinations over all rules (ECR's quota)
RESULTS_PAGE = 1000


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


def _destination(key: str) -> dict[str, str]:
    region, registry_id = key.split("/", 1)
    return {"region": region, "registryId": registry_id}


class ReplicationOperations:
    def __init__(
        self,
        images: ImageService,
        settings: RegistrySettings,
        replicator: Replicator,
        backfills: Backfills,
        *,
        account_id: str,
        region: str,
    ) -> None:
        self.images = images
        self.settings = settings
        self.replicator = replicator
        self.backfills = backfills
        self.account_id = account_id
        self.region = region

    def configuration(self) -> dict[str, Any]:
        return self.replicator.configuration()

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

    # -- backfills --------------------------------------------------------------------------------------
    def _shape(self, record: BackfillRecord) -> dict[str, Any]:
        out: dict[str, Any] = {
            "replicationBackfillId": record.id,
            "destination": _destination(record.destination),
            "status": record.status,
            "startedAt": record.started_at,
        }
        if record.failure:
            out["failureCode"] = record.failure
        if record.ended_at is not None:
            out["endedAt"] = record.ended_at
        return out

    async def _described(self, record: BackfillRecord) -> dict[str, Any]:
        out = self._shape(record)
        if record.status != "PREPARING":
            p = await self.backfills.meta.backfill_progress(record.id)
            out["progress"] = {
                "totalReplicationCount": p.total,
                "completedReplicationCount": p.complete,
                "failedReplicationCount": p.failed,
                "failureCodes": list(p.failure_codes),
            }
        return out

    async def _existing(self, backfill_id: str) -> BackfillRecord:
        record = await self.backfills.settle(backfill_id)
        if record is None:
            raise BackfillNotFound(
                f"The replication backfill with id '{backfill_id}' does not exist in the registry with id "
                f"'{self.account_id}'"
            )
        return record

    async def start_replication_backfill(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        destination = {"region": params["destination"]["region"], "registryId": params["destination"]["registryId"]}
        rules = self.configuration().get("rules") or []
        named = {destination_key(d) for rule in rules for d in rule["destinations"]}
        if destination_key(destination) not in named:
            raise InvalidParameter(
                "Invalid parameter at 'destination' failed to satisfy constraint: 'The destination "
                f"{destination['region']}/{destination['registryId']} is not in the registry's replication "
                "configuration'"
            )
        record = await self.backfills.start(destination)
        if record is None:
            raise BackfillInProgress(
                f"A replication backfill to {destination['region']}/{destination['registryId']} is already in "
                "progress; stop it or wait for it to end"
            )
        return {"registryId": self.account_id, **self._shape(record)}

    async def stop_replication_backfill(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        record = await self._existing(params["replicationBackfillId"])
        if record.status not in ("PREPARING", "IN_PROGRESS", "STOPPING"):
            raise BackfillInvalidStatus(
                f"The replication backfill '{record.id}' is {record.status}; only one PREPARING or IN_PROGRESS "
                "can be stopped"
            )
        record = await self.backfills.stop(record)
        shape = self._shape(record)
        return {
            "registryId": self.account_id,
            **{k: shape[k] for k in ("replicationBackfillId", "destination", "status", "startedAt")},
        }

    async def list_replication_backfills(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        records = await self.backfills.meta.list_backfills()
        page, next_token = offset_page(records, params)
        out: dict[str, Any] = {"registryId": self.account_id, "backfills": []}
        for record in page:
            settled = await self.backfills.settle(record.id) or record
            out["backfills"].append(await self._described(settled))
        if next_token is not None:
            out["nextToken"] = next_token
        return out

    async def describe_replication_backfill_results(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        record = await self._existing(params["replicationBackfillId"])
        out: dict[str, Any] = {"registryId": self.account_id, **await self._described(record)}
        if record.status not in ("COMPLETE", "FAILED", "STOPPED"):
            return out  # per-image results once it has ended, as on ECR
        wanted = params.get("resultStatusFilter")
        results: list[dict[str, Any]] = []
        after = 0
        while batch := await self.backfills.meta.replication_tasks(backfill=record.id, after=after, limit=RESULTS_PAGE):
            after = batch[-1].id
            for task in batch:
                if task.state not in ("complete", "failed"):
                    continue
                status = "COMPLETE" if task.state == "complete" else "FAILED"
                if wanted and status != wanted:
                    continue
                image_id = {"imageDigest": task.digest, **({"imageTag": task.tags[0]} if task.tags else {})}
                result: dict[str, Any] = {"repositoryName": task.repository, "imageId": image_id, "status": status}
                if task.error and status == "FAILED":
                    result["failureCode"] = task.error[:1000]
                results.append(result)
        page, next_token = offset_page(results, params)
        out["results"] = list(page)
        if next_token is not None:
            out["nextToken"] = next_token
        return out
