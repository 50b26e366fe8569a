"""Connection hygiene: a deadline for request heads, an idle keep-alive timeout, and a cap on open connections.

aiohttp closes a keep-alive connection that stays idle for `keepalive_timeout` (its default is an hour), but it
has no header-read timeout and no connection limit, so a client that trickles a request head one byte at a
time (slowloris), or simply opens thousands of connections and sends nothing, keeps them all. Here:

- **Heads** (`header_timeout`): a new connection must deliver its first request head within `header_timeout`
  of being accepted, and a later request's head within `header_timeout` of its first byte. Past that the
  connection is closed, with a `408 Request Timeout` when part of a head had arrived. Bodies have
  a deadline of their own, on the wait for their next bytes (`body_timeout`, registry/web/bodies.py).
- **Idle keep-alive** (`keepalive_timeout`): aiohttp's own timer, closing a connection that waits that long for
  its next request.
- **Cap** (`max_connections`, per process): a connection accepted over the cap makes room by closing the
  connection that has waited longest for a request (idle keep-alive, slow heads: whatever serves nobody right
  now); a request in progress is never cut. Only when every connection is busy with a request is the new one
  answered `503` at once and closed. So an attacker holding idle or slow connections cannot keep `/healthz` or
  real clients out: each new connection evicts one of theirs, and the timeouts above cut the rest.

The hooks below use two attributes of aiohttp's `RequestHandler` that are not public API: `_waiter` (set while
the connection waits for a request head) and `_request_count` (heads parsed so far). The tests in
`tests/test_security_connections.py` exercise each behaviour over real sockets.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("moorage.http")

_TIMEOUT_408 = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_BUSY_BODY = b"too many connections; retry shortly\n"
_BUSY_503 = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 1\r\nConnection: close\r\n"
    b"Content-Length: " + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY
)
EVICTION_CANDIDATES = 32  # idle connections compared to choose which one to close over the cap
_REFUSAL_LOG_INTERVAL = 10.0  # seconds between warnings while new connections are being refused


@dataclass(frozen=True, slots=True)
class Limits:
    header_timeout: float
    keepalive_timeout: float
    max_connections: int  # 0: no cap


class _Connection(RequestHandler):
    """aiohttp's HTTP/1 protocol, with a deadline on request heads."""

    __slots__ = ("_head_partial", "_head_timer")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_partial = False
        super().connection_made(transport)  # registers with the server, which may refuse it (see _Server)
        if self.transport is not None:
            self._arm_head_timer()  # the first request's head

    def data_received(self, data: bytes) -> None:
        waiting = self._waiting_for_head()
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:  # a head arrived: no deadline until the next one starts
            self._head_partial = False
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
        elif data and waiting:
            self._head_partial = True
            if self._head_timer is None:  # the first bytes of a keep-alive connection's next head
                self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if isinstance(self._manager, _Server):  # None once lost: aiohttp calls this once per connection
            self._manager.open_connections -= 1
        super().connection_lost(exc)

    def _waiting_for_head(self) -> bool:
        """Idle: before its first request head, or between requests; nothing would be cut by closing it now."""
        if self._request_count == 0:  # no head yet (its handler task may not even have started)
            return True
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def _arm_head_timer(self) -> None:
        server = self._manager
        if isinstance(server, _Server):
            self._head_timer = self._loop.call_later(server.limits.header_timeout, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport is None or not self._waiting_for_head():
            return  # a request is being handled: bodies have no deadline here
        log.debug("closing a connection whose request head did not arrive in time")
        if self._head_partial:
            self.transport.write(_TIMEOUT_408)
        self.force_close()

    def idle_since(self) -> float:
        """When the connection began waiting for its current head (aiohttp's keep-alive deadline, less the
        timeout); -inf if unknown, so such a connection goes first."""
        deadline = getattr(self, "_next_keepalive_close_time", None)
        return deadline - self._keepalive_timeout if deadline else float("-inf")


class _Server(web.Server):
    """aiohttp's connection factory, making `_Connection`s and keeping at most `limits.max_connections`."""

    limits: Limits
    # Connections not yet lost. (aiohttp's own list keeps a closed connection until its handler task ends, which
    # would count a client that just hung up against the cap.)
    open_connections: int
    _refused_logged_at: float

    @classmethod
    def adopt(cls, server: web.Server, limits: Limits) -> _Server:
        # AppRunner builds a plain web.Server through private Application methods; rather than duplicate them,
        # the server it built becomes one of ours (same fields, a few more methods).
        server.__class__ = cls
        assert isinstance(server, _Server)
        server.limits = limits
        server.open_connections = 0
        server._refused_logged_at = -_REFUSAL_LOG_INTERVAL
        return server

    def __call__(self) -> RequestHandler:
        return _Connection(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self.open_connections += 1
        cap = self.limits.max_connections
        if cap and self.open_connections > cap:
            self._make_room(handler, transport)

    def close_idle(self) -> int:
        """Close every connection that serves nobody right now (waiting for a request head), as shutdown
        begins; how many. Busy ones are left to finish their request (closing them now would drop the rest
        of a body still arriving: aiohttp ignores data on a connection it was asked to close)."""
        idle = [c for c in self._connections if isinstance(c, _Connection) and c.transport and c._waiting_for_head()]
        for conn in idle:
            conn.force_close()
        return len(idle)

    def _make_room(self, new: RequestHandler, transport: asyncio.Transport) -> None:
        """Over the cap: close a connection that serves nobody right now, or, when every one is busy, refuse `new`.
        The victim is the one idle longest among the first EVICTION_CANDIDATES idle connections in order of
        arrival (oldest first): connections held open longest are the ones to suspect, and the scan stays short
        however many connections are open."""
        victim: _Connection | None = None
        oldest = float("inf")
        candidates = 0
        for conn in self._connections:
            if conn is new or not isinstance(conn, _Connection) or conn.transport is None:
                continue
            if conn._waiting_for_head():
                since = conn.idle_since()
                if since < oldest:
                    victim, oldest = conn, since
                candidates += 1
                if candidates == EVICTION_CANDIDATES:
                    break
        if victim is not None:
            log.debug("connection limit %d reached: closing the connection idle longest", self.limits.max_connections)
            victim.force_close()
            return
        now = time.monotonic()
        if now - self._refused_logged_at >= _REFUSAL_LOG_INTERVAL:
            self._refused_logged_at = now
            log.warning(
                "connection limit %d reached with every connection busy: refusing new connections with 503",
                self.limits.max_connections,
            )
        transport.write(_BUSY_503)
        new.force_close()


class Runner(web.AppRunner):
    """`web.AppRunner` whose server applies `Limits`."""

    __slots__ = ("_limits",)

    def __init__(self, app: web.Application, limits: Limits, **kwargs: Any) -> None:
        super().__init__(app, keepalive_timeout=limits.keepalive_timeout, **kwargs)
        self._limits = limits

    async def _make_server(self) -> web.Server:
        return _Server.adopt(await super()._make_server(), self._limits)

    def close_idle(self) -> int:
        """Shutdown: close the connections that wait for a request (see `_Server.close_idle`); how many."""
        return self.server.close_idle() if isinstance(self.server, _Server) else 0
