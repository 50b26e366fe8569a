"""bench/wan.py's relay, which puts the benchmark's upstream a round trip away: bytes arrive intact and in
order both ways, and no sooner than the distance allows (a lower bound only: a loaded machine is only slower)."""

from __future__ import annotations

import asyncio
import hashlib
import time

import pytest

from bench.wan import serve
from tests.server import free_port


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


def test_the_relay_delivers_every_byte_in_order_a_round_trip_later():
    rtt = 0.05

    async def case() -> None:
        echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
        target = echo.sockets[0].getsockname()[1]
        listen = free_port()
        relay = asyncio.create_task(serve(listen, "127.0.0.1", target, rtt))
        try:
            for _ in range(100):  # bounded: the relay listens within a second
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", listen)
                    break
                except OSError:
                    await asyncio.sleep(0.01)
            else:
                pytest.fail("the relay never listened")
            payload = hashlib.sha512(b"relay").digest() * 40_000  # 2.5 MB
            start = time.monotonic()
            writer.write(payload)
            writer.write_eof()
            echoed = await reader.readexactly(len(payload))
            elapsed = time.monotonic() - start
            assert echoed == payload
            # the connection's own round trip, then half of one each way
            assert elapsed >= 2 * rtt * 0.95, elapsed
            assert await reader.read() == b""
            writer.close()
        finally:
            relay.cancel()
            echo.close()

    asyncio.run(asyncio.wait_for(case(), 30))


def test_the_relay_refuses_anything_but_loopback():
    with pytest.raises(SystemExit):
        asyncio.run(serve(free_port(), "10.0.0.1", 80, 0.01))
