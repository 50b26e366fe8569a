"""The ECR control-plane operations, over the same repositories, manifests and blobs as /v2.

Each public method is named after the AWS operation in snake case, takes the validated request members and
returns the response members (timestamps as epoch seconds). Error texts follow ECR's.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from registry import jsonsafe, oci
from registry.auth.tokens import DOWNLOAD_PARAM
from registry.errors import (
    BlobUnknown,
    DigestInvalid,
    EmptyUpload,
    ImageAlreadyExists,
    ImageDigestDoesNotMatch,
    ImageNotFound,
    InvalidLayer,
    InvalidLayerPart,
    InvalidParameter,
    InvalidTagParameter,
    LayerAlreadyExists,
    LayerInaccessible,
    LayersNotFound,
    LimitExceeded,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameUnknown,
    PullThroughCacheRuleAlreadyExists,
    PullThroughCacheRuleNotFound,
    RegistryError,
    RepositoryAlreadyExists,
    RepositoryNotEmpty,
    RepositoryNotFound,
    RepositoryPolicyNotFound,
    SecretNotFound,
    TooManyTags,
    UnsupportedUpstreamRegistry,
    UploadNotFound,
    UploadRangeInvalid,
)
from registry.iam_policy import PolicyError, parse_policy
from registry.proxy import rules
from registry.proxy.pullthrough import PullThrough
from registry.proxy.upstream import UpstreamError
from registry.service.images import ImageService
from registry.service.uploads import UploadService
from registry.upstream_url import NotAllowed
from storage import base as st

PART_SIZE = 10 * 1024 * 1024
UPSTREAM_URL = re.compile(r"(?:https?://)?[A-Za-z0-9.-]+(?::\d+)?")
MAX_RESOURCE_TAGS = 50
DEFAULT_PAGE = 100


@dataclass(frozen=True, slots=True)
class Caller:
    principal_name: str | None
    # The registry's address as clients reach it ([registry] hostname, or the host the request came to), e.g.
    # http://127.0.0.1:5000: proxyEndpoint, repositoryUri and download URLs all name it.
    base_url: str

    @property
    def registry_host(self) -> str:
        return self.base_url.split("://", 1)[-1]


class EcrService:
    def __init__(
        self,
        images: ImageService,
        uploads: UploadService,
        meta: st.MetadataStore,
        pull_through: PullThrough,
        *,
        account_id: str,
        region: str,
        issue_token: Callable[[str | None, float | None], tuple[str, float]],
        issue_download: Callable[[str | None, str, str], tuple[str, float]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.images = images
        self.uploads = uploads
        self.meta = meta
        self.pull_through = pull_through
        self.account_id = account_id
        self.region = region
        self.issue_token = issue_token  # (principal name, ttl or None for the default) -> (token, expires_at)
        # (principal name, repository, digest) -> a download URL's signature (one blob, an hour), expires_at
        self.issue_download = issue_download
        self.clock = clock

    # -- shapes ------------------------------------------------------------------------------------
    def repository_arn(self, name: str) -> str:
        return f"arn:aws:ecr:{self.region}:{self.account_id}:repository/{name}"

    def _repository(self, r: st.RepositoryRecord, caller: Caller) -> dict[str, Any]:
        s = r.settings
        out: dict[str, Any] = {
            "repositoryArn": self.repository_arn(r.name),
            "registryId": self.account_id,
            "repositoryName": r.name,
            "repositoryUri": f"{caller.registry_host}/{r.name}",
            "createdAt": r.created_at,
            "imageTagMutability": s.image_tag_mutability,
            "imageScanningConfiguration": {"scanOnPush": s.scan_on_push},
            "encryptionConfiguration": {"encryptionType": s.encryption_type},
        }
        if s.kms_key:
            out["encryptionConfiguration"]["kmsKey"] = s.kms_key
        if s.mutability_exclusions:
            out["imageTagMutabilityExclusionFilters"] = _filters(s.mutability_exclusions)
        return out

    def _not_found(self, name: str) -> RegistryError:
        return repository_not_found(name, self.account_id)

    async def _repo(self, name: str) -> st.RepositoryRecord:
        return await existing_repository(self.images, name, self.account_id)

    def _image_not_found(self, name: str, image_id: dict[str, str]) -> RegistryError:
        return ImageNotFound(
            f"The image with imageId {{imageDigest:'{image_id.get('imageDigest', 'null')}', "
            f"imageTag:'{image_id.get('imageTag', 'null')}'}} does not exist within the repository with name "
            f"'{name}' in the registry with id '{self.account_id}'"
        )

    def _detail(self, img: st.ImageRecord) -> dict[str, Any]:
        d: dict[str, Any] = {
            "registryId": self.account_id,
            "repositoryName": img.repository,
            "imageDigest": img.digest,
            "imageSizeInBytes": img.image_size,
            "imagePushedAt": img.pushed_at,
            "imageManifestMediaType": img.media_type,
        }
        if img.tags:
            d["imageTags"] = list(img.tags)
        if img.config_media_type:
            d["artifactMediaType"] = img.config_media_type
        if img.last_pulled_at:
            d["lastRecordedPullTime"] = img.last_pulled_at
        if img.subject:
            d["subjectManifestDigest"] = img.subject
        d["imageStatus"] = "ARCHIVED" if img.storage_class == "ARCHIVE" else "ACTIVE"
        if img.last_archived_at:
            d["lastArchivedAt"] = img.last_archived_at
        if img.last_activated_at:
            d["lastActivatedAt"] = img.last_activated_at
        return d

    # -- auth and registry -------------------------------------------------------------------------
    async def get_authorization_token(self, p: dict[str, Any], caller: Caller) -> dict[str, Any]:
        token, expires_at = self.issue_token(caller.principal_name, None)
        encoded = base64.b64encode(f"AWS:{token}".encode()).decode()
        ids = p.get("registryIds") or [self.account_id]
        return {
            "authorizationData": [
                {"authorizationToken": encoded, "expiresAt": expires_at, "proxyEndpoint": caller.base_url} for _ in ids
            ]
        }

    async def describe_registry(self, p: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return {"registryId": self.account_id, "replicationConfiguration": {"rules": []}}

    # -- pull-through cache rules --------------------------------------------------------------------
    def _rule(self, rule: st.PullThroughRule, *, created: bool = True, updated: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ecrRepositoryPrefix": rule.prefix,
            "upstreamRegistryUrl": rule.upstream_url,
            "registryId": self.account_id,
            "upstreamRepositoryPrefix": rule.upstream_prefix,
        }
        if created:
            out["createdAt"] = rule.created_at
        if updated:
            out["updatedAt"] = rule.updated_at
        if rule.upstream_registry:
            out["upstreamRegistry"] = rule.upstream_registry
        if rule.credential_arn:
            out["credentialArn"] = rule.credential_arn
        return out

    def _check_not_declared(self, prefix: str, operation: str) -> None:
        """Rules from the configuration file are read-only through the API: they are rewritten from the file at
        every start, so a change here would silently come back."""
        declared = {rules.normalize_prefix(r.ecr_repository_prefix) for r in self.pull_through.config.rules}
        if prefix in declared:
            raise InvalidParameter(
                f"The pull through cache rule with prefix '{prefix}' is declared in the configuration file "
                f"([[pull_through.rules]]); {operation} it there and restart (rules from the configuration file "
                "are read-only through the API)"
            )

    def _rule_not_found(self, prefix: str) -> RegistryError:
        return PullThroughCacheRuleNotFound(
            f"The pull through cache rule with prefix '{prefix}' does not exist in the registry with id "
            f"'{self.account_id}'"
        )

    def _check_secret(self, credential_arn: str | None) -> None:
        if credential_arn is None:
            return
        name = rules.secret_name(credential_arn)
        if name is None or name not in self.pull_through.secrets:
            raise SecretNotFound(
                f"The secret '{credential_arn}' was not found: declare it as [secrets.{name}] in "
                "the Moorage configuration"
            )

    async def create_pull_through_cache_rule(self, p: dict[str, Any], caller: Caller) -> dict[str, Any]:
        prefix = rules.normalize_prefix(p["ecrRepositoryPrefix"])
        upstream_prefix = rules.normalize_prefix(p.get("upstreamRepositoryPrefix", rules.ROOT))
        url = p["upstreamRegistryUrl"].rstrip("/")
        if not UPSTREAM_URL.fullmatch(url):
            received = url if len(url) <= 200 else url[:200] + "..."
            hint = (
                " (the AWS CLI v1 fetched that URL and sent its body: set cli_follow_urlparam = false in ~/.aws/config)"
                if any(c in url for c in "\n<{ ")
                else ""
            )
            raise InvalidParameter(
                "Invalid parameter at 'upstreamRegistryUrl' failed to satisfy constraint: 'must "
                f"be a registry host, optionally with a scheme and port', got {json.dumps(received)}{hint}"
            )
        if prefix == rules.ROOT and upstream_prefix != rules.ROOT:
            raise InvalidParameter("upstreamRepositoryPrefix can only be set when ecrRepositoryPrefix is not ROOT")
        try:  # the same allowlist as rules in the configuration, and as every request made upstream
            self.pull_through.policy.check_url(url)
        except NotAllowed as e:
            raise UnsupportedUpstreamRegistry(f"The upstream registry '{url}' is not supported here: {e}") from None
        self._check_secret(p.get("credentialArn"))
        existing = await self.meta.list_rules()
        if len(existing) >= self.pull_through.config.max_rules:
            raise LimitExceeded(
                f"The maximum number of pull through cache rules "
                f"({self.pull_through.config.max_rules}) has been reached"
            )
        now = self.clock()
        rule = st.PullThroughRule(
            prefix,
            url,
            upstream_prefix,
            p.get("credentialArn"),
            p.get("upstreamRegistry") or rules.infer_upstream_registry(url),
            now,
            now,
        )
        try:
            await self.meta.create_rule(rule)
        except st.Conflict:
            raise PullThroughCacheRuleAlreadyExists(
                f"A pull through cache rule with prefix '{prefix}' already exists in the registry with id "
                f"'{self.account_id}'"
            ) from None
        await self.pull_through.reload()
        return self._rule(rule)

    async def describe_pull_through_cache_rules(self, p: dict[str, Any], caller: Caller) -> dict[str, Any]:
        all_rules = {rule.prefix: rule for rule in await self.meta.list_rules()}
        wanted = p.get("ecrRepositoryPrefixes")
        if wanted is not None:
            out = []
            for prefix in wanted:
                rule = all_rules.get(rules.normalize_prefix(prefix))
                if rule is None:
                    raise self._rule_not_found(prefix)
                out.append(rule)
            return {"pullThroughCacheRules": [self._rule(x, updated=True) for x in out]}
        limit = p.get("maxResults", DEFAULT_PAGE)
        after = _decode_token(p.get("nextToken"), str) or ""
        ordered = [x for prefix, x in sorted(all_rules.items()) if prefix > after]
        result: dict[str, Any] = {"pullThroughCacheRules": [self._rule(x, updated=True) for x in ordered[:limit]]}
        if len(ordered) > limit:
            result["nextToken"] = _encode_token(ordered[limit - 1].prefix)
        return result

    async def update_pull_through_cache_rule(self, p: dict[str, Any], caller: Caller) -> dict[str, Any]:
        prefix = rules.normalize_prefix(p["ecrRepositoryPrefix"])
        self._check_not_declared(prefix, "change")
        self._check_secret(p.get("credentialArn"))
        rule = await self.meta.update_rule_credentials(prefix, p.get("credentialArn"), self.clock())
        if rule is None:
            raise self._rule_not_found(prefix)
        await self.pull_through.reload()
        out = self._rule(rule, created=False, updated=True)
        out.pop("upstreamRegistryUrl", None)
        out.pop("upstreamRegistry", None)
        return out

    async def delete_pull_through_cache_rule(self, p: dict[str, Any], caller: Caller) -> dict[str, Any]:
        prefix = rules.normalize_prefix(p["ecrRepositoryPrefix"])
        self._check_not_declared(prefix, "delete")
        rule = await self.meta.delete_rule(prefix)  # the cache repositories it created stay
        if rule is None:
            raise self._rule_not_found(prefix)
        await self.pull_through.reload()
        out = self._rule(rule)
        out.pop("upstreamRegistry", None)
        return out

    async def validate_pull_through_cache_rule(self, p: dict[str, Any], caller: Caller) -> dict[str, Any]:
        prefix = rules.normalize_prefix(p["ecrRepositoryPrefix"])
        rule = next((x for x in await self.meta.list_rules() if x.prefix == prefix), None)
        if rule is None:
            raise self._rule_not_found(prefix)
        out = self._rule(rule, created=False)
        out.pop("upstreamRegistry", None)
        if self.pull_through.config.offline:  # offline means no upstream contact at all, this included
            out["isValid"] = False
            out["failure"] = (
                "The pull-through cache is offline ([pull_through] offline = true): the upstream was not contacted, "
                "and only cached content is served"
            )
            return out
        try:
            await self.pull_through.client(rule).ping()
            out["isValid"] = True
        except UpstreamError as e:
            out["isValid"] = False
            out["failure"] = e.message
        return out

    # -- repositories ------------------------------------------------------------------------------
    async def create_repository(self, p: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = p["repositoryName"]
        settings = _settings(p, st.RepositorySettings())
        tags = _tags(p.get("tags") or [])
        try:
            record = await self.meta.create_repository(name, self.clock(), settings, tags)
        except st.RepositoryExists:
            raise RepositoryAlreadyExists(
                f"The repository with name '{name}' already exists in the registry with id '{self.account_id}'"
            ) from None
        self.images.forget_repository(name)
        return {"repository": self._repository(record, caller)}

    async def describe_repositories(
        self, p: dict[str, Any], caller: Caller, visible: Callable[[st.RepositoryRecord], bool] = lambda r: True
    ) -> dict[str, Any]:
        names = p.get("repositoryNames")
        if names is not None:
            if "nextToken" in p or "maxResults" in p:
                raise InvalidParameter("Cannot specify nextToken or maxResults together with repositoryNames")
            return {"repositories": [self._repository(await self._repo(n), caller) for n in names]}
        limit = p.get("maxResults", DEFAULT_PAGE)
        records, more = await self.images.visible_repositories(_decode_token(p.get("nextToken"), str), limit, visible)
        result: dict[str, Any] = {"repositories": [self._repository(r, caller) for r in records]}
        if more:  # the token names the last repository returned: never one the caller may not see
            result["nextToken"] = _encode_token(records[-1].name)
        return result

    async def delete_repository(self, p: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = p["repositoryName"]
        try:
            record = await self.meta.delete_repository(name, bool(p.get("force")))
        except st.RepositoryNotEmpty:
            raise RepositoryNotEmpty(
                f"The repository with name '{name}' in registry with id '{self.account_id}' cannot be deleted "
                "because it still contains images"
            ) from None
        if record is None:
            raise self._not_found(name)
        self.images.forget_all()
        return {"repository": self._repository(record, caller)}

    async def put_image_tag_mutability(self, p: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = p["repositoryName"]
        repo = await self._repo(name)
        settings = _settings(p, repo.settings, replace_filters=True)
        await self.meta.update_settings(name, settings)
        self.images.forget_repository(name)
        out = {
            "registryId": self.account_id,
            "repositoryName": name,
            "imageTagMutability": settings.image_tag_mutability,
        }
        if settings.mutability_exclusions:
            out["imageTagMutabilityExclusionFilters"] = _filters(settings.mutability_exclusions)
        return out

    async def put_image_scanning_configuration(self, p: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = p["repositoryName"]
        repo = await self._repo(name)
        scan = bool(p["imageScanningConfiguration"].get("scanOnPush", False))
        await self.meta.update_settings(name, _replace(repo.settings, scan_on_push=scan))
        self.images.forget_repository(name)
        return {
            "registryId": self.account_id,
            "repositoryName": name,
            "imageScanningConfiguration": {"scanOnPush": scan},
        }

    # -- repository policies -----------------------------------------------------------------------
    async def set_repository_policy(self, p: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = p["repositoryName"]
        await self._repo(name)
        try:
            doc = jsonsafe.loads(p["policyText"])
            parse_policy(doc, resource_policy=True)
        except (ValueError, PolicyError) as e:
            raise InvalidParameter(
                "Invalid parameter at 'PolicyText' failed to satisfy constraint: 'Invalid repository policy "
                f"provided': {e}"
            ) from None
        text = _jackson(doc)
        await self.meta.set_policy(name, text)
        self.images.forget_repository(name)
        return {"registryId": self.account_id, "repositoryName": name, "policyText": text}

    async def get_repository_policy(self, p: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = p["repositoryName"]
        repo = await self._repo(name)
        if repo.policy is None:
            raise self._no_policy(name)
        return {"registryId": self.account_id, "repositoryName": name, "policyText": repo.policy}

    async def delete_repository_policy(self, p: dict[str, Any], caller: Caller) -> dict[str, Any]:
        out = await self.get_repository_policy(p, caller)
        await self.meta.set_policy(p["repositoryName"], None)
        self.images.forget_repository(p["repositoryName"])
        return out

    def _no_policy(self, name: str) -> RegistryError:
        return RepositoryPolicyNotFound(
            f"Repository policy does not exist for the repository with name '{name}' in the registry with id "
            f"'{self.account_id}'"
        )

    # -- resource tags -----------------------------------------------------------------------------
    def repository_from_arn(self, arn: str) -> str:
        prefix = f"arn:aws:ecr:{self.region}:{self.account_id}:repository/"
        name = arn.removeprefix(prefix)
        if name == arn or not oci.NAME_RE.fullmatch(name):
            raise InvalidParameter("Invalid parameter at 'resourceArn' failed to satisfy constraint: 'Invalid ARN'")
        return name

    async def tag_resource(self, p: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = self.repository_from_arn(p["resourceArn"])
        await self._repo(name)
        tags = _tags(p["tags"])
        current = await self.meta.resource_tags(name)
        if len(current | tags) > MAX_RESOURCE_TAGS:
            raise TooManyTags(f"A repository can have at most {MAX_RESOURCE_TAGS} tags")
        await self.meta.tag_resource(name, tags)
        return {}

    async def untag_resource(self, p: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = self.repository_from_arn(p["resourceArn"])
        await self._repo(name)
        await self.meta.untag_resource(name, list(p["tagKeys"]))
        return {}

    async def list_tags_for_resource(self, p: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = self.repository_from_arn(p["resourceArn"])
        await self._repo(name)
        return {"tags": [{"Key": k, "Value": v} for k, v in (await self.meta.resource_tags(name)).items()]}

    # -- images ------------------------------------------------------------------------------------
    async def list_images(self, p: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """One entry per (digest, tag) pair, an untagged image once. The token is [image id, entries of that
        image already returned]: the next page starts at that image."""
        name = p["repositoryName"]
        await self._repo(name)
        status = (p.get("filter") or {}).get("tagStatus", "ANY")
        limit = p.get("maxResults", DEFAULT_PAGE)
        start_id, skip = _decode_token(p.get("nextToken"), list) or (0, 0)
        ids: list[dict[str, str]] = []
        async for img in self.images.iter_images(name, start_id - 1):
            if (status == "TAGGED" and not img.tags) or (status == "UNTAGGED" and img.tags):
                continue
            entries = [{"imageDigest": img.digest, "imageTag": t} for t in img.tags] or [{"imageDigest": img.digest}]
            first = skip if img.id == start_id else 0
            for i in range(first, len(entries)):
                if len(ids) == limit:
                    return {"imageIds": ids, "nextToken": _encode_token([img.id, i])}
                ids.append(entries[i])
        return {"imageIds": ids}

    async def describe_images(self, p: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = p["repositoryName"]
        await self._repo(name)
        if p.get("imageIds") is not None:
            if "nextToken" in p or "maxResults" in p:
                raise InvalidParameter("Cannot specify nextToken or maxResults together with imageIds")
            details = []
            for image_id in p["imageIds"]:
                img = await self._find(name, image_id)
                if img is None:
                    raise self._image_not_found(name, image_id)
                details.append(self._detail(img))
            return {"imageDetails": details}
        status = (p.get("filter") or {}).get("tagStatus", "ANY")
        limit = p.get("maxResults", DEFAULT_PAGE)
        after_id = _decode_token(p.get("nextToken"), int) or 0
        details = []
        async for img in self.images.iter_images(name, after_id):
            if (status == "TAGGED" and not img.tags) or (status == "UNTAGGED" and img.tags):
                continue
            if len(details) == limit:
                return {"imageDetails": details, "nextToken": _encode_token(after_id)}
            details.append(self._detail(img))
            after_id = img.id
        return {"imageDetails": details}

    async def _find(self, name: str, image_id: dict[str, str]) -> st.ImageRecord | None:
        """The image an ImageIdentifier names (tag and digest must agree when both are given)."""
        digest, tag = image_id.get("imageDigest"), image_id.get("imageTag")
        if tag is not None:
            resolved = await self.meta.resolve_tag(name, tag)
            if resolved is None or (digest is not None and digest != resolved):
                return None
            digest = resolved
        if digest is None:
            return None
        return (await self.meta.images_by_digest(name, [digest])).get(digest)

    def _failure(self, image_id: dict[str, str], code: str, reason: str) -> dict[str, Any]:
        return {"imageId": image_id, "failureCode": code, "failureReason": reason}

    def _check_image_id(self, image_id: dict[str, str]) -> dict[str, Any] | None:
        digest, tag = image_id.get("imageDigest"), image_id.get("imageTag")
        if digest is None and tag is None:
            return self._failure(
                image_id, "MissingDigestAndTag", "Invalid request parameters: both tag and digest cannot be null"
            )
        if digest is not None:
            try:
                oci.validate_digest(digest)
            except DigestInvalid:
                return self._failure(
                    image_id,
                    "InvalidImageDigest",
                    "Invalid request parameters: image digest should satisfy the regex '[a-zA-Z0-9-_+.]+:[a-fA-F0-9]+'",
                )
        return None

    async def batch_get_image(self, p: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = p["repositoryName"]
        await self._repo(name)
        accepted = set(p.get("acceptedMediaTypes") or [])
        images, failures = [], []
        for image_id in p["imageIds"]:
            if (bad := self._check_image_id(image_id)) is not None:
                failures.append(bad)
                continue
            digest, tag = image_id.get("imageDigest"), image_id.get("imageTag")
            try:
                record = await self.images.get_manifest(name, tag if tag is not None else digest)
            except ManifestUnknown:
                failures.append(self._failure(image_id, "ImageNotFound", "Requested image not found"))
                continue
            if digest is not None and tag is not None and record.digest != digest:
                failures.append(
                    self._failure(
                        image_id,
                        "ImageTagDoesNotMatchDigest",
                        "Invalid request parameters: image tag does not match digest",
                    )
                )
                continue
            if record.storage_class == "ARCHIVE":
                failures.append(
                    self._failure(
                        image_id, "ImageInaccessible", "The image is archived; restore it with UpdateImageStorageClass"
                    )
                )
                continue
            if accepted and record.media_type not in accepted:
                failures.append(
                    self._failure(
                        image_id, "ImageNotFound", f"Requested image is {record.media_type}, not an accepted media type"
                    )
                )
                continue
            self.images.note_pull(name, record.digest)
            images.append(
                {
                    "registryId": self.account_id,
                    "repositoryName": name,
                    "imageId": {"imageDigest": record.digest, **({"imageTag": tag} if tag is not None else {})},
                    "imageManifest": record.body.decode("utf-8", errors="replace"),
                    "imageManifestMediaType": record.media_type,
                }
            )
        return {"images": images, "failures": failures}

    async def batch_delete_image(self, p: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = p["repositoryName"]
        await self._repo(name)
        deleted, failures = [], []
        for image_id in p["imageIds"]:
            if (bad := self._check_image_id(image_id)) is not None:
                failures.append(bad)
                continue
            img = await self._find(name, image_id)
            if img is None:
                failures.append(self._failure(image_id, "ImageNotFound", "Requested image not found"))
                continue
            tag = image_id.get("imageTag")
            parents = (await self.meta.parents_of(name, [img.digest])).get(img.digest)
            if tag is not None and len(img.tags) > 1:
                await self.images.delete_manifest(name, tag)  # just the tag: the image keeps its others
            elif parents:
                failures.append(
                    self._failure(
                        image_id,
                        "ImageReferencedByManifestList",
                        f"Requested image referenced by manifest list: {parents}",
                    )
                )
                continue
            else:
                await self.images.delete_manifest(name, img.digest)
            deleted.append({"imageDigest": img.digest, **({"imageTag": tag} if tag is not None else {})})
        return {"imageIds": deleted, "failures": failures}

    async def put_image(self, p: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = p["repositoryName"]
        await self._repo(name)
        body = p["imageManifest"].encode("utf-8")
        media_type = p.get("imageManifestMediaType")
        try:
            doc = jsonsafe.loads(body)
        except ValueError:  # also a document nested too deep
            raise InvalidParameter(
                "Invalid parameter at 'imageManifest' failed to satisfy constraint: 'Invalid JSON syntax'"
            ) from None
        if media_type is None and not (isinstance(doc, dict) and doc.get("mediaType")):
            raise InvalidParameter(
                "Invalid parameter at 'imageManifestMediaType' failed to satisfy constraint: "
                "'Member must not be null when the manifest has no mediaType'"
            )
        digest = p.get("imageDigest")
        if digest is not None:
            try:
                oci.validate_digest(digest)
            except DigestInvalid as e:
                raise InvalidParameter(
                    f"Invalid parameter at 'imageDigest' failed to satisfy constraint: '{e.message}'"
                ) from None
            actual = oci.compute_digest(body, oci.digest_algorithm(digest))
            if actual != digest:
                raise ImageDigestDoesNotMatch(f"The provided digest {digest} does not match the manifest's {actual}")
        tag = p.get("imageTag")
        if tag is not None:
            try:
                oci.validate_tag(tag)
            except RegistryError as e:
                raise InvalidParameter(
                    f"Invalid parameter at 'imageTag' failed to satisfy constraint: '{e.message}'"
                ) from None
        try:
            result = await self.images.put_manifest(
                name, tag if tag is not None else oci.compute_digest(body), body, media_type
            )
        except ManifestBlobUnknown as e:
            if e.ecr_code == "ReferencedImagesNotFoundException":
                raise
            raise LayersNotFound(
                f"Layers with digests {e.detail['missing'] if e.detail else ''} required by the "
                "manifest were not found in the repository"
            ) from None
        except ManifestInvalid as e:
            raise InvalidParameter(
                f"Invalid parameter at 'imageManifest' failed to satisfy constraint: '{e.message}'"
            ) from None
        if not result.created and not result.restored and (tag is None or not result.moved_tags):
            raise ImageAlreadyExists(
                f"Image with digest '{result.digest}'{f' and tag {tag!r}' if tag else ''} already exists in the "
                f"repository with name '{name}' in registry with id '{self.account_id}'"
            )
        image_id = {"imageDigest": result.digest, **({"imageTag": tag} if tag is not None else {})}
        return {
            "image": {
                "registryId": self.account_id,
                "repositoryName": name,
                "imageId": image_id,
                "imageManifest": p["imageManifest"],
                "imageManifestMediaType": result.media_type,
            }
        }

    # -- layers ------------------------------------------------------------------------------------
    async def batch_check_layer_availability(self, p: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = p["repositoryName"]
        await self._repo(name)
        layers, failures = [], []
        for digest in p["layerDigests"]:
            try:
                oci.validate_digest(digest)
            except DigestInvalid as e:
                failures.append(
                    {"layerDigest": digest, "failureCode": "InvalidLayerDigest", "failureReason": e.message}
                )
                continue
            size = await self.meta.linked_blob_size(name, digest)
            if size is None:
                layers.append({"layerDigest": digest, "layerAvailability": "UNAVAILABLE"})
            elif await self.images.blob_archived_only(name, digest):
                layers.append({"layerDigest": digest, "layerAvailability": "ARCHIVED", "layerSize": size})
            else:
                layers.append({"layerDigest": digest, "layerAvailability": "AVAILABLE", "layerSize": size})
        return {"layers": layers, "failures": failures}

    async def initiate_layer_upload(self, p: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = p["repositoryName"]
        await self._repo(name)
        started = await self.uploads.start(name, owner=caller.principal_name)
        return {"uploadId": started.upload_id, "partSize": PART_SIZE}

    async def upload_layer_part(self, p: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name, upload_id = p["repositoryName"], p["uploadId"].lower()
        await self._repo(name)
        first, last, data = p["partFirstByte"], p["partLastByte"], p["layerPartBlob"]
        if last < first or last - first + 1 != len(data):
            raise InvalidLayerPart(
                f"partFirstByte {first} and partLastByte {last} do not match the part's {len(data)} bytes",
                fields=await self._part_fields(name, upload_id, caller),
            )
        try:
            size = await self.uploads.append(
                name,
                upload_id,
                _once(data),
                content_range=f"{first}-{last}",
                length=len(data),
                owner=caller.principal_name,
            )
        except UploadRangeInvalid:
            raise InvalidLayerPart(
                f"The part starts at byte {first}, not where the upload ends",
                fields=await self._part_fields(name, upload_id, caller),
            ) from None
        except NameUnknown:
            raise self._upload_not_found(upload_id) from None
        except RegistryError as e:
            if e.ecr_code == "UploadNotFoundException":
                raise self._upload_not_found(upload_id) from None
            raise
        return {
            "registryId": self.account_id,
            "repositoryName": name,
            "uploadId": upload_id,
            "lastByteReceived": size - 1,
        }

    async def _part_fields(self, name: str, upload_id: str, caller: Caller) -> dict[str, Any]:
        try:
            size = await self.uploads.size(name, upload_id, caller.principal_name)
        except RegistryError:
            raise self._upload_not_found(upload_id) from None
        return {
            "registryId": self.account_id,
            "repositoryName": name,
            "uploadId": upload_id,
            **({"lastValidByteReceived": size - 1} if size else {}),  # the model's minimum is 0
        }

    def _upload_not_found(self, upload_id: str) -> RegistryError:
        return UploadNotFound(f"Upload with id '{upload_id}' was not found")

    async def complete_layer_upload(self, p: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name, upload_id = p["repositoryName"], p["uploadId"].lower()
        await self._repo(name)
        digest = p["layerDigests"][0]
        try:
            oci.validate_digest(digest)
        except DigestInvalid as e:
            raise InvalidLayer(e.message) from None
        try:
            size = await self.uploads.size(name, upload_id, caller.principal_name)
        except RegistryError:
            raise self._upload_not_found(upload_id) from None
        if size == 0:
            raise EmptyUpload(f"The upload with id '{upload_id}' contains no layer parts")
        if await self.meta.linked_blob_size(name, digest) is not None:
            await self.uploads.cancel(name, upload_id, caller.principal_name)
            raise LayerAlreadyExists(
                f"The layer '{digest}' already exists in the repository with name '{name}' "
                f"in registry with id '{self.account_id}'"
            )
        try:
            await self.uploads.finish(
                name, upload_id, digest, None, content_range=None, length=None, owner=caller.principal_name
            )
        except DigestInvalid as e:
            raise InvalidLayer(f"The layer digest does not match the uploaded content: {e.message}") from None
        return {"registryId": self.account_id, "repositoryName": name, "uploadId": upload_id, "layerDigest": digest}

    async def get_download_url_for_layer(self, p: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name, digest = p["repositoryName"], p["layerDigest"]
        await self._repo(name)
        try:
            await self.images.blob_size(name, digest)
        except BlobUnknown:
            raise LayersNotFound(
                f"The layer '{digest}' does not exist in the repository with name '{name}' in "
                f"the registry with id '{self.account_id}'"
            ) from None
        if not await self.meta.blob_referenced(name, digest):
            raise LayerInaccessible(
                f"The layer '{digest}' is not referenced by any image in the repository with name '{name}'"
            )
        # A presigned URL, as ECR's S3 ones: a plain GET of this one blob for an hour, signed for the caller (whose
        # permission to pull is checked again when it is used). Never a token: that would push and delete too.
        assert self.issue_download is not None, "EcrService needs issue_download for download URLs"
        signature, _ = self.issue_download(caller.principal_name, name, digest)
        return {
            "downloadUrl": f"{caller.base_url}/v2/{name}/blobs/{digest}?{DOWNLOAD_PARAM}={signature}",
            "layerDigest": digest,
        }


# -- helpers ---------------------------------------------------------------------------------------


def _filters(exclusions: tuple[str, ...]) -> list[dict[str, str]]:
    return [{"filterType": "WILDCARD", "filter": f} for f in exclusions]


def _replace(s: st.RepositorySettings, **changes: Any) -> st.RepositorySettings:
    from dataclasses import replace

    return replace(s, **changes)


def _settings(
    p: dict[str, Any], current: st.RepositorySettings, *, replace_filters: bool = False
) -> st.RepositorySettings:
    mode = p.get("imageTagMutability", current.image_tag_mutability)
    filters = p.get("imageTagMutabilityExclusionFilters")
    exclusions = (
        tuple(f["filter"] for f in filters)
        if filters is not None
        else (() if replace_filters else current.mutability_exclusions)
    )
    if mode.endswith("_WITH_EXCLUSION") and not exclusions:
        raise InvalidParameter(f"imageTagMutabilityExclusionFilters are required with imageTagMutability {mode}")
    if exclusions and not mode.endswith("_WITH_EXCLUSION"):
        raise InvalidParameter(
            f"imageTagMutabilityExclusionFilters can only be used with a *_WITH_EXCLUSION "
            f"imageTagMutability, not {mode}"
        )
    scan = p.get("imageScanningConfiguration", {}).get("scanOnPush", current.scan_on_push)
    enc = p.get("encryptionConfiguration") or {}
    encryption_type = enc.get("encryptionType", current.encryption_type)
    kms_key = enc.get("kmsKey", current.kms_key if "encryptionType" not in enc else None)
    if kms_key and encryption_type == "AES256":
        raise InvalidParameter("kmsKey can only be specified with encryptionType KMS or KMS_DSSE")
    return st.RepositorySettings(mode, exclusions, bool(scan), encryption_type, kms_key)


def _tags(tags: list[dict[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for t in tags:
        key, value = t.get("Key"), t.get("Value")
        if not isinstance(key, str) or not 1 <= len(key) <= 128 or key.startswith("aws:"):
            raise InvalidTagParameter("Tag keys must be 1-128 characters and must not start with 'aws:'")
        if not isinstance(value, str) or len(value) > 256:
            raise InvalidTagParameter("Tag values must be at most 256 characters")
        out[key] = value
    if len(out) > MAX_RESOURCE_TAGS:
        raise TooManyTags(f"A repository can have at most {MAX_RESOURCE_TAGS} tags")
    return out


def _jackson(doc: Any) -> str:
    """Re-serialise a policy the way ECR returns it (Jackson's pretty printer)."""
    return json.dumps(doc, indent=2, separators=(",", " : "))


async def existing_repository(images: ImageService, name: str, account_id: str) -> st.RepositoryRecord:
    """The repository, or ECR's RepositoryNotFoundException."""
    try:
        return await images.repository(name)
    except NameUnknown:
        raise repository_not_found(name, account_id) from None


def repository_not_found(name: str, account_id: str) -> RegistryError:
    return RepositoryNotFound(
        f"The repository with name '{name}' does not exist in the registry with id '{account_id}'"
    )


def page_offset(token: str | None) -> int:
    """A nextToken that is a plain offset into a list (previews, templates)."""
    if token is None:
        return 0
    if not (token.isascii() and token.isdigit()) or len(token) > 18:  # int() takes other scripts' digits
        raise InvalidParameter("Invalid parameter at 'nextToken' failed to satisfy constraint: 'Invalid token'")
    return int(token)


def _encode_token(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


def _decode_token(token: str | None, kind: type) -> Any:
    if token is None:
        return None
    try:
        value = jsonsafe.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError):
        value = None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidParameter("Invalid parameter at 'nextToken' failed to satisfy constraint: 'Invalid token'")
    return value


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data
