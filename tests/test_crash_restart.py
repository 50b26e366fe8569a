"""A crashed registry restarts: SIGKILL to the supervisor (the OOM killer, `docker kill`) or to one worker,
during concurrent pushes, any number of times.

A killed supervisor takes its workers with it at once (on Linux, the parent-death signal), so a new `moorage
serve` on the same port binds it; a port still held makes a starting supervisor retry for `[server]
bind_retry`, then fail with a clear message, never share it. Whatever a client saw acknowledged reads back
byte-exact, and every blob file matches its digest. The test harness itself only calls a server started
when that very process answers (`/healthz` echoes the start's MOORAGE_INSTANCE_ID in a header).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from storage.local import ProcessLocks
from tests.helpers import gone, wait_for
from tests.layouts import _init_layout, _tag, _write_blob, make_layer
from tests.oci import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, Client, canonical, descriptor
from tests.server import AUTH_OFF, MoorageServer
from tests.skopeo import Skopeo

CYCLES = 10
ALIVE_AFTER = 3.0  # seconds a restarted server must keep running (and answering) after it came up
PUSHERS = 2
REPO = "crash/app"


def processes_of(instance_id: str) -> list[int]:
    """Live processes of one harness start: they carry its MOORAGE_INSTANCE_ID (workers inherit it)."""
    needle = f"MOORAGE_INSTANCE_ID={instance_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:  # exited meanwhile, or not ours to read
                continue
            if needle in environ.split(b"\0") and not gone(int(entry.name)):
                found.append(int(entry.name))
    return found


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def listening_socket() -> socket.socket:
    """A plain listener that holds a free port (and never answers)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def server_config(bind_retry: str | None = None) -> str:
    return (f'[server]\nbind_retry = "{bind_retry}"\n' if bind_retry else "") + AUTH_OFF


# -- workers die with their supervisor; the bind waits for a port still in use ------------------------


def test_workers_die_with_a_killed_supervisor_at_once(tmp_path: Path):
    """Not after a poll and a drain (about 0.6 s before): the port is free the moment the supervisor is gone.
    A few rounds, so that a poll happening to fall right after the kill cannot pass for it."""
    srv = MoorageServer(tmp_path / "data", workers=2)
    took = []
    try:
        for _ in range(3):
            srv.start()
            workers = srv.worker_pids()
            assert len(workers) == 2
            srv.kill(group=False)  # the supervisor alone; reaped when this returns
            killed = time.monotonic()
            wait_for(lambda w=workers: all(gone(pid) for pid in w), 5, "the workers to exit", interval=0.01)
            wait_for(lambda: port_is_free(srv.port), 5, "the port to be free", interval=0.01)
            took.append(time.monotonic() - killed)
    finally:
        srv.kill()
    assert max(took) < 0.25, f"the workers outlived their supervisor by {', '.join(f'{t:.3f}' for t in took)} s"


def test_a_starting_supervisor_waits_for_a_port_still_in_use(tmp_path: Path):
    holder = listening_socket()
    port = holder.getsockname()[1]
    release = threading.Timer(1.5, holder.close)
    release.start()
    srv = MoorageServer(tmp_path / "data", server_config("10s"), port=port, workers=2)
    try:
        started = time.monotonic()
        srv.start()
        assert time.monotonic() - started >= 1.0  # it did wait for the port
        srv.log_containing(f"127.0.0.1:{port} is in use; trying again for up to 10s")
        assert Client(srv.url).get("/v2/").status_code == 200
    finally:
        release.cancel()
        holder.close()
        srv.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_starting_on_a_port_another_registry_holds_fails_clearly(tmp_path: Path, workers: int):
    """The harness does not take the other registry's answer for its own start's, and Moorage does not share
    the port: start() raises with the log's reason, and the first registry keeps it alone."""
    first = MoorageServer(tmp_path / "first" / "data", workers=1).start()
    # (its own directory: config and log files are named after the port)
    second = MoorageServer(tmp_path / "second" / "data", server_config("500ms"), port=first.port, workers=workers)
    try:
        started = time.monotonic()
        with pytest.raises(RuntimeError, match=r"moorage exited with 1 before it answered \(another process") as e:
            second.start()
        took = time.monotonic() - started
        # One process or a supervisor alike: what happened, and no claim to be serving.
        assert f"cannot listen on 127.0.0.1:{first.port}: Address already in use (still after 0.5s" in str(e.value)
        assert "serving on" not in str(e.value)
        assert took < 10, f"gave up after {took:.1f}s, not after bind_retry"
        assert processes_of(second.instance_id) == []
        r = requests.get(first.url + "/healthz", timeout=5)
        assert r.headers["Moorage-Instance"] == first.instance_id
    finally:
        second.kill()
        first.stop()


