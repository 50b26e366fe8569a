"""A write whose caller is cancelled (a request whose client went away, a backfill's preparation that is
stopped) at any point leaves the store whole and writable, on every backend: the write happened whole or not
at all, and the next one works. (On SQLite a cancelled BEGIN once left the writer inside a transaction, and
every later write failed with "cannot start a transaction within a transaction".)"""

from __future__ import annotations

import asyncio
import contextlib

from storage.metadata import MetadataStore


async def test_a_write_cancelled_at_any_point_leaves_the_store_writable(meta: MetadataStore):
    for ticks in range(16):
        task = asyncio.ensure_future(meta.put_value(f"cancelled/{ticks}", b"x"))
        for _ in range(ticks):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert await meta.put_value(f"after/{ticks}", b"y") == b"y", f"a write after a cancel at tick {ticks}"
        assert await meta.get_value(f"cancelled/{ticks}") in (None, b"x")
    assert len(await meta.values("after/")) == 16
