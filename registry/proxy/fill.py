"""The single-flight fill of a pull-through blob: one upstream download per digest, streamed to every client.

The process that takes a digest's lock (`storage.coordination.Locks`) downloads (`Download`): it writes the
upstream's body through a shared blob writer (`storage.blobs.BlobIngester.writer(shared=...)`), bounded by the
size the cached manifests declare and by `[pull_through] blob_download_timeout`, and commits it against the
digest. Every other process follows it (`Follower`) through `follow(key)`, and learns that it finished when
this upstream's link is recorded (or that it failed when the lock is free and no link is there). Readers in
any process get the bytes as they arrive; the last byte is held back until the digest is verified, so no
client ever receives a complete body for bytes that turn out wrong. A client that goes away does not cancel
the download; a failed or truncated one leaves no blob, no link and no scratch file.

Shared writes are keyed by digest and upstream, so a process only ever follows bytes from its own upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

from registry import oci
from registry.errors import RegistryError
from registry.proxy import rules
from registry.proxy.upstream import UpstreamError
from registry.service.images import ImageService
from storage.blobs import BlobWriter, SharedWrite
from storage.errors import DigestMismatch, StorageFull
from storage.metadata import MetadataStore
from storage.records import PullThroughRule

if TYPE_CHECKING:
    from registry.proxy.pullthrough import PullThrough

log = logging.getLogger("moorage.pullthrough")
CHUNK = 256 * 1024
FOLLOW_POLL = 0.01  # seconds between looks at another process's download
READ_PIECE = 1 << 20


def origin(rule: PullThroughRule) -> str:
    """Who vouches for a pull-through blob: the upstream's URL and the credential used there."""
    return f"{rules.base_url(rule)}#{rule.credential_arn or ''}"


def shared_key(digest: str, upstream: str) -> str:
    """The shared write of `digest` from `upstream` (origin)."""
    return f"pull {digest} {hashlib.blake2b(upstream.encode(), digest_size=8).hexdigest()}"


class FollowFailed(Exception):
    """The process whose download this one followed stopped before sending any bytes."""


@dataclass(eq=False)
class Spool:
    """A blob arriving through a shared write that any number of readers follow while it grows."""

    owner: PullThrough
    rule: PullThroughRule
    digest: str
    lock: str
    repositories: set[str] = field(default_factory=set)
    size: int | None = None
    written: int = 0
    done: bool = False
    error: BaseException | None = None
    started: asyncio.Future[None] = field(init=False)
    _changed: asyncio.Condition = field(init=False, default_factory=asyncio.Condition)
    _task: asyncio.Task[None] | None = field(init=False, default=None)
    _view: SharedWrite | None = field(init=False, default=None)
    _readers: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.started = asyncio.get_running_loop().create_future()
        self.started.add_done_callback(consume)

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def origin(self) -> str:
        return origin(self.rule)

    @property
    def key(self) -> str:
        return shared_key(self.digest, self.origin)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def wait(self) -> None:
        """Until the download ends, however it ends (leaving doesn't cancel it)."""
        if self._task is not None:
            await asyncio.wait({self._task})

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        raise NotImplementedError

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _fail(self, e: BaseException) -> None:
        self.error = e
        if not self.started.done():
            self.started.set_exception(e)

    async def _maybe_close(self) -> None:
        if self._view is not None and self._readers == 0 and (self.done or self.error is not None):
            view, self._view = self._view, None
            await view.close()

    def _ready(self, offset: int) -> bool:
        if self.done or self.failed:
            return True
        return self._view is not None and self.written - 1 > offset

    async def reader(self) -> AsyncIterator[bytes]:
        """The blob's bytes as they arrive; raises if the download fails part way."""
        self._readers += 1
        offset = 0
        try:
            while True:
                async with self._changed:
                    await self._changed.wait_for(functools.partial(self._ready, offset))
                if self._view is None and self.done:  # the shared write is over: read the installed blob
                    async for data in self.owner.blobs.read(self.digest, offset):
                        yield data
                    return
                # The last byte is held back until the download is verified.
                readable = self.written if self.done else self.written - 1
                if readable > offset and self._view is not None:
                    data = await self._view.read(offset, min(READ_PIECE, readable - offset))
                    if not data:
                        raise ConnectionAbortedError(f"the spool of {self.digest} ended at {offset} bytes")
                    offset += len(data)
                    yield data
                    continue
                if self.error is not None:
                    raise ConnectionAbortedError(f"upstream download of {self.digest} failed: {self.error}")
                if self.done:
                    return
        finally:
            self._readers -= 1
            await self._maybe_close()

    async def _link_all(self) -> None:
        images = self.owner.images
        for repository in self.repositories:
            with contextlib.suppress(Exception):  # a repository deleted meanwhile
                await images.link_blob(repository, self.digest, self.written, upstream=self.origin)


