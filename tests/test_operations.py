"""Operations: health checks, /metrics after a scripted workload, structured access logs, check-config,
MOORAGE_* configuration and graceful shutdown, against real server processes."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import requests

from tests.helpers import http_ok, wait_for
from tests.oci import Client, digest_of, make_image, random_blob
from tests.server import (
    ADMIN_KEY,
    ADMIN_SECRET,
    AUTH_OFF,
    MoorageServer,
    auth_config,
    ecr_client,
    free_port,
    login_password,
    moorage_cli,
)

MANIFESTS = "/v2/{name}/manifests/{reference}"
MiB = 1024 * 1024


def scrape(srv: MoorageServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """/metrics as {(name, labels): value}."""
    r = requests.get(f"{srv.url}/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    out = {}
    for line in r.text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        assert m, line
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def metric(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_health_and_readiness(make_server) -> None:
    srv = make_server()
    assert requests.get(f"{srv.url}/healthz", timeout=5).json() == {"status": "ok"}
    r = requests.get(f"{srv.url}/readyz", timeout=5)
    assert r.status_code == 200 and r.json() == {"status": "ready"}


def test_health_endpoints_need_no_credentials(make_server) -> None:
    srv = make_server(auth_config())
    assert requests.get(f"{srv.url}/v2/", timeout=5).status_code == 401
    assert requests.get(f"{srv.url}/healthz", timeout=5).status_code == 200
    assert requests.get(f"{srv.url}/readyz", timeout=5).status_code == 200


def test_metrics_after_a_scripted_workload(make_server) -> None:
    srv = make_server(
        AUTH_OFF + '[gc]\ninterval = "300ms"\ngrace_period = "2s"\n[lifecycle]\nevaluation_interval = "300ms"\n'
    )
    c = Client(srv.url)
    images = [make_image(n_layers=2, layer_size=3000 + i) for i in range(3)]
    for i, img in enumerate(images):
        c.push_image("ops/app", f"v{i}", img)
    for _ in range(5):
        assert c.get("/v2/ops/app/manifests/v0", headers={"Accept": images[0].media_type}).status_code == 200
    not_found = [c.get("/v2/ops/app/manifests/nope") for _ in range(2)]
    assert all(r.status_code == 404 for r in not_found)
    blob = images[1].layers[0]
    assert c.get(f"/v2/ops/app/blobs/{digest_of(blob)}").content == blob

    s = scrape(srv)
    assert metric(s, "moorage_http_requests_total", route=MANIFESTS, method="PUT", status="201") == 3
    assert metric(s, "moorage_http_requests_total", route=MANIFESTS, method="GET", status="200") == 5
    assert metric(s, "moorage_http_requests_total", route=MANIFESTS, method="GET", status="404") == 2
    assert metric(s, "moorage_http_request_duration_seconds_count", route=MANIFESTS, method="GET") == 7
    error_bytes = sum(len(r.content) for r in not_found)
    assert metric(s, "moorage_http_response_bytes_total", route=MANIFESTS) == 5 * len(images[0].manifest) + error_bytes
    assert metric(s, "moorage_http_response_bytes_total", route="/v2/{name}/blobs/{digest}") == len(blob)
    pushed = sum(len(b) for img in images for b in img.blobs)
    assert metric(s, "moorage_http_request_bytes_total", route="/v2/{name}/blobs/uploads/") == pushed
    assert metric(s, "moorage_storage_blobs") == 9 and metric(s, "moorage_storage_bytes") == pushed
    assert metric(s, "moorage_images") == 3 and metric(s, "moorage_repositories") == 1
    assert metric(s, "moorage_uploads_in_progress") == 0
    c.post("/v2/ops/app/blobs/uploads/")
    assert metric(scrape(srv), "moorage_uploads_in_progress") == 1

    # Lifecycle expires the two oldest; GC then removes their six blobs.
    ecr = ecr_client(srv)
    policy = {
        "rules": [
            {
                "rulePriority": 1,
                "description": "keep the newest image",
                "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 1},
                "action": {"type": "expire"},
            }
        ]
    }
    ecr.put_lifecycle_policy(repositoryName="ops/app", lifecyclePolicyText=json.dumps(policy))
    wait_for(lambda: metric(scrape(srv), "moorage_lifecycle_images_expired_total") == 2, what="lifecycle expiry")

    def collected() -> dict | None:
        samples = scrape(srv)
        return samples if metric(samples, "moorage_gc_blobs_removed_total") == 6 else None

    s = wait_for(collected, what="garbage collection")
    assert metric(s, "moorage_gc_runs_total") >= 1
    expired_bytes = sum(len(b) for img in images[:2] for b in img.blobs)
    assert metric(s, "moorage_gc_bytes_removed_total") == expired_bytes
    assert metric(s, "moorage_lifecycle_bytes_expired_total") == sum(len(x) for img in images[:2] for x in img.layers)
    assert metric(s, "moorage_storage_blobs") == 3 and metric(s, "moorage_images") == 1


KINDS = ("manifest", "blob")


def test_pull_through_metrics(make_server) -> None:
    upstream = make_server()
    img = make_image(n_layers=1)
    Client(upstream.url).push_image("team/app", "v1", img)
    rule = f'[[pull_through.rules]]\necr_repository_prefix = "up"\nupstream_registry_url = "{upstream.url}"\n'
    srv = make_server(AUTH_OFF + '[pull_through]\nallowed_upstreams = ["127.0.0.1"]\n' + rule)
    c = Client(srv.url)
    for _ in range(3):
        assert c.get("/v2/up/team/app/manifests/v1", headers={"Accept": img.media_type}).content == img.manifest
    for blob in img.blobs:
        assert c.get(f"/v2/up/team/app/blobs/{digest_of(blob)}").content == blob

    def synced() -> dict | None:  # with several workers, another worker's tallies arrive within a second
        samples = scrape(srv)
        misses = [metric(samples, "moorage_pull_through_misses_total", rule="up", kind=k) for k in KINDS]
        hits = [metric(samples, "moorage_pull_through_hits_total", rule="up", kind=k) for k in KINDS]
        return samples if (misses, hits) == ([1, len(img.blobs)], [2, 0]) else None

    s = wait_for(synced, what="pull-through counters")
    assert metric(s, "moorage_pull_through_upstream_requests_total", rule="up") == 1 + len(img.blobs)
    assert metric(s, "moorage_pull_through_upstream_bytes_total", rule="up") == len(img.manifest) + sum(
        len(b) for b in img.blobs
    )
    assert metric(s, "moorage_pull_through_stale_serves_total", rule="up") == 0


def logged(srv: MoorageServer, what: str, count: int, **fields: object) -> list[dict]:
    """The access log's lines that have `fields`, once there are `count` of them (a line is written by the
    log thread just after its response: poll, don't sleep)."""

    def lines() -> list[dict] | None:
        found = [x for x in srv.access_log() if all(x.get(k) == v for k, v in fields.items())]
        assert len(found) <= count, f"more than {count} access log lines for {what}: {found}"
        return found if len(found) == count else None

    return wait_for(lines, what=f"{count} access log line(s) for {what}", details=lambda: srv.log()[-3000:])


