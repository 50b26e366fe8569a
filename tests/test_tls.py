"""HTTPS: `[server] tls_cert_file` (a PEM chain) and `tls_key_file` on every worker; handshakes bounded by
`header_timeout`; unusable files stop the start (exit 2) saying which and why; a docker daemon that trusts the
CA through `certs.d/HOST:PORT/ca.crt` logs in, pushes and pulls.

The docker test runs the daemon and Moorage in private mount and network namespaces (`unshare -m -n`): only a
loopback interface, on which Moorage listens at 192.0.2.1 (TEST-NET-1) as registry.moorage.test (a bind-mounted
/etc/hosts), because docker treats registries on 127.0.0.0/8 as insecure (plain HTTP fallback, certs.d never
read). dockerd has no option for its certs.d directory, so /etc/docker is a bind-mounted temp dir inside the
namespace; the machine's own /etc is untouched and nothing can leave it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import sys
import time
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import serialization

from tests.dockerd import Dockerd, rootfs_tar
from tests.helpers import running, wait_for
from tests.pki import Pki, PrivateNetwork
from tests.server import (
    ADMIN_KEY,
    ADMIN_SECRET,
    AUTH_OFF,
    MoorageServer,
    assert_closed_by_server,
    auth_config,
    spawn,
    terminate,
)


def tls_config(pki: Pki, server: str = "", base: str = AUTH_OFF) -> str:
    return base + f'[server]\ntls_cert_file = "{pki.cert}"\ntls_key_file = "{pki.key}"\n' + server


def access_workers(srv: MoorageServer) -> set[int]:
    lines = [json.loads(x) for x in srv.log().splitlines() if '"moorage.access"' in x]
    return {x["worker"] for x in lines if "worker" in x}


def test_a_certificate_chain_is_served_by_every_worker(tmp_path: Path):
    """The server's certificate is signed by an intermediate: clients that trust only the root verify it, so
    the chain went out, from each of the two workers."""
    pki = Pki(tmp_path / "pki", ["localhost"], intermediate=True)
    srv = MoorageServer(tmp_path / "data", tls_config(pki), workers=2, tls_ca=pki.ca).start()
    try:
        srv.log_containing(f"serving on https://127.0.0.1:{srv.port} with 2 workers")
        for _ in range(100):  # new connections, until both workers have answered one
            r = requests.get(srv.url + "/v2/", verify=str(pki.ca), headers={"Connection": "close"}, timeout=10)
            assert r.status_code == 200, r.text
            if access_workers(srv) == {0, 1}:
                break
        assert access_workers(srv) == {0, 1}
        with pytest.raises(requests.exceptions.SSLError):  # and it is TLS that is checked: another CA fails
            requests.get(srv.url + "/v2/", verify=str(Pki(tmp_path / "other", ["localhost"]).ca), timeout=10)
    finally:
        srv.stop()


def test_a_stalled_tls_handshake_is_cut_after_header_timeout(tmp_path: Path):
    """A client that connects and never finishes its handshake is dropped after header_timeout (asyncio's own
    default is 60 s), while others are served."""
    pki = Pki(tmp_path / "pki", ["localhost"])
    srv = MoorageServer(tmp_path / "data", tls_config(pki, 'header_timeout = "1s"\n'), workers=1, tls_ca=pki.ca)
    srv.start()
    try:
        silent = socket.create_connection(("127.0.0.1", srv.port))
        partial = socket.create_connection(("127.0.0.1", srv.port))
        partial.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello, no more
        started = time.monotonic()
        assert requests.get(srv.url + "/healthz", verify=str(pki.ca), timeout=5).status_code == 200
        for sock in (silent, partial):
            assert_closed_by_server(sock, within=15)
        took = time.monotonic() - started
        assert took < 3.0, f"stalled handshakes were cut after {took:.1f}s, not about header_timeout (1s)"
        assert requests.get(srv.url + "/healthz", verify=str(pki.ca), timeout=5).status_code == 200
    finally:
        srv.stop()


def test_sigterm_with_a_stalled_upload_over_tls_exits_by_the_drain_timeout(tmp_path: Path):
    pki = Pki(tmp_path / "pki", ["localhost"])
    srv = MoorageServer(tmp_path / "data", tls_config(pki, 'drain_timeout = "2s"\n'), workers=1, tls_ca=pki.ca)
    srv.start()
    loc = requests.post(srv.url + "/v2/tls/stall/blobs/uploads/", verify=str(pki.ca), timeout=10).headers["Location"]
    context = ssl.create_default_context(cafile=str(pki.ca))
    sock = context.wrap_socket(socket.create_connection(("127.0.0.1", srv.port)), server_hostname="localhost")
    sock.sendall(f"PATCH {loc} HTTP/1.1\r\nHost: {srv.host}\r\nContent-Length: {4 << 20}\r\n\r\n".encode())
    sock.sendall(b"x" * (3 << 19))  # then nothing
    wait_for(
        lambda: requests.get(srv.url + loc, verify=str(pki.ca), timeout=10).headers.get("Range", "0-0") != "0-0",
        10,
        "the stalled PATCH to reach the server",
    )
    assert srv.proc is not None
    started = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    code = srv.wait(30)
    took = time.monotonic() - started
    sock.close()
    assert code == 0 and 1.0 < took <= 2.3, f"exit {code} after {took:.2f}s\n{srv.log()[-2000:]}"


# -- unusable files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("problem", ["encrypted-key", "chain-in-the-wrong-order", "a-certificate-as-the-key"])
def test_unusable_tls_files_stop_the_start_saying_why(tmp_path: Path, problem: str):
    """(Missing files, garbage and another certificate's key: tests/test_hostname.py.)"""
    pki = Pki(tmp_path / "pki", ["localhost"], intermediate=True)
    cert, key = pki.cert, pki.key
    if problem == "encrypted-key":
        key = tmp_path / "encrypted-key.pem"
        plain = serialization.load_pem_private_key(pki.key.read_bytes(), password=None)
        key.write_bytes(
            plain.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            )
        )
        expected = f"server.tls_key_file: {key} is encrypted; give its unencrypted PEM form"
    elif problem == "chain-in-the-wrong-order":
        cert = tmp_path / "reversed.pem"
        leaf, intermediate = pki.cert.read_text().split("-----END CERTIFICATE-----\n")[:2]
        cert.write_text(intermediate + "-----END CERTIFICATE-----\n" + leaf + "-----END CERTIFICATE-----\n")
        expected = (
            f"server.tls_key_file: {key} is not the private key of the first certificate in {cert} (it is the key "
            "of certificate 2 there: the server's must come first)"
        )
    else:
        key = pki.cert
        expected = f"server.tls_key_file: {key} is not a PEM private key"
    root = tmp_path / "srv"
    # stdin is not a terminal here; with one, OpenSSL would have asked for the encrypted key's passphrase
    proc = spawn(f'[server]\ntls_cert_file = "{cert}"\ntls_key_file = "{key}"\n', root, "127.0.0.1:0")
    try:
        assert proc.wait(30) == 2
    finally:
        terminate(proc)
    out = (root / "moorage.log").read_text()
    assert f"moorage: configuration error: {expected}" in out, out
    assert "serving on" not in out, out


