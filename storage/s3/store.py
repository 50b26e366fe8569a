"""The S3 blob store: reads, writes, upload sessions and deletes over one aiobotocore client (the layout is in
`storage.s3`)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from storage.blobs import BlobBody, BlobInfo, ByteStream, FileRange, RedirectURL
from storage.coordination import Locks
from storage.errors import (
    BlobCorrupt,
    BlobNotFound,
    StorageError,
    StorageFull,
    StorageUnavailable,
    UploadNotFound,
)
from storage.files import full_is_storage_full, read_range
from storage.scratch import (
    LEFTOVER_AGE,
    READ_CHUNK,
    SCRATCH_PREFIX,
    FileFollow,
    create_scratch,
    remove_stale,
    scratch_writer,
)
from storage.scratch import follow as follow_shared

if TYPE_CHECKING:
    from storage.factory import S3Options

from storage.s3.common import (
    _TRANSLATED,
    CHUNK_HASH_SUFFIX,
    COPY_LIMIT,
    COPY_PART,
    HEALTH_TIMEOUT,
    MARKER,
    REDIRECT_TTL,
    STALE_UPLOAD_AGE,
    _Chunk,
    _error_code,
    _part_size,
    _translate,
    log,
)
from storage.s3.local_cache import Fill, LocalCache
from storage.s3.writers import S3SessionWriter, S3Writer, _ObjectSink


class S3BlobStore:
    def __init__(
        self,
        bucket: str,
        prefix: str,
        options: S3Options,
        *,
        scratch: Path,
        locks: Locks,
        free_space_floor: Callable[[int], int] = lambda total: 0,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.options = options
        self.locks = locks  # an upload session is written by one replica at a time
        self._scratch = Path(scratch) / "uploads"
        self._scratch.mkdir(parents=True, exist_ok=True)
        # Clients are created on first use (Stores.open() does not open blob stores; a started server warms the
        # first up): one for the data, and one that does not retry, for health probes (a refused connection is
        # reported at once, not after backoffs).
        self._clients: dict[bool, Any] = {}
        self._client_stack = contextlib.AsyncExitStack()
        self._client_lock = asyncio.Lock()
        self.calls: collections.Counter[str] = collections.Counter()  # S3 operations made, by name
        remove_stale(self._scratch, LEFTOVER_AGE)
        # Verified copies of blobs read or written here, served with sendfile (`[storage.s3] local_cache`).
        self.local = LocalCache(Path(scratch) / "s3-cache", options.local_cache, free_space_floor)

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
        if not (redirect and self.options.redirect):
            copy = self.local.lookup(digest)
            if copy is not None:  # (no round trip to the bucket)
                path, size = copy
                available = max(size - offset, 0)
                return FileRange(path, offset, available if length is None else min(length, available))
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
        # The GET starts when the stream is first read (a HEAD request never reads it). (No local copy: looked.)
        return ByteStream(self._stream(digest, offset, length, local=False), length)

    def read(self, digest: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        return self._stream(digest, offset, length)

    async def _stream(
        self, digest: str, offset: int, length: int | None, *, local: bool = True
    ) -> AsyncIterator[bytes]:
        """The blob's bytes from `offset` (`length` of them, all when None): from the local copy when there is
        one (`local`: look for it), else from the bucket. A read of the whole blob from the bucket is verified
        against the digest, its last piece held back until it matches, and leaves a local copy behind."""
        if length == 0:
            return
        copy = self.local.lookup(digest) if local else None
        if copy is not None:
            try:
                fh = await asyncio.to_thread(open, copy[0], "rb")
            except FileNotFoundError:  # evicted meanwhile
                pass
            else:
                async for kept in read_range(fh, offset, length, READ_CHUNK):
                    yield kept
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
        fill = await self.local.fill(digest, expected) if whole else None
        received = 0
        held: bytes | None = None
        try:
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
                    if fill is not None:
                        fill = await _fill_with(fill, piece)
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
            if fill is not None:
                await fill.keep(expected)
        finally:
            if fill is not None and not fill.committed:
                await fill.abort()

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
    def writer(
        self, *, shared: str | None = None, size: int | None = None, expected: str | None = None
    ) -> AbstractAsyncContextManager[S3Writer]:
        """With `expected` (the digest the commit will name), the bytes go to the blob's key while they arrive."""
        return scratch_writer(
            self._scratch,
            shared,
            size,
            lambda path, fd: S3Writer(
                self, path, fd, hashlib.sha256(), 0, through=shared is not None, expected=expected, size=size
            ),
        )

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

    async def _chunk_sha256(self, chunk: _Chunk, upload_id: str) -> str:
        """A chunk's recorded SHA-256 (hex): its metadata (one PutObject), or the object beside it (a chunk sent
        in parts); "" when neither says (a chunk kept by an earlier version). Raises UploadNotFound."""
        head = await self._call("head_object", f"reading {chunk.key}", missing=UploadNotFound(upload_id), Key=chunk.key)
        recorded = str(head.get("Metadata", {}).get("sha256", ""))
        if recorded:
            return recorded
        beside = chunk.key + CHUNK_HASH_SUFFIX
        try:
            response = await self._call("get_object", f"reading {beside}", missing=BlobNotFound(beside), Key=beside)
            async with response["Body"] as body:
                text = (await body.read(256)).decode("ascii", "replace").strip()
        except BlobNotFound:
            return ""
        return text if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else ""

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
        self.local.forget(digest)
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

    async def warm_up(self) -> None:
        """Create the client and make a first request ahead of the first blob request, which would otherwise
        wait for them (botocore loads the service's model, a large part of a second on a busy machine, and
        resolves the endpoint on its first request: tens of milliseconds more)."""
        try:
            await self._s3()
        except StorageError as e:
            log.warning("%s: %s (the first request tries again)", self.where, e)
            return
        try:
            await self._call("head_bucket", f"warming up {self.where}")
        except StorageError as e:  # (a policy without s3:ListBucket: warm all the same)
            log.debug("warming up %s: %s", self.where, e)

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


async def _fill_with(fill: Fill, piece: bytes) -> Fill | None:
    """Write a piece to the local copy being filled; a copy that cannot be written is dropped (None), never the
    read."""
    try:
        await fill.write(piece)
    except (OSError, StorageError) as e:
        log.warning("local cache: dropping the copy of a blob being read: %s", e)
        await fill.abort()
        return None
    return fill
