"""A deadline on request bodies that stop arriving (`[server] body_timeout`, nginx's `client_body_timeout`).

A request head has `header_timeout` (registry/web/connections.py); a body may take as long as it needs (a push
of gigabytes over a slow link), but only while its bytes keep coming. A client that sends a head and then
stops, part way through its body or before its first byte, would otherwise hold its connection and its
handler for ever, and a few hundred of them would fill `max_connections` with requests in progress, which are
never evicted. `BodyWatch` looks at the body every quarter of the timeout: when the handler has been waiting
for bytes (a read is pending on the body's stream) and none arrived for `timeout`, the read raises
`BodyTimeout`, which is answered 408 in the protocol's shape and closes the connection (the rest of the body
is never read). What arrived before is the handler's, as with a client that hung up: an upload keeps the bytes
it received, and can be resumed.

Only waiting counts: a handler busy elsewhere (a full disk's retry, a slot for an object-storage part) is not
the client's delay, and a body the handler never reads is not timed at all.
"""

from __future__ import annotations

import asyncio

from aiohttp import StreamReader

from registry.errors import BodyTimeout

CHECKS_PER_TIMEOUT = 4


class BodyWatch:
    """Watches one request's body until `stop()`; see the module's docstring."""

    __slots__ = ("content", "handle", "loop", "seen", "since", "timeout")

    def __init__(self, content: StreamReader, timeout: float, loop: asyncio.AbstractEventLoop) -> None:
        self.content, self.timeout, self.loop = content, timeout, loop
        self.seen = content.total_bytes
        self.since = loop.time()  # since when no byte arrived while the handler waited for one
        self.handle: asyncio.TimerHandle | None = loop.call_later(timeout / CHECKS_PER_TIMEOUT, self._check)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def _check(self) -> None:
        self.handle = None
        content = self.content
        if content.is_eof() or content.exception() is not None:
            return  # all of it arrived, or the read failed already (the client hung up)
        now = self.loop.time()
        # (`_waiter`: the future a pending read of aiohttp's StreamReader waits on; None when nobody reads.)
        if content.total_bytes != self.seen or getattr(content, "_waiter", None) is None:
            self.seen, self.since = content.total_bytes, now
        elif now - self.since >= self.timeout:
            content.set_exception(
                BodyTimeout(f"no byte of the request body arrived for {self.timeout:g}s ([server] body_timeout)")
            )
            return
        self.handle = self.loop.call_later(self.timeout / CHECKS_PER_TIMEOUT, self._check)
