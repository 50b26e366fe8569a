"""The fast lane (registry/web/fastlane.py): a manifest's GET and HEAD and a small blob's GET answered from
memory ahead of the Application, exactly as the full path answers them.

Over real sockets, in both auth modes: each such request is asked twice, as is (the lane answers) and with a
query string (which always takes the full path); status, headers, body and the access log's line must agree.
In process: which requests the lane answers, and which it leaves to the full path.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from registry.app import FAST_LANE, PULL_FLUSH_INTERVAL, create_app
from registry.config import load
from registry.web import prepared
from registry.web.context import READER
from registry.web.prepared import PreparedResponse, render_head
from tests.helpers import wait_for
from tests.oci import OCI_MANIFEST, Client, digest_of, make_image
from tests.server import AUTH_OFF, MoorageServer, auth_config, ecr_client, login_password, principal_toml
from tests.shared_storage import Target

DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
VARYING = {"date", "x-request-id"}
LOG_VARYING = {"ts", "request_id", "duration_ms"}


def _same(fast, full) -> None:
    assert (fast.status_code, fast.content) == (full.status_code, full.content)
    fast_headers = {k.lower(): v for k, v in fast.headers.items() if k.lower() not in VARYING}
    full_headers = {k.lower(): v for k, v in full.headers.items() if k.lower() not in VARYING}
    assert fast_headers == full_headers
    assert fast.headers["X-Request-Id"] != full.headers["X-Request-Id"]


def lane_count(srv: MoorageServer) -> float:
    """moorage_http_fast_lane_requests_total: how many requests the lane has answered."""
    text = requests.get(srv.url + "/metrics", timeout=30).text
    return float(
        next(x for x in text.splitlines() if x.startswith("moorage_http_fast_lane_requests_total ")).split()[1]
    )


def test_the_lane_and_the_full_path_answer_alike(server: MoorageServer, client: Client):
    repo = "fastlane/alike"
    image = make_image(n_layers=2, layer_size=3000)
    digest = client.push_image(repo, "v1", image)
    layer = image.blobs[-1]
    layer_digest = digest_of(layer)
    asked = [
        ("GET", f"/v2/{repo}/manifests/v1", {"Accept": OCI_MANIFEST}),
        ("GET", f"/v2/{repo}/manifests/{digest}", {}),
        ("HEAD", f"/v2/{repo}/manifests/v1", {"Accept": OCI_MANIFEST}),
        ("GET", f"/v2/{repo}/blobs/{layer_digest}", {}),
    ]
    for method, path, headers in asked:
        client.request(method, path, headers=headers)  # the first one fills memory (by the full path)
        before = lane_count(server)
        fast = client.request(method, path, headers=headers)
        assert lane_count(server) == before + 1, "the lane answered it"
        full = client.request(method, path + "?full=1", headers=headers)
        assert lane_count(server) == before + 1, "the full path answered it"
        assert fast.status_code == 200, (method, path, fast.text)
        _same(fast, full)
        if method == "GET":
            assert fast.content == (image.manifest if "/manifests/" in path else layer)
        ids = (fast.headers["X-Request-Id"], full.headers["X-Request-Id"])
        entries = server.access_log_until(
            lambda es, ids=ids: len([e for e in es if e["request_id"] in ids]) == 2, f"{method} {path} logged"
        )
        fast_line, full_line = (next(e for e in entries if e["request_id"] == i) for i in ids)
        assert {k: v for k, v in fast_line.items() if k not in LOG_VARYING} == {
            k: v for k, v in full_line.items() if k not in LOG_VARYING
        }
        assert fast_line["principal"] == ("admin" if server.credentials else None)


def test_what_the_lane_leaves_to_the_full_path_is_answered_there(server: MoorageServer, client: Client):
    """Requests the lane must not answer (errors, ranges, other media types) get the full path's answers."""
    repo = "fastlane/left"
    image = make_image(n_layers=1, layer_size=5000)
    client.push_image(repo, "v1", image)
    layer = image.blobs[-1]
    layer_digest = digest_of(layer)
    for _ in range(2):
        client.get(f"/v2/{repo}/manifests/v1")
        client.get(f"/v2/{repo}/blobs/{layer_digest}")
    r = client.get(f"/v2/{repo}/blobs/{layer_digest}", headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == layer[10:20]
    r = client.get(f"/v2/{repo}/manifests/v1", headers={"Accept": DOCKER_LIST})
    assert r.status_code == 404 and r.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    r = client.get(f"/v2/{repo}/manifests/nope")
    assert r.status_code == 404 and r.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    r = client.get(f"/v2/{repo.upper()}/manifests/v1")
    assert r.status_code == 400 and r.json()["errors"][0]["code"] == "NAME_INVALID"
    if server.credentials:  # no token: the full path's challenge
        r = Client(server.url).get(f"/v2/{repo}/manifests/v1")
        assert r.status_code == 401 and "WWW-Authenticate" in r.headers


def _parsed(data: bytes) -> tuple[dict[str, str], bytes]:
    """A response's bytes: its header fields (lower-case names) and body; the status line must say 200."""
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    assert status == "HTTP/1.1 200 OK"
    fields = dict(line.split(": ", 1) for line in lines)
    return {k.lower(): v for k, v in fields.items()}, body


def _varying(resp: PreparedResponse) -> dict[str, str]:
    return {k: v for k, v in _parsed(resp.data)[0].items() if k in VARYING}


class _Broken:
    def cached_manifest(self, repository: str, reference: str) -> None:
        raise RuntimeError("a bug in the lane")


def test_the_lane_answers_only_from_memory(tmp_path: Path):
    """In process: the lane's own decisions (None: the full path answers)."""
    config_file = tmp_path / "moorage.toml"
    config_file.write_text(f'[auth]\nenabled = false\n[server]\ndata_dir = "{tmp_path / "data"}"\n')
    image = make_image(n_layers=1, layer_size=2000)
    repo = "lane/decisions"

    async def scenario() -> None:
        app = create_app(load(config_file))
        async with TestServer(app) as test_server, TestClient(test_server) as http:
            lane = app[FAST_LANE]
            server = test_server.runner.server
            assert server is not None
            server.request_handler = lane.install(app, server.request_handler)  # (as registry.app.serve does)

            def answer(method: str, path: str, **headers: str):
                return lane.answer(make_mocked_request(method, path, headers=headers, app=app))

            for blob in image.blobs:
                digest = digest_of(blob)
                r = await http.post(f"/v2/{repo}/blobs/uploads/?digest={digest}", data=blob)
                assert r.status == 201, await r.text()
            r = await http.put(f"/v2/{repo}/manifests/v1", data=image.manifest, headers={"Content-Type": OCI_MANIFEST})
            assert r.status == 201
            layer_digest = digest_of(image.blobs[-1])
            tag_path, digest_path = f"/v2/{repo}/manifests/v1", f"/v2/{repo}/manifests/{image.digest}"
            blob_path = f"/v2/{repo}/blobs/{layer_digest}"
            assert answer("GET", f"/v2/{repo}/manifests/v2") is None  # never pushed: the full path's 404
            for path in (tag_path, blob_path):
                assert (await http.get(path)).status == 200  # the full path fills memory
            got = answer("GET", tag_path, Accept=OCI_MANIFEST)
            assert isinstance(got, PreparedResponse)  # (HTTP/1.1, keep-alive: the head kept as bytes)
            fields, body = _parsed(got.data)
            assert body == image.manifest
            assert fields["docker-content-digest"] == image.digest
            assert fields["docker-distribution-api-version"] == "registry/2.0"
            assert fields["content-length"] == str(len(image.manifest))
            head = answer("HEAD", digest_path)
            assert isinstance(head, PreparedResponse) and _parsed(head.data) == ({**fields, **_varying(head)}, b"")
            blob = answer("GET", blob_path)
            assert isinstance(blob, PreparedResponse) and _parsed(blob.data)[1] == image.blobs[-1]
            assert answer("GET", blob_path, Range="bytes=0-9") is None
            assert answer("HEAD", blob_path) is None  # (a blob's HEAD checks the stored bytes: the full path)
            assert answer("GET", tag_path, Accept=DOCKER_LIST) is None
            assert answer("GET", f"/v2/{repo.upper()}/manifests/v1") is None
            assert answer("GET", f"/v2/{repo}/blobs/uploads") is None
            assert answer("GET", f"/v2/{repo}/tags/list") is None
            # Over the test server's sockets: the lane answers what memory holds.
            answered = lane.answered
            assert (await http.get(digest_path)).status == 200
            assert lane.answered == answered + 1
            # A bug in the lane costs speed, never an answer: the full path answers instead.
            lane.reader = _Broken()
            r = await http.get(digest_path)
            assert r.status == 200 and await r.read() == image.manifest
            assert lane.answered == answered + 1
            lane.reader = app[READER]
            # A delete empties memory of the tag: the next read takes the full path.
            assert (await http.delete(tag_path)).status == 202
            assert answer("GET", tag_path) is None

    asyncio.run(scenario())


def test_the_access_log_line_is_json_with_every_field(server: MoorageServer, client: Client):
    repo = "fastlane/logged"
    client.push_image(repo, "v1", make_image(n_layers=1, layer_size=100))
    client.get(f"/v2/{repo}/manifests/v1")
    rid = client.get(f"/v2/{repo}/manifests/v1", headers={"X-Request-Id": "fast-lane-test-1"}).headers["X-Request-Id"]
    assert rid == "fast-lane-test-1"
    entries = server.access_log_until(lambda es: any(e["request_id"] == rid for e in es), "the request logged")
    line = next(e for e in entries if e["request_id"] == rid)
    assert line["route"] == "/v2/{name}/manifests/{reference}" and line["status"] == 200
    assert line["repository"] == repo and line["action"] == "ecr:BatchGetImage"
    assert line["bytes_out"] > 0 and isinstance(line["duration_ms"], float)
    json.dumps(line)


def test_a_remembered_access_decision_yields_to_every_change(make_server):
    """The lane remembers a principal's allowed pull per header and repository; a policy set, changed or deleted,
    a registry policy, or a token past its expiry is obeyed by the very next request."""
    srv = make_server(auth_config(extra="token_ttl = 3\n"))
    ecr = ecr_client(srv)
    c = Client(srv.url, ("AWS", login_password(srv)))
    repo = "fastlane/decisions"
    c.push_image(repo, "v1", make_image(n_layers=1, layer_size=100))
    arn = ecr.describe_repositories(repositoryNames=[repo])["repositories"][0]["repositoryArn"]
    admin = f"arn:aws:iam::{arn.split(':')[4]}:user/admin"
    path = f"/v2/{repo}/manifests/v1"
    for _ in range(3):
        assert c.get(path).status_code == 200
    deny = {
        "Version": "2012-10-17",
        "Statement": [{"Sid": "no", "Effect": "Deny", "Principal": {"AWS": admin}, "Action": "ecr:BatchGetImage"}],
    }
    ecr.set_repository_policy(repositoryName=repo, policyText=json.dumps(deny))
    assert [c.get(path).status_code for _ in range(3)] == [403] * 3  # (the first fills memory again)
    ecr.delete_repository_policy(repositoryName=repo)
    assert [c.get(path).status_code for _ in range(3)] == [200] * 3
    registry_deny = {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "no", "Effect": "Deny", "Principal": {"AWS": admin}, "Action": "ecr:BatchGetImage", "Resource": arn}
        ],
    }
    ecr.put_registry_policy(policyText=json.dumps(registry_deny))
    assert [c.get(path).status_code for _ in range(3)] == [403] * 3
    ecr.delete_registry_policy()
    assert [c.get(path).status_code for _ in range(3)] == [200] * 3
    wait_for(lambda: c.get(path).status_code == 403, 10, "the token's expiry obeyed")


