"""The ECR control-plane operations, over the same repositories, manifests and blobs as /v2.

Each public method is named after the AWS operation in snake case, takes the validated request members and
returns the response members (timestamps as epoch seconds). Error texts follow ECR's.

This module has the repositories' operations (repositories, their policies and resource tags) and
GetAuthorizationToken; the images' are in `ecr_images`, the layers' in `ecr_layers`, and how records become ECR
JSON (and pagination tokens) in `ecr_shapes`. Lifecycle policies, creation templates and pull-through cache rules
have services of their own (`lifecycle`, `templates`, `registry.proxy.rule_service`), and so do the registry's
settings (`ecr_registry`: registry policy, account settings, pull-time exclusions), scanning and signing
(`ecr_scanning`) and replication (`replication`).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from registry import oci
from registry.errors import (
    InvalidParameter,
    RegistryError,
    RepositoryAlreadyExists,
    RepositoryNotEmpty,
    RepositoryPolicyNotFound,
    TooManyTags,
)
from registry.iam_policy import parse_policy
from registry.naming import repository_in_arn
from registry.service.ecr_images import ImageOperations
from registry.service.ecr_layers import LayerOperations
from registry.service.ecr_shapes import (
    DEFAULT_PAGE,
    MAX_RESOURCE_TAGS,
    Caller,
    checked_policy,
    decode_token,
    encode_token,
    existing_repository,
    mutability_filters,
    repository_not_found,
    repository_settings,
    repository_shape,
    resource_tags,
)
from registry.service.images import ImageService
from registry.service.uploads import UploadService
from storage.errors import RepositoryExists
from storage.errors import RepositoryNotEmpty as StoredRepositoryNotEmpty
from storage.metadata import MetadataStore
from storage.records import RepositoryRecord, RepositorySettings


class EcrService:
    def __init__(
        self,
        images: ImageService,
        uploads: UploadService,
        meta: MetadataStore,
        *,
        account_id: str,
        region: str,
        issue_token: Callable[[str | None], tuple[str, float]],
        issue_download: Callable[[str | None, str, str], tuple[str, float]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.images = images
        self.meta = meta
        self.account_id = account_id
        self.region = region
        self.issue_token = issue_token  # principal name -> (token, expires_at)
        self.clock = clock
        self.image_operations = ImageOperations(images, meta, account_id=account_id)
        self.layer_operations = LayerOperations(
            images, uploads, meta, account_id=account_id, issue_download=issue_download
        )

    @property
    def operations(self) -> tuple[object, ...]:
        """The objects whose methods are these ECR operations (the web layer dispatches to them by name)."""
        return (self, self.image_operations, self.layer_operations)

    def _repository(self, record: RepositoryRecord, caller: Caller) -> dict[str, Any]:
        return repository_shape(record, caller, account_id=self.account_id, region=self.region)

    async def _repo(self, name: str) -> RepositoryRecord:
        return await existing_repository(self.images, name, self.account_id)

    # -- auth and registry -------------------------------------------------------------------------
    async def get_authorization_token(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        token, expires_at = self.issue_token(caller.principal_name)
        encoded = base64.b64encode(f"AWS:{token}".encode()).decode()
        ids = params.get("registryIds") or [self.account_id]
        return {
            "authorizationData": [
                {"authorizationToken": encoded, "expiresAt": expires_at, "proxyEndpoint": caller.base_url} for _ in ids
            ]
        }

    # -- repositories ------------------------------------------------------------------------------
    async def create_repository(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = params["repositoryName"]
        settings = repository_settings(params, RepositorySettings())
        tags = resource_tags(params.get("tags") or [])
        try:
            record = await self.meta.create_repository(name, self.clock(), settings, tags)
        except RepositoryExists:
            raise RepositoryAlreadyExists(
                f"The repository with name '{name}' already exists in the registry with id '{self.account_id}'"
            ) from None
        self.images.forget_repository(name)
        return {"repository": self._repository(record, caller)}

    async def describe_repositories(
        self, params: dict[str, Any], caller: Caller, visible: Callable[[RepositoryRecord], bool] = lambda record: True
    ) -> dict[str, Any]:
        names = params.get("repositoryNames")
        if names is not None:
            if "nextToken" in params or "maxResults" in params:
                raise InvalidParameter("Cannot specify nextToken or maxResults together with repositoryNames")
            return {"repositories": [self._repository(await self._repo(name), caller) for name in names]}
        limit = params.get("maxResults", DEFAULT_PAGE)
        records, more = await self.images.visible_repositories(
            decode_token(params.get("nextToken"), str), limit, visible
        )
        result: dict[str, Any] = {"repositories": [self._repository(record, caller) for record in records]}
        if more:  # the token names the last repository returned: never one the caller may not see
            result["nextToken"] = encode_token(records[-1].name)
        return result

    async def delete_repository(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = params["repositoryName"]
        try:
            record = await self.meta.delete_repository(name, bool(params.get("force")))
        except StoredRepositoryNotEmpty:
            raise RepositoryNotEmpty(
                f"The repository with name '{name}' in registry with id '{self.account_id}' cannot be deleted "
                "because it still contains images"
            ) from None
        if record is None:
            raise repository_not_found(name, self.account_id)
        self.images.forget_all()
        return {"repository": self._repository(record, caller)}

    async def put_image_tag_mutability(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = params["repositoryName"]
        repo = await self._repo(name)
        settings = repository_settings(params, repo.settings, replace_filters=True)
        await self.meta.update_settings(name, settings)
        self.images.forget_repository(name)
        out = {
            "registryId": self.account_id,
            "repositoryName": name,
            "imageTagMutability": settings.image_tag_mutability,
        }
        if settings.mutability_exclusions:
            out["imageTagMutabilityExclusionFilters"] = mutability_filters(settings.mutability_exclusions)
        return out

    async def put_image_scanning_configuration(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = params["repositoryName"]
        repo = await self._repo(name)
        scan = bool(params["imageScanningConfiguration"].get("scanOnPush", False))
        await self.meta.update_settings(name, replace(repo.settings, scan_on_push=scan))
        self.images.forget_repository(name)
        return {
            "registryId": self.account_id,
            "repositoryName": name,
            "imageScanningConfiguration": {"scanOnPush": scan},
        }

    # -- repository policies -----------------------------------------------------------------------
    async def set_repository_policy(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = params["repositoryName"]
        await self._repo(name)
        text = checked_policy(params["policyText"], "repository", lambda doc: parse_policy(doc, resource_policy=True))
        await self.meta.set_policy(name, text)
        self.images.forget_repository(name)
        return {"registryId": self.account_id, "repositoryName": name, "policyText": text}

    async def get_repository_policy(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = params["repositoryName"]
        repo = await self._repo(name)
        if repo.policy is None:
            raise self._no_policy(name)
        return {"registryId": self.account_id, "repositoryName": name, "policyText": repo.policy}

    async def delete_repository_policy(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        out = await self.get_repository_policy(params, caller)
        await self.meta.set_policy(params["repositoryName"], None)
        self.images.forget_repository(params["repositoryName"])
        return out

    def _no_policy(self, name: str) -> RegistryError:
        return RepositoryPolicyNotFound(
            f"Repository policy does not exist for the repository with name '{name}' in the registry with id "
            f"'{self.account_id}'"
        )

    # -- resource tags -----------------------------------------------------------------------------
    def repository_from_arn(self, arn: str) -> str:
        name = repository_in_arn(arn, self.region, self.account_id)
        if name is None or not oci.NAME_RE.fullmatch(name):
            raise InvalidParameter("Invalid parameter at 'resourceArn' failed to satisfy constraint: 'Invalid ARN'")
        return name

    async def tag_resource(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = self.repository_from_arn(params["resourceArn"])
        await self._repo(name)
        tags = resource_tags(params["tags"])
        current = await self.meta.resource_tags(name)
        if len(current | tags) > MAX_RESOURCE_TAGS:
            raise TooManyTags(f"A repository can have at most {MAX_RESOURCE_TAGS} tags")
        await self.meta.tag_resource(name, tags)
        return {}

    async def untag_resource(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = self.repository_from_arn(params["resourceArn"])
        await self._repo(name)
        await self.meta.untag_resource(name, list(params["tagKeys"]))
        return {}

    async def list_tags_for_resource(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = self.repository_from_arn(params["resourceArn"])
        await self._repo(name)
        tags = await self.meta.resource_tags(name)
        return {"tags": [{"Key": key, "Value": value} for key, value in tags.items()]}