def test_structured_access_log_without_secrets(make_server) -> None:
    srv = make_server(auth_config())
    token = login_password(srv)
    c = Client(srv.url, ("AWS", token))
    img = make_image(n_layers=1)
    c.push_image("logs/app", "v1", img)
    r = c.get("/v2/logs/app/manifests/v1", headers={"Accept": img.media_type, "X-Request-Id": "trace-42"})
    assert r.headers["X-Request-Id"] == "trace-42"
    assert requests.get(f"{srv.url}/v2/logs/app/manifests/v1", timeout=5).status_code == 401
    url = ecr_client(srv).get_download_url_for_layer(repositoryName="logs/app", layerDigest=digest_of(img.layers[0]))[
        "downloadUrl"
    ]
    assert requests.get(url, timeout=5).content == img.layers[0]

    (pull,) = logged(srv, "the pull", 1, request_id="trace-42")
    assert pull["method"] == "GET" and pull["status"] == 200 and pull["principal"] == "admin"
    assert pull["repository"] == "logs/app" and pull["action"] == "ecr:BatchGetImage"
    assert pull["route"] == MANIFESTS and pull["bytes_out"] == len(img.manifest) and pull["duration_ms"] >= 0
    (put,) = logged(srv, "the manifest push", 1, method="PUT", route=MANIFESTS)
    assert put["status"] == 201 and put["action"] == "ecr:PutImage" and put["bytes_in"] == len(img.manifest)
    (denied,) = logged(srv, "the pull without credentials", 1, status=401, repository="logs/app")
    assert denied["principal"] is None and denied["method"] == "GET"
    (api,) = logged(srv, "GetDownloadUrlForLayer", 1, route="ecr:GetDownloadUrlForLayer")
    assert api["principal"] == "admin" and api["status"] == 200
    (download,) = logged(srv, "the download", 1, route="/v2/{name}/blobs/{digest}")
    assert download["status"] == 200 and download["bytes_out"] == len(img.layers[0])
    assert all(len(x["request_id"]) >= 8 for x in srv.access_log())
    text = srv.log()
    assert token not in text and ADMIN_SECRET not in text
    assert "token=" not in text  # download URLs carry a token in the query string: paths are logged without it


