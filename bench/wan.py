"""A far-away upstream on loopback: a TCP relay that delays every byte by half a round trip each way.

A pull-through cache's upstream is across the internet (Docker Hub, ghcr.io, a registry in another region:
tens of milliseconds away), while the benchmark's upstream is a Distribution on this machine, under a
millisecond away. This relay sits between the caches and that upstream and adds what the distance costs: a
connection takes one round trip to open, and each piece of data arrives half a round trip after it was sent,
in order, in both directions (bandwidth is not limited). Only loopback is ever relayed.

    python -m bench.wan --listen PORT --to 127.0.0.1:PORT --rtt-ms 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
import time
from pathlib import Path

from bench.servers import BenchError, ProcessServer, Server, free_port

READ = 1 << 18
RTT_MS = 20.0  # the benchmark's far upstream: a registry in a nearby region (Docker Hub from CI: 10-100 ms)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy reader to writer, each piece written `delay` seconds after it was read (order kept)."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(deliver())
    try:
        while data := await reader.read(READ):
            queue.put_nowait((time.monotonic() + delay, data))
        queue.put_nowait((time.monotonic() + delay, b""))
        await sender
    finally:
        sender.cancel()


async def _relay(
    client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter, host: str, port: int, rtt: float
) -> None:
    try:
        await asyncio.sleep(rtt)  # the handshake across the distance
        up_reader, up_writer = await asyncio.open_connection(host, port)
    except OSError:
        client_writer.close()
        return
    try:
        await asyncio.gather(
            _pump(client_reader, up_writer, rtt / 2), _pump(up_reader, client_writer, rtt / 2), return_exceptions=True
        )
    finally:
        for w in (up_writer, client_writer):
            with contextlib.suppress(OSError):
                w.close()


async def serve(listen: int, host: str, port: int, rtt: float) -> None:
    if not host.startswith("127."):
        raise SystemExit("bench.wan relays to loopback only")
    server = await asyncio.start_server(
        lambda r, w: _relay(r, w, host, port, rtt), "127.0.0.1", listen, reuse_address=True
    )
    async with server:
        await server.serve_forever()


class WanLink(ProcessServer):
    """The relay as a benchmark server: `url` reaches `target` (a server on loopback) `rtt_ms` away."""

    def __init__(self, label: str, root: Path, target: Server, rtt_ms: float) -> None:
        self.label = label
        self.target = target
        self.rtt_ms = rtt_ms
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = root / "wan.log"

    def start(self) -> WanLink:
        host, _, port = self.target.host.rpartition(":")
        args = ["--listen", str(self.port), "--to", f"{host}:{port}", "--rtt-ms", str(self.rtt_ms)]
        proc = self._spawn([sys.executable, "-m", "bench.wan", *args])
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                raise BenchError(f"bench.wan exited: {self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise BenchError("bench.wan did not listen in 15 s")
            time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--to", required=True, help="HOST:PORT on loopback")
    parser.add_argument("--rtt-ms", type=float, required=True)
    args = parser.parse_args()
    host, _, port = args.to.rpartition(":")
    asyncio.run(serve(args.listen, host, int(port), args.rtt_ms / 1000))


if __name__ == "__main__":
    main()
