"""registry/web/sendfile.py over real loopback sockets, on both event loops: the epoll-driven os.sendfile path
(Linux) and the portable fallback (what a Mac runs: asyncio's loop.sendfile, or reads and writes on uvloop)."""

from __future__ import annotations

import asyncio
import os
import select
from pathlib import Path

import aiohttp
import pytest
import uvloop
from aiohttp import web

from registry.web import sendfile as sendfile_module
from registry.web.sendfile import SendfileResponse

SIZE = 24 * 1024 * 1024 + 123


async def _fetch_ranges(path: Path, ranges: list[tuple[int, int]]) -> list[bytes]:
    async def handler(request: web.Request) -> web.StreamResponse:
        offset, count = int(request.query["offset"]), int(request.query["count"])
        resp = SendfileResponse(path, offset, count)
        await resp.prepare(request)
        assert resp.sent == count
        return resp

    app = web.Application()
    app.router.add_get("/blob", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session:  # one keep-alive connection for all of them
            out = []
            for offset, count in ranges:
                async with session.get(f"http://127.0.0.1:{port}/blob?offset={offset}&count={count}") as r:
                    assert r.status == 200 and r.content_length == count
                    out.append(await r.read())
            return out
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("path_kind", ["epoll", "portable"])
def test_sendfile_sends_exact_ranges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loop: str, path_kind: str):
    data = os.urandom(SIZE)
    path = tmp_path / "blob"
    path.write_bytes(data)
    if path_kind == "portable":
        monkeypatch.delattr(select, "epoll")
    ran: list[str] = []  # which way each response went, recorded by wrappers around the three ways
    real_sendfile, real_portable, real_pread = sendfile_module.sendfile, SendfileResponse._portable, os.pread

    async def epoll_path(*args, **kw):
        ran.append("epoll")
        return await real_sendfile(*args, **kw)

    async def portable_path(self, *args, **kw):
        ran.append("portable")
        return await real_portable(self, *args, **kw)

    def pread(*args):
        ran.append("pread")
        return real_pread(*args)

    monkeypatch.setattr(sendfile_module, "sendfile", epoll_path)
    monkeypatch.setattr(SendfileResponse, "_portable", portable_path)
    monkeypatch.setattr(os, "pread", pread)
    ranges = [(0, SIZE), (1, 10), (SIZE - 5, 5), (1 << 20, 7 << 20)]
    run = uvloop.run if loop == "uvloop" else asyncio.run
    got = run(_fetch_ranges(path, ranges))
    assert got == [data[o : o + n] for o, n in ranges]
    # Linux: os.sendfile through the private epoll, on either loop. Elsewhere: asyncio's loop.sendfile (no
    # reads in Python), and under uvloop, which has none, reads and writes.
    assert [w for w in ran if w != "pread"] == [path_kind] * len(ranges), ran
    reads_in_python = path_kind == "portable" and loop == "uvloop"
    assert ("pread" in ran) is reads_in_python, ran