def test_a_start_that_times_out_leaves_nothing_running(tmp_path: Path):
    """Workers that never come up (held here at the start-up lock) are killed with their supervisor."""
    data = tmp_path / "data"
    data.mkdir()
    locks = ProcessLocks(data / "moorage.locks")
    srv = MoorageServer(data, workers=2)
    try:
        with locks.hold_blocking("startup"):
            with pytest.raises(RuntimeError, match=r"moorage did not answer in 3s") as e:
                srv.start(timeout=3)
            assert "started 2 workers" in str(e.value)  # which were waiting for the lock
            assert srv.instance_id is not None
            wait_for(lambda: processes_of(srv.instance_id) == [], 2, "the timed-out start's processes to exit")
        wait_for(lambda: port_is_free(srv.port), 1, "the port to be free")  # the kernel takes a few ms after exit
    finally:
        locks.close()
        srv.kill()


def metrics_dir_of(pid: int) -> Path:
    environ = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
    return Path(environ["PROMETHEUS_MULTIPROC_DIR"])


def test_a_starting_supervisor_removes_what_a_killed_one_left_and_nothing_else(tmp_path: Path):
    """A supervisor killed with SIGKILL cannot remove its metrics directory; the next one to start does (and
    leaves a live supervisor's alone)."""
    killed = MoorageServer(tmp_path / "killed", workers=2).start()
    live = MoorageServer(tmp_path / "live", workers=2).start()
    try:
        left = metrics_dir_of(killed.worker_pids()[0])
        live_dir = metrics_dir_of(live.worker_pids()[0])
        workers = killed.worker_pids()
        killed.kill(group=False)
        wait_for(lambda: all(gone(pid) for pid in workers), 5, "the workers to exit")
        assert left.is_dir()
        killed.start()
        assert not left.exists()
        assert live_dir.is_dir() and metrics_dir_of(live.worker_pids()[0]) == live_dir
        assert Client(live.url).get("/metrics").status_code == 200
    finally:
        killed.stop()
        live.stop()
    assert not live_dir.exists()  # stopped cleanly: removed by its own supervisor


# -- the crash cycles --------------------------------------------------------------------------------


@dataclass
class Pushed:
    tag: str
    manifest: bytes
    blobs: dict[str, bytes]


class Pushers:
    """Threads that push fresh small images with skopeo, back to back, until stopped; what skopeo reported
    pushed is kept to be read back. Each image has its own config and top layer and one of a few shared base
    layers, so concurrent pushes also upload the same blob at once."""

    def __init__(self, skopeo: Skopeo, work: Path, host: str) -> None:
        self.skopeo = skopeo
        self.work = work
        self.host = host
        self.bases = [make_layer(n_files=1, file_size=128 * 1024)[0] for _ in range(3)]
        self.acked: list[Pushed] = []
        self.refused = 0  # failed before they began: nothing listening
        self.interrupted = 0  # failed on the way: the kill landed in them
        self.errors: list[BaseException] = []
        self._numbers = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(PUSHERS)]

    def __enter__(self) -> Pushers:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(90)
        assert not any(t.is_alive() for t in self._threads), "a push hung"
        if self.errors:
            raise self.errors[0]

    def _image(self, layout: Path, tag: str) -> Pushed:
        base = random.choice(self.bases)
        top = make_layer(n_files=1, file_size=random.randrange(8, 128) * 1024)[0]
        config = canonical({"architecture": "amd64", "os": "linux", "nonce": os.urandom(8).hex()})
        layers = [descriptor(OCI_LAYER, base), descriptor(OCI_LAYER, top)]
        manifest = canonical(
            {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(OCI_CONFIG, config), "layers": layers}
        )
        _init_layout(layout)
        blobs = {_write_blob(layout, b): b for b in (config, base, top)}
        _write_blob(layout, manifest)
        _tag(layout, OCI_MANIFEST, manifest, tag)
        return Pushed(tag, manifest, blobs)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                tag = f"p{next(self._numbers)}"
                layout = self.work / tag
                image = self._image(layout, tag)
                p = self.skopeo(
                    "copy",
                    "--dest-tls-verify=false",
                    "--preserve-digests",
                    f"oci:{layout}:{tag}",
                    f"docker://{self.host}/{REPO}:{tag}",
                    check=False,
                    timeout=60,
                )
                shutil.rmtree(layout)
                refused = p.returncode != 0 and "connection refused" in p.stderr
                with self._lock:
                    if p.returncode == 0:
                        self.acked.append(image)
                    elif refused:
                        self.refused += 1
                    else:
                        self.interrupted += 1
                # Leave the CPUs to the server (two cores on the test machine), above all while it starts.
                time.sleep(0.5 if refused else 0.1)
        except BaseException as e:  # pytest.fail on a hung push, anything else: re-raised by __exit__
            self.errors.append(e)

    def acked_count(self) -> int:
        with self._lock:
            return len(self.acked)


