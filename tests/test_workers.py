"""`[server] workers`: a supervisor and several worker processes on one socket and one data dir.

Every request below goes out on a new connection (`Connection: close`), so the kernel hands them to either
worker; the access log's `worker` field shows both served. What one worker wrote, the next request sees at
once, whichever worker answers it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from registry.proxy.fill import origin, shared_key
from storage.fs import FilesystemBlobStore
from storage.records import PullThroughRule
from tests.helpers import gone, wait_for
from tests.layouts import read_layout, write_single_image
from tests.oci import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    Client,
    canonical,
    descriptor,
    digest_of,
    make_image,
    random_blob,
)
from tests.server import AUTH_OFF, MoorageServer, auth_config, ecr_client
from tests.skopeo import isolated_skopeo
from tests.upstreams import MisbehavingUpstream

MakeServer = Callable[..., MoorageServer]


def fresh(srv: MoorageServer) -> Client:
    """A client whose every request opens a new connection (so successive requests reach any worker)."""
    c = Client(srv.url, srv.credentials)
    c.s.headers["Connection"] = "close"
    return c


def workers_seen(srv: MoorageServer, route: str | None = None) -> set[int]:
    seen = set()
    for line in srv.log().splitlines():
        if '"moorage.access"' not in line:
            continue
        entry = json.loads(line)
        if route is None or entry.get("route") == route:
            seen.add(entry["worker"])
    return seen


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


@pytest.fixture
def two(make_server: MakeServer) -> MoorageServer:
    srv = make_server(workers=2)
    wait_for(lambda: len(children(srv.proc.pid)) == 2, 10, "two workers")
    return srv


def test_a_push_is_seen_at_once_by_every_worker(two: MoorageServer):
    """Tag moves answered by one worker are never served stale by the other (cross-process invalidation)."""
    c = fresh(two)
    repo = "workers/moving-tag"
    route = "/v2/{name}/manifests/{reference}"
    for i in range(60):
        image = make_image(1, 64)
        c.push_image(repo, "latest", image)
        for _ in range(3):  # each on a new connection, so on either worker
            r = c.get(f"/v2/{repo}/manifests/latest", headers={"Accept": OCI_MANIFEST})
            assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == image.digest, i
        if i >= 10 and workers_seen(two, route) == {0, 1}:
            break
    assert workers_seen(two, route) == {0, 1}, "every request went to one worker; nothing was shared"
    deleted = c.delete(f"/v2/{repo}/manifests/{image.digest}")
    assert deleted.status_code == 202
    for _ in range(6):
        assert c.get(f"/v2/{repo}/manifests/latest", headers={"Accept": OCI_MANIFEST}).status_code == 404


def test_a_write_in_one_process_is_seen_at_once_by_another(make_server: MakeServer):
    """The same property, deterministically: two servers on one data dir, each warming its cache before the
    other writes. Tags move back and forth, then the image is deleted."""
    a = make_server()
    b = make_server(data_dir=a.data_dir)
    ca, cb = Client(a.url), Client(b.url)
    repo = "workers/two-servers"
    for i in range(20):
        writer, reader = (ca, cb) if i % 2 == 0 else (cb, ca)
        image = make_image(1, 64)
        writer.push_image(repo, "latest", image)
        r = reader.get(f"/v2/{repo}/manifests/latest", headers={"Accept": OCI_MANIFEST})
        assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == image.digest, i
        again = writer.get(f"/v2/{repo}/manifests/latest", headers={"Accept": OCI_MANIFEST})
        assert again.headers["Docker-Content-Digest"] == image.digest
    assert ca.delete(f"/v2/{repo}/manifests/{image.digest}").status_code == 202
    assert cb.get(f"/v2/{repo}/manifests/latest", headers={"Accept": OCI_MANIFEST}).status_code == 404
    assert cb.get(f"/v2/{repo}/manifests/{image.digest}", headers={"Accept": OCI_MANIFEST}).status_code == 404


@pytest.mark.parametrize("processes", ["two workers", "two servers on one data dir"])
def test_a_chunked_upload_continues_on_any_process(make_server: MakeServer, processes: str):
    """Chunks of one upload session arrive at different processes (deterministically so with two servers on
    one data dir, which alternate chunk by chunk); the blob comes out byte-exact."""
    first = make_server(workers=2 if processes == "two workers" else 1)
    servers = [first] if processes == "two workers" else [first, make_server(data_dir=first.data_dir)]
    clients = [fresh(srv) for srv in servers]
    repo = "workers/chunked"
    data = random_blob(3 * 1024 * 1024 + 17)
    start = clients[0].post(f"/v2/{repo}/blobs/uploads/")
    assert start.status_code == 202
    location = start.headers["Location"]
    chunk = 64 * 1024
    for i, offset in enumerate(range(0, len(data), chunk)):
        part = data[offset : offset + chunk]
        r = clients[(i + 1) % len(clients)].patch(
            location,
            data=part,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{offset + len(part) - 1}",
            },
        )
        assert r.status_code == 202, r.text
        assert r.headers["Range"] == f"0-{offset + len(part) - 1}"
        location = r.headers["Location"]
    digest = digest_of(data)
    done = clients[-1].put(location, params={"digest": digest})
    assert done.status_code == 201, done.text
    for c in clients * 2:
        got = c.get(f"/v2/{repo}/blobs/{digest}")
        assert got.status_code == 200 and got.content == data


def test_metrics_count_every_workers_requests(two: MoorageServer):
    c = fresh(two)
    n = 0
    while n < 30 or (workers_seen(two, "/v2/{name}/manifests/{reference}") != {0, 1} and n < 300):
        assert c.get("/v2/workers/none/manifests/latest").status_code == 404
        n += 1
    assert workers_seen(two, "/v2/{name}/manifests/{reference}") == {0, 1}

    def counted() -> float:
        text = c.get("/metrics").text
        line = next(
            x
            for x in text.splitlines()
            if x.startswith("moorage_http_requests_total{")
            and 'route="/v2/{name}/manifests/{reference}"' in x
            and 'status="404"' in x
        )
        return float(line.rsplit(" ", 1)[1])

    # Whichever worker answers the scrape sums all of them; each worker moves its requests into the shared
    # values every second (and the answering one just before it answers), so within a second all are there.
    wait_for(lambda: counted() == n, 10, f"{n} requests counted")
    for _ in range(4):
        assert counted() == n


def test_skopeo_round_trip_with_workers(two: MoorageServer, tmp_path: Path):
    (tmp_path / "skopeo").mkdir()
    skopeo = isolated_skopeo(tmp_path / "skopeo")
    image = write_single_image(tmp_path / "src", "v1", n_layers=3)
    skopeo("copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'src'}:v1", f"docker://{two.host}/workers/skopeo:v1")
    skopeo("copy", "--src-tls-verify=false", f"docker://{two.host}/workers/skopeo:v1", f"oci:{tmp_path / 'out'}:v1")
    back = read_layout(tmp_path / "out", "v1")
    assert back.top_digest == image.digest
    assert all(back.blobs[d] == data for d, data in image.blobs.items())


def test_ecr_api_and_lifecycle_preview_across_workers(make_server: MakeServer):
    """A preview started on one worker is read on another; tokens issued by one verify on the other."""
    srv = make_server(auth_config(), workers=2)
    for _ in range(8):
        ecr = ecr_client(srv)  # a new client: a new connection
        ecr.create_repository(repositoryName=f"workers/r{_}")
    policy = {
        "rules": [
            {
                "rulePriority": 1,
                "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 1},
                "action": {"type": "expire"},
            }
        ]
    }
    ecr_client(srv).start_lifecycle_policy_preview(repositoryName="workers/r0", lifecyclePolicyText=json.dumps(policy))
    statuses = set()
    for _ in range(10):
        got = ecr_client(srv).get_lifecycle_policy_preview(repositoryName="workers/r0")
        statuses.add(got["status"])
    assert statuses <= {"IN_PROGRESS", "COMPLETE"} and "COMPLETE" in statuses
    token = ecr_client(srv).get_authorization_token()["authorizationData"][0]["authorizationToken"]
    c = Client(srv.url)
    c.s.headers.update({"Authorization": f"Basic {token}", "Connection": "close"})
    for i in range(300):
        assert c.get("/v2/_catalog").status_code == 200
        if i >= 10 and workers_seen(srv, "/v2/_catalog") == {0, 1}:
            break
    assert workers_seen(srv, "/v2/_catalog") == {0, 1}


def test_a_dead_worker_is_replaced(two: MoorageServer):
    assert two.proc is not None
    before = children(two.proc.pid)
    os.kill(before[0], signal.SIGKILL)
    wait_for(lambda: len(set(children(two.proc.pid)) - {before[0]}) == 2, 15, "a replacement worker")
    c = fresh(two)
    for _ in range(10):
        assert c.get("/v2/").status_code == 200
    # The supervisor says which slot's worker it lost, and how (slot 0 or 1: `ps` lists pids, not slots).
    lost = re.findall(r"worker ([01]) exited \(killed by SIGKILL\); restarting it", two.log())
    assert len(lost) == 1, two.log()[-3000:]


def test_sigterm_stops_supervisor_and_workers(two: MoorageServer):
    assert two.proc is not None
    pids = children(two.proc.pid)
    two.proc.send_signal(signal.SIGTERM)
    assert two.wait(30) == 0
    assert all(gone(pid) for pid in pids)
    with socket.socket() as s:  # the port is free again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", two.port))


def test_workers_exit_when_the_supervisor_is_killed(two: MoorageServer):
    assert two.proc is not None
    pids = children(two.proc.pid)
    two.proc.kill()  # the supervisor alone, not its process group
    two.proc.wait()

    def status() -> str:
        return " | ".join(
            Path(f"/proc/{pid}/status").read_text()[:300].replace("\n", " ") for pid in pids if not gone(pid)
        )

    wait_for(lambda: all(gone(pid) for pid in pids), 15, "orphaned workers to exit", details=status)


def test_a_second_server_on_the_same_port_fails_instead_of_sharing_it(two: MoorageServer, tmp_path: Path):
    config = tmp_path / "other.toml"
    config.write_text(AUTH_OFF)
    cmd = [sys.executable, "-m", "registry", "serve", "--config", str(config), "--listen", two.host]
    p = subprocess.run(
        [*cmd, "--data-dir", str(tmp_path / "other"), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 1
    assert re.search(r"cannot listen on 127\.0\.0\.1:\d+", p.stderr), p.stderr


@pytest.fixture(scope="module")
def slow_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MisbehavingUpstream]:
    upstream = MisbehavingUpstream(tmp_path_factory.mktemp("slow-upstream")).start()
    yield upstream
    upstream.stop()


def test_a_crashed_downloads_leftovers_are_never_served(make_server: MakeServer, slow_upstream: MisbehavingUpstream):
    """A process killed mid-download leaves its spool and size note behind. The next download replaces them;
    a process following it must wait for the new spool, never stream the dead one's (wrong) bytes."""
    layer = random_blob(2 * 1024 * 1024)
    digest = slow_upstream.put_blob(layer, "slow", delay=1.5)  # the new leader waits 1.5 s for its response
    config = canonical({"architecture": "amd64", "os": "linux", "nonce": os.urandom(4).hex()})
    slow_upstream.put_blob(config)
    manifest = canonical(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [descriptor(OCI_LAYER, layer)],
        }
    )
    slow_upstream.put_manifest("team/app", "v1", manifest, OCI_MANIFEST)
    rule = f'[[pull_through.rules]]\necr_repository_prefix = "up"\nupstream_registry_url = "{slow_upstream.url}"\n'
    allowed = 'allowed_upstreams = ["127.0.0.1"]\n'
    a = make_server(AUTH_OFF + "[pull_through]\n" + allowed + rule)
    b = make_server(AUTH_OFF + "[pull_through]\n" + allowed + rule, data_dir=a.data_dir)
    dead = subprocess.Popen(["true"])
    dead.wait()
    # Where a's download of the layer from this upstream writes, as a crashed process would have left it.
    key = shared_key(digest, origin(PullThroughRule("up", slow_upstream.url)))
    spool = FilesystemBlobStore(a.data_dir)._shared_path(key)
    spool.write_bytes(bytes(len(layer)))  # all the bytes, all wrong
    spool.with_name(spool.name + ".size").write_text(f"{dead.pid} {len(layer)}")
    ca, cb = Client(a.url), Client(b.url)
    assert ca.get("/v2/up/team/app/manifests/v1", headers={"Accept": OCI_MANIFEST}).content == manifest
    with ThreadPoolExecutor(2) as pool:
        leader = pool.submit(ca.get, f"/v2/up/team/app/blobs/{digest}")
        time.sleep(0.4)  # a holds the lock and waits on the upstream; b follows
        follower = pool.submit(cb.get, f"/v2/up/team/app/blobs/{digest}")
        results = [leader.result(), follower.result()]
    for r in results:
        assert r.status_code == 200 and r.content == layer
    assert slow_upstream.count(rf"^GET /v2/team/app/blobs/{re.escape(digest)}") == 1
