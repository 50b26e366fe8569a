"""What the contract cases share: digests, reading a `BlobBody` of any kind, writing a blob, waiting."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import time
from collections.abc import AsyncIterator, Callable

import aiohttp

from storage.blobs import BlobBody, BlobStore, ByteStream, FileRange, RedirectURL
from storage.records import ManifestWrite

MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"


def digest(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def content(label: str, size: int = 64) -> bytes:
    """Distinct, reproducible bytes of `size` (distinct labels: distinct digests)."""
    seed = hashlib.sha256(label.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


async def body_bytes(body: BlobBody, offset: int = 0, length: int | None = None) -> bytes:
    """The bytes a `BlobBody` stands for, whatever its kind. A redirect names the whole blob: it is fetched as a
    client would, with a Range header for `length` bytes from `offset` when they are given (a `FileRange` or a
    `ByteStream` already is the range `open` was asked for)."""
    match body:
        case FileRange(file=path, offset=offset, length=length):

            def read() -> bytes:
                with open(path, "rb") as fh:
                    fh.seek(offset)
                    return fh.read(length)

            data = await asyncio.to_thread(read)
            assert len(data) == length, f"{body} names {length} bytes but the file has {len(data)} there"
            return data
        case ByteStream(chunks=chunks, length=length):
            data = await join(chunks)
            assert len(data) == length, f"a ByteStream announcing {length} bytes streamed {len(data)}"
            return data
        case RedirectURL(url=url):
            headers = {}
            if offset or length is not None:
                headers["Range"] = f"bytes={offset}-{'' if length is None else offset + length - 1}"
            async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
                assert response.status == (206 if headers else 200), f"GET {url} {headers}: {response.status}"
                return await response.read()
    raise AssertionError(f"open() returned {body!r}, which is not a BlobBody")


async def join(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


async def store_blob(blobs: BlobStore, data: bytes, algorithm: str = "sha256") -> str:
    """Write `data` as a blob through a fresh writer, and return its digest."""
    d = digest(data, algorithm)
    async with blobs.writer() as writer:
        await writer.write(data)
        assert await writer.commit(d) == len(data)
    return d


async def stored_digests(blobs: BlobStore) -> set[str]:
    return {d async for d, _ in blobs.iter_digests()}


async def eventually(predicate: Callable[[], object], what: str, within: float = 5.0, *, expect: bool = True) -> None:
    """Poll `predicate` (a backend may deliver news asynchronously, as LISTEN/NOTIFY does) until its answer (awaited,
    when it is a coroutine) is `expect`."""
    deadline = time.monotonic() + within
    while True:
        answer = predicate()
        if inspect.isawaitable(answer):
            answer = await answer
        if bool(answer) == expect:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {within:.0f}s for {what}")
        await asyncio.sleep(0.01)


def manifest(
    repository: str,
    label: str,
    *,
    pushed_at: float,
    blobs: tuple[str, ...] = (),
    tags: tuple[str, ...] = (),
    **extra: object,
) -> ManifestWrite:
    """A manifest write with a body (and digest) of its own per label; the blobs it lists are also its required
    blobs (they must be linked first) unless `required_blobs` says otherwise."""
    body = b'{"schemaVersion":2,"label":"%s"}' % label.encode()
    fields: dict[str, object] = {"media_type": MEDIA_TYPE, "required_blobs": blobs}
    fields.update(extra)
    return ManifestWrite(
        repository=repository,
        digest=digest(body),
        body=body,
        pushed_at=pushed_at,
        blobs=blobs,
        tags=tags,
        **fields,  # type: ignore[arg-type]
    )
