"""Lifecycle policies: storage, previews, the sweep that applies them, and their ECR operations.

The rules themselves live in the pure `registry.lifecycle`; this module feeds it a repository's images as
they are now and carries out what it decides: expire (delete the image and its tags; garbage collection
reclaims the bytes) or transition to the archive storage class (pulls refused until restored).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from registry import lifecycle
from registry.errors import (
    ImageNotFound,
    InvalidParameter,
    LifecyclePolicyNotFound,
    LifecyclePolicyPreviewInProgress,
    LifecyclePolicyPreviewNotFound,
    RegistryError,
)
from registry.service.ecr_shapes import existing_repository, image_status, offset_page
from registry.service.images import ImageService
from storage.metadata import MetadataStore
from storage.records import ARCHIVE, ImageRecord, LifecyclePreview, RepositoryRecord

log = logging.getLogger("moorage.lifecycle")
PAGE = 500
PREVIEW_STALE = 600.0  # seconds: a preview still "in progress" after this was lost with its process


@dataclass(frozen=True, slots=True)
class Planned:
    action: lifecycle.Action
    image: ImageRecord


@dataclass(slots=True)
class SweepReport:
    repository: str
    expired: list[Planned] = field(default_factory=list)
    transitioned: list[Planned] = field(default_factory=list)
    bytes: int = 0

    @classmethod
    def planned(cls, repository: str, planned: list[Planned]) -> SweepReport:
        """What applying `planned` would do (a dry run, a preview)."""
        return cls(
            repository,
            [step for step in planned if step.action.action == "expire"],
            [step for step in planned if step.action.action == "transition"],
        )


class LifecycleService:
    def __init__(
        self, images: ImageService, meta: MetadataStore, *, account_id: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.images = images
        self.meta = meta
        self.account_id = account_id
        self.clock = clock
        self._preview_tasks: set[asyncio.Task[None]] = set()

    # -- planning ----------------------------------------------------------------------------------
    async def images_of(self, repository: str) -> list[ImageRecord]:
        return [img async for img in self.images.iter_images(repository)]

    async def plan(self, repository: str, policy: lifecycle.Policy, now: float) -> list[Planned]:
        records = await self.images_of(repository)
        parents = await self.meta.parents_of(repository, [record.digest for record in records])
        by_digest = {record.digest: record for record in records}
        images = [
            lifecycle.Image(
                digest=record.digest,
                tags=record.tags,
                pushed_at=record.pushed_at,
                last_pulled_at=record.last_pulled_at,
                storage_class=record.storage_class.lower(),
                last_archived_at=record.last_archived_at,
                last_activated_at=record.last_activated_at,
                referenced_by_index=bool(parents.get(record.digest)),
            )
            for record in records
        ]
        return [Planned(action, by_digest[action.digest]) for action in lifecycle.evaluate(policy, images, now)]

    async def apply(self, repository: str, planned: list[Planned], *, reason: str) -> SweepReport:
        report = SweepReport(repository)
        now = self.clock()
        for step in planned:
            image, action = step.image, step.action
            tags = ",".join(image.tags) or "untagged"
            if action.action == "expire":
                try:
                    await self.images.delete_manifest(repository, image.digest)
                except RegistryError:
                    continue  # deleted meanwhile
                report.expired.append(step)
                report.bytes += image.image_size
                log.info(
                    "lifecycle (%s): expired %s@%s (%s, pushed %s) by rule %d",
                    reason,
                    repository,
                    image.digest,
                    tags,
                    iso_time(image.pushed_at),
                    action.rule_priority,
                )
            else:
                if await self.meta.set_storage_class(repository, image.digest, ARCHIVE, now):
                    self.images.forget_manifest(repository, image.digest)
                    report.transitioned.append(step)
                    log.info(
                        "lifecycle (%s): archived %s@%s (%s) by rule %d",
                        reason,
                        repository,
                        image.digest,
                        tags,
                        action.rule_priority,
                    )
        return report

    async def repositories_with_policies(self) -> list[RepositoryRecord]:
        out: list[RepositoryRecord] = []
        last: str | None = None
        while batch := await self.meta.describe_repositories(last, PAGE):
            out += [repo for repo in batch if repo.lifecycle_policy]
            last = batch[-1].name
        return out

    async def sweep(
        self, *, now: float | None = None, dry_run: bool = False, repository: str | None = None
    ) -> list[SweepReport]:
        """Apply every repository's policy (or one's); `dry_run` plans without acting."""
        now = self.clock() if now is None else now
        repos = await self.repositories_with_policies()
        if repository is not None:
            repos = [repo for repo in repos if repo.name == repository]
        reports = []
        for repo in repos:
            assert repo.lifecycle_policy is not None
            try:
                policy = lifecycle.parse_policy(repo.lifecycle_policy)
            except lifecycle.LifecyclePolicyError as e:  # stored before a validation rule changed
                log.error("lifecycle: the policy of %s is no longer valid, skipped: %s", repo.name, e)
                continue
            planned = await self.plan(repo.name, policy, now)
            if dry_run:
                report = SweepReport.planned(repo.name, planned)
            else:
                report = await self.apply(repo.name, planned, reason="scheduled sweep")
                await self.meta.mark_lifecycle_evaluated(repo.name, now)
                self.images.forget_repository(repo.name)
            reports.append(report)
        return reports

    # -- ECR operations ----------------------------------------------------------------------------
    async def _repo(self, name: str) -> RepositoryRecord:
        return await existing_repository(self.images, name, self.account_id)

    def _no_policy(self, name: str) -> RegistryError:
        return LifecyclePolicyNotFound(
            f"Lifecycle policy does not exist for the repository with name '{name}' in the registry with id "
            f"'{self.account_id}'"
        )

    @staticmethod
    def _parse(text: str) -> lifecycle.Policy:
        try:
            return lifecycle.parse_policy(text)
        except lifecycle.LifecyclePolicyError as e:
            raise InvalidParameter(lifecycle.error_message(e)) from None

    async def put_lifecycle_policy(self, params: dict[str, Any], caller: Any) -> dict[str, Any]:
        name = params["repositoryName"]
        await self._repo(name)
        self._parse(params["lifecyclePolicyText"])
        text = lifecycle.minify(params["lifecyclePolicyText"])
        await self.meta.set_lifecycle_policy(name, text)
        self.images.forget_repository(name)
        return {"registryId": self.account_id, "repositoryName": name, "lifecyclePolicyText": text}

    async def get_lifecycle_policy(self, params: dict[str, Any], caller: Any) -> dict[str, Any]:
        name = params["repositoryName"]
        repo = await self._repo(name)
        if not repo.lifecycle_policy:
            raise self._no_policy(name)
        return {
            "registryId": self.account_id,
            "repositoryName": name,
            "lifecyclePolicyText": repo.lifecycle_policy,
            "lastEvaluatedAt": repo.lifecycle_evaluated_at or 0,
        }

    async def delete_lifecycle_policy(self, params: dict[str, Any], caller: Any) -> dict[str, Any]:
        out = await self.get_lifecycle_policy(params, caller)
        await self.meta.set_lifecycle_policy(params["repositoryName"], None)
        self.images.forget_repository(params["repositoryName"])
        return out

    async def start_lifecycle_policy_preview(self, params: dict[str, Any], caller: Any) -> dict[str, Any]:
        name = params["repositoryName"]
        repo = await self._repo(name)
        text = params.get("lifecyclePolicyText") or repo.lifecycle_policy
        if not text:
            raise self._no_policy(name)
        policy = self._parse(text)
        current = await self.meta.get_lifecycle_preview(name)
        now = self.clock()
        if current is not None and current.status == "IN_PROGRESS" and now - current.started_at < PREVIEW_STALE:
            raise LifecyclePolicyPreviewInProgress(
                f"A lifecycle policy preview is already in progress for the repository with name '{name}'"
            )
        # Stored, not kept in memory: with several workers the next call may reach another process.
        await self.meta.put_lifecycle_preview(name, LifecyclePreview(text, "IN_PROGRESS", now))

        async def run() -> None:
            try:
                results = [_preview_result(planned) for planned in await self.plan(name, policy, now)]
                await self.meta.put_lifecycle_preview(name, LifecyclePreview(text, "COMPLETE", now, results))
            except Exception:
                log.exception("lifecycle preview of %s failed", name)
                with contextlib.suppress(Exception):  # the repository may be gone
                    await self.meta.put_lifecycle_preview(name, LifecyclePreview(text, "FAILED", now))

        task = asyncio.ensure_future(run())
        self._preview_tasks.add(task)
        task.add_done_callback(self._preview_tasks.discard)
        return {
            "registryId": self.account_id,
            "repositoryName": name,
            "lifecyclePolicyText": text,
            "status": "IN_PROGRESS",
        }

    async def get_lifecycle_policy_preview(self, params: dict[str, Any], caller: Any) -> dict[str, Any]:
        name = params["repositoryName"]
        await self._repo(name)
        preview = await self.meta.get_lifecycle_preview(name)
        if preview is None:
            raise LifecyclePolicyPreviewNotFound(
                f"There is no dry run for the repository with name '{name}' in the registry with id '{self.account_id}'"
            )
        out: dict[str, Any] = {
            "registryId": self.account_id,
            "repositoryName": name,
            "lifecyclePolicyText": preview.policy_text,
            "status": preview.status,
        }
        if preview.status != "COMPLETE" or preview.results is None:
            return out
        everything = preview.results
        results = everything
        status = (params.get("filter") or {}).get("tagStatus", "ANY")
        if status == "TAGGED":
            results = [result for result in results if result.get("imageTags")]
        elif status == "UNTAGGED":
            results = [result for result in results if not result.get("imageTags")]
        if params.get("imageIds") is not None:
            image_ids = params["imageIds"]
            wanted = {i.get("imageDigest") for i in image_ids} | {i.get("imageTag") for i in image_ids}
            results = [
                result
                for result in results
                if result["imageDigest"] in wanted or set(result.get("imageTags", ())) & wanted
            ]
        out["previewResults"], next_token = offset_page(results, params)
        if next_token is not None:
            out["nextToken"] = next_token
        transitioning = sum(1 for result in everything if result["action"]["type"] == "TRANSITION")
        expiring = sum(1 for result in everything if result["action"]["type"] == "EXPIRE")
        out["summary"] = {"expiringImageTotalCount": expiring}
        if transitioning:
            out["summary"]["transitioningImageTotalCounts"] = [
                {"targetStorageClass": ARCHIVE, "imageTotalCount": transitioning}
            ]
        return out

    async def update_image_storage_class(self, params: dict[str, Any], caller: Any) -> dict[str, Any]:
        name = params["repositoryName"]
        await self._repo(name)
        image_id = params["imageId"]
        digest = image_id.get("imageDigest")
        if image_id.get("imageTag") is not None:
            digest = await self.meta.resolve_tag(name, image_id["imageTag"])
        records = await self.meta.images_by_digest(name, [digest]) if digest else {}
        if digest not in records:
            raise ImageNotFound(
                f"The image with imageId {image_id} does not exist within the repository with name "
                f"'{name}' in the registry with id '{self.account_id}'"
            )
        target = params["targetStorageClass"]
        await self.meta.set_storage_class(name, digest, target, self.clock())
        self.images.forget_manifest(name, digest)
        return {
            "registryId": self.account_id,
            "repositoryName": name,
            "imageId": {
                "imageDigest": digest,
                **({"imageTag": image_id["imageTag"]} if image_id.get("imageTag") else {}),
            },
            "imageStatus": image_status(target),
        }


def _preview_result(planned: Planned) -> dict[str, Any]:
    action: dict[str, Any] = {"type": planned.action.action.upper()}
    if planned.action.target_storage_class:
        action["targetStorageClass"] = planned.action.target_storage_class.upper()
    out: dict[str, Any] = {
        "imageDigest": planned.image.digest,
        "imagePushedAt": planned.image.pushed_at,
        "action": action,
        "appliedRulePriority": planned.action.rule_priority,
        "storageClass": planned.image.storage_class,
    }
    if planned.image.tags:
        out["imageTags"] = list(planned.image.tags)
    return out


def iso_time(timestamp: float) -> str:
    """Epoch seconds as ISO 8601 UTC to the second (2024-05-01T12:00:00Z), as the CLI prints times."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def report_json(reports: list[SweepReport]) -> list[dict[str, Any]]:
    """What the CLI prints."""

    def entry(planned: Planned) -> dict[str, Any]:
        return {
            "imageDigest": planned.image.digest,
            "imageTags": list(planned.image.tags),
            "imagePushedAt": iso_time(planned.image.pushed_at),
            "action": planned.action.action,
            "appliedRulePriority": planned.action.rule_priority,
            "imageSizeInBytes": planned.image.image_size,
        }

    return [
        {
            "repository": report.repository,
            "expired": [entry(planned) for planned in report.expired],
            "transitioned": [entry(planned) for planned in report.transitioned],
        }
        for report in reports
    ]
