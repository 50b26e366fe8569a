"""A response that sends a byte range of a local file with sendfile(2), on any event loop.

asyncio's `loop.sendfile` exists only on the standard loop; uvloop (faster for everything else) has none. So
on Linux this module calls `os.sendfile` itself, on the connection's socket, once aiohttp has sent the headers
and the transport's buffer is empty. When the socket is full it waits for it to become writable through one
private epoll instance per loop (`_Writable`), whose own descriptor the loop watches: a socket that belongs to
a transport cannot be given to `loop.add_writer`, but an epoll descriptor can, on either loop. Elsewhere (a
developer's Mac) it falls back to asyncio's sendfile, or to plain reads and writes under uvloop.

The bytes never enter Python, and the file is opened off the loop. The socket is corked (TCP_CORK, as nginx's
`tcp_nopush`) while the file streams, so the kernel sends full frames only. As with asyncio's own sendfile,
the system call itself runs on the loop thread (blob files are read from the page cache; a cold read is one
readahead at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
import weakref
from collections.abc import Callable
from pathlib import Path

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from registry.errors import BlobUnknown

MAX_CALL = 1 << 30  # bytes per sendfile call (the kernel caps one call near 2 GiB anyway)
READ_CHUNK = 1 << 20  # the portable fallback's reads


class _Writable:
    """Futures resolved when sockets become writable, through a private epoll watched by the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.epoll = select.epoll()
        self.waiters: dict[int, asyncio.Future[None]] = {}
        loop.add_reader(self.epoll.fileno(), self._ready)

    def wait(self, fd: int) -> asyncio.Future[None]:
        future = self.loop.create_future()
        self.waiters[fd] = future
        try:
            self.epoll.register(fd, select.EPOLLOUT | select.EPOLLONESHOT)
        except FileExistsError:
            self.epoll.modify(fd, select.EPOLLOUT | select.EPOLLONESHOT)
        return future

    def forget(self, fd: int) -> None:
        self.waiters.pop(fd, None)
        with contextlib.suppress(OSError):  # not registered, or the socket is gone
            self.epoll.unregister(fd)

    def _ready(self) -> None:
        for fd, _ in self.epoll.poll(0):
            future = self.waiters.pop(fd, None)
            if future is not None and not future.done():
                future.set_result(None)


_pollers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Writable] = weakref.WeakKeyDictionary()


def _poller(loop: asyncio.AbstractEventLoop) -> _Writable:
    poller = _pollers.get(loop)
    if poller is None:
        poller = _pollers[loop] = _Writable(loop)
    return poller


async def sendfile(
    transport: asyncio.Transport, fd: int, offset: int, count: int, progress: Callable[[int], None] | None = None
) -> None:
    """Send `count` bytes of file descriptor `fd` from `offset` on the transport's socket; `progress` hears
    of every piece sent."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        raise ConnectionResetError("connection lost")
    sock_fd = sock.fileno()
    loop = asyncio.get_running_loop()
    poller = _poller(loop)

    # A connection closed meanwhile takes its socket out of the epoll silently, so a watchdog looks every
    # second and fails the wait (one timer per transfer, not one per wait).
    timer: asyncio.TimerHandle

    def watchdog() -> None:
        nonlocal timer
        if transport.is_closing():
            waiter = poller.waiters.get(sock_fd)
            if waiter is not None and not waiter.done():
                waiter.set_exception(ConnectionResetError("connection lost"))
        timer = loop.call_later(1.0, watchdog)

    timer = loop.call_later(1.0, watchdog)

    _cork(sock, True)  # full frames only while the file streams (as nginx's tcp_nopush)
    try:
        while transport.get_write_buffer_size():  # the headers (or anything queued) go out first
            await poller.wait(sock_fd)
        end = offset + count
        while offset < end:
            if transport.is_closing():
                raise ConnectionResetError("connection lost")
            try:
                sent = os.sendfile(sock_fd, fd, offset, min(end - offset, MAX_CALL))
            except BlockingIOError:
                await poller.wait(sock_fd)
                continue
            except (BrokenPipeError, ConnectionResetError) as e:
                raise ConnectionResetError(f"client went away: {e}") from None
            if sent == 0:
                raise BlobUnknown("blob file ended early", detail={"missing": end - offset})
            offset += sent
            if progress is not None:
                progress(sent)
    finally:
        _cork(sock, False)  # and the last partial frame goes out now
        timer.cancel()
        poller.forget(sock_fd)


def _cork(sock: socket.socket, on: bool) -> None:
    if hasattr(socket, "TCP_CORK"):
        with contextlib.suppress(OSError):  # a connection already gone
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, int(on))


class SendfileResponse(web.StreamResponse):
    """Prepared by the access middleware (so the log and metrics time the transfer, and a blob removed by
    garbage collection since the lookup is answered as a clean 404 before any header goes out)."""

    def __init__(
        self, path: Path, offset: int, count: int, *, status: int = 200, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status=status, headers=headers)
        self._path = path
        self._offset = offset
        self._count = count
        self.content_length = count
        self.sent = 0  # body bytes handed to the kernel so far (for the access log)

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared or self._count == 0 or request.method == "HEAD":  # sent already (by the middleware)
            return await super().prepare(request)
        loop = asyncio.get_running_loop()
        try:
            fd = await loop.run_in_executor(None, os.open, self._path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # removed by garbage collection in another process since the link check
            raise BlobUnknown("blob is no longer stored", detail={"path": self._path.name}) from None
        try:
            writer = await super().prepare(request)  # sends the headers
            assert writer is not None
            transport = request.transport
            if transport is None:
                raise ConnectionResetError("connection lost")
            if hasattr(select, "epoll"):
                await sendfile(transport, fd, self._offset, self._count, self._sent)
            else:  # not Linux (a developer's Mac): asyncio's own sendfile, else plain reads and writes
                await self._portable(loop, transport, writer, fd)
            await super().write_eof()
            return writer
        finally:
            os.close(fd)

    def _sent(self, n: int) -> None:
        self.sent += n

    async def _portable(
        self, loop: asyncio.AbstractEventLoop, transport: asyncio.BaseTransport, writer: AbstractStreamWriter, fd: int
    ) -> None:
        with os.fdopen(os.dup(fd), "rb") as fh:
            try:
                await loop.sendfile(transport, fh, self._offset, self._count)  # type: ignore[arg-type]
                self.sent = self._count
                return
            except NotImplementedError:  # uvloop has no loop.sendfile
                pass
            remaining, offset = self._count, self._offset
            while remaining > 0:
                chunk = await loop.run_in_executor(None, os.pread, fd, min(READ_CHUNK, remaining), offset)
                if not chunk:
                    raise BlobUnknown("blob file ended early", detail={"missing": remaining})
                await writer.write(chunk)
                remaining -= len(chunk)
                offset += len(chunk)
                self.sent += len(chunk)
            await writer.drain()