def test_one_connection_gets_each_header_repository_and_action_decided_on_its_own(make_server):
    """The lane keeps each connection's last decision beside the connection. Over ONE keep-alive connection, a
    request with another Authorization header, another repository or another action (a blob's pull) is decided
    on its own: a reader allowed one repository's manifests gets nothing else, whatever was allowed before."""
    reader_key, reader_secret = "AKIAMOORAGEREADER001", "reader-secret-0123456789"
    only = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
            {"Effect": "Allow", "Action": "ecr:BatchGetImage", "Resource": "arn:aws:ecr:*:*:repository/lane/open"},
        ],
    }
    srv = make_server(auth_config(principal_toml("reader", reader_key, reader_secret, json.dumps(only))))
    admin = Client(srv.url, ("AWS", login_password(srv)))
    image = make_image(n_layers=1, layer_size=300)
    for repo in ("lane/open", "lane/shut"):
        admin.push_image(repo, "v1", image)
        admin.get(f"/v2/{repo}/manifests/v1")  # memory filled (by the full path)
        admin.get(f"/v2/{repo}/blobs/{digest_of(image.blobs[-1])}")

    def basic(password: str) -> str:
        return "Basic " + base64.b64encode(f"AWS:{password}".encode()).decode()

    headers = {"admin": basic(login_password(srv)), "reader": basic(login_password(srv, reader_key, reader_secret))}
    host, port = srv.url.removeprefix("http://").split(":")
    asked = [  # (who, what, repository, status)
        ("admin", "manifests/v1", "lane/shut", 200),
        ("admin", "manifests/v1", "lane/shut", 200),
        ("reader", "manifests/v1", "lane/shut", 403),  # another header, right after the admin's allowed pull
        ("reader", "manifests/v1", "lane/open", 200),
        ("reader", "manifests/v1", "lane/open", 200),
        ("reader", "manifests/v1", "lane/shut", 403),  # another repository
        ("reader", f"blobs/{digest_of(image.blobs[-1])}", "lane/open", 403),  # another action
        (None, "manifests/v1", "lane/open", 401),  # no header at all
        ("admin", "manifests/v1", "lane/open", 200),
        ("reader", "manifests/v1", "lane/open", 200),
    ]
    before = lane_count(srv)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        buf = bytearray()
        for who, what, repo, status in asked:
            auth = f"Authorization: {headers[who]}\r\n" if who else ""
            sock.sendall(
                f"GET /v2/{repo}/{what} HTTP/1.1\r\nHost: {host}\r\nAccept: {OCI_MANIFEST}\r\n{auth}\r\n".encode()
            )
            got, _, _ = _read_response(sock, buf, False)
            assert got.split(" ")[1] == str(status), (who, what, repo, got)
    assert lane_count(srv) == before + 6, "the allowed pulls were the lane's"


