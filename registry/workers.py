"""`[server] workers`: several server processes on one listening socket, watched by a small supervisor.

One Python process serves one core. With `workers` above 1, `moorage serve` becomes a supervisor: it binds
the listening socket(s) itself (so a second Moorage on the same port fails at once instead of silently
sharing it), starts the workers with the socket inherited (`moorage serve ... --worker-fds`), and the kernel
hands each new connection to whichever worker accepts it first.

The workers share everything through the data dir (see `storage.shared`): the database (SQLite serializes
writers; a change counter tells the others' caches), named locks for pull-through downloads and upload
sessions, and the signing keys. Only worker 0 runs the scheduled jobs (lifecycle sweeps, garbage collection).
Metrics are kept per process in prometheus-client's multiprocess files and summed on every scrape.

The supervisor restarts a worker that dies, gives up when workers keep dying right after starting (a broken
data dir, say), and on SIGTERM/SIGINT closes the socket and lets every worker drain before it exits.
Workers exit by themselves if the supervisor disappears (SIGKILL), so no orphan keeps the port.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from registry.config import Config

log = logging.getLogger("moorage.workers")

BACKLOG = 1024
QUICK_DEATH = 10.0  # seconds: a worker that dies sooner than this after starting counts as a failed start
MAX_QUICK_DEATHS = 3  # in a row, for one worker slot: then give up
POLL = 0.1


@dataclass
class _Slot:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    quick_deaths: int = 0
    restart_at: float = 0.0


def bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address `host` resolves to (both loopbacks for "localhost")."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.set_inheritable(True)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def supervise(config: Config, count: int, argv: list[str]) -> int:
    """Run `count` workers until SIGTERM/SIGINT; the exit status is 0 after a clean stop."""
    host, port = config.listen
    try:
        sockets = bind(host, port)
    except OSError as e:
        log.error("cannot listen on %s:%d: %s", host, port, e.strerror or e)
        return 1
    metrics_dir = tempfile.mkdtemp(prefix="moorage-metrics-")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    fds = ",".join(str(s.fileno()) for s in sockets)
    stopping: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        stopping.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)

    def start(slot: _Slot) -> None:
        cmd = [sys.executable, "-m", "registry", *argv, "--worker-fds", fds, "--worker-index", str(slot.index)]
        cmd += ["--supervisor-pid", str(os.getpid())]
        slot.proc = subprocess.Popen(cmd, pass_fds=[s.fileno() for s in sockets], env=env)
        slot.started_at = time.monotonic()

    slots = [_Slot(i) for i in range(count)]
    status = 0
    try:
        for slot in slots:
            start(slot)
        log.info("supervisor %d started %d workers: %s", os.getpid(), count, ", ".join(str(s.proc.pid) for s in slots))
        while not stopping:
            time.sleep(POLL)
            now = time.monotonic()
            for slot in slots:
                if slot.proc is None:
                    if now >= slot.restart_at:
                        start(slot)
                    continue
                code = slot.proc.poll()
                if code is None:
                    continue
                _mark_dead(metrics_dir, slot.proc.pid)
                slot.proc = None
                quick = now - slot.started_at < QUICK_DEATH
                slot.quick_deaths = slot.quick_deaths + 1 if quick else 0
                if slot.quick_deaths >= MAX_QUICK_DEATHS:
                    log.error("worker %d keeps exiting right after it starts (status %d); stopping", slot.index, code)
                    stopping.append(0)
                    status = 1
                    break
                delay = min(2.0**slot.quick_deaths - 1, 10.0)
                log.warning("worker %d exited with status %d; restarting it in %.0fs", slot.index, code, delay)
                slot.restart_at = now + delay
        log.info("supervisor: stopping %d workers", sum(1 for s in slots if s.proc is not None))
    finally:
        for sock in sockets:  # no new connections; the workers drain what they have
            sock.close()
        _stop_all([s.proc for s in slots if s.proc is not None], config.server.drain_timeout + 5)
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return status


def _stop_all(procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            log.warning("worker %d did not stop in time; killing it", proc.pid)
            proc.kill()
            proc.wait()


def _mark_dead(metrics_dir: str, pid: int) -> None:
    """Drop a dead worker's live-gauge files (its counters stay, so totals never go backwards)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, metrics_dir)


def inherited_sockets(fds: str) -> list[socket.socket]:
    """The listening sockets a worker got from its supervisor (`--worker-fds 3,4`)."""
    return [socket.socket(fileno=int(fd)) for fd in fds.split(",") if fd]
