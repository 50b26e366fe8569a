"""Repository creation templates: the settings a repository starts with when Moorage creates it for you.

As in ECR: a template applies to repositories under its `prefix` (`ROOT`: every repository without a more
specific template) when it lists the reason in `appliedFor` (PULL_THROUGH_CACHE for cache repositories created
on first pull, CREATE_ON_PUSH for repositories a /v2 push creates). Its settings are applied once, at creation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from registry import lifecycle
from registry.errors import InvalidParameter, RegistryError, TemplateAlreadyExists, TemplateNotFound
from registry.iam_policy import PolicyError, parse_policy
from registry.naming import most_specific, normalize_prefix
from registry.service.ecr_shapes import offset_page, repository_settings, resource_tags
from storage.metadata import MetadataStore
from storage.records import RepositoryInit, RepositorySettings

FIELDS = (
    "description",
    "encryptionConfiguration",
    "resourceTags",
    "imageTagMutability",
    "imageTagMutabilityExclusionFilters",
    "repositoryPolicy",
    "lifecyclePolicy",
    "appliedFor",
    "customRoleArn",
)


class TemplateService:
    def __init__(self, meta: MetadataStore, *, account_id: str, clock: Callable[[], float] = time.time) -> None:
        self.meta = meta
        self.account_id = account_id
        self.clock = clock

    async def init_for(self, name: str, reason: str) -> RepositoryInit | None:
        """The most specific template for `name` that applies for `reason`, as a RepositoryInit."""
        documents = [(prefix, json.loads(body)) for prefix, body, _, _ in await self.meta.list_templates()]
        applicable = [(prefix, doc) for prefix, doc in documents if reason in doc.get("appliedFor", [])]
        best = most_specific(applicable, lambda template: template[0], name)
        if best is None:
            return None
        doc = best[1]
        settings = repository_settings(doc, RepositorySettings())
        tags = tuple((tag["Key"], tag["Value"]) for tag in doc.get("resourceTags", []))
        return RepositoryInit(
            settings,
            doc.get("repositoryPolicy") or None,
            lifecycle.minify(doc["lifecyclePolicy"]) if doc.get("lifecyclePolicy") else None,
            tags,
        )

    # -- ECR operations ----------------------------------------------------------------------------
    def _validate(self, doc: dict[str, Any]) -> None:
        try:
            repository_settings(doc, RepositorySettings())
            resource_tags(doc.get("resourceTags") or [])
        except RegistryError as e:
            raise InvalidParameter(e.message) from None
        if doc.get("lifecyclePolicy"):
            try:
                lifecycle.parse_policy(doc["lifecyclePolicy"])
            except lifecycle.LifecyclePolicyError as e:
                raise InvalidParameter(lifecycle.error_message(e)) from None
        if doc.get("repositoryPolicy"):
            try:
                parse_policy(doc["repositoryPolicy"], resource_policy=True)
            except PolicyError as e:
                raise InvalidParameter(
                    "Invalid parameter at 'repositoryPolicy' failed to satisfy constraint: "
                    f"'Invalid repository policy provided': {e}"
                ) from None

    def _shape(self, prefix: str, doc: dict[str, Any], created_at: float, updated_at: float) -> dict[str, Any]:
        out = {
            "prefix": prefix,
            **{key: doc[key] for key in FIELDS if doc.get(key) not in (None, "", [])},
            "createdAt": created_at,
            "updatedAt": updated_at,
        }
        out.setdefault("imageTagMutability", "MUTABLE")
        out.setdefault("encryptionConfiguration", {"encryptionType": "AES256"})
        return out

    def _not_found(self, prefix: str) -> RegistryError:
        return TemplateNotFound(
            f"The repository creation template with prefix '{prefix}' does not exist in the "
            f"registry with id '{self.account_id}'"
        )

    async def create_repository_creation_template(self, params: dict[str, Any], caller: Any) -> dict[str, Any]:
        prefix = normalize_prefix(params["prefix"])
        doc = {key: params[key] for key in FIELDS if key in params}
        self._validate(doc)
        now = self.clock()
        if not await self.meta.put_template(prefix, json.dumps(doc), now, create=True):
            raise TemplateAlreadyExists(f"A repository creation template with prefix '{prefix}' already exists")
        return {"registryId": self.account_id, "repositoryCreationTemplate": self._shape(prefix, doc, now, now)}

    async def update_repository_creation_template(self, params: dict[str, Any], caller: Any) -> dict[str, Any]:
        prefix = normalize_prefix(params["prefix"])
        current = {template[0]: template for template in await self.meta.list_templates()}.get(prefix)
        if current is None:
            raise self._not_found(prefix)
        doc = {**json.loads(current[1]), **{key: params[key] for key in FIELDS if key in params}}
        self._validate(doc)
        now = self.clock()
        await self.meta.put_template(prefix, json.dumps(doc), now, create=False)
        return {"registryId": self.account_id, "repositoryCreationTemplate": self._shape(prefix, doc, current[2], now)}

    async def delete_repository_creation_template(self, params: dict[str, Any], caller: Any) -> dict[str, Any]:
        prefix = normalize_prefix(params["prefix"])
        deleted = await self.meta.delete_template(prefix)
        if deleted is None:
            raise self._not_found(prefix)
        return {
            "registryId": self.account_id,
            "repositoryCreationTemplate": self._shape(prefix, json.loads(deleted[1]), deleted[2], deleted[3]),
        }

    async def describe_repository_creation_templates(self, params: dict[str, Any], caller: Any) -> dict[str, Any]:
        templates = await self.meta.list_templates()
        wanted = params.get("prefixes")
        if wanted is not None:
            wanted = {normalize_prefix(prefix) for prefix in wanted}
            templates = [template for template in templates if template[0] in wanted]
        page, next_token = offset_page(templates, params)
        out: dict[str, Any] = {
            "registryId": self.account_id,
            "repositoryCreationTemplates": [
                self._shape(prefix, json.loads(body), created_at, updated_at)
                for prefix, body, created_at, updated_at in page
            ],
        }
        if next_token is not None:
            out["nextToken"] = next_token
        return out