def test_a_replica_answers_from_memory_while_another_stores_its_pull_times(
    make_target: Callable[[str], Target], make_server: Callable[..., MoorageServer]
):
    """Two replicas on PostgreSQL + S3. The pulls one serves are stored every PULL_FLUSH_INTERVAL: news to nobody
    (no cache holds pull times), so the other replica's memory stays good and its lane goes on answering, as does
    the writer's own. A push through one is still seen by the very next read through the other."""
    target = make_target("postgresql+s3")
    a, b = (make_server(AUTH_OFF + target.toml(), workers=1) for _ in range(2))
    ca, cb = Client(a.url), Client(b.url)
    repo = "fastlane/replicas"
    path, accept = f"/v2/{repo}/manifests/v1", {"Accept": OCI_MANIFEST}
    first = make_image(n_layers=1, layer_size=100)
    digest = ca.push_image(repo, "v1", first)

    def answered_by_the_lane(srv: MoorageServer, client: Client) -> bool:
        before = lane_count(srv)
        r = client.get(path, headers=accept)
        assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == digest
        return lane_count(srv) == before + 1

    for srv, client in ((a, ca), (b, cb)):
        client.get(path, headers=accept)  # memory filled (by the full path)
        assert answered_by_the_lane(srv, client)
    ecr = ecr_client(b)

    def pulled_at() -> float | None:
        images = ecr.describe_images(repositoryName=repo, imageIds=[{"imageDigest": digest}])["imageDetails"]
        return images[0].get("lastRecordedPullTime")

    wait_for(pulled_at, PULL_FLUSH_INTERVAL + 10, "the pulls' times stored")
    time.sleep(0.5)  # (time for a notification, had there been one, to be heard)
    assert answered_by_the_lane(b, cb), "the other replica's memory survives a pull-time write"
    assert answered_by_the_lane(a, ca), "so does the writer's"
    second = make_image(n_layers=1, layer_size=200)
    digest = ca.push_image(repo, "v1", second)
    r = cb.get(path, headers=accept)
    assert r.status_code == 200 and r.content == second.manifest, "a push through one replica is read through the other"
    assert answered_by_the_lane(b, cb)


