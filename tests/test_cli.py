"""The `moorage` command as an operator meets it: `serve`'s start-up and shutdown, `check-config`,
`config-example`, `serve --help`, and the README's quick start run as written."""

from __future__ import annotations

import hashlib
import signal
import socket
import time
from collections.abc import Callable

import pytest
import requests

from tests.server import AUTH_OFF, MoorageServer

MakeServer = Callable[..., MoorageServer]


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


# -- shutdown: inside docker stop's grace period -------------------------------------------------------------


def _sigterm(srv: MoorageServer) -> tuple[int, float]:
    """SIGTERM the server; its exit code and how long it took to exit."""
    assert srv.proc is not None
    started = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    code = srv.wait(30)
    return code, time.monotonic() - started


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_on_an_idle_server_exits_within_a_second(make_server: MakeServer, workers: int) -> None:
    srv = make_server(workers=workers)
    keepalive = requests.Session()  # an idle keep-alive connection holds nothing up
    assert keepalive.get(srv.url + "/healthz", timeout=10).status_code == 200
    code, took = _sigterm(srv)
    assert code == 0 and took < 1.0, f"exit {code} after {took:.2f}s\n{srv.log()[-3000:]}"


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_with_stalled_uploads_exits_by_the_drain_timeout(make_server: MakeServer, workers: int) -> None:
    """Clients that started a PATCH body and stopped sending are cut at the deadline: the process is gone by
    [server] drain_timeout (docker stop's 10 s grace period holds the image's 8 s), not after it."""
    drain = 3.0
    srv = make_server(AUTH_OFF + f'[server]\ndrain_timeout = "{drain:g}s"\n', workers=workers)
    stalled, locations = [], []
    for i in range(2 * workers):  # over new connections: with two workers, both likely get one
        loc = requests.post(f"{srv.url}/v2/stall/app{i}/blobs/uploads/", timeout=10).headers["Location"]
        sock = socket.create_connection(("127.0.0.1", srv.port))
        head = f"PATCH {loc} HTTP/1.1\r\nHost: {srv.host}\r\nContent-Length: {4 << 20}\r\n\r\n"
        sock.sendall(head.encode() + b"x" * (3 << 19))  # 1.5 MiB of 4, then nothing: a stalled client
        stalled.append(sock)
        locations.append(loc)
        # In flight for sure once its first MiB is stored (the upload's Range shows it).
        wait_for(
            lambda loc=loc: requests.get(srv.url + loc, timeout=10).headers.get("Range", "0-0") != "0-0",
            what="the stalled PATCH to reach the server",
        )
    code, took = _sigterm(srv)
    log = srv.log()
    facts = f"exit {code} after {took:.2f}s (drain_timeout {drain:g}s)\n{log[-3000:]}"
    assert code == 0, facts
    assert drain - 1.0 < took <= drain + 0.3, facts  # they were waited for, then cut in time
    assert "cancelling" in log, facts
    for sock in stalled:  # each stalled client sees its connection closed (no reply: it never sent its body)
        sock.settimeout(5)
        try:
            assert sock.recv(4096) == b""
        except ConnectionResetError:
            pass
        sock.close()

    # What a cut upload had stored stays, and the upload resumes from there.
    srv.start()
    loc = locations[0]
    stored = int(requests.get(srv.url + loc, timeout=10).headers["Range"].split("-")[1]) + 1
    assert 1 << 20 <= stored <= 3 << 19, stored
    total = 2 << 20
    rest = requests.patch(
        srv.url + loc, data=b"x" * (total - stored), headers={"Content-Range": f"{stored}-{total - 1}"}, timeout=30
    )
    assert rest.status_code == 202, (rest.status_code, rest.text)
    digest = "sha256:" + hashlib.sha256(b"x" * total).hexdigest()
    done = requests.put(srv.url + rest.headers["Location"], params={"digest": digest}, timeout=30)
    assert done.status_code == 201, (done.status_code, done.text)
