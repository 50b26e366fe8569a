"""The S3 blob store (not written yet)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from storage.coordination import Locks
from storage.errors import StorageError


class S3BlobStore:
    def __init__(self, bucket: str, prefix: str, options: Any, *, scratch: Path, locks: Locks) -> None:
        raise StorageError("the S3 blob store is not available in this version")
