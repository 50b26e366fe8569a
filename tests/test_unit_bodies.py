"""BodyWatch (registry/web/bodies.py) on aiohttp's own StreamReader, in process: only a handler's wait for body
bytes is timed. (Over real sockets: tests/test_security_connections.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import StreamReader
from aiohttp.base_protocol import BaseProtocol

from registry.errors import BodyTimeout
from registry.web.bodies import BodyWatch

TIMEOUT = 0.2


@contextlib.asynccontextmanager
async def _body() -> AsyncIterator[StreamReader]:
    """A request body's stream on a connected protocol (one end of a socket pair; the bytes are fed by hand)."""
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    transport, protocol = await loop.connect_accepted_socket(lambda: BaseProtocol(loop), ours)
    try:
        yield StreamReader(protocol, 2**16, loop=loop)
    finally:
        transport.close()
        theirs.close()


def test_a_stalled_read_times_out_and_a_handler_busy_elsewhere_does_not() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        async with _body() as content:
            watch = BodyWatch(content, TIMEOUT, loop)
            await asyncio.sleep(TIMEOUT * 3)  # nobody reads: the client is not being waited for
            assert content.exception() is None
            started = loop.time()
            with pytest.raises(BodyTimeout, match="body_timeout"):
                await content.readany()
            waited = loop.time() - started
            assert TIMEOUT * 0.5 <= waited <= TIMEOUT * 5, waited
            assert watch.handle is None  # it stops looking once it has cut

    asyncio.run(scenario())


def test_bytes_that_keep_coming_and_a_finished_body_are_never_cut() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        async with _body() as content:
            watch = BodyWatch(content, TIMEOUT, loop)

            async def trickle() -> None:
                for _ in range(8):  # 4 timeouts' worth, a byte every half timeout
                    await asyncio.sleep(TIMEOUT / 2)
                    content.feed_data(b"x")
                content.feed_eof()

            feeding = asyncio.ensure_future(trickle())
            received = b""
            while chunk := await content.readany():
                received += chunk
            await feeding
            assert received == b"x" * 8
            for _ in range(100):  # past the end of the body the watch lets go by itself, at its next look
                if watch.handle is None:
                    break
                await asyncio.sleep(TIMEOUT / 10)
            assert watch.handle is None and content.exception() is None
            watch.stop()

    asyncio.run(scenario())