def assert_everything_acknowledged_reads_back(srv: MoorageServer, pushed: list[Pushed]) -> None:
    c = Client(srv.url)
    for image in pushed:
        r = c.get(f"/v2/{REPO}/manifests/{image.tag}", headers={"Accept": OCI_MANIFEST})
        assert r.status_code == 200 and r.content == image.manifest, f"{image.tag}: {r.status_code}"
        for digest, blob in image.blobs.items():
            r = c.get(f"/v2/{REPO}/blobs/{digest}")
            assert r.status_code == 200 and r.content == blob, f"{image.tag}: blob {digest} -> {r.status_code}"
    files = [p for p in (srv.data_dir / "blobs").glob("*/*/*") if p.is_file()]
    assert files
    for path in files:
        alg = path.parent.parent.name
        assert hashlib.new(alg, path.read_bytes()).hexdigest() == path.name, f"{path} differs from its digest"


@pytest.fixture
def crash_server(tmp_path: Path) -> Iterator[MoorageServer]:
    srv = MoorageServer(tmp_path / "data", workers=2)
    yield srv
    srv.stop()


def assert_alive_and_answering(srv: MoorageServer, since: float, what: str) -> None:
    """`ALIVE_AFTER` seconds after `since`, the server still runs and answers /v2/."""
    time.sleep(max(0.0, since + ALIVE_AFTER - time.monotonic()))
    assert srv.proc is not None and srv.proc.poll() is None, f"{what}: the server exited:\n{srv.log()[-3000:]}"
    assert Client(srv.url).get("/v2/").status_code == 200


@pytest.mark.slow
def test_sigkill_to_the_supervisor_during_pushes_then_restart(
    crash_server: MoorageServer, skopeo: Skopeo, tmp_path: Path
):
    """Each cycle: SIGKILL to the supervisor alone while pushes go on, and at once a new `moorage serve` on the
    same port and data dir (with 2, 1 and auto workers in turn)."""
    srv = crash_server
    srv.start()
    restarts = []
    instances = []
    with Pushers(skopeo, tmp_path, srv.host) as pushers:
        wait_for(lambda: pushers.acked_count() > 0, 30, "a first push")
        for cycle in range(CYCLES):
            time.sleep(random.uniform(0, 0.2))  # land the kill on a different moment of the pushes each time
            workers = srv.worker_pids()
            instances.append(srv.instance_id)
            killed = time.monotonic()
            srv.kill(group=False)
            srv.workers = (1, 0, 2)[cycle % 3]
            srv.start()
            up = time.monotonic()
            restarts.append(up - killed)
            assert all(gone(pid) for pid in workers), f"cycle {cycle}: workers outlived their supervisor"
            assert_alive_and_answering(srv, up, f"cycle {cycle}")
    assert_everything_acknowledged_reads_back(srv, pushers.acked)
    for instance in instances:
        assert processes_of(instance) == [], "a killed server left a process behind"
    print(
        f"restarts: {' '.join(f'{t:.2f}' for t in restarts)} s; pushes: {len(pushers.acked)} acknowledged, "
        f"{pushers.interrupted} interrupted, {pushers.refused} refused"
    )
    assert len(pushers.acked) >= CYCLES


@pytest.mark.slow
def test_sigkill_to_a_worker_during_pushes(crash_server: MoorageServer, skopeo: Skopeo, tmp_path: Path):
    """Each cycle: SIGKILL to the worker started last (so one slot dies again and again, a few seconds after
    it started); the supervisor replaces it at once and keeps going."""
    srv = crash_server
    srv.start()
    replacements = []
    with Pushers(skopeo, tmp_path, srv.host) as pushers:
        wait_for(lambda: pushers.acked_count() > 0, 30, "a first push")
        victim = srv.worker_pids()[0]
        for cycle in range(CYCLES):
            time.sleep(random.uniform(0, 0.2))
            before = set(srv.worker_pids())
            assert victim in before and len(before) == 2
            os.kill(victim, signal.SIGKILL)
            killed = time.monotonic()
            wait_for(lambda b=before: len(set(srv.worker_pids()) - b) == 1, ALIVE_AFTER, "a new worker", interval=0.01)
            replacements.append(time.monotonic() - killed)
            (replacement,) = set(srv.worker_pids()) - before
            assert_alive_and_answering(srv, killed, f"cycle {cycle}")
            assert gone(victim) and not gone(replacement)
            assert sorted(srv.worker_pids()) == sorted(before - {victim} | {replacement})
            victim = replacement
    assert srv.log().count("exited (killed by SIGKILL); restarting it") >= CYCLES
    assert_everything_acknowledged_reads_back(srv, pushers.acked)
    print(
        f"replacement worker started after: {' '.join(f'{t:.2f}' for t in replacements)} s; "
        f"pushes: {len(pushers.acked)} acknowledged, {pushers.interrupted} interrupted, {pushers.refused} refused"
    )
    assert len(pushers.acked) >= CYCLES