@dataclass(eq=False)
class Download(Spool):
    """This process's upstream fetch of one blob (it holds the digest's lock until the end).

    It is bounded: it never takes more bytes than the cached manifests declare for the blob (nor than the
    upstream's Content-Length, which must agree), and it ends after `[pull_through] blob_download_timeout`
    however the upstream trickles. A download that fails leaves no blob, no link and no scratch file."""

    upstream_repository: str = ""

    async def _run(self) -> None:
        owner = self.owner
        loop = asyncio.get_running_loop()
        deadline = owner.config.blob_download_timeout
        ends_at = loop.time() + deadline
        try:
            try:
                async with asyncio.timeout_at(ends_at):
                    resp = await self._request()
                try:
                    async with owner.blobs.writer(shared=self.key, size=self.size, expected=self.digest) as writer:
                        self._view = await owner.blobs.follow(self.key)
                        self.started.set_result(None)
                        async with asyncio.timeout_at(ends_at):
                            await self._receive(resp, writer)
                        await self._commit(writer)
                finally:
                    resp.release()  # a body not read to its end closes the connection
            except TimeoutError:
                raise UpstreamError(
                    rules.base_url(self.rule),
                    "unavailable",
                    f"blob {self.digest} was not downloaded within [pull_through] blob_download_timeout "
                    f"({deadline:g}s): {self.written} bytes had arrived",
                ) from None
            await self._link_all()
            self.done = True
            await self._notify()  # the last byte goes out now (letting go of the lock is for other processes)
        except BaseException as e:
            self._fail(e)
            if isinstance(e, StorageFull):  # the client is answered 507; the log says why, without a traceback
                log.error("pull-through download of %s failed: %s", self.digest, e)
            elif not isinstance(e, asyncio.CancelledError | UpstreamError):
                log.exception("pull-through download of %s failed", self.digest)
            elif isinstance(e, UpstreamError):
                owner.rule_metrics(self.rule).failed(e, owner.clock())
                log.warning("pull-through download of %s failed: %s", self.digest, e)
        finally:
            await owner.locks.release(self.lock)
            owner.download_finished(self)
            await self._notify()
            await self._maybe_close()

    async def _request(self) -> Any:
        """The upstream's response to the blob GET, with its size checked against the declared one."""
        upstream = rules.base_url(self.rule)
        lookup = asyncio.ensure_future(self._declared_size())  # while the request goes out
        lookup.add_done_callback(consume)
        try:
            resp = await self.owner.client(self.rule).blob(self.upstream_repository, self.digest)
            declared = await lookup
        finally:
            if not lookup.done():
                lookup.cancel()
        length = resp.content_length
        if declared is not None and length is not None and length != declared:
            resp.release()
            raise UpstreamError(
                upstream,
                "invalid",
                f"answered blob {self.digest} with {length} bytes, but the manifest declares {declared}",
            )
        if declared is None and length is None:
            resp.release()
            raise UpstreamError(
                upstream, "invalid", f"sent blob {self.digest} without a length, and no cached manifest declares it"
            )
        self.size = declared if declared is not None else length
        return resp

    async def _receive(self, resp: Any, writer: BlobWriter) -> None:
        """Stream the upstream's body into the writer, no further than the blob's size."""
        upstream = rules.base_url(self.rule)
        metrics = self.owner.rule_metrics(self.rule)
        try:
            async for chunk in resp.content.iter_chunked(CHUNK):
                if self.size is not None and self.written + len(chunk) > self.size:
                    raise UpstreamError(
                        upstream, "invalid", f"sent more than the {self.size} bytes of blob {self.digest}"
                    )
                await writer.write(chunk)
                self.written += len(chunk)
                metrics.upstream_bytes += len(chunk)
                await self._notify()
        except (aiohttp.ClientError, TimeoutError) as e:
            raise UpstreamError(upstream, "unavailable", f"blob download failed: {e}") from None

    async def _commit(self, writer: BlobWriter) -> None:
        upstream = rules.base_url(self.rule)
        if self.size is not None and self.written != self.size:
            raise UpstreamError(
                upstream, "unavailable", f"blob {self.digest} was cut short: {self.written} of {self.size} bytes"
            )
        try:
            await writer.commit(self.digest)
        except DigestMismatch as e:
            raise UpstreamError(
                upstream, "unavailable", f"sent content with digest {e.actual} for blob {self.digest}"
            ) from None

    async def _declared_size(self) -> int | None:
        """The size a cached manifest that lists this blob declares for it (None when none is found: then only
        the upstream's Content-Length and the deadline bound the download)."""
        for repository in list(self.repositories):
            if (size := await self.owner.declared.size(repository, self.digest)) is not None:
                return size
        return None