# -- docker, trusting the CA through certs.d ------------------------------------------------------------------

REGISTRY_NAME = "registry.moorage.test"
REGISTRY_IP = "192.0.2.1"  # TEST-NET-1: not 127.0.0.0/8, which docker would treat as an insecure registry
REGISTRY_PORT = 5443


@pytest.mark.docker
@pytest.mark.slow
def test_docker_trusts_moorage_through_certs_d(dockerd: Dockerd, tmp_path: Path):
    """Without the CA docker refuses the registry (unknown authority); with
    /etc/docker/certs.d/registry.moorage.test:5443/ca.crt it logs in, pushes and pulls, over a chain served by
    two workers."""
    for tool in ("unshare", "nsenter", "ip", "curl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    if not Path("/etc/docker").is_dir():
        pytest.skip("/etc/docker does not exist to be covered by a private bind mount")
    host = f"{REGISTRY_NAME}:{REGISTRY_PORT}"
    pki = Pki(tmp_path / "pki", [REGISTRY_NAME], ips=(REGISTRY_IP,), intermediate=True)
    etc_docker = tmp_path / "etc-docker"
    certs = etc_docker / "certs.d" / host
    certs.mkdir(parents=True)
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n{REGISTRY_IP} {REGISTRY_NAME}\n::1 localhost\n")
    try:
        ns = PrivateNetwork({Path("/etc/hosts"): hosts, Path("/etc/docker"): etc_docker}, (f"{REGISTRY_IP}/32",))
    except RuntimeError as e:
        pytest.skip(str(e))
    root = tmp_path / "srv"
    proc = spawn(tls_config(pki, base=auth_config()), root, f"{REGISTRY_IP}:{REGISTRY_PORT}", ns.wrap, workers=2)
    d: Dockerd | None = None
    try:
        wait_for(
            lambda: (
                running(proc, root / "moorage.log")
                and not ns.run(
                    "curl", "-sf", "--cacert", str(pki.ca), f"https://{host}/healthz", check=False
                ).returncode
            ),
            30,
            "the server to answer",
            interval=0.2,
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env |= {"AWS_ACCESS_KEY_ID": ADMIN_KEY, "AWS_SECRET_ACCESS_KEY": ADMIN_SECRET, "AWS_CA_BUNDLE": str(pki.ca)}
        login = [sys.executable, "-m", "registry", "get-login-password", "--endpoint", f"https://{host}"]
        password = ns.run(*login, env=env).stdout.strip()

        d = Dockerd(dockerd.dockerd_bin, dockerd.docker_bin, wrap=ns.wrap)
        d.start()
        refused = d.run("login", "--username", "AWS", "--password-stdin", host, input=password, check=False)
        assert refused.returncode != 0 and "certificate signed by unknown authority" in refused.stderr, refused

        shutil.copy(pki.ca, certs / "ca.crt")  # what an operator does; docker reads certs.d at each connection
        timings = {}
        started = time.monotonic()
        out = d.run("login", "--username", "AWS", "--password-stdin", host, input=password).stdout
        timings["login"] = time.monotonic() - started
        assert "Login Succeeded" in out, out
        image = f"{host}/team/app:1"
        d.run("import", str(rootfs_tar(tmp_path / "rootfs.tar", "pushed over TLS\n")), image)
        started = time.monotonic()
        pushed = d.run("push", image, timeout=180).stdout
        timings["push"] = time.monotonic() - started
        digest = pushed.strip().rsplit("digest: ", 1)[1].split()[0]
        d.run("rmi", image)
        started = time.monotonic()
        pulled = d.run("pull", image, timeout=180).stdout
        timings["pull"] = time.monotonic() - started
        assert f"Digest: {digest}" in pulled, pulled
        log = (root / "moorage.log").read_text()
        assert f"serving on https://{REGISTRY_IP}:{REGISTRY_PORT} with 2 workers" in log
        assert '"PUT /v2/team/app/manifests/1 201"' in log, log[-3000:]
        print("docker over TLS:", ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))
    finally:
        if d is not None:
            d.stop()
        terminate(proc)
        ns.close()
