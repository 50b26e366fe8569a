"""`[server] workers`: several server processes on one listening socket, watched by a small supervisor.

One Python process serves one core. With `workers` above 1, `moorage serve` becomes a supervisor: it binds
the listening socket(s) itself (so a second Moorage on the same port fails at once instead of silently
sharing it), starts the workers with the socket inherited (`moorage serve ... --worker-fds`), and the kernel
hands each new connection to whichever worker accepts it first.

The workers share everything through the data dir (see `storage.local`): the database (SQLite serializes
writers; a change counter tells the others' caches), named locks for pull-through downloads and upload
sessions, and the signing keys. Only worker 0 runs the scheduled jobs (lifecycle sweeps, garbage collection).
Metrics are kept per process in prometheus-client's multiprocess files and summed on every scrape (in a temp
directory per supervisor, which a supervisor that was killed leaves behind: the next one to start removes it).

The supervisor restarts a worker that dies (at once when it was killed, with a growing delay when it keeps
exiting with an error right after it starts, and gives up after a few of those: a broken data dir, say), and
on SIGTERM/SIGINT closes the socket and lets every worker drain before it exits.

A supervisor killed with SIGKILL (the OOM killer, `docker kill`) takes its workers with it: on Linux each
worker is started with the parent-death signal set to SIGKILL (prctl(PR_SET_PDEATHSIG)), so no orphan keeps
the port and a restart can bind it at once; elsewhere the workers notice that their parent is gone (a short
poll, see registry.app) and drain. A starting supervisor that finds its port still held retries the bind for
`[server] bind_retry` before it gives up; it never shares the port (no SO_REUSEPORT).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from registry.config import Config

log = logging.getLogger("moorage.workers")

BACKLOG = 1024
QUICK_DEATH = 10.0  # seconds: a worker that exits with an error sooner than this after starting failed to start
MAX_QUICK_DEATHS = 3  # failed starts in a row, for one worker slot: then give up
MIN_RESTART_INTERVAL = 1.0  # seconds between two starts of one worker slot, however it died
POLL = 0.1
STOP_MARGIN = 1.0  # seconds past [server] drain_timeout before a worker that has not exited is killed
BIND_RETRY_POLL = 0.1
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
METRICS_PREFIX = "moorage-metrics-"  # + random: a supervisor's directory for its workers' metrics files
METRICS_LOCKED = ".locked"  # made once the directory is locked: from then on, unlocked means its owner is gone


@dataclass
class _Slot:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    quick_deaths: int = 0
    restart_at: float = 0.0


def bind(host: str, port: int, retry: float = 0.0) -> list[socket.socket]:
    """Listening sockets for every address `host` resolves to (both loopbacks for "localhost"). While the port
    is in use (EADDRINUSE: a previous server's processes still exiting, say), try again for up to `retry`
    seconds; any other error, or the port still in use after that, raises."""
    deadline = time.monotonic() + retry
    warned = False
    while True:
        try:
            return _bind_once(host, port)
        except OSError as e:
            if e.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                raise
            if not warned:
                log.warning("%s:%d is in use; trying again for up to %gs", host, port, retry)
                warned = True
            time.sleep(BIND_RETRY_POLL)


def _bind_once(host: str, port: int) -> list[socket.socket]:
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


def supervise(config: Config, count: int, argv: list[str], sockets: list[socket.socket]) -> int:
    """Run `count` workers on the listening `sockets` (from `bind`) until SIGTERM/SIGINT; the exit status is 0
    after a clean stop."""
    remove_stale_metrics_dirs()
    metrics_dir, metrics_lock = _metrics_dir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    fds = ",".join(str(s.fileno()) for s in sockets)
    stopping: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        stopping.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)

    die_with_me = _die_with_parent()

    def start(slot: _Slot) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "registry", *argv, "--worker-fds", fds, "--worker-index", str(slot.index)]
        cmd += ["--supervisor-pid", str(os.getpid())]
        pass_fds = [*(s.fileno() for s in sockets), metrics_lock]  # workers keep the metrics dir locked too
        slot.proc = subprocess.Popen(cmd, pass_fds=pass_fds, env=env, preexec_fn=die_with_me)
        slot.started_at = time.monotonic()
        return slot.proc

    slots = [_Slot(i) for i in range(count)]
    status = 0
    try:
        pids = [str(start(slot).pid) for slot in slots]
        log.info("supervisor %d started %d workers: %s", os.getpid(), count, ", ".join(pids))
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
                # Only an error exit right after the start is a failed start; a worker that was killed (code < 0:
                # the OOM killer, an operator) or stopped (0) is simply replaced.
                failed_start = code > 0 and now - slot.started_at < QUICK_DEATH
                slot.quick_deaths = slot.quick_deaths + 1 if failed_start else 0
                if slot.quick_deaths >= MAX_QUICK_DEATHS:
                    log.error("worker %d keeps exiting right after it starts (status %d); stopping", slot.index, code)
                    stopping.append(0)
                    status = 1
                    break
                delay = min(2.0**slot.quick_deaths - 1, 10.0)
                slot.restart_at = max(now + delay, slot.started_at + MIN_RESTART_INTERVAL)
                how = f"(killed by {_signal_name(-code)})" if code < 0 else f"with status {code}"
                log.warning("worker %d exited %s; restarting it in %.1fs", slot.index, how, slot.restart_at - now)
        log.info("supervisor: stopping %d workers", sum(1 for s in slots if s.proc is not None))
    finally:
        for sock in sockets:  # no new connections; the workers drain what they have
            sock.close()
        # Each worker exits within drain_timeout of its SIGTERM (it cancels what is still running); one that
        # has not a moment after that is killed, so the supervisor too is gone soon after drain_timeout.
        _stop_all([s.proc for s in slots if s.proc is not None], config.server.drain_timeout + STOP_MARGIN)
        shutil.rmtree(metrics_dir, ignore_errors=True)
        os.close(metrics_lock)
    return status


def _metrics_dir() -> tuple[str, int]:
    """A new directory for the workers' metrics files, and a descriptor holding its lock (flock) for as long
    as this supervisor or any of its workers lives, so a later supervisor can tell what a killed one left."""
    path = tempfile.mkdtemp(prefix=METRICS_PREFIX)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.close(os.open(os.path.join(path, METRICS_LOCKED), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    return path, fd


def remove_stale_metrics_dirs() -> list[str]:
    """Remove the metrics directories of supervisors that are gone without cleaning up (SIGKILL): this user's
    `moorage-metrics-*` directories in the temp dir whose lock nobody holds. A directory that is not marked
    locked yet may be one a supervisor is creating right now: it stays."""
    parent = tempfile.gettempdir()
    try:
        with os.scandir(parent) as entries:
            candidates = [e.path for e in entries if e.name.startswith(METRICS_PREFIX)]
    except OSError:
        return []
    removed = []
    for path in candidates:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:  # not a directory, not ours to read, or gone already
            continue
        try:
            if os.fstat(fd).st_uid != os.getuid():
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # a live supervisor (or one of its workers) holds it
                continue
            if os.path.exists(os.path.join(path, METRICS_LOCKED)):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        finally:
            os.close(fd)
    if removed:
        log.info("removed %d metrics directories left by supervisors that were killed", len(removed))
    return removed


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # a real-time signal, say
        return f"signal {number}"


def _die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that makes a worker die with this process: on Linux, between fork and exec, the child
    asks the kernel for SIGKILL when its parent exits (PR_SET_PDEATHSIG survives exec), then checks that its
    parent is still this process (it may have died before the request took effect). None where there is no
    prctl: workers then rely on their own watch of the parent.

    The signal is sent when the thread that forked the child exits: workers are started from the supervisor's
    main thread only. The hook runs in the forked child of a process with a log-writer thread, so it only
    calls a function resolved here, in the parent, and takes no Python-level lock."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()
    sigkill = int(signal.SIGKILL)

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, sigkill, 0, 0, 0)  # if refused (a seccomp filter), the watch remains
        if os.getppid() != parent:  # the supervisor died before we asked: nobody would signal us
            os._exit(1)

    return hook


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

    # prometheus_client ships py.typed but leaves mark_process_dead unannotated.
    multiprocess.mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]


def inherited_sockets(fds: str) -> list[socket.socket]:
    """The listening sockets a worker got from its supervisor (`--worker-fds 3,4`)."""
    return [socket.socket(fileno=int(fd)) for fd in fds.split(",") if fd]
