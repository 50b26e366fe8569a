"""The S3 blob store (`storage.blobs.BlobStore` in a bucket of AWS S3 or an S3-compatible service).

Layout in the bucket, under the configured prefix (every key is built by `_blob_key`, `_session_prefix` or
`_chunk_key`)::

    <prefix>/
      blobs/
        sha256/
          ab/
            abcdef0123...          one object per blob, named by its hex digest, immutable once there
        sha512/
          ...
      uploads/
        <upload id>/
          session                  the session's marker (empty): the session exists while it does
          00000000000000000000     one object per chunk, named by the offset it starts at (20 digits, so
          00000000000000001000     that listing order is offset order); metadata: the chunk's sha256

And on each replica's local disk, its scratch space (the data dir's `uploads/`, see `storage.scratch`): a
writer's bytes land there first, hashed while they arrive, and become an object only once verified.

- A blob object appears atomically (PutObject, or CompleteMultipartUpload for one over PART_SIZE, uploaded
  in parts a few at a time): a reader never sees part of one. An object already there is not uploaded again.
- Reads are (ranged) GETs. A whole-blob read is hashed while it streams and its last piece held back until the
  digest matches, so an object whose bytes do not match its digest is never served whole (`BlobCorrupt`). With
  `redirect` allowed and configured, `open` answers a presigned GET instead: the client fetches the bytes (and
  sends its own Range) from the bucket.
- Upload sessions keep no state on a replica between calls, so each request of one upload may land on another
  replica: a block of `resume_upload` (serialized across replicas by the lock `upload <id>`) spools its bytes
  to scratch and, when it is left without a commit, uploads them as the next chunk object. `upload_size` sums
  the chunks. A commit of a session that is one chunk whose recorded sha256 is the digest copies it server-side;
  any other commit streams the chunks (and the block's own bytes) through a hash into the blob's object (a
  multipart upload, completed only once the digest matched).
- The bucket never fills up; the scratch disk can: a write that finds it full raises `StorageFull` as the
  filesystem store does (a fresh write keeps nothing, a session's chunk is cut off, the session unchanged).
- An endpoint that cannot be reached (refused, timed out, 5xx after botocore's retries) raises
  `StorageUnavailable`: the web layer answers 503.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import botocore.exceptions
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from storage.blobs import BlobBody, BlobInfo, ByteStream, RedirectURL
from storage.coordination import Locks
from storage.errors import (
    BlobCorrupt,
    BlobNotFound,
    DigestMismatch,
    StorageError,
    StorageFull,
    StorageUnavailable,
    UploadNotFound,
)
from storage.files import full_is_storage_full
from storage.scratch import (
    LEFTOVER_AGE,
    READ_CHUNK,
    SCRATCH_PREFIX,
    FileFollow,
    ScratchWriter,
    create_scratch,
    remove_stale,
    shared_path,
    sidecar_path,
)
from storage.scratch import follow as follow_shared

if TYPE_CHECKING:
    from storage.factory import S3Options

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


class S3BlobStore:
    def __init__(self, bucket: str, prefix: str, options: S3Options, *, scratch: Path, locks: Locks) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.options = options
        self.locks = locks  # an upload session is written by one replica at a time
        self._scratch = Path(scratch) / "uploads"
        self._scratch.mkdir(parents=True, exist_ok=True)
        # Clients are created on first use (Stores.open() does not open blob stores): one for the data, and one
        # that does not retry, for health probes (a refused connection is reported at once, not after backoffs).
        self._clients: dict[bool, Any] = {}
        self._client_stack = contextlib.AsyncExitStack()
        self._client_lock = asyncio.Lock()
        self.calls: collections.Counter[str] = collections.Counter()  # S3 operations made, by name
        remove_stale(self._scratch, LEFTOVER_AGE)

    @property
    def where(self) -> str:
        endpoint = self.options.endpoint_url or f"AWS S3 ({self.options.region})"
        return f"s3://{self.bucket}/{self.prefix} at {endpoint}"

    # -- keys --------------------------------------------------------------------------------------
    def _key(self, *parts: str) -> str:
        return "/".join([self.prefix, *parts] if self.prefix else parts)

    def _blob_key(self, digest: str) -> str:
        alg, _, hexpart = digest.partition(":")
        return self._key("blobs", alg, hexpart[:2], hexpart)

    def _session_prefix(self, upload_id: str) -> str:
        return self._key("uploads", upload_id) + "/"

    def _chunk_key(self, upload_id: str, offset: int) -> str:
        return f"{self._session_prefix(upload_id)}{offset:020d}"

    # -- the client ----------------------------------------------------------------------------------
    async def _s3(self, *, probe: bool = False) -> Any:
        client = self._clients.get(probe)
        if client is None:
            async with self._client_lock:
                client = self._clients.get(probe)
                if client is None:
                    client = self._clients[probe] = await self._open_client(probe=probe)
        return client

    async def _open_client(self, *, probe: bool) -> Any:
        options = self.options
        config = AioConfig(
            region_name=options.region or None,
            signature_version="s3v4",
            s3={"addressing_style": "path"} if options.endpoint_url else {},
            connect_timeout=HEALTH_TIMEOUT if probe else 5,
            read_timeout=HEALTH_TIMEOUT if probe else 120,
            retries={"max_attempts": 1 if probe else 3, "mode": "standard"},
            max_pool_connections=32,
            # Checksums only where S3 requires them: S3-compatible services do not all take the newer ones.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            warm_up_loader_caches=True,  # load botocore's service models in a thread, not in the event loop
        )
        credentials: dict[str, str] = {}
        if options.access_key_id:  # else the standard AWS chain (environment, shared files, instance role)
            credentials = {
                "aws_access_key_id": options.access_key_id,
                "aws_secret_access_key": options.secret_access_key,
            }
        try:
            return await self._client_stack.enter_async_context(
                get_session().create_client(
                    "s3", endpoint_url=options.endpoint_url or None, config=config, **credentials
                )
            )
        except _TRANSLATED as e:
            raise _translate(e, f"connecting to {self.where}") from e

    async def _call(
        self, op: str, what: str, *, missing: StorageError | None = None, probe: bool = False, **params: Any
    ) -> Any:
        """One S3 operation on the bucket, its errors translated (`missing`: raised for a key not there)."""
        client = await self._s3(probe=probe)
        self.calls[op] += 1
        try:
            return await getattr(client, op)(Bucket=self.bucket, **params)
        except _TRANSLATED as e:
            raise _translate(e, what, missing) from e

    async def _list(self, prefix: str) -> AsyncIterator[dict[str, Any]]:
        """Every object under `prefix` (ListObjectsV2, a page at a time)."""
        params: dict[str, Any] = {"Prefix": prefix}
        while True:
            page = await self._call("list_objects_v2", f"listing {prefix}", **params)
            for item in page.get("Contents", ()):
                yield item
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            params["ContinuationToken"] = token

    async def _delete_keys(self, keys: list[str], what: str) -> None:
        for i in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[i : i + 1000]]
            await self._call("delete_objects", what, Delete={"Objects": batch, "Quiet": True})

    # -- reading -----------------------------------------------------------------------------------
    async def stat(self, digest: str) -> BlobInfo | None:
        try:
            head = await self._call(
                "head_object", f"stat {digest}", missing=BlobNotFound(digest), Key=self._blob_key(digest)
            )
        except BlobNotFound:
            return None
        return BlobInfo(int(head["ContentLength"]), head["LastModified"].timestamp())

    async def open(
        self, digest: str, offset: int = 0, length: int | None = None, *, redirect: bool = False
    ) -> BlobBody:
        info = await self.stat(digest)
        if info is None:
            raise BlobNotFound(digest)
        if redirect and self.options.redirect:
            client = await self._s3()
            params = {"Bucket": self.bucket, "Key": self._blob_key(digest)}
            signed_at = time.time()
            try:  # signed here, no round trip
                url = await client.generate_presigned_url("get_object", Params=params, ExpiresIn=REDIRECT_TTL)
            except _TRANSLATED as e:
                raise _translate(e, f"presigning {digest}") from e
            return RedirectURL(str(url), signed_at + REDIRECT_TTL)
        if length is None:
            length = max(info.size - offset, 0)
        # The GET starts when the stream is first read (a HEAD request never reads it).
        return ByteStream(self._stream(digest, offset, length), length)

    def read(self, digest: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        return self._stream(digest, offset, length)

    async def _stream(self, digest: str, offset: int, length: int | None) -> AsyncIterator[bytes]:
        """The blob's bytes from `offset` (`length` of them, all when None). A read of the whole blob is
        verified against the digest, its last piece held back until it matches."""
        if length == 0:
            return
        params: dict[str, Any] = {"Key": self._blob_key(digest)}
        if offset or length is not None:
            params["Range"] = f"bytes={offset}-{'' if length is None else offset + length - 1}"
        try:
            response = await self._call("get_object", f"reading {digest}", missing=BlobNotFound(digest), **params)
        except StorageError as e:
            if _error_code(e) == "InvalidRange":
                return  # from the end of the blob (or past it): nothing to read
            raise
        expected = int(response["ContentLength"])
        total = expected
        if "Range" in params:
            _, _, of = str(response.get("ContentRange", "")).rpartition("/")
            total = int(of) if of.isdigit() else -1
        whole = offset == 0 and expected == total
        hasher = hashlib.new(digest.partition(":")[0]) if whole else None
        received = 0
        held: bytes | None = None
        async with response["Body"] as body:
            while True:
                try:
                    piece: bytes = await body.read(READ_CHUNK)
                except _TRANSLATED as e:
                    raise _translate(e, f"reading {digest}") from e
                if not piece:
                    break
                received += len(piece)
                if hasher is not None:
                    hasher.update(piece)
                if held is not None:
                    yield held
                held = piece
        if received != expected:
            raise StorageUnavailable(f"reading {digest}: the stream ended after {received} of {expected} bytes")
        if hasher is not None:
            actual = f"{digest.partition(':')[0]}:{hasher.hexdigest()}"
            if actual != digest:
                log.error("blob %s in %s does not match its digest (its bytes are %s)", digest, self.where, actual)
                raise BlobCorrupt(digest, actual)
        if held is not None:
            yield held

    async def _object_stream(self, key: str, what: str) -> AsyncIterator[bytes]:
        """An object's bytes as they are (a session's chunk)."""
        response = await self._call("get_object", what, Key=key)
        async with response["Body"] as body:
            while True:
                try:
                    piece: bytes = await body.read(READ_CHUNK)
                except _TRANSLATED as e:
                    raise _translate(e, what) from e
                if not piece:
                    return
                yield piece

    # -- writing objects -------------------------------------------------------------------------------
    async def _upload_file(self, path: Path, key: str, size: int, metadata: dict[str, str] | None = None) -> None:
        """Make the local file the object `key` (PutObject, or a multipart upload for a large one)."""
        part = _part_size(size)
        sink = _ObjectSink(self, key, part_size=part, metadata=metadata)
        fh = await asyncio.to_thread(open, path, "rb")
        try:
            while data := await asyncio.to_thread(fh.read, part):
                await sink.write(data)
            await sink.finish()
        except BaseException:
            await sink.abort()
            raise
        finally:
            await asyncio.to_thread(fh.close)

    async def _copy(self, source: _Chunk, key: str) -> None:
        """Copy an object server-side (CopyObject, or UploadPartCopy in parts for one over 5 GiB)."""
        what = f"copying {source.key} to {key}"
        copy_source = {"Bucket": self.bucket, "Key": source.key}
        if source.size <= COPY_LIMIT:
            await self._call("copy_object", what, Key=key, CopySource=copy_source)
            return
        created = await self._call("create_multipart_upload", what, Key=key)
        upload_id = str(created["UploadId"])
        try:
            parts = []
            for number, start in enumerate(range(0, source.size, COPY_PART), 1):
                end = min(start + COPY_PART, source.size) - 1
                copied = await self._call(
                    "upload_part_copy",
                    what,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource=copy_source,
                    CopySourceRange=f"bytes={start}-{end}",
                )
                parts.append({"PartNumber": number, "ETag": copied["CopyPartResult"]["ETag"]})
            await self._call(
                "complete_multipart_upload", what, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            with contextlib.suppress(StorageError):
                await asyncio.shield(self._call("abort_multipart_upload", what, Key=key, UploadId=upload_id))
            raise

    # -- fresh and shared writers --------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def writer(self, *, shared: str | None = None, size: int | None = None) -> AsyncIterator[S3Writer]:
        if shared is None:
            path, sidecar = self._scratch / f"{SCRATCH_PREFIX}{uuid.uuid4()}", None
        else:
            path = shared_path(self._scratch, shared)
            sidecar = sidecar_path(path)
        with full_is_storage_full("starting a blob", path):
            fd = await asyncio.to_thread(create_scratch, path, sidecar, size)
        writer = S3Writer(self, path, fd, hashlib.sha256(), 0, through=shared is not None)
        try:
            yield writer
        finally:
            if not (writer.committed or writer.aborted):
                await writer.abort()
            if sidecar is not None:
                await asyncio.to_thread(sidecar.unlink, True)

    async def follow(self, shared: str) -> FileFollow | None:
        """A shared write of a process on this replica's scratch space; another replica's is not reachable."""
        return await follow_shared(self._scratch, shared)

    # -- upload sessions ---------------------------------------------------------------------------
    async def create_upload(self, upload_id: str) -> None:
        key = self._session_prefix(upload_id) + MARKER
        await self._call("put_object", f"starting upload {upload_id}", Key=key, Body=b"")

    async def _chunks(self, upload_id: str) -> list[_Chunk]:
        """The session's chunks in order. Raises UploadNotFound."""
        prefix = self._session_prefix(upload_id)
        found = False
        chunks: list[_Chunk] = []
        async for item in self._list(prefix):
            name = str(item["Key"])[len(prefix) :]
            if name == MARKER:
                found = True
            elif name.isdigit():
                chunks.append(_Chunk(str(item["Key"]), int(name), int(item["Size"])))
        if not found:
            raise UploadNotFound(upload_id)
        chunks.sort(key=lambda chunk: chunk.offset)
        end = 0
        for chunk in chunks:
            if chunk.offset != end:
                raise StorageError(
                    f"upload {upload_id}: a chunk starts at {chunk.offset}, the one before ends at {end}"
                )
            end += chunk.size
        return chunks

    async def upload_size(self, upload_id: str) -> int:
        return sum(chunk.size for chunk in await self._chunks(upload_id))

    @contextlib.asynccontextmanager
    async def resume_upload(self, upload_id: str) -> AsyncIterator[S3SessionWriter]:
        async with self.locks.hold(f"upload {upload_id}"):
            chunks = await self._chunks(upload_id)
            path = self._scratch / f"{SCRATCH_PREFIX}chunk-{uuid.uuid4()}"
            with full_is_storage_full("starting an upload chunk", path):
                fd = await asyncio.to_thread(create_scratch, path, None, None)
            writer = S3SessionWriter(self, upload_id, chunks, path, fd)
            try:
                yield writer
            except StorageFull:
                raise  # the chunk is cut off (its scratch file goes below): the session is where it was
            except BaseException:
                if not writer.ended:  # a client that went away: what it sent is kept, as on a filesystem
                    try:
                        await writer.keep()
                    except Exception as e:
                        log.warning("upload %s: the chunk written before an error was not kept: %s", upload_id, e)
                raise
            else:
                if not writer.ended:
                    await writer.keep()
            finally:
                await writer.discard_scratch()

    async def delete_upload(self, upload_id: str) -> None:
        prefix = self._session_prefix(upload_id)
        keys = [str(item["Key"]) async for item in self._list(prefix)]
        marker = prefix + MARKER
        if marker in keys:  # the marker first: the session is gone at once, its chunks follow
            await self._call("delete_object", f"ending upload {upload_id}", Key=marker)
            keys.remove(marker)
        await self._delete_keys(keys, f"ending upload {upload_id}")

    # -- deleting ----------------------------------------------------------------------------------
    async def delete(self, digest: str) -> bool:
        if await self.stat(digest) is None:
            return False
        await self._call("delete_object", f"deleting {digest}", Key=self._blob_key(digest))
        return True

    async def iter_digests(self) -> AsyncIterator[tuple[str, BlobInfo]]:
        prefix = self._key("blobs") + "/"
        async for item in self._list(prefix):
            alg, _, rest = str(item["Key"])[len(prefix) :].partition("/")
            two, _, hexpart = rest.partition("/")
            if not alg or not hexpart or "/" in hexpart or hexpart[:2] != two:
                continue  # not a blob of this layout
            yield f"{alg}:{hexpart}", BlobInfo(int(item["Size"]), item["LastModified"].timestamp())

    async def remove_leftovers(self) -> int:
        """Stale scratch files (over an hour old), multipart uploads under the prefix and chunks of ended
        sessions (over a day old: interrupted by a crash)."""
        removed = await asyncio.to_thread(remove_stale, self._scratch, LEFTOVER_AGE)
        cutoff = time.time() - STALE_UPLOAD_AGE
        try:
            listing = await self._call("list_multipart_uploads", "listing multipart uploads", Prefix=self._key(""))
        except StorageUnavailable:
            raise
        except StorageError as e:  # a service without ListMultipartUploads: its own lifecycle rules apply
            log.info("%s: not removing stale multipart uploads: %s", self.where, e)
            listing = {}
        for upload in listing.get("Uploads", ()):
            if upload["Initiated"].timestamp() < cutoff:
                key, upload_id = str(upload["Key"]), str(upload["UploadId"])
                await self._call("abort_multipart_upload", f"aborting {key}", Key=key, UploadId=upload_id)
                removed += 1
        sessions: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        uploads = self._key("uploads") + "/"
        async for item in self._list(uploads):
            sessions[str(item["Key"])[len(uploads) :].partition("/")[0]].append(item)
        for upload_id, items in sessions.items():
            names = {str(item["Key"]).rpartition("/")[2] for item in items}
            stale = [str(i["Key"]) for i in items if i["LastModified"].timestamp() < cutoff]
            if MARKER not in names and stale:
                await self._delete_keys(stale, f"removing chunks of ended upload {upload_id}")
                removed += len(stale)
        return removed

    async def health(self) -> list[str]:
        problems = []
        if not os.access(self._scratch, os.W_OK | os.X_OK):
            problems.append(f"storage: {self._scratch} (scratch space) is not writable")
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT):
                await self._call("head_bucket", f"storage: {self.where}", probe=True)
        except TimeoutError:
            problems.append(f"storage: {self.where} did not answer within {HEALTH_TIMEOUT:.0f}s")
        except StorageError as e:
            problems.append(str(e) if isinstance(e, StorageUnavailable) else f"{e} (is the bucket there?)")
        return problems

    async def close(self) -> None:
        stack, self._client_stack = self._client_stack, contextlib.AsyncExitStack()
        self._clients.clear()
        await stack.aclose()