def test_blob_downloads_are_logged_with_their_bytes_and_keep_the_connection(make_server) -> None:
    """A blob sent with sendfile is logged (and measured) through its transfer, and the keep-alive connection
    serves the next request; a download cut by the client is logged as 499 with the bytes that went out."""
    srv = make_server()
    c = Client(srv.url)
    blob = random_blob(32 * 1024 * 1024)  # more than the socket buffers hold: the cut one can't finish
    digest = c.push_blob("logs/big", blob)
    for _ in range(3):  # the same connection each time
        got = c.get(f"/v2/logs/big/blobs/{digest}")
        assert got.content == blob
        assert got.headers["Docker-Distribution-API-Version"] == "registry/2.0" and got.headers["X-Request-Id"]
    assert c.get("/v2/").status_code == 200
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:  # read 256 KiB of it, then hang up
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(f"GET /v2/logs/big/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = sock.recv(1024)
        assert received.startswith(b"HTTP/1.1 200")
        while len(received) < 256 * 1024:
            received += sock.recv(65536)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
    gets = logged(srv, "four blob downloads", 4, method="GET", route="/v2/{name}/blobs/{digest}")
    assert [x["status"] for x in gets] == [200, 200, 200, 499], gets
    assert all(x["bytes_out"] == len(blob) for x in gets[:3])
    assert 200 * 1024 < gets[3]["bytes_out"] < len(blob)


def test_check_config_prints_effective_settings_with_secrets_masked(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        auth_config() + '[secrets.hub]\nusername = "me"\npassword = "hunter2-very-secret"\n'
        '[pull_through]\ntag_refresh_interval = "3h"\n'
    )
    p = moorage_cli("check-config", cfg, timeout=30)
    assert p.returncode == 0, p.stderr
    assert "valid" in p.stdout and 'name = "admin"' in p.stdout and "tag_refresh_interval = 10800.0" in p.stdout
    assert ADMIN_SECRET not in p.stdout and "hunter2-very-secret" not in p.stdout
    assert p.stdout.count('"****"') >= 2
    cfg.write_text('[gc]\ngrace_period = "forever"\n')
    p = moorage_cli("check-config", cfg, timeout=30)
    assert p.returncode == 2 and "gc.grace_period" in p.stderr and "Traceback" not in p.stderr


def test_configuration_from_environment(tmp_path: Path) -> None:
    """Every MOORAGE_* variable takes effect: auth off, the listen address, the data dir, the log format."""
    port = free_port()
    env = {
        **os.environ,
        "MOORAGE_AUTH_ENABLED": "false",
        "MOORAGE_SERVER_LISTEN": f"127.0.0.1:{port}",
        "MOORAGE_SERVER_DATA_DIR": str(tmp_path / "d"),
        "MOORAGE_LOG_FORMAT": "json",
    }
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "registry", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its workers too are killed below if it does not stop
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: proc.poll() is None and http_ok(url + "/healthz", timeout=10), 60, "the server to answer")
        c = Client(url)
        c.push_image("env/app", "v1", make_image(n_layers=1))  # anonymous push: auth is off
        assert (tmp_path / "d" / "moorage.db").exists()
    finally:
        proc.terminate()
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, log_path.read_text()
    docs = [json.loads(line) for line in log_path.read_text().splitlines()]  # every line JSON
    assert {"GET", "POST", "PUT"} == {d["method"] for d in docs if d["logger"] == "moorage.access"}, docs
    assert all(d["msg"] for d in docs if d["logger"] != "moorage.access"), docs
    bad = moorage_cli("check-config", os.devnull, env={**os.environ, "MOORAGE_NOPE_X": "1"}, timeout=30)
    assert bad.returncode == 2 and "MOORAGE_NOPE_X" in bad.stderr


