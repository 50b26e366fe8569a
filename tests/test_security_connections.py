"""Connection hygiene over real sockets: slow request heads are cut (`[server] header_timeout`), bodies that stop
arriving are answered 408 (`body_timeout`), idle keep-alive connections are closed (`keepalive_timeout`), and
`max_connections` keeps `/healthz` answered while many idle and slow connections are open. Timeouts are
configured short (1-2 s) and socket counts bounded (200)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import select
import socket
import time
from collections.abc import Iterator

import requests

from tests.helpers import wait_for
from tests.server import AUTH_OFF, MoorageServer

# Latency limits are stated against the configured timeouts: a cut comes no sooner than its timeout (less a
# poll's worth) and no later than SLACK after it; "at once" is AT_ONCE, far below the LONG timeouts, which
# only the connection cap could beat.
TIMEOUT = 1.0  # header_timeout or keepalive_timeout, where the test waits for one
LONG = 60.0  # timeouts that must not act during the test
SLACK = 2.0  # scheduling on a loaded two-core machine
AT_ONCE = 2.0


def _config(**server: object) -> str:
    body = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in server.items())
    return AUTH_OFF + "[server]\n" + body


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _connect(srv: MoorageServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", srv.port), timeout=5)


def _wait_closed(sock: socket.socket, seconds: float) -> tuple[bytes, float] | None:
    """Read until the server closes the connection: (what it sent, seconds it took); None if still open."""
    start = time.monotonic()
    got = b""
    while (left := start + seconds - time.monotonic()) > 0:
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            break
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return got, time.monotonic() - start
        got += chunk
    return None


def _is_closed(sock: socket.socket) -> bool:
    """Whether the server has closed `sock` (whatever it sent first, then EOF or a reset), without blocking."""
    while select.select([sock], [], [], 0)[0]:
        try:
            if not sock.recv(65536):
                return True
        except ConnectionResetError:
            return True
    return False


def _read_response(sock: socket.socket) -> bytes:
    """One HTTP/1.1 response with a Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


@contextlib.contextmanager
def _sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    try:
        yield opened
    finally:
        for s in opened:
            s.close()


def test_a_request_head_trickled_in_is_cut_after_header_timeout(make_server) -> None:
    srv = make_server(_config(header_timeout=_seconds(TIMEOUT), keepalive_timeout=_seconds(LONG)), workers=1)
    with _connect(srv) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        start = time.monotonic()
        # Slowloris: one header byte every 100 ms, never finishing, until the server answers. (Not a byte after
        # that: one arriving after the server closed would be answered with a reset, which can discard the
        # answer before it is read.)
        for byte in b"X-Slow: " + b"a" * 100:
            if select.select([s], [], [], 0.1)[0]:
                break
            s.sendall(bytes([byte]))
        else:
            raise AssertionError("the server kept a connection whose head never completed for 10 s")
        took = time.monotonic() - start
        closed = _wait_closed(s, 5)
        assert closed is not None, "the server answered but kept the connection open"
        sent, _ = closed
        assert TIMEOUT - 0.2 <= took <= TIMEOUT + SLACK, took
        assert sent.startswith(b"HTTP/1.1 408 Request Timeout\r\n") and b"Connection: close\r\n" in sent, sent


def test_a_connection_that_sends_nothing_is_closed_after_header_timeout(make_server) -> None:
    srv = make_server(_config(header_timeout=_seconds(TIMEOUT), keepalive_timeout=_seconds(LONG)), workers=1)
    with _connect(srv) as s:
        closed = _wait_closed(s, TIMEOUT + 2 * SLACK)
        assert closed is not None, f"an idle new connection was kept for {TIMEOUT + 2 * SLACK} s"
        sent, took = closed
        assert sent == b"" and TIMEOUT - 0.2 <= took <= TIMEOUT + SLACK, (sent, took)


