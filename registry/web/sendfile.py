"""A response that sends a byte range of a local file with sendfile(2), opening it off the event loop."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from registry.errors import BlobUnknown

READ_CHUNK = 1 << 20


class SendfileResponse(web.StreamResponse):
    def __init__(
        self, path: Path, offset: int, count: int, *, status: int = 200, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status=status, headers=headers)
        self._path = path
        self._offset = offset
        self._count = count
        self.content_length = count

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self._count == 0 or request.method == "HEAD":
            return await super().prepare(request)
        loop = asyncio.get_running_loop()
        try:
            fh = await loop.run_in_executor(None, open, self._path, "rb")
        except FileNotFoundError:  # removed by garbage collection in another process since the link check
            raise BlobUnknown("blob is no longer stored", detail={"path": self._path.name}) from None
        try:
            writer = await super().prepare(request)
            assert writer is not None
            transport = request.transport
            if transport is None:
                raise ConnectionResetError("connection lost")
            try:
                await loop.sendfile(transport, fh, self._offset, self._count)
            except NotImplementedError:  # an event loop or transport without sendfile support
                await self._copy(writer, fh)
            await super().write_eof()
            return writer
        finally:
            await loop.run_in_executor(None, fh.close)

    async def _copy(self, writer: AbstractStreamWriter, fh) -> None:
        loop = asyncio.get_running_loop()
        remaining = self._count
        await loop.run_in_executor(None, fh.seek, self._offset, os.SEEK_SET)
        while remaining > 0:
            chunk = await loop.run_in_executor(None, fh.read, min(READ_CHUNK, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            await writer.write(chunk)
        await writer.drain()