class _ObjectSink:
    """Bytes streamed into the object `key`: up to one part in memory, then a multipart upload with up to
    PARALLEL_PARTS parts in flight. Nothing is visible under the key before `finish` (a PutObject of what is
    buffered, or CompleteMultipartUpload); `abort` leaves nothing."""

    def __init__(
        self, store: S3BlobStore, key: str, *, part_size: int = PART_SIZE, metadata: dict[str, str] | None = None
    ) -> None:
        self.store = store
        self.key = key
        self.part_size = part_size
        self.metadata = metadata or {}
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._next = 1
        self._etags: dict[int, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(PARALLEL_PARTS)
        self._failure: BaseException | None = None

    async def write(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= self.part_size:
            part = bytes(self._buffer[: self.part_size])
            del self._buffer[: self.part_size]
            await self._send(part)

    async def _send(self, part: bytes) -> None:
        if self._upload_id is None:
            created = await self.store._call(
                "create_multipart_upload", f"writing {self.key}", Key=self.key, Metadata=self.metadata
            )
            self._upload_id = str(created["UploadId"])
        await self._slots.acquire()
        if self._failure is not None:
            self._slots.release()
            raise self._failure
        number, self._next = self._next, self._next + 1
        task = asyncio.create_task(self._upload_part(number, part))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _upload_part(self, number: int, part: bytes) -> None:
        try:
            sent = await self.store._call(
                "upload_part",
                f"writing {self.key} (part {number})",
                Key=self.key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=part,
            )
            self._etags[number] = str(sent["ETag"])
        except Exception as e:  # kept for the writer to raise (a task's own exception would go unseen)
            self._failure = self._failure or e
        finally:
            self._slots.release()

    async def finish(self) -> None:
        if self._upload_id is None:
            await self.store._call(
                "put_object", f"writing {self.key}", Key=self.key, Body=bytes(self._buffer), Metadata=self.metadata
            )
            return
        if self._buffer:
            await self._send(bytes(self._buffer))
            self._buffer.clear()
        await asyncio.gather(*self._tasks)
        if self._failure is not None:
            raise self._failure
        parts = [{"PartNumber": n, "ETag": etag} for n, etag in sorted(self._etags.items())]
        await self.store._call(
            "complete_multipart_upload",
            f"writing {self.key}",
            Key=self.key,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": parts},
        )
        self._upload_id = None

    async def abort(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            with contextlib.suppress(StorageError):
                await asyncio.shield(
                    self.store._call("abort_multipart_upload", f"aborting {self.key}", Key=self.key, UploadId=upload_id)
                )


class S3Writer(ScratchWriter):
    """A fresh (or shared) writer: a scratch file, uploaded as the blob's object once verified."""

    durable = False  # the object is the durable copy

    def __init__(
        self, store: S3BlobStore, path: Path, fd: int, hasher: hashlib._Hash | None, start: int, *, through: bool
    ) -> None:
        super().__init__(path, fd, hasher, start, through=through)
        self.store = store

    async def _install(self, expected: str) -> None:
        try:
            if await self.store.stat(expected) is None:  # the same content already there wins
                await self.store._upload_file(self.path, self.store._blob_key(expected), self._size)
        finally:
            await asyncio.to_thread(self.path.unlink, True)


class S3SessionWriter(ScratchWriter):
    """A block of an upload session: its bytes spool to a scratch file, which becomes the session's next chunk
    object when the block is left (`keep`), or, with the chunks before it, the blob (`commit`)."""

    durable = False

    def __init__(self, store: S3BlobStore, upload_id: str, chunks: list[_Chunk], path: Path, fd: int) -> None:
        self.start = sum(chunk.size for chunk in chunks)
        super().__init__(path, fd, hashlib.sha256(), self.start, session=upload_id)
        self.store = store
        self.upload_id = upload_id
        self.chunks = chunks

    @property
    def ended(self) -> bool:
        """Committed, aborted or failed its commit's digest check: the session is gone."""
        return self.committed or self.aborted

    async def keep(self) -> None:
        """Store the block's bytes as the session's next chunk (nothing to do for an empty block). StorageFull:
        the scratch disk could not take them all, and nothing of them is kept."""
        await self.flush()
        await self._close()
        written = self._size - self.start
        if written == 0:
            return
        chunk_digest = await self.file_digest("sha256")
        await self.store._upload_file(
            self.path,
            self.store._chunk_key(self.upload_id, self.start),
            written,
            metadata={"sha256": chunk_digest.partition(":")[2]},
        )

    async def discard_scratch(self) -> None:
        """Drop the scratch file (kept as a chunk, or cut off): nothing of the block stays on this replica."""
        self._buffer.clear()
        self._buffered = 0
        self._dirty = False
        await self._close()
        await asyncio.to_thread(self.path.unlink, True)

    async def commit(self, expected: str) -> int:
        await self._sync()
        store = self.store
        algorithm = expected.partition(":")[0]
        written = self._size - self.start
        key = store._blob_key(expected)
        if written == 0 and len(self.chunks) == 1 and algorithm == "sha256":
            # One chunk (a PATCH of the whole blob, then a PUT): its recorded hash decides, a copy installs it.
            chunk = self.chunks[0]
            head = await store._call(
                "head_object", f"reading {chunk.key}", missing=UploadNotFound(self.upload_id), Key=chunk.key
            )
            recorded = str(head.get("Metadata", {}).get("sha256", ""))
            if recorded:
                actual = f"sha256:{recorded}"
                if actual == expected and await store.stat(expected) is None:
                    await store._copy(chunk, key)
                return await self._finish(expected, actual)
        if not self.chunks:
            # The whole blob in this block (a monolithic upload): verified here, uploaded as it is.
            actual = await self.file_digest(algorithm)
            if actual == expected:
                await self._close()
                if await store.stat(expected) is None:
                    await store._upload_file(self.path, key, written)
            return await self._finish(expected, actual)
        return await self._finish(expected, await self._assemble(expected))

    async def _assemble(self, expected: str) -> str:
        """Stream the chunks and this block's bytes through a hash into the blob's object; the upload completes
        only when the digest matches (and is skipped when the blob is stored already). Returns the digest."""
        store = self.store
        hasher = hashlib.new(expected.partition(":")[0])
        sink = None
        if await store.stat(expected) is None:
            sink = _ObjectSink(store, store._blob_key(expected), part_size=_part_size(self._size))
        try:
            for chunk in self.chunks:
                async for piece in store._object_stream(chunk.key, f"reading upload {self.upload_id}"):
                    hasher.update(piece)
                    if sink is not None:
                        await sink.write(piece)
            if self._size > self.start:
                fh = await asyncio.to_thread(open, self.path, "rb")
                try:
                    while piece := await asyncio.to_thread(fh.read, READ_CHUNK):
                        hasher.update(piece)
                        if sink is not None:
                            await sink.write(piece)
                finally:
                    await asyncio.to_thread(fh.close)
            actual = f"{expected.partition(':')[0]}:{hasher.hexdigest()}"
            if sink is not None:
                if actual == expected:
                    await sink.finish()
                else:
                    await sink.abort()
            return actual
        except BaseException:
            if sink is not None:
                await sink.abort()
            raise

    async def _finish(self, expected: str, actual: str) -> int:
        """After the blob is installed (or the digest did not match): the session ends."""
        if actual != expected:
            await self.abort()
            raise DigestMismatch(expected, actual)
        self.committed = True
        await self._close()
        try:
            await self.store.delete_upload(self.upload_id)
        except StorageError as e:  # the blob is in place; the chunks left go with remove_leftovers
            log.warning("upload %s committed, but its chunks were not all removed: %s", self.upload_id, e)
        return self._size

    async def abort(self) -> None:
        self.aborted = True
        await self._close()
        await asyncio.to_thread(self.path.unlink, True)
        await self.store.delete_upload(self.upload_id)
