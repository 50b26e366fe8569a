"""The one error hierarchy. Each class carries its HTTP status, OCI error code and ECR exception name;
`registry.web.middleware` renders them (OCI JSON on /v2, `__type` JSON on the ECR API). Nothing else
writes an error body."""

from __future__ import annotations

from typing import Any, ClassVar


class RegistryError(Exception):
    status: ClassVar[int] = 500
    oci_code: ClassVar[str] = "UNKNOWN"
    ecr_code: ClassVar[str] = "ServerException"
    default_message: ClassVar[str] = "internal error"

    def __init__(
        self,
        message: str | None = None,
        *,
        detail: Any = None,
        headers: dict[str, str] | None = None,
        fields: dict[str, Any] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.detail = detail
        self.headers = headers or {}
        self.fields = fields or {}  # extra members of the ECR error body (e.g. lastValidByteReceived)
        super().__init__(self.message)


class BlobUnknown(RegistryError):
    status, oci_code, ecr_code = 404, "BLOB_UNKNOWN", "LayersNotFoundException"
    default_message = "blob unknown to registry"


class BlobUploadInvalid(RegistryError):
    status, oci_code, ecr_code = 400, "BLOB_UPLOAD_INVALID", "InvalidLayerPartException"
    default_message = "blob upload invalid"


class UploadRangeInvalid(BlobUploadInvalid):
    """A chunk that does not start where the upload ends (the spec's 416)."""

    status = 416
    default_message = "chunk out of order"


class BlobUploadUnknown(RegistryError):
    status, oci_code, ecr_code = 404, "BLOB_UPLOAD_UNKNOWN", "UploadNotFoundException"
    default_message = "blob upload unknown to registry"


class RangeNotSatisfiable(RegistryError):
    status, oci_code, ecr_code = 416, "RANGE_INVALID", "InvalidParameterException"
    default_message = "requested range not satisfiable"


class DigestInvalid(RegistryError):
    status, oci_code, ecr_code = 400, "DIGEST_INVALID", "InvalidParameterException"
    default_message = "provided digest did not match uploaded content"


class ManifestBlobUnknown(RegistryError):
    status, oci_code, ecr_code = 400, "MANIFEST_BLOB_UNKNOWN", "LayersNotFoundException"
    default_message = "manifest references a blob unknown to the repository"


class ManifestReferenceUnknown(ManifestBlobUnknown):
    ecr_code = "ReferencedImagesNotFoundException"
    default_message = "index references a manifest unknown to the repository"


class ManifestInvalid(RegistryError):
    status, oci_code, ecr_code = 400, "MANIFEST_INVALID", "InvalidParameterException"
    default_message = "manifest invalid"


class ManifestTooLarge(RegistryError):
    status, oci_code, ecr_code = 413, "SIZE_INVALID", "InvalidParameterException"
    default_message = "manifest too large"


class ManifestUnknown(RegistryError):
    status, oci_code, ecr_code = 404, "MANIFEST_UNKNOWN", "ImageNotFoundException"
    default_message = "manifest unknown to registry"


class NameInvalid(RegistryError):
    status, oci_code, ecr_code = 400, "NAME_INVALID", "InvalidParameterException"
    default_message = "invalid repository name"


class NameUnknown(RegistryError):
    status, oci_code, ecr_code = 404, "NAME_UNKNOWN", "RepositoryNotFoundException"
    default_message = "repository name not known to registry"


class SizeInvalid(RegistryError):
    status, oci_code, ecr_code = 400, "SIZE_INVALID", "InvalidParameterException"
    default_message = "provided length did not match content length"


class TagInvalid(RegistryError):
    status, oci_code, ecr_code = 400, "TAG_INVALID", "InvalidParameterException"
    default_message = "manifest tag did not match URI"


class Unauthorized(RegistryError):
    status, oci_code, ecr_code = 401, "UNAUTHORIZED", "UnrecognizedClientException"
    default_message = "authentication required"


class AuthenticationRequired(Unauthorized):
    """No credentials where some are needed: 401 with a challenge. ECR's body is a plain `Not Authorized`; the
    OCI spec's is its error JSON (code UNAUTHORIZED), which Moorage follows, keeping ECR's message."""

    default_message = "Not Authorized"


class MalformedCredentials(Unauthorized):
    status = 400
    default_message = "malformed Authorization header"


class Denied(RegistryError):
    status, oci_code, ecr_code = 403, "DENIED", "AccessDeniedException"
    default_message = "requested access to the resource is denied"


class Unsupported(RegistryError):
    status, oci_code, ecr_code = 405, "UNSUPPORTED", "ValidationException"
    default_message = "the operation is unsupported"


class NotFound(RegistryError):
    status, oci_code, ecr_code = 404, "NOT_FOUND", "ValidationException"
    default_message = "no such endpoint"


class InvalidRequest(RegistryError):
    status, oci_code, ecr_code = 400, "UNSUPPORTED", "InvalidParameterException"
    default_message = "invalid request"


class TooManyRequests(RegistryError):
    status, oci_code, ecr_code = 429, "TOOMANYREQUESTS", "ThrottlingException"
    default_message = "too many requests"


class PaginationInvalid(RegistryError):
    status, oci_code, ecr_code = 400, "PAGINATION_NUMBER_INVALID", "InvalidParameterException"
    default_message = "invalid number of results requested"


class StorageFull(RegistryError):
    """The disk (or a quota) under the data directory is full: nothing of the write was kept. 507 on /v2 (WebDAV's
    Insufficient Storage; clients treat it as a server error and may retry), ServerException on the ECR API."""

    status, oci_code, ecr_code = 507, "UNAVAILABLE", "ServerException"
    default_message = "storage is full: the registry has no space left and nothing was stored; retry later"


class BodyTimeout(RegistryError):
    """The request body stopped arriving (`[server] body_timeout`, registry/web/bodies.py): 408, and the connection
    is closed after the answer (the rest of the body is never read)."""

    status, oci_code, ecr_code = 408, "REQUEST_TIMEOUT", "InvalidParameterException"
    default_message = "the request body stopped arriving"


class StorageUnavailable(RegistryError):
    """The storage backend (object storage, a database) cannot be reached right now: nothing was done that the
    client must know of. 503 on /v2 (with Retry-After), ServerException on the ECR API."""

    status, oci_code, ecr_code = 503, "UNAVAILABLE", "ServerException"
    default_message = "storage is unavailable: the registry cannot reach its storage; retry later"


class TagImmutable(TagInvalid):
    ecr_code = "ImageTagAlreadyExistsException"
    default_message = "tag is immutable"


# -- ECR API errors (status 400 unless said) ---------------------------------------------------------


class EcrError(RegistryError):
    status, oci_code = 400, "UNSUPPORTED"


def _ecr(
    name: str, message: str, base: type[RegistryError] = EcrError, oci: str | None = None, status: int | None = None
) -> type[RegistryError]:
    attrs: dict[str, Any] = {"ecr_code": name, "default_message": message}
    if oci:
        attrs["oci_code"] = oci
    if status:
        attrs["status"] = status
    return type(name.removesuffix("Exception"), (base,), attrs)


InvalidParameter = _ecr("InvalidParameterException", "invalid parameter")
SerializationError = _ecr("SerializationException", "the request body could not be read")
UnknownOperation = _ecr("UnknownOperationException", "unknown operation")
RepositoryNotFound = _ecr("RepositoryNotFoundException", "repository not found", NameUnknown)
RepositoryAlreadyExists = _ecr("RepositoryAlreadyExistsException", "repository already exists")
RepositoryNotEmpty = _ecr("RepositoryNotEmptyException", "repository is not empty")
RepositoryPolicyNotFound = _ecr("RepositoryPolicyNotFoundException", "repository policy not found")
ImageNotFound = _ecr("ImageNotFoundException", "image not found", ManifestUnknown)
ImageAlreadyExists = _ecr("ImageAlreadyExistsException", "image already exists")
ImageDigestDoesNotMatch = _ecr("ImageDigestDoesNotMatchException", "image digest does not match")
LayersNotFound = _ecr("LayersNotFoundException", "layers not found")
LayerInaccessible = _ecr("LayerInaccessibleException", "layer inaccessible")
LayerAlreadyExists = _ecr("LayerAlreadyExistsException", "layer already exists")
InvalidLayer = _ecr("InvalidLayerException", "invalid layer")
InvalidLayerPart = _ecr("InvalidLayerPartException", "invalid layer part")
EmptyUpload = _ecr("EmptyUploadException", "empty upload")
UploadNotFound = _ecr("UploadNotFoundException", "upload not found", BlobUploadUnknown)
TooManyTags = _ecr("TooManyTagsException", "too many tags")
InvalidTagParameter = _ecr("InvalidTagParameterException", "invalid tag parameter")
LimitExceeded = _ecr("LimitExceededException", "limit exceeded")
AuthFailure = _ecr(
    "UnrecognizedClientException", "The security token included in the request is invalid.", oci="UNAUTHORIZED"
)
InvalidSignature = _ecr(
    "InvalidSignatureException",
    "The request signature we calculated does not match the signature you provided.",
    oci="UNAUTHORIZED",
)
MissingAuthenticationToken = _ecr(
    "MissingAuthenticationTokenException", "Missing Authentication Token", oci="UNAUTHORIZED"
)
IncompleteSignature = _ecr("IncompleteSignatureException", "the Authorization header is incomplete", oci="UNAUTHORIZED")
SIGV4_ERRORS: dict[str, type[RegistryError]] = {
    cls.ecr_code: cls for cls in (AuthFailure, InvalidSignature, MissingAuthenticationToken, IncompleteSignature)
}

# -- pull-through cache ------------------------------------------------------------------------------


class UpstreamFailure(RegistryError):
    """Nothing cached, and the upstream could not supply it (down, slow, 5xx)."""

    status, oci_code, ecr_code = 502, "UNKNOWN", "UnableToGetUpstreamImageException"
    default_message = "the upstream registry could not be reached"


class UpstreamTimeout(UpstreamFailure):
    """Nothing cached, and the upstream did not answer in time (a 504 says so even where a client shows only the
    status, as docker does for a 5xx; the body says which upstream and how long)."""

    status, oci_code = 504, "UNAVAILABLE"
    default_message = "the upstream registry did not answer in time"


class UpstreamDenied(Denied):
    ecr_code = "UnableToGetUpstreamImageException"
    default_message = "The authentication to the upstream registry failed."


class UpstreamThrottled(TooManyRequests):
    ecr_code = "UnableToGetUpstreamImageException"


PullThroughCacheRuleAlreadyExists = _ecr("PullThroughCacheRuleAlreadyExistsException", "rule already exists")
PullThroughCacheRuleNotFound = _ecr("PullThroughCacheRuleNotFoundException", "rule not found")
SecretNotFound = _ecr("SecretNotFoundException", "secret not found")
UnsupportedUpstreamRegistry = _ecr("UnsupportedUpstreamRegistryException", "unsupported upstream registry")

# -- lifecycle, archive, templates ---------------------------------------------------------------------
LifecyclePolicyNotFound = _ecr("LifecyclePolicyNotFoundException", "lifecycle policy not found")
LifecyclePolicyPreviewNotFound = _ecr("LifecyclePolicyPreviewNotFoundException", "lifecycle policy preview not found")
LifecyclePolicyPreviewInProgress = _ecr("LifecyclePolicyPreviewInProgressException", "a preview is in progress")
TemplateAlreadyExists = _ecr("TemplateAlreadyExistsException", "template already exists")
TemplateNotFound = _ecr("TemplateNotFoundException", "template not found")

# -- the registry's own settings, scanning, signing ------------------------------------------------------
RegistryPolicyNotFound = _ecr("RegistryPolicyNotFoundException", "registry policy not found")
ExclusionAlreadyExists = _ecr("ExclusionAlreadyExistsException", "the principal is excluded already")
ExclusionNotFound = _ecr("ExclusionNotFoundException", "the principal is not excluded")
SigningConfigurationNotFound = _ecr("SigningConfigurationNotFoundException", "signing configuration not found")
ScanNotFound = _ecr("ScanNotFoundException", "scan not found")
ValidationError = _ecr("ValidationException", "the request is not valid")
BackfillInProgress = _ecr("ReplicationBackfillInProgressException", "a backfill to the destination is in progress")
BackfillNotFound = _ecr("ReplicationBackfillNotFoundException", "replication backfill not found")
BackfillInvalidStatus = _ecr("ReplicationBackfillInvalidStatusException", "the backfill cannot be stopped now")


class ImageArchived(ManifestUnknown):
    """A pull of an archived image: 404, as on ECR (its documentation: pulls of archived images fail with a 404),
    saying how to restore it."""

    ecr_code = "ImageArchivedException"
    default_message = "The image is archived; restore it with UpdateImageStorageClass before pulling it."


class BlobArchived(BlobUnknown):
    """A blob GET of a layer that only archived images of the repository use (ECR reports such a layer as
    ARCHIVED in BatchCheckLayerAvailability): 404 until one of them is restored."""

    default_message = "The layer belongs only to archived images; restore one with UpdateImageStorageClass."


class ImageNotSigned(Denied):
    """A pull, in a repository `[signing] enforce` covers, of a manifest with no valid signature by the registry's
    image signing key (403 DENIED on /v2; BatchGetImage reports it as an ImageInaccessible failure)."""

    default_message = "The image is not signed by this registry's key, and pulls of unsigned images are refused."
