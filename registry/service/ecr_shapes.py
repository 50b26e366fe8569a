"""ECR's wire shapes: how records become ECR JSON, how request members become settings and tags, pagination
tokens, and ECR's "not found" errors. Shared by the ECR operations (`ecr`, `ecr_images`, `ecr_layers`,
`lifecycle`, `templates`, and the pull-through rules' in `registry.proxy.rule_service`).

Timestamps are epoch seconds (botocore turns them into datetimes); error texts follow ECR's.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from registry import jsonsafe
from registry.errors import (
    ImageNotFound,
    InvalidParameter,
    InvalidTagParameter,
    NameUnknown,
    RegistryError,
    RepositoryNotFound,
    TooManyTags,
)
from registry.naming import repository_arn
from registry.service.images import ImageService
from storage.records import ARCHIVE, ImageRecord, RepositoryRecord, RepositorySettings

MAX_RESOURCE_TAGS = 50
DEFAULT_PAGE = 100
INVALID_TOKEN = "Invalid parameter at 'nextToken' failed to satisfy constraint: 'Invalid token'"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Caller:
    principal_name: str | None
    # The registry's address as clients reach it ([registry] hostname, or the host the request came to), e.g.
    # http://127.0.0.1:5000: proxyEndpoint, repositoryUri and download URLs all name it.
    base_url: str
    principal_arn: str | None = None  # None: anonymous, or auth off

    @property
    def registry_host(self) -> str:
        return self.base_url.split("://", 1)[-1]


# -- records as ECR JSON ---------------------------------------------------------------------------


def repository_shape(record: RepositoryRecord, caller: Caller, *, account_id: str, region: str) -> dict[str, Any]:
    settings = record.settings
    out: dict[str, Any] = {
        "repositoryArn": repository_arn(region, account_id, record.name),
        "registryId": account_id,
        "repositoryName": record.name,
        "repositoryUri": f"{caller.registry_host}/{record.name}",
        "createdAt": record.created_at,
        "imageTagMutability": settings.image_tag_mutability,
        "imageScanningConfiguration": {"scanOnPush": settings.scan_on_push},
        "encryptionConfiguration": {"encryptionType": settings.encryption_type},
    }
    if settings.kms_key:
        out["encryptionConfiguration"]["kmsKey"] = settings.kms_key
    if settings.mutability_exclusions:
        out["imageTagMutabilityExclusionFilters"] = mutability_filters(settings.mutability_exclusions)
    return out


def mutability_filters(exclusions: tuple[str, ...]) -> list[dict[str, str]]:
    return [{"filterType": "WILDCARD", "filter": exclusion} for exclusion in exclusions]


def image_status(storage_class: str) -> str:
    """An image's imageStatus: ARCHIVED in the archive storage class, ACTIVE otherwise."""
    return "ARCHIVED" if storage_class == ARCHIVE else "ACTIVE"


def image_detail(image: ImageRecord, account_id: str) -> dict[str, Any]:
    detail: dict[str, Any] = {
        "registryId": account_id,
        "repositoryName": image.repository,
        "imageDigest": image.digest,
        "imageSizeInBytes": image.image_size,
        "imagePushedAt": image.pushed_at,
        "imageManifestMediaType": image.media_type,
    }
    if image.tags:
        detail["imageTags"] = list(image.tags)
    if image.config_media_type:
        detail["artifactMediaType"] = image.config_media_type
    if image.last_pulled_at:
        detail["lastRecordedPullTime"] = image.last_pulled_at
    if image.subject:
        detail["subjectManifestDigest"] = image.subject
    detail["imageStatus"] = image_status(image.storage_class)
    if image.last_archived_at:
        detail["lastArchivedAt"] = image.last_archived_at
    if image.last_activated_at:
        detail["lastActivatedAt"] = image.last_activated_at
    return detail


def policy_text(doc: Any) -> str:
    """Re-serialise a policy the way ECR returns it (Jackson's pretty printer)."""
    return json.dumps(doc, indent=2, separators=(",", " : "))


def checked_policy(text: str, kind: str, check: Callable[[Any], object]) -> str:
    """A `policyText` member: parsed, checked by `check` (which raises ValueError, PolicyError included) and
    re-serialised as ECR returns it; ECR's message naming the `kind` of policy ("repository", "registry") when
    it is not valid."""
    try:
        doc = jsonsafe.loads(text)
        check(doc)
    except ValueError as e:
        raise InvalidParameter(
            f"Invalid parameter at 'PolicyText' failed to satisfy constraint: 'Invalid {kind} policy provided': {e}"
        ) from None
    return policy_text(doc)


# -- request members -------------------------------------------------------------------------------