@dataclass(eq=False)
class Follower(Spool):
    """Another process's download of a blob, followed through its shared write."""

    async def _run(self) -> None:
        owner = self.owner
        try:
            while self._view is None:  # wait for the leader's shared write (or its end)
                self._view = await owner.blobs.follow(self.key)
                if self._view is not None:
                    break
                # The leader may be fetching the digest from another upstream: then there is none.
                if not await owner.locks.held_elsewhere(self.lock):
                    if (stored := await owner.proven_size(self.digest, self.origin)) is None:
                        raise FollowFailed(f"the download of {self.digest} in another process stopped")
                    self.size = self.written = stored
                    self.done = True
                    self.started.set_result(None)
                    await self._link_all()
                    return
                await asyncio.sleep(FOLLOW_POLL)
            self.size = self._view.declared_size
            self.started.set_result(None)
            while True:
                written = await self._view.available()
                if written != self.written:
                    self.written = written
                    await self._notify()
                # Done when the leader let go of the digest and its upstream's link is recorded (the leader
                # links before it lets go); bytes that appear while it still holds the lock prove nothing.
                if not await owner.locks.held_elsewhere(self.lock):
                    if (stored := await owner.proven_size(self.digest, self.origin)) is None:
                        raise UpstreamError(
                            rules.base_url(self.rule),
                            "unavailable",
                            f"the download of {self.digest} in another process failed",
                        )
                    self.written = stored
                    self.done = True
                    await self._link_all()
                    return
                await asyncio.sleep(FOLLOW_POLL)
        except BaseException as e:
            self._fail(e)
            if not isinstance(e, asyncio.CancelledError | UpstreamError | FollowFailed):
                log.exception("following the download of %s failed", self.digest)
        finally:
            owner.download_finished(self)
            await self._notify()
            await self._maybe_close()


class DeclaredSizes:
    """The blob sizes the cached manifests of each repository declare, read incrementally: a lookup reads only
    the manifests stored since the previous one (images are listed in push order), so the size of a layer of
    the manifest just pulled is found without re-reading the whole repository. Bounded: past MAX_ENTRIES
    sizes, everything is forgotten and read again when asked for."""

    MAX_ENTRIES = 200_000

    def __init__(self, images: ImageService, meta: MetadataStore) -> None:
        self.images = images
        self.meta = meta
        self._sizes: dict[str, dict[str, int]] = {}  # repository -> blob digest -> declared size
        self._read_to: dict[str, int] = {}  # repository -> id of the last image read
        self._entries = 0

    async def size(self, repository: str, digest: str) -> int | None:
        sizes = self._sizes.setdefault(repository, {})
        if digest in sizes:
            return sizes[digest]
        read_to = self._read_to.get(repository, 0)
        found = await self._read(repository, digest, sizes, read_to)
        if found is None and read_to > 0:
            # Image ids can be reused after deletions: read the whole repository again before giving up.
            self._entries -= len(sizes)
            sizes.clear()
            found = await self._read(repository, digest, sizes, 0)
        if self._entries > self.MAX_ENTRIES:
            self._sizes.clear()
            self._read_to.clear()
            self._entries = 0
        return found

    async def _read(self, repository: str, digest: str, sizes: dict[str, int], read_to: int) -> int | None:
        """Note the sizes the repository's manifests after image `read_to` declare; the one of `digest`."""
        async for image in self.images.iter_images(repository, read_to):
            read_to = image.id
            if image.media_type in oci.INDEX_TYPES:
                continue
            record = await self.meta.get_manifest(repository, image.digest)
            try:
                parsed = oci.parse_manifest(record.body, record.media_type) if record is not None else None
            except (RegistryError, ValueError):
                parsed = None
            for d in (parsed.config, *parsed.layers) if parsed is not None else ():
                if d is not None and d.digest not in sizes:
                    sizes[d.digest] = d.size
                    self._entries += 1
        self._read_to[repository] = read_to
        return sizes.get(digest)


def consume(task: asyncio.Future[Any]) -> None:
    """Mark a background result as seen, so a failure nobody awaited doesn't warn at exit."""
    if not task.cancelled():
        task.exception()
