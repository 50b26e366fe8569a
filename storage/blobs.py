"""The blob store contract: immutable, content-addressed bytes, named only by digest.

Small Protocols composed into one `BlobStore` (Distribution's `BlobStatter`, `BlobProvider`, `BlobIngester`):

- `stat(digest)`: size and modification time, or None.
- `open(digest, offset, length)`: how to answer a read, by type: a `FileRange` of a local file (the web layer
  sends it with sendfile), a `RedirectURL` (a presigned GET on object storage; only when the caller allows
  redirects) or a `ByteStream`. `read()` is the plain byte stream, for code that is not answering HTTP.
- Writes go through one `BlobWriter` (`write`, `size`, `commit(expected digest)`, `abort`): a fresh one from
  `writer()`, or an upload session's from `resume_upload()`. Leaving `writer()`'s block without a commit aborts;
  leaving a session's keeps what was written (a chunk of a resumable upload), durably.
- A write may be shared (`writer(shared=key)`): while it runs, `follow(key)` lets readers (in this process or,
  where the driver can, in others) read the bytes written so far. The pull-through cache streams a blob to
  every client while it downloads it once. The caller holds the coordination lock named by the key.
- `delete(digest)` is the only way blob bytes are removed (garbage collection calls it, after claiming the blob
  in the metadata store).

No path, file name or bucket key appears here: drivers decide where bytes live.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class BlobInfo:
    size: int
    modified: float  # seconds since the epoch


@dataclass(frozen=True, slots=True)
class FileRange:
    """`length` bytes of a local file from `offset`: sent with sendfile(2)."""

    file: str
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class RedirectURL:
    """A URL the client fetches the bytes from itself (an S3 presigned GET), valid until `expires_at`."""

    url: str
    expires_at: float


@dataclass(slots=True)
class ByteStream:
    """`length` bytes, streamed."""

    chunks: AsyncIterator[bytes]
    length: int


BlobBody = FileRange | RedirectURL | ByteStream


class BlobWriter(Protocol):
    """One blob being written. `commit` verifies the bytes against the expected digest and makes them that blob
    atomically (a partial blob is never visible); `DigestMismatch` discards them."""

    @property
    def size(self) -> int:
        """Bytes written so far."""

    async def write(self, data: bytes) -> None: ...

    async def commit(self, expected: str) -> int:
        """Verify and install; returns the blob's size."""

    async def abort(self) -> None:
        """Discard what was written (an upload session is gone afterwards)."""


class SharedWrite(Protocol):
    """A shared write in progress, as its followers see it."""

    @property
    def declared_size(self) -> int | None:
        """The size the writer announced (None: not known)."""

    async def available(self) -> int:
        """Bytes written so far: each `write` of the shared writer is readable once it returns."""

    async def read(self, offset: int, length: int) -> bytes: ...

    async def close(self) -> None: ...


class BlobStatter(Protocol):
    async def stat(self, digest: str) -> BlobInfo | None:
        """Size and modification time, or None when the blob is not stored."""


class BlobProvider(Protocol):
    async def open(
        self, digest: str, offset: int = 0, length: int | None = None, *, redirect: bool = False
    ) -> BlobBody:
        """How to send `length` bytes (all from `offset` when None) of the blob: a redirect only when `redirect`
        allows it. Raises BlobNotFound."""

    def read(self, digest: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """Stream the blob (or a byte range of it). Raises BlobNotFound."""


class BlobIngester(Protocol):
    def writer(
        self, *, shared: str | None = None, size: int | None = None, expected: str | None = None
    ) -> AbstractAsyncContextManager[BlobWriter]:
        """A fresh writer, aborted on leaving without a commit. `shared` makes it followable under that key,
        announcing `size` to followers. `expected`: the digest the commit will name, when known before the bytes
        (a hint: a driver may start storing the bytes under it while they arrive; the commit still verifies, and
        nothing is visible under the digest before it)."""

    async def follow(self, shared: str) -> SharedWrite | None:
        """The shared write under that key while one is live (and reachable from here), else None."""

    async def create_upload(self, upload_id: str) -> None: ...

    async def upload_size(self, upload_id: str) -> int:
        """Bytes an upload session holds. Raises UploadNotFound."""

    def resume_upload(self, upload_id: str) -> AbstractAsyncContextManager[BlobWriter]:
        """The session's writer, one at a time across processes, positioned at its end. Leaving without a commit
        keeps the bytes written (fsynced), except after StorageFull: then the chunk is cut off again, and the
        session is where it was. A commit (or a DigestMismatch) ends the session. Raises UploadNotFound."""

    async def delete_upload(self, upload_id: str) -> None:
        """Discard a session's bytes (nothing to do for one that is gone)."""


class BlobDeleter(Protocol):
    async def delete(self, digest: str) -> bool:
        """Remove the blob's bytes (garbage collection only, after claiming it in the metadata store)."""

    def iter_digests(self) -> AsyncIterator[tuple[str, BlobInfo]]:
        """Every stored blob (finds bytes with no metadata row: a crash between install and link)."""

    async def remove_leftovers(self) -> int:
        """Remove scratch data interrupted writes left behind (older than an hour); returns how many."""


class BlobStore(BlobStatter, BlobProvider, BlobIngester, BlobDeleter, Protocol):
    async def warm_up(self) -> None:
        """Get ready for the first request ahead of it (a server, once started); never raises."""

    async def health(self) -> list[str]:
        """What keeps the store from taking writes (unreachable, not writable, too little space); empty: ready."""

    async def close(self) -> None: ...