def test_heads_in_time_and_slow_bodies_are_not_cut(make_server) -> None:
    """A head in pieces within the deadline is served, and an upload body trickled in for longer than
    header_timeout and body_timeout completes: a body is cut only when its bytes stop, not for being slow."""
    srv = make_server(
        _config(header_timeout=_seconds(TIMEOUT), body_timeout=_seconds(TIMEOUT), keepalive_timeout=_seconds(LONG)),
        workers=1,
    )
    with _connect(srv) as s:
        for piece in (b"GET /healthz HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"):
            s.sendall(piece)
            time.sleep(0.2)
        assert _read_response(s).startswith(b"HTTP/1.1 200")

    r = requests.post(f"{srv.url}/v2/slow/body/blobs/uploads/", timeout=5)
    assert r.status_code == 202, r.text
    location = r.headers["Location"]
    body = b"x" * 25
    with _connect(srv) as s:
        s.sendall(
            f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        for i in range(0, len(body), 5):  # 2.5 s of body, over twice header_timeout and body_timeout
            s.sendall(body[i : i + 5])
            time.sleep(0.5)
        s.settimeout(5)
        assert _read_response(s).startswith(b"HTTP/1.1 202")


def test_a_body_that_stops_arriving_is_answered_408_and_what_came_is_kept(make_server) -> None:
    """An upload chunk that stops part way (and one whose body never starts) is answered 408 in OCI's shape after
    body_timeout, and the connection is closed; the bytes that came are the upload's, which resumes and finishes
    with the right digest. An ECR API call whose body stalls gets ECR's error shape."""
    srv = make_server(
        _config(header_timeout=_seconds(LONG), body_timeout=_seconds(TIMEOUT), keepalive_timeout=_seconds(LONG)),
        workers=1,
    )
    blob = bytes(range(256)) * 4
    location = requests.post(f"{srv.url}/v2/stalled/body/blobs/uploads/", timeout=5).headers["Location"]
    for sent in (blob[:100], b""):
        with _connect(srv) as s:
            s.sendall(
                f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Length: {len(blob) - 100 if not sent else len(blob)}\r\n\r\n".encode()
                + sent
            )
            closed = _wait_closed(s, TIMEOUT * 1.25 + SLACK)
        assert closed is not None, "the stalled upload was neither answered nor closed"
        answer, seconds = closed
        assert seconds >= TIMEOUT - 0.3, f"cut after {seconds:.2f}s, before body_timeout"
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), answer
        assert json.loads(body)["errors"][0]["code"] == "REQUEST_TIMEOUT", body
        r = requests.get(srv.url + location, timeout=5)
        assert r.status_code == 204 and r.headers["Range"] == "0-99", (r.status_code, r.headers)
    r = requests.patch(
        srv.url + location,
        data=blob[100:],
        headers={"Content-Type": "application/octet-stream", "Content-Range": f"100-{len(blob) - 1}"},
        timeout=5,
    )
    assert r.status_code == 202, r.text
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    r = requests.put(f"{srv.url}{r.headers['Location']}", params={"digest": digest}, timeout=5)
    assert r.status_code == 201, r.text
    assert requests.get(f"{srv.url}/v2/stalled/body/blobs/{digest}", timeout=5).content == blob

    with _connect(srv) as s:
        s.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-amz-json-1.1\r\n"
            b"X-Amz-Target: AmazonEC2ContainerRegistry_V20150921.DescribeRepositories\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        closed = _wait_closed(s, TIMEOUT * 1.25 + SLACK)
    assert closed is not None, "the stalled API call was neither answered nor closed"
    head, _, body = closed[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), closed[0]
    error = json.loads(body)
    assert error["__type"] == "InvalidParameterException" and "body_timeout" in error["message"], body
    assert requests.get(f"{srv.url}/healthz", timeout=5).status_code == 200


