"""A minimal HTTP/1.1 file server that answers GET with os.sendfile: the fallback sendfile baseline.

`python -m bench.sendfile_server --port P --root DIR` serves DIR/<path> for `GET /<path>` with keep-alive,
one thread per connection, no logging. Only used when nginx is not installed.
"""

from __future__ import annotations

import argparse
import os
import socket
import threading
from pathlib import Path

MAX_HEADER = 64 * 1024


def _respond(conn: socket.socket, status: str, headers: dict[str, str]) -> None:
    head = f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    conn.sendall(head.encode())


def _serve(conn: socket.socket, root: Path) -> None:
    try:
        _session(conn, root)
    except OSError:  # the client went away
        pass


def _session(conn: socket.socket, root: Path) -> None:
    buf = b""
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data or len(buf) > MAX_HEADER:
                    return
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = [*lines[0].split(" "), "", "", ""][:3]
            close = any(line.lower().replace(" ", "") == "connection:close" for line in lines[1:])
            path = (root / target.split("?", 1)[0].lstrip("/")).resolve()
            if method not in ("GET", "HEAD") or not path.is_relative_to(root) or not path.is_file():
                _respond(conn, "404 Not Found", {"Content-Length": "0"})
            else:
                with open(path, "rb") as fh:
                    size = os.fstat(fh.fileno()).st_size
                    _respond(conn, "200 OK", {"Content-Length": str(size), "Content-Type": "application/octet-stream"})
                    offset = 0
                    while method == "GET" and offset < size:
                        sent = os.sendfile(conn.fileno(), fh.fileno(), offset, size - offset)
                        if sent == 0:
                            return
                        offset += sent
            if close:
                return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", type=Path, required=True)
    args = parser.parse_args()
    root = args.root.resolve()
    with socket.create_server(("127.0.0.1", args.port), backlog=512) as srv:
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=_serve, args=(conn, root), daemon=True).start()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