def _read_response(sock: socket.socket, buf: bytearray, head_only: bool) -> tuple[str, dict[str, str], bytes]:
    """One response off `sock` (what is read past it stays in `buf`): status line, fields, body."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed mid-head: {bytes(buf)!r}"
        buf += chunk
    end = buf.index(b"\r\n\r\n")
    status, *lines = buf[:end].decode().split("\r\n")
    del buf[: end + 4]
    fields = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines)}
    length = 0 if head_only else int(fields["content-length"])
    while len(buf) < length:
        chunk = sock.recv(65536)
        assert chunk, "the connection closed mid-body"
        buf += chunk
    body = bytes(buf[:length])
    del buf[:length]
    return status, fields, body


def test_the_bytes_on_the_wire_frame_and_close_as_the_full_path(server: MoorageServer, client: Client):
    """The lane writes a kept head's bytes on HTTP/1.1 keep-alive connections: pipelined requests get their
    answers in order and exactly framed (a HEAD sends no body), with the full path's fields. HTTP/1.0 and
    `Connection: close` get the full path's connection handling: the lane's answer closes the connection."""
    repo = "fastlane/wire"
    image = make_image(n_layers=1, layer_size=4000)
    client.push_image(repo, "v1", image)
    layer = image.blobs[-1]
    manifest_path, blob_path = f"/v2/{repo}/manifests/v1", f"/v2/{repo}/blobs/{digest_of(layer)}"
    client.get(manifest_path)
    client.get(blob_path)  # memory filled (by the full path)
    host, port = server.url.removeprefix("http://").split(":")
    auth = ""
    if server.credentials:
        auth = "Authorization: Basic " + base64.b64encode(":".join(server.credentials).encode()).decode() + "\r\n"

    def request(method: str, path: str, version: str = "1.1", extra: str = "") -> bytes:
        return f"{method} {path} HTTP/{version}\r\nHost: {host}\r\nAccept: {OCI_MANIFEST}\r\n{auth}{extra}\r\n".encode()

    asked = [
        ("GET", manifest_path, image.manifest),
        ("HEAD", manifest_path, b""),
        ("GET", blob_path, layer),
        ("GET", manifest_path + "?full=1", image.manifest),
        ("HEAD", manifest_path + "?full=1", b""),
        ("GET", blob_path + "?full=1", layer),
    ]
    before = lane_count(server)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"".join(request(method, path) for method, path, _ in asked))  # all at once: pipelined
        buf = bytearray()
        answers = [_read_response(sock, buf, method == "HEAD") for method, _, _ in asked]
        assert not buf, "nothing past the last answer"
    assert lane_count(server) == before + 3
    for (method, path, body), (status, fields, got) in zip(asked, answers, strict=True):
        assert (status, got) == ("HTTP/1.1 200 OK", body), (method, path)
        assert "connection" not in fields
    for lane, full in zip(answers[:3], answers[3:], strict=True):
        assert {k: v for k, v in lane[1].items() if k not in VARYING} == {
            k: v for k, v in full[1].items() if k not in VARYING
        }
    for version, extra, status in (("1.0", "", "HTTP/1.0 200 OK"), ("1.1", "Connection: close\r\n", "HTTP/1.1 200 OK")):
        before = lane_count(server)
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(request("GET", manifest_path, version, extra))
            buf = bytearray()
            got_status, fields, body = _read_response(sock, buf, False)
            assert (got_status, body) == (status, image.manifest)
            assert fields.get("connection", "close").lower() == "close", fields
            assert sock.recv(1) == b"", "the server closed the connection"
        assert lane_count(server) == before + 1, "the lane answered it"


def test_a_kept_head_is_aiohttps_head_or_none():
    """render_head: the status line, the fields as given, Content-Length and aiohttp's Server field; a field that
    aiohttp would refuse (a control character: a header injection) renders nothing, so aiohttp answers."""
    head = render_head({"Content-Type": "application/json", "ETag": '"x"'}, 12)
    assert head == (
        b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nETag: "x"\r\nContent-Length: 12\r\n'
        + f"Server: {SERVER_SOFTWARE}\r\n".encode()
    )
    assert render_head({"Content-Type": "a\r\nSet-Cookie: x=1"}, 1) is None
    assert render_head({"X\nY": "z"}, 1) is None


def test_kept_heads_are_bounded(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(prepared, "HEADS", 2)
    heads = prepared.Heads()
    for i in range(5):
        assert heads.render(("b", str(i)), {"ETag": str(i)}, i) == render_head({"ETag": str(i)}, i)
        assert heads.get(("b", str(i))) is not None
    assert len(heads._heads) <= 2
