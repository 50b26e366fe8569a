"""Replication's client of a destination (`registry.replication.peer.PeerClient`) against small aiohttp
registries on loopback, over real sockets: an upload that takes longer than `[replication] timeout` while bytes
keep moving is not cut off (a large layer over a slow link), one that stops moving is; a destination that
trickles an error body, or answers its token request with a 200 that holds no token, ends the attempt within
the timeout with an UpstreamError rather than holding the copy (and its lease) or raising something else."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from registry.config.loading import from_dict
from registry.proxy.upstream import UpstreamError
from registry.replication.peer import PeerClient, open_peer_session

DIGEST = "sha256:" + "ab" * 32
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def serve(handler: Handler) -> tuple[web.AppRunner, str]:
    app = web.Application(client_max_size=1 << 40)
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def with_peer(handler: Handler, seconds: float, use: Callable[[PeerClient], Awaitable[Any]], **creds: str) -> Any:
    runner, url = await serve(handler)
    destination = from_dict(
        {
            "replication": {
                "destinations": [{"region": "eu-west-1", "registry_id": "111111111111", "endpoint": url, **creds}]
            }
        }
    ).replication.destinations[0]
    session, guard = open_peer_session()
    try:
        return await use(PeerClient(session, guard, destination, "000000000000", seconds))
    finally:
        await session.close()
        await guard.close()
        await runner.cleanup()


def uploads(put: Handler) -> Handler:
    """A destination whose upload sessions start at once and whose upload PUT is `put`."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            return web.Response(status=202, headers={"Location": "/v2/app/blobs/uploads/u1"})
        if request.method == "PUT" and "/blobs/uploads/" in request.path:
            return await put(request)
        return web.Response(status=404)

    return handler


async def read_all(request: web.Request) -> web.StreamResponse:
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
    return web.Response(status=201, headers={"Docker-Content-Digest": request.query["digest"], "X-Size": str(size)})


def test_an_upload_longer_than_the_timeout_is_not_cut_off_while_its_bytes_keep_moving():
    chunk, count = b"x" * 65536, 8

    def slow() -> AsyncIterator[bytes]:
        async def gen() -> AsyncIterator[bytes]:
            for _ in range(count):
                await asyncio.sleep(0.25)  # a source read (or a link) slower than the timeout over the whole blob
                yield chunk

        return gen()

    async def use(peer: PeerClient) -> float:
        started = time.monotonic()
        await peer.put_blob("app", DIGEST, len(chunk) * count, slow)
        return time.monotonic() - started

    took = asyncio.run(with_peer(uploads(read_all), 1.0, use))
    assert took > 1.5, took  # longer than the timeout, and done


def test_an_upload_the_destination_stops_reading_fails_within_the_timeout():
    async def never_read(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(60)
        return web.Response(status=201)

    def endless() -> AsyncIterator[bytes]:
        async def gen() -> AsyncIterator[bytes]:
            while True:
                yield b"y" * 65536

        return gen()

    async def use(peer: PeerClient) -> float:
        started = time.monotonic()
        with pytest.raises(UpstreamError) as e:
            await peer.put_blob("app", DIGEST, 1 << 40, endless)
        assert e.value.kind == "timeout", e.value.message
        return time.monotonic() - started

    took = asyncio.run(asyncio.wait_for(with_peer(uploads(never_read), 1.0, use), 30))
    assert took < 10, took


def test_a_trickled_error_body_ends_the_attempt_within_the_timeout():
    async def trickle(request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return web.Response(status=404)
        resp = web.StreamResponse(status=500, headers={"Content-Type": "application/json"})
        resp.content_length = 16384
        await resp.prepare(request)
        try:
            for _ in range(16384):
                await resp.write(b" ")
                await asyncio.sleep(0.2)  # a byte now and then: never idle for the read timeout
        except (ConnectionError, RuntimeError):
            pass
        return resp

    async def use(peer: PeerClient) -> float:
        started = time.monotonic()
        with pytest.raises(UpstreamError) as e:
            await peer.put_blob("app", DIGEST, 1, lambda: read_nothing())
        assert e.value.status == 500, e.value.message
        return time.monotonic() - started

    async def read_nothing() -> AsyncIterator[bytes]:
        yield b"z"

    took = asyncio.run(asyncio.wait_for(with_peer(trickle, 1.0, use), 30))
    assert took < 5, took


@pytest.mark.parametrize("answer", [{}, {"authorizationData": []}, {"authorizationData": [{"expiresAt": 1}]}])
def test_a_token_answer_without_a_token_is_an_upstream_error(answer: dict[str, Any]):
    async def ecr_like(request: web.Request) -> web.StreamResponse:
        if request.method == "POST" and request.path == "/":
            return web.json_response(answer, content_type="application/x-amz-json-1.1")
        return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="destination"'})

    async def use(peer: PeerClient) -> None:
        with pytest.raises(UpstreamError) as e:
            await peer.has_blob("app", DIGEST)
        assert "GetAuthorizationToken" in e.value.message, e.value.message

    asyncio.run(
        asyncio.wait_for(with_peer(ecr_like, 5.0, use, access_key_id="AKIAPEER", secret_access_key="peer-secret"), 30)
    )
