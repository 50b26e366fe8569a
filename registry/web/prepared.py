"""Answers whose head is kept as bytes: the fast lane's responses without aiohttp's per-response header work.

aiohttp builds every response's head afresh: a CIMultiDict of its fields, the keep-alive and length rules, the
Date and Server fields, the status line, then the serialization: a quarter of the instructions a manifest GET
cost (callgrind). The lane's answers for one manifest or small blob differ only in `Date` and `X-Request-Id`,
so the rest of the head is rendered once per answer (`Heads`), and each response is written as head, those two
fields and the body, in one write through the request's own writer (which checks the transport and waits
while a client is not reading, as aiohttp's responses do).

Used only where aiohttp would send exactly these bytes: HTTP/1.1 with keep-alive (no `Connection` field then),
and header values it would accept (no control characters). Anything else gets an aiohttp `Response`.
tests/test_fastlane.py compares the bytes both paths send.
"""

from __future__ import annotations

import re
import time
from email.utils import formatdate

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11

HEADS = 4096  # answers whose head is kept
_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # what aiohttp refuses in a header field's name or value
_SERVER = f"Server: {SERVER_SOFTWARE}\r\n".encode()
_date: tuple[int, bytes] = (-1, b"")


def _date_field() -> bytes:
    """`Date: <IMF-fixdate>\\r\\n`, formatted once a second."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, f"Date: {formatdate(now, usegmt=True)}\r\n".encode())
    return _date[1]


def render_head(fields: dict[str, str], length: int) -> bytes | None:
    """`HTTP/1.1 200 OK` and `fields`, `Content-Length` and `Server`, without the end of the head (Date and
    X-Request-Id follow); None when a field has characters aiohttp would refuse."""
    lines = ["HTTP/1.1 200 OK\r\n"]
    for name, value in fields.items():
        if _FORBIDDEN.search(name) or _FORBIDDEN.search(value):
            return None
        lines.append(f"{name}: {value}\r\n")
    lines.append(f"Content-Length: {length}\r\n")
    return "".join(lines).encode() + _SERVER


class Heads:
    """Rendered heads by key (what the head says: a digest and media type); all dropped when HEADS are kept (a
    plain dict: no reordering per hit, and a dropped head costs one rendering)."""

    __slots__ = ("_heads", "get")

    def __init__(self) -> None:
        self._heads: dict[tuple[str, ...], bytes] = {}
        self.get = self._heads.get

    def render(self, key: tuple[str, ...], fields: dict[str, str], length: int) -> bytes | None:
        """The head of `fields` and `length`, kept under `key`; None when aiohttp would refuse a field."""
        head = render_head(fields, length)
        if head is not None:
            if len(self._heads) >= HEADS:
                self._heads.clear()
            self._heads[key] = head
        return head


def fits(request: web.BaseRequest) -> bool:
    """Whether aiohttp's answer to this request carries no `Connection` field and keeps the connection."""
    return request.version == HttpVersion11 and request.keep_alive


class PreparedResponse(web.StreamResponse):
    """A 200 whose bytes are ready: aiohttp's request handler calls `prepare` and `write_eof` and reads
    `keep_alive`, and nothing else of it. (StreamResponse's own state is deliberately not set up.)"""

    def __init__(self, data: bytes) -> None:  # (not the base's: none of its state is used)
        self.data = data  # the whole response: head and body

    @property
    def keep_alive(self) -> bool:
        return True

    async def prepare(self, request: web.BaseRequest) -> None:
        await request.writer.write_eof(self.data)

    async def write_eof(self, data: bytes = b"") -> None:
        return None


def respond(head: bytes, rid: str, body: bytes | None) -> PreparedResponse:
    """The response: `head`, Date, X-Request-Id (checked by middleware.request_id: letters, digits, `._-`), and
    `body` (None: a HEAD)."""
    start = b"".join((head, _date_field(), b"X-Request-Id: ", rid.encode(), b"\r\n\r\n"))
    return PreparedResponse(start if body is None else start + body)
