"""Storage errors: what a store raises. The service layer translates them into registry errors, once."""

from __future__ import annotations


class StorageError(Exception):
    """Base of storage errors; the service layer translates them into registry errors once."""


class StorageUnavailable(StorageError):
    """The backend cannot be reached (or cannot serve this right now: a lost connection, a server shutting down
    or failing over, no connection slot left, a transaction chosen as a deadlock's victim); try again. The web
    layer answers 503."""


class BlobNotFound(StorageError):
    pass


class UploadNotFound(StorageError):
    pass


class DigestMismatch(StorageError):
    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"expected {expected}, content is {actual}")
        self.expected, self.actual = expected, actual


class OffsetMismatch(StorageError):
    """A chunk that does not start where the upload currently ends."""

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"upload is at offset {expected}, chunk starts at {got}")
        self.expected, self.got = expected, got


class SizeMismatch(StorageError):
    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"expected {expected} bytes, received {got}")
        self.expected, self.got = expected, got


class Conflict(StorageError):
    """A uniqueness rule in the metadata store refused the write."""


class StorageFull(StorageError):
    """No space (or no inodes, or a quota) left for a write; the write was undone. Its message may name server
    paths: for logs, not for clients."""


class BlobCorrupt(StorageError):
    """A stored blob's bytes do not match its digest (found while streaming it: the stream is cut before its
    last bytes, so they are never served whole)."""

    def __init__(self, digest: str, actual: str) -> None:
        super().__init__(f"stored blob {digest} is corrupt: its bytes are {actual}")
        self.digest, self.actual = digest, actual


class TagConflict(StorageError):
    """A protected (immutable) tag already points at another manifest."""

    def __init__(self, tag: str, digest: str) -> None:
        super().__init__(f"tag {tag} already points at {digest}")
        self.tag, self.digest = tag, digest


class RepositoryExists(Conflict):
    pass


class RepositoryNotEmpty(Conflict):
    pass
