"""The bare aiohttp app: the reference line for Moorage's manifest GET and small-blob GET.

    python -m bench.bare_server --port N --processes P --tag v1 \\
        --manifest FILE --manifest-headers JSON --blob FILE --blob-headers JSON [--reuse-port]

An aiohttp application on uvloop (Moorage's own stack, without Moorage) with two routes, answering
`GET /v2/<name>/manifests/<tag or digest>` and `GET /v2/<name>/blobs/<digest>` with the bytes of FILE, kept in
memory, and the header fields of the JSON file (`{"Content-Type": ..., "Docker-Content-Digest": ...}`; the bench
copies them from Moorage's own answer, so both send the same bytes). Other paths: 404. No access log, no
middleware, no auth: what aiohttp alone costs per request.

Processes, as Moorage runs them (registry/workers.py): with P = 1 one process serves; with more, this process
binds the listening socket (SO_REUSEADDR, backlog 1024) and starts P workers that inherit it and accept on it
(the kernel hands each connection to whichever worker accepts it first), then waits, and stops them on
SIGTERM/SIGINT. `--reuse-port` instead has each worker bind a socket of its own on the port with SO_REUSEPORT
(the kernel spreads connections over them by hash): not what Moorage does, for comparison only.

Each serving process writes `bare-aiohttp: worker <pid> serving` to stdout once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

BACKLOG = 1024  # as registry/workers.py
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Answer:
    body: bytes
    headers: dict[str, str]
    digest: str  # computed once: hashing the body per request would charge the reference line for it


def answer(body: bytes, headers: dict[str, str]) -> Answer:
    return Answer(body, headers, "sha256:" + hashlib.sha256(body).hexdigest())


def load(body: Path, headers: Path) -> Answer:
    return answer(body.read_bytes(), {str(k): str(v) for k, v in json.loads(headers.read_text()).items()})


def make_app(manifest: Answer, blob: Answer, tag: str) -> web.Application:
    references = {tag, manifest.digest}
    blob_digest = blob.digest

    async def get_manifest(request: web.Request) -> web.Response:
        if request.match_info["reference"] not in references:
            raise web.HTTPNotFound()
        return web.Response(body=manifest.body, headers=manifest.headers)

    async def get_blob(request: web.Request) -> web.Response:
        if request.match_info["digest"] != blob_digest:
            raise web.HTTPNotFound()
        return web.Response(body=blob.body, headers=blob.headers)

    app = web.Application()
    app.router.add_get("/v2/{name:.+}/manifests/{reference}", get_manifest)
    app.router.add_get("/v2/{name:.+}/blobs/{digest}", get_blob)
    return app


def listening_socket(port: int, reuse_port: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(BACKLOG)
    return sock


async def serve(app: web.Application, sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await web.SockSite(runner, sock, backlog=BACKLOG).start()
        print(f"bare-aiohttp: worker {os.getpid()} serving", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def run_worker(args: argparse.Namespace, sock: socket.socket) -> None:
    import uvloop

    manifest = load(args.manifest, args.manifest_headers)
    blob = load(args.blob, args.blob_headers)
    uvloop.run(serve(make_app(manifest, blob, args.tag), sock))


def _die_with_parent() -> None:
    """preexec_fn of a worker: SIGKILL when this supervisor dies (Linux), as Moorage's workers do."""
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def supervise(args: argparse.Namespace, sock: socket.socket | None) -> int:
    """Start the workers (passing `sock` on, or letting each bind its own with SO_REUSEPORT); stop them on
    SIGTERM/SIGINT or when one exits."""
    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stopping.append(signum))
    argv = [a for a in sys.argv[1:] if a != "--reuse-port"]
    procs = []
    try:
        for _ in range(args.processes):
            if sock is not None:
                cmd = [sys.executable, "-m", "bench.bare_server", *argv, "--worker-fd", str(sock.fileno())]
                procs.append(subprocess.Popen(cmd, pass_fds=[sock.fileno()], preexec_fn=_die_with_parent))
            else:
                cmd = [sys.executable, "-m", "bench.bare_server", *argv, "--reuse-port", "--worker-fd", "-1"]
                procs.append(subprocess.Popen(cmd, preexec_fn=_die_with_parent))
        while not stopping and all(p.poll() is None for p in procs):
            time.sleep(0.1)
    finally:
        if sock is not None:
            sock.close()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return 0 if stopping else 1


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bare_server", description="the bare aiohttp reference app")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--tag", default="v1", help="the tag the manifest answers to (besides its digest)")
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--manifest-headers", type=Path, required=True)
    p.add_argument("--blob", type=Path, required=True)
    p.add_argument("--blob-headers", type=Path, required=True)
    p.add_argument("--reuse-port", action="store_true", help="a socket per worker with SO_REUSEPORT")
    p.add_argument("--worker-fd", type=int, default=None, help=argparse.SUPPRESS)  # a worker started by us
    args = p.parse_args()
    if args.worker_fd is not None:  # a worker: the inherited socket, or (-1) one of its own on the shared port
        fd = args.worker_fd
        run_worker(args, socket.socket(fileno=fd) if fd >= 0 else listening_socket(args.port, reuse_port=True))
        return 0
    if args.processes <= 1:
        run_worker(args, listening_socket(args.port, args.reuse_port))
        return 0
    sock = None if args.reuse_port else listening_socket(args.port, reuse_port=False)
    if sock is not None:
        sock.set_inheritable(True)
    return supervise(args, sock)


if __name__ == "__main__":
    sys.exit(main())