def test_an_idle_keepalive_connection_is_closed_after_keepalive_timeout(make_server) -> None:
    srv = make_server(_config(header_timeout=_seconds(LONG), keepalive_timeout=_seconds(TIMEOUT)), workers=1)
    with _connect(srv) as s:
        for i in range(4):  # busy for 1.5 s: idle time is what counts, not the connection's age
            if i:
                time.sleep(0.5)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _read_response(s).startswith(b"HTTP/1.1 200")
        closed = _wait_closed(s, TIMEOUT + 2 * SLACK)  # idle from the last response on
        assert closed is not None, f"an idle keep-alive connection outlived keepalive_timeout = {TIMEOUT}s"
        sent, took = closed
        assert sent == b"" and TIMEOUT - 0.2 <= took <= TIMEOUT + SLACK, (sent, took)


def test_idle_and_slow_connections_cannot_crowd_out_healthz(make_server) -> None:
    """200 connections (100 silent, 100 slowloris) against max_connections = 50, with timeouts long enough that
    only the cap can act: the server keeps at most 50 of them, and /healthz is answered at once throughout."""
    cap = 50
    srv = make_server(
        _config(header_timeout=_seconds(LONG), keepalive_timeout=_seconds(LONG), max_connections=cap), workers=1
    )
    with _sockets() as attackers:
        for i in range(200):
            s = _connect(srv)
            attackers.append(s)
            if i % 2:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        latencies = []
        for _ in range(20):
            start = time.monotonic()
            r = requests.get(f"{srv.url}/healthz", timeout=5)  # a fresh connection each time
            latencies.append(time.monotonic() - start)
            assert r.status_code == 200, r.text
        assert max(latencies) < AT_ONCE, latencies  # at once, not after a timeout
        # The evictions happened while the attackers connected; the last closes may still be landing.
        wait_for(
            lambda: sum(not _is_closed(s) for s in attackers) <= cap,
            5,
            f"at most {cap} of 200 idle/slow connections open (max_connections)",
            interval=0.1,
            details=lambda: f"{sum(not _is_closed(s) for s in attackers)} open",
        )
        # The newest connections were kept: the server closes the connection idle longest first.
        assert not any(_is_closed(s) for s in attackers[-10:])
    log = srv.log()
    assert "Traceback" not in log
    assert "every connection busy" not in log  # idle connections were evicted, never a newcomer refused


def test_when_every_connection_is_busy_a_new_one_gets_503_at_once(make_server) -> None:
    """A request in progress is never cut to make room: with every slot busy (uploads whose bodies are still
    arriving), a new connection is answered 503 with Retry-After and closed; once they finish, service resumes."""
    cap = 5
    srv = make_server(
        _config(header_timeout=_seconds(LONG), keepalive_timeout=_seconds(LONG), max_connections=cap), workers=1
    )
    with _sockets() as uploads:
        for _ in range(cap):
            r = requests.post(f"{srv.url}/v2/busy/slots/blobs/uploads/", timeout=5)
            location = r.headers["Location"]
            s = _connect(srv)
            s.sendall(
                f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                "Content-Length: 1000\r\n\r\n".encode()
                + b"y" * 10
            )
            uploads.append(s)
        # Once every upload has reached its handler, every slot is busy: /healthz says so (a 503).
        wait_for(lambda: requests.get(f"{srv.url}/healthz", timeout=5).status_code == 503, 10, "every slot busy")
        start = time.monotonic()
        r = requests.get(f"{srv.url}/healthz", timeout=5)
        assert r.status_code == 503 and r.headers.get("Retry-After") == "1", (r.status_code, r.text)
        assert time.monotonic() - start < AT_ONCE  # at once, not after a timeout
        for s in uploads:  # finish the uploads: each is answered, and its slot is free again
            s.sendall(b"y" * 990)
            s.settimeout(5)
            assert _read_response(s).startswith(b"HTTP/1.1 202")
            s.close()
    assert requests.get(f"{srv.url}/healthz", timeout=5).status_code == 200
    srv.log_containing("connection limit 5 reached with every connection busy")
