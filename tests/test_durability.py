"""Restarts, crashes (SIGKILL) and resumable uploads against a real server process."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from tests.helpers import wait_for
from tests.oci import Client, digest_of, error_codes, make_image, random_blob
from tests.server import AUTH_OFF, MoorageServer, moorage_cli


def blob_files(data_dir: Path) -> set[str]:
    return {f"{p.parent.parent.name}:{p.name}" for p in (data_dir / "blobs").glob("*/*/*") if p.is_file()}


def send_partial_stream(srv: MoorageServer, path: str, chunks: list[bytes]) -> socket.socket:
    """Send a chunked-encoding PATCH whose body never finishes; return the open socket."""
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.sendall(
        f"PATCH {path} HTTP/1.1\r\nHost: {srv.host}\r\nContent-Type: application/octet-stream\r\n"
        "Transfer-Encoding: chunked\r\n\r\n".encode()
    )
    for chunk in chunks:
        sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    return sock


def wait_for_upload_size(c: Client, location: str, at_least: int, timeout: float = 10) -> int:
    """The upload's size once it holds at least `at_least` bytes."""
    return wait_for(lambda: (n := c.upload_size(location)) >= at_least and n, timeout, f"{at_least} bytes uploaded")


def test_upload_session_resumes_after_restart(make_server) -> None:
    srv = make_server()
    c = Client(srv.url)
    data = random_blob(300_000)
    r = c.post("/v2/dur/resume/blobs/uploads/")
    assert r.status_code == 202
    loc = r.headers["Location"]
    r = c.patch(loc, data=data[:100_000], headers={"Content-Range": "0-99999"})
    assert r.status_code == 202 and r.headers["Range"] == "0-99999"

    srv.restart()
    c = Client(srv.url)
    r = c.get(loc)
    assert r.status_code == 204 and r.headers["Range"] == "0-99999"
    r = c.patch(loc, data=data[100_000:], headers={"Content-Range": f"100000-{len(data) - 1}"})
    assert r.status_code == 202
    r = c.put(loc, params={"digest": digest_of(data)})
    assert r.status_code == 201, r.text
    assert c.get(f"/v2/dur/resume/blobs/{digest_of(data)}").content == data


def test_committed_content_survives_sigkill(make_server) -> None:
    srv = make_server()
    c = Client(srv.url)
    img = make_image(n_layers=3, layer_size=50_000)
    c.push_image("dur/kill", "v1", img)
    srv.kill()
    srv.start()
    c = Client(srv.url)
    r = c.get("/v2/dur/kill/manifests/v1", headers={"Accept": img.media_type})
    assert r.status_code == 200 and r.content == img.manifest
    for blob in img.blobs:
        assert c.get(f"/v2/dur/kill/blobs/{digest_of(blob)}").content == blob


def test_sigkill_mid_upload_never_exposes_a_partial_blob(make_server) -> None:
    srv = make_server()
    c = Client(srv.url)
    data = random_blob(3 * 1024 * 1024)
    digest = digest_of(data)
    r = c.post("/v2/dur/partial/blobs/uploads/")
    loc = r.headers["Location"]
    sock = send_partial_stream(srv, loc, [data[i : i + 65536] for i in range(0, 2 * 1024 * 1024, 65536)])
    received = wait_for_upload_size(c, loc, 1024 * 1024)
    srv.kill()
    sock.close()
    assert digest not in blob_files(srv.data_dir)

    srv.start()
    c = Client(srv.url)
    assert c.head(f"/v2/dur/partial/blobs/{digest}").status_code == 404
    # The session is still there; the client resumes from what the server reports it holds.
    r = c.get(loc)
    assert r.status_code == 204
    have = int(r.headers["Range"].split("-")[1]) + 1
    assert received <= have <= 2 * 1024 * 1024
    r = c.patch(loc, data=data[have:], headers={"Content-Range": f"{have}-{len(data) - 1}"})
    assert r.status_code == 202, r.text
    assert c.put(loc, params={"digest": digest}).status_code == 201
    assert c.get(f"/v2/dur/partial/blobs/{digest}").content == data


