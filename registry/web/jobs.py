"""Background jobs: periodic ones (pull-time flushes, lifecycle sweeps, cache eviction, garbage collection) and
long-running ones (the replication queue's runner)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

log = logging.getLogger("moorage.jobs")


def every(
    name: str, interval: float, job: Callable[[], Awaitable[object]]
) -> Callable[[web.Application], contextlib.AbstractAsyncContextManager[None]]:
    """A cleanup_ctx entry that runs `job` every `interval` seconds while the app lives. One failure is
    logged and does not stop later runs; shutdown cancels the loop."""

    @contextlib.asynccontextmanager
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(interval)
                try:
                    await job()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("background job %s failed", name)

        task = asyncio.ensure_future(loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return ctx


def running(
    name: str, job: Callable[[], Awaitable[object]]
) -> Callable[[web.Application], contextlib.AbstractAsyncContextManager[None]]:
    """A cleanup_ctx entry that runs `job` (a loop that runs until cancelled) while the app lives; should it end
    by failing, it is logged and started again a second later."""

    @contextlib.asynccontextmanager
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                try:
                    await job()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("background job %s failed; starting it again", name)
                await asyncio.sleep(1.0)

        task = asyncio.ensure_future(loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return ctx
