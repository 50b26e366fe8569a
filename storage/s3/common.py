"""What the S3 blob store's parts share: sizes and limits, the bucket's error codes, and their translation into
storage errors."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import botocore.exceptions

from storage.errors import (
    StorageError,
    StorageUnavailable,
)

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

PART_SIZE = 8 << 20  # multipart part size (S3's minimum is 5 MiB); a blob up to this size is one PutObject
MAX_PARTS = 10_000  # S3's limit: larger objects get larger parts
PARALLEL_PARTS = 4  # parts in flight at once per upload (each held in memory)
COPY_LIMIT = 5 << 30  # CopyObject's limit; larger chunks are copied by UploadPartCopy
COPY_PART = 1 << 30
REDIRECT_TTL = 20 * 60  # seconds a presigned GET stays valid
HEALTH_TIMEOUT = 3.0
STALE_UPLOAD_AGE = 86400.0  # a multipart upload or a session's orphaned chunk this old belongs to nobody
MARKER = "session"
CHUNK_HASH_SUFFIX = ".sha256"  # beside a session's chunk sent in parts: its SHA-256 (hex)

# Errors that mean "the endpoint could not be reached or did not answer in time".
_UNREACHABLE: tuple[type[BaseException], ...] = (
    botocore.exceptions.ConnectionError,  # EndpointConnectionError, ConnectTimeoutError, ...
    botocore.exceptions.HTTPClientError,  # ReadTimeoutError, ConnectionClosedError, ResponseStreamingError
    aiohttp.ClientError,
    ConnectionError,
    TimeoutError,
)
_MISSING_CODES = frozenset({"NoSuchKey", "NotFound", "404", "NoSuchUpload"})
_BUSY_CODES = frozenset({"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling"})


def _translate(e: BaseException, what: str, missing: StorageError | None = None) -> StorageError:
    """A botocore / aiohttp error as a storage error: `missing` for a key that is not there, StorageUnavailable
    for an endpoint that cannot be reached or is overloaded, StorageError for anything else (a refusal)."""
    if isinstance(e, botocore.exceptions.ClientError):
        error: dict[str, Any] = e.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        said = f"{what}: S3 answered {code or status}: {error.get('Message', '')}".rstrip(": ")
        if missing is not None and code != "NoSuchBucket" and (code in _MISSING_CODES or status == 404):
            return missing
        if status >= 500 or code in _BUSY_CODES:
            return StorageUnavailable(said)
        return StorageError(said)
    if isinstance(e, _UNREACHABLE):
        return StorageUnavailable(f"{what}: {e or type(e).__name__}")
    return StorageError(f"{what}: {e or type(e).__name__}")


def _error_code(e: StorageError) -> str:
    """The S3 error code behind a translated error ("" for none)."""
    cause = e.__cause__
    if isinstance(cause, botocore.exceptions.ClientError):
        return str(cause.response.get("Error", {}).get("Code", ""))
    return ""


_TRANSLATED: tuple[type[BaseException], ...] = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)
_TRANSLATED += _UNREACHABLE


def _part_size(size: int) -> int:
    """PART_SIZE, or more (whole MiB) for an object that would need over MAX_PARTS parts."""
    needed = -(-size // MAX_PARTS)
    return max(PART_SIZE, -(-needed // (1 << 20)) << 20)


@dataclass(frozen=True, slots=True)
class _Chunk:
    key: str
    offset: int
    size: int