def test_sigterm_drains_in_flight_requests(make_server) -> None:
    """A PATCH in flight when SIGTERM arrives completes (its body still arriving after the signal), the log
    says the drain waited for it, new connections are refused meanwhile, and the server exits 0."""
    srv = make_server()
    c = Client(srv.url)
    loc = c.post("/v2/drain/app/blobs/uploads/").headers["Location"]
    data = os.urandom(3 * MiB)
    head = f"PATCH {loc} HTTP/1.1\r\nHost: {srv.host}\r\nContent-Length: {len(data)}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.sendall(head + data[: 2 * MiB])
        # The store writes what arrives in 1 MiB pieces: the session growing shows the handler at work.
        wait_for(lambda: c.upload_size(loc) >= MiB, what="the PATCH's first MiB to reach the upload")
        log_from = len(srv.log().encode())
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGTERM)
        wait_for(
            lambda: "shutting down: draining 1 in-flight requests" in srv.log(log_from),
            what="the drain to start",
            details=lambda: srv.log(log_from),
        )
        wait_for(lambda: _refused(srv.port), what="the listener to close")
        assert srv.proc.poll() is None, "the server exited with a request in flight"
        sock.sendall(data[2 * MiB :])  # the rest arrives after SIGTERM: the request must still complete
        sock.settimeout(30)
        reply = sock.recv(4096).decode()
    assert reply.startswith("HTTP/1.1 202"), reply
    assert srv.wait(30) == 0
    after = srv.log(log_from)
    assert "drain timed out" not in after and "stopped" in after, after
    (patch,) = [x for x in srv.access_log() if x["method"] == "PATCH"]
    assert patch["status"] == 202 and patch["bytes_in"] == len(data), patch
    srv.start()
    assert Client(srv.url).get(loc).headers["Range"] == f"0-{len(data) - 1}"


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_offline_commands_take_the_config_like_serve(make_server) -> None:
    """`gc` and `lifecycle run` read the server's config and data dir: here one image, nothing to free, no
    policy to apply."""
    srv = make_server()
    Client(srv.url).push_image("offline/app", "v1", make_image(n_layers=1))
    where = ("--config", srv.config_path, "--data-dir", srv.data_dir)
    p = moorage_cli("gc", "--dry-run", *where, timeout=60)
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report.pop("seconds") >= 0
    assert report == {
        "dryRun": True,
        "blobsRemoved": 0,
        "bytesFreed": 0,
        "orphanFilesRemoved": 0,
        "uploadsPurged": 0,
        "cacheImagesEvicted": 0,
    }
    p = moorage_cli("lifecycle", "run", "--dry-run", *where, timeout=60)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == []


def test_ecr_api_request_id_matches_access_log(make_server) -> None:
    srv = make_server(auth_config())
    resp = ecr_client(srv, ADMIN_KEY, ADMIN_SECRET).describe_registry()
    request_id = resp["ResponseMetadata"]["RequestId"]
    (line,) = logged(srv, "DescribeRegistry", 1, request_id=request_id)
    assert line["route"] == "ecr:DescribeRegistry" and line["status"] == 200 and line["principal"] == "admin"