def test_sigkill_mid_monolithic_upload_leaves_nothing(make_server) -> None:
    srv = make_server()
    data = random_blob(2 * 1024 * 1024)
    digest = digest_of(data)
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.sendall(
        f"POST /v2/dur/mono/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: {srv.host}\r\n"
        f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data[: 1024 * 1024]
    )
    wait_for(lambda: list((srv.data_dir / "uploads").glob(".ingest-*")), 10, "the upload's spool file", interval=0.02)
    srv.kill()
    sock.close()
    srv.start()
    assert digest not in blob_files(srv.data_dir)
    c = Client(srv.url)
    assert c.head(f"/v2/dur/mono/blobs/{digest}").status_code == 404
    # The spool file is left alone while it might belong to a live writer, and removed once stale.
    leftovers = list((srv.data_dir / "uploads").glob(".ingest-*"))
    assert leftovers
    for path in leftovers:
        os.utime(path, (time.time() - 7200, time.time() - 7200))
    p = moorage_cli("gc", "--config", srv.config_path, "--data-dir", srv.data_dir, timeout=60)
    assert p.returncode == 0, p.stderr
    assert not list((srv.data_dir / "uploads").glob(".ingest-*"))  # (removed as stale by the command)
    assert json.loads(p.stdout)["dryRun"] is False


def test_blob_is_stored_once_across_repositories(make_server) -> None:
    srv = make_server()
    c = Client(srv.url)
    data = random_blob(10_000)
    for repo in ("one/a", "two/b", "three/c"):
        c.push_blob(repo, data)
    c.post("/v2/four/d/blobs/uploads/", params={"mount": digest_of(data), "from": "one/a"})
    assert blob_files(srv.data_dir) == {digest_of(data)}
    assert sorted(p.name for p in (srv.data_dir / "uploads").iterdir()) == []


def test_wrong_digest_stores_nothing(make_server) -> None:
    srv = make_server()
    c = Client(srv.url)
    data = random_blob(5000)
    wrong = digest_of(b"something else")
    r = c.post("/v2/dur/wrong/blobs/uploads/", params={"digest": wrong}, data=data)
    assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"]
    r = c.post("/v2/dur/wrong/blobs/uploads/")
    loc = r.headers["Location"]
    c.patch(loc, data=data)
    r = c.put(loc, params={"digest": wrong})
    assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"]
    assert blob_files(srv.data_dir) == set()
    assert list((srv.data_dir / "uploads").iterdir()) == []


def test_create_on_push_false_gives_name_unknown(make_server) -> None:
    srv = make_server(AUTH_OFF + "[registry]\ncreate_on_push = false\n")
    c = Client(srv.url)
    r = c.post("/v2/nope/missing/blobs/uploads/")
    assert r.status_code == 404 and error_codes(r) == ["NAME_UNKNOWN"]
    img = make_image()
    r = c.put("/v2/nope/missing/manifests/v1", data=img.manifest, headers={"Content-Type": img.media_type})
    assert r.status_code == 404 and error_codes(r) == ["NAME_UNKNOWN"]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("[server]\nlisten = 5\n", "server.listen"),
        ("[server]\nlisten = 'localhost'\n", "server.listen"),
        ("[registry]\naccount_id = '12'\n", "registry.account_id"),
        ("[registry]\nregion = 'Mars'\n", "registry.region"),
        ("[registry]\ncreate_on_push = 'yes'\n", "registry.create_on_push"),
        ("[registry]\nbogus = 1\n", "registry.bogus"),
        ("[nonsense]\nx = 1\n", "[nonsense]"),
        ("[log]\nlevel = 'loud'\n", "log.level"),
        ("not toml at all [", "invalid TOML"),
    ],
)
def test_bad_config_fails_at_start_naming_the_key(tmp_path: Path, config: str, message: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(config)
    p = moorage_cli("serve", "--config", cfg, "--data-dir", tmp_path / "d", timeout=30)
    assert p.returncode == 2
    assert message in p.stderr and "Traceback" not in p.stderr, p.stderr