def repository_settings(
    params: dict[str, Any], current: RepositorySettings, *, replace_filters: bool = False
) -> RepositorySettings:
    """The settings a request (CreateRepository, PutImageTagMutability, a creation template) asks for, on top of
    `current`."""
    mode = params.get("imageTagMutability", current.image_tag_mutability)
    filters = params.get("imageTagMutabilityExclusionFilters")
    exclusions = (
        tuple(item["filter"] for item in filters)
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
    scan = params.get("imageScanningConfiguration", {}).get("scanOnPush", current.scan_on_push)
    encryption = params.get("encryptionConfiguration") or {}
    encryption_type = encryption.get("encryptionType", current.encryption_type)
    kms_key = encryption.get("kmsKey", current.kms_key if "encryptionType" not in encryption else None)
    if kms_key and encryption_type == "AES256":
        raise InvalidParameter("kmsKey can only be specified with encryptionType KMS or KMS_DSSE")
    return RepositorySettings(mode, exclusions, bool(scan), encryption_type, kms_key)


def resource_tags(tags: list[dict[str, str]]) -> dict[str, str]:
    """A request's `[{"Key": ..., "Value": ...}]` as a dict, checked as ECR checks them."""
    out: dict[str, str] = {}
    for tag in tags:
        key, value = tag.get("Key"), tag.get("Value")
        if not isinstance(key, str) or not 1 <= len(key) <= 128 or key.startswith("aws:"):
            raise InvalidTagParameter("Tag keys must be 1-128 characters and must not start with 'aws:'")
        if not isinstance(value, str) or len(value) > 256:
            raise InvalidTagParameter("Tag values must be at most 256 characters")
        out[key] = value
    if len(out) > MAX_RESOURCE_TAGS:
        raise TooManyTags(f"A repository can have at most {MAX_RESOURCE_TAGS} tags")
    return out


# -- pagination ------------------------------------------------------------------------------------


def encode_token(value: Any) -> str:
    """A nextToken carrying `value` (a name, an id, [id, skip]): where the next page starts."""
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


def decode_token(token: str | None, kind: type) -> Any:
    """What `encode_token` put in a nextToken, when it is a `kind`; None without a token."""
    if token is None:
        return None
    try:
        value = jsonsafe.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError):
        value = None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidParameter(INVALID_TOKEN)
    return value


def page_offset(token: str | None) -> int:
    """A nextToken that is a plain offset into a list (previews, templates)."""
    if token is None:
        return 0
    if not (token.isascii() and token.isdigit()) or len(token) > 18:  # int() takes other scripts' digits
        raise InvalidParameter(INVALID_TOKEN)
    return int(token)


def offset_page(items: Sequence[T], params: dict[str, Any]) -> tuple[Sequence[T], str | None]:
    """The page of `items` a request's nextToken (an offset) and maxResults ask for, and the next page's token."""
    start = page_offset(params.get("nextToken"))
    end = start + params.get("maxResults", DEFAULT_PAGE)
    return items[start:end], str(end) if end < len(items) else None


# -- ECR's errors ----------------------------------------------------------------------------------


def repository_not_found(name: str, account_id: str) -> RegistryError:
    return RepositoryNotFound(
        f"The repository with name '{name}' does not exist in the registry with id '{account_id}'"
    )


async def existing_repository(images: ImageService, name: str, account_id: str) -> RepositoryRecord:
    """The repository, or ECR's RepositoryNotFoundException."""
    try:
        return await images.repository(name)
    except NameUnknown:
        raise repository_not_found(name, account_id) from None


def image_not_found(name: str, image_id: dict[str, str], account_id: str) -> RegistryError:
    return ImageNotFound(
        f"The image with imageId {{imageDigest:'{image_id.get('imageDigest', 'null')}', "
        f"imageTag:'{image_id.get('imageTag', 'null')}'}} does not exist within the repository with name "
        f"'{name}' in the registry with id '{account_id}'"
    )


async def find_image(images: ImageService, name: str, image_id: dict[str, str]) -> ImageRecord | None:
    """The image an ImageIdentifier names (tag and digest must agree when both are given)."""
    digest, tag = image_id.get("imageDigest"), image_id.get("imageTag")
    if tag is not None:
        resolved = await images.meta.resolve_tag(name, tag)
        if resolved is None or (digest is not None and digest != resolved):
            return None
        digest = resolved
    if digest is None:
        return None
    return await images.image(name, digest)


async def existing_image(images: ImageService, name: str, image_id: dict[str, str], account_id: str) -> ImageRecord:
    """The repository's image an ImageIdentifier names, or ECR's RepositoryNotFound / ImageNotFoundException."""
    await existing_repository(images, name, account_id)
    img = await find_image(images, name, image_id)
    if img is None:
        raise image_not_found(name, image_id, account_id)
    return img


def answered_image_id(img: ImageRecord, image_id: dict[str, str]) -> dict[str, str]:
    """The imageId an answer names: the digest, and the tag the request gave."""
    tag = image_id.get("imageTag")
    return {"imageDigest": img.digest, **({"imageTag": tag} if tag is not None else {})}
