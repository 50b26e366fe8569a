"""Upstream registries for the pull-through cache tests: a real CNCF Distribution and a misbehaving one.

- `DistributionRegistry` runs `docker-registry serve` (Distribution 2.8) on a free loopback port with its own
  storage directory and access log; it can be stopped and restarted on the same port and data, and its access
  log tells how many requests (of which method, path and user agent) it answered.
- `MisbehavingUpstream` is a small aiohttp registry run as a subprocess (`python -m tests.upstreams`). Tests
  load manifests and blobs into it over an admin endpoint and choose per blob how it misbehaves: bytes that do
  not match the digest, a body cut short (connection dropped, or a consistent but short Content-Length), a
  delay before answering, or a stall half way. It writes an access log in the same format as Distribution.
- `push_image` uploads a manifest and its blobs to any registry with plain HTTP (monolithic uploads).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import requests

from tests.helpers import require, wait_for
from tests.server import free_port, terminate

DISTRIBUTION_BIN = "/usr/bin/docker-registry"
MOORAGE_USER_AGENT = "moorage-pull-through"
REPO_ROOT = Path(__file__).resolve().parent.parent

# `127.0.0.1 - - [date] "GET /v2/x/manifests/y HTTP/1.1" 404 91 "" "curl/7.88.1"`
ACCESS_LINE = re.compile(
    r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3}) \S+ "[^"]*" "(?P<agent>[^"]*)"'
)


@dataclass(frozen=True)
class Access:
    method: str
    path: str
    status: int
    agent: str

    @property
    def line(self) -> str:
        return f"{self.method} {self.path}"


class _AccessLogged:
    """An upstream process whose access log lines follow `ACCESS_LINE`."""

    log_path: Path
    port: int

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def accesses(self, pattern: str = "", *, agent: str | None = None, settle: float = 0.2) -> list[Access]:
        """Requests answered so far whose `METHOD PATH` matches the regex `pattern` (re.search), optionally
        only those whose User-Agent contains `agent`. Waits until the log has been quiet for `settle` seconds,
        since a line is written just after its response."""
        self._settle(settle)
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        out = []
        rx = re.compile(pattern)
        for m in ACCESS_LINE.finditer(text):
            a = Access(m["method"], m["path"], int(m["status"]), m["agent"])
            if rx.search(a.line) and (agent is None or agent in a.agent):
                out.append(a)
        return out

    def count(self, pattern: str = "", *, agent: str | None = None, settle: float = 0.2) -> int:
        return len(self.accesses(pattern, agent=agent, settle=settle))

    def _settle(self, quiet: float) -> None:
        if quiet <= 0:
            return
        deadline = time.monotonic() + 5
        last = -1
        while time.monotonic() < deadline:
            size = self.log_path.stat().st_size if self.log_path.exists() else 0
            if size == last:
                return
            last = size
            time.sleep(quiet)


def wait_http(
    url: str, proc: subprocess.Popen[bytes], what: str, log: Path, timeout: float, ok: tuple[int, ...] = (200,)
) -> None:
    """Wait until `url` answers 200 (or a status of `ok`); RuntimeError, with the log's tail, if `proc` exits or
    time runs out."""

    def answers() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log_tail(log)}")
        return requests.get(url, timeout=5).status_code in ok

    try:
        wait_for(answers, timeout, f"{what} to answer {url}")
    except AssertionError as e:
        raise RuntimeError(f"{e}:\n{log_tail(log)}") from None


def log_tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except FileNotFoundError:
        return "(no log)"


class DistributionRegistry(_AccessLogged):
    """`docker-registry serve` with its own directory: storage in <root>/reg, access log in <root>/access.log."""

    def __init__(self, root: Path, port: int | None = None, *, htpasswd: tuple[str, str] | None = None) -> None:
        """`htpasswd`: (username, password) that every request must carry (Basic), as Distribution's htpasswd
        auth has it; without it, anyone may push and pull."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.config_path = self.root / "config.yml"
        self.log_path = self.root / "access.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_fh: IO[bytes] | None = None
        auth = ""
        self.credentials = htpasswd
        if htpasswd is not None:
            import bcrypt

            user, password = htpasswd
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
            (self.root / "htpasswd").write_text(f"{user}:{hashed}\n")
            auth = f"auth: {{htpasswd: {{realm: moorage-tests, path: {self.root / 'htpasswd'}}}}}\n"
        self.config_path.write_text(
            "version: 0.1\n"
            "log: {level: info, accesslog: {disabled: false}}\n"
            f"storage: {{filesystem: {{rootdirectory: {self.root / 'reg'}}}, delete: {{enabled: true}}}}\n"
            f"http: {{addr: {self.host}}}\n" + auth
        )

    def start(self, timeout: float = 15.0) -> DistributionRegistry:
        """Start it and wait until it answers. Without Distribution installed, a skip (a failure under CI=true)
        naming it."""
        assert self.proc is None, "already running"
        binary = require(DISTRIBUTION_BIN, "CNCF Distribution: apt-get install docker-registry")
        self._log_fh = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [binary, "serve", str(self.config_path)],
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            ok = (401,) if self.credentials else (200,)
            wait_http(self.url + "/v2/", self.proc, "docker-registry", self.log_path, timeout, ok)
        except RuntimeError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, grace=10)
            self.proc = None
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def restart(self) -> DistributionRegistry:
        self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


# -- pushing with plain HTTP -----------------------------------------------------------------------------


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_blob(base_url: str, repo: str, data: bytes, auth: tuple[str, str] | None = None) -> str:
    digest = digest_of(data)
    r = requests.post(f"{base_url}/v2/{repo}/blobs/uploads/", timeout=30, auth=auth)
    assert r.status_code == 202, (r.status_code, r.text)
    location = r.headers["Location"]
    if location.startswith("/"):
        location = base_url + location
    sep = "&" if "?" in location else "?"
    r = requests.put(
        f"{location}{sep}digest={digest}",
        data=data,
        headers={"Content-Type": "application/octet-stream"},
        timeout=120,
        auth=auth,
    )
    assert r.status_code == 201, (r.status_code, r.text)
    return digest


def push_image(
    base_url: str,
    repo: str,
    tag: str,
    manifest: bytes,
    media_type: str,
    blobs: list[bytes],
    auth: tuple[str, str] | None = None,
) -> str:
    """Upload `blobs` then PUT `manifest` under `tag`; returns the manifest digest the registry reports."""
    for blob in blobs:
        push_blob(base_url, repo, blob, auth)
    r = requests.put(
        f"{base_url}/v2/{repo}/manifests/{tag}",
        data=manifest,
        headers={"Content-Type": media_type},
        timeout=30,
        auth=auth,
    )
    assert r.status_code == 201, (r.status_code, r.text)
    assert r.headers.get("Docker-Content-Digest") == digest_of(manifest), dict(r.headers)
    return digest_of(manifest)


# -- the misbehaving upstream ------------------------------------------------------------------------------

BLOB_MODES = ("ok", "corrupt", "truncate", "short", "slow", "stall")


class MisbehavingUpstream(_AccessLogged):
    """A real HTTP registry (aiohttp, in a subprocess) that serves what it is given, badly on request.

    Blob modes: `ok`; `corrupt` (as many bytes as promised, but not the digest's); `truncate` (Content-Length
    of the whole blob, half of it sent, then the connection is dropped); `short` (half the blob with a
    matching Content-Length); `slow` (`delay` seconds before the response starts); `stall` (Content-Length of
    the whole blob, half sent, then `delay` seconds of silence before the connection is dropped).
    Manifests can be delayed the same way.
    """

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.log_path = self.root / "access.log"
        self.stderr_path = self.root / "stderr.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    def start(self, timeout: float = 20.0) -> MisbehavingUpstream:
        assert self.proc is None, "already running"
        self._stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.upstreams", "--port", str(self.port), "--log", str(self.log_path)],
            cwd=REPO_ROOT,
            stdout=self._stderr,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            wait_http(self.url + "/v2/", self.proc, "misbehaving upstream", self.stderr_path, timeout)
        except RuntimeError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, grace=10)
            self.proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def put_blob(self, data: bytes, mode: str = "ok", delay: float = 0.0) -> str:
        assert mode in BLOB_MODES, mode
        digest = digest_of(data)
        r = requests.put(
            f"{self.url}/__admin/blob", params={"digest": digest, "mode": mode, "delay": delay}, data=data, timeout=30
        )
        assert r.status_code == 204, (r.status_code, r.text)
        return digest

    def set_blob_mode(self, digest: str, mode: str, delay: float = 0.0) -> None:
        assert mode in BLOB_MODES, mode
        r = requests.post(
            f"{self.url}/__admin/blob", params={"digest": digest, "mode": mode, "delay": delay}, timeout=30
        )
        assert r.status_code == 204, (r.status_code, r.text)

    def put_manifest(self, repo: str, tag: str, body: bytes, media_type: str, delay: float = 0.0) -> str:
        """Serve `body` as `repo:tag` and by its digest. `tag` may also be a digest that is not the body's
        (an upstream that lies about content addressing)."""
        r = requests.put(
            f"{self.url}/__admin/manifest",
            params={"repo": repo, "tag": tag, "delay": delay},
            data=body,
            headers={"Content-Type": media_type},
            timeout=30,
        )
        assert r.status_code == 204, (r.status_code, r.text)
        return digest_of(body)


def _serve(port: int, log_path: Path) -> None:
    """The misbehaving upstream's server (runs in its own process)."""
    from aiohttp import web

    blobs: dict[str, tuple[bytes, str, float]] = {}  # digest -> (data, mode, delay)
    manifests: dict[tuple[str, str], tuple[bytes, str, float]] = {}  # (repo, tag or digest) -> (body, type, delay)
    log = open(log_path, "a", buffering=1)  # open for the life of the process

    @web.middleware
    async def access_log(request: web.Request, handler):  # type: ignore[no-untyped-def]
        status = 500
        try:
            resp = await handler(request)
            status = resp.status
            return resp
        except web.HTTPException as e:
            status = e.status
            raise
        finally:
            if not request.path.startswith("/__admin"):
                when = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime())
                agent = request.headers.get("User-Agent", "")
                log.write(
                    f'127.0.0.1 - - [{when}] "{request.method} {request.path_qs} HTTP/1.1" {status} 0 "" "{agent}"\n'
                )

    def error(status: int, code: str, message: str) -> web.Response:
        body = json.dumps({"errors": [{"code": code, "message": message}]})
        return web.Response(status=status, text=body, content_type="application/json")

    async def base(request: web.Request) -> web.Response:
        return web.json_response({})

    async def admin_blob(request: web.Request) -> web.Response:
        digest, mode, delay = request.query["digest"], request.query["mode"], float(request.query.get("delay", 0))
        if request.method == "PUT":
            blobs[digest] = (await request.read(), mode, delay)
        else:
            blobs[digest] = (blobs[digest][0], mode, delay)
        return web.Response(status=204)

    async def admin_manifest(request: web.Request) -> web.Response:
        body = await request.read()
        media_type = request.headers["Content-Type"]
        entry = (body, media_type, float(request.query.get("delay", 0)))
        repo = request.query["repo"]
        manifests[(repo, request.query["tag"])] = entry
        manifests[(repo, digest_of(body))] = entry
        return web.Response(status=204)

    async def v2(request: web.Request) -> web.StreamResponse:
        path = request.match_info["tail"]
        m = re.fullmatch(r"(?P<repo>.+)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)", path)
        if m is None:
            return error(404, "NAME_UNKNOWN", f"no route for {path}")
        repo, kind, ref = m["repo"], m["kind"], m["ref"]
        if kind == "manifests":
            entry = manifests.get((repo, ref))
            if entry is None:
                return error(404, "MANIFEST_UNKNOWN", f"manifest {repo}:{ref} unknown")
            body, media_type, delay = entry
            await asyncio.sleep(delay)
            headers = {
                "Content-Type": media_type,
                "Docker-Content-Digest": ref if ref.startswith("sha256:") else digest_of(body),
            }
            return web.Response(body=body, headers=headers)  # aiohttp sends no body for a HEAD
        blob = blobs.get(ref)
        if blob is None:
            return error(404, "BLOB_UNKNOWN", f"blob {ref} unknown")
        data, mode, delay = blob
        headers = {"Content-Type": "application/octet-stream", "Docker-Content-Digest": ref}
        if mode == "slow":
            await asyncio.sleep(delay)
        if mode in ("ok", "slow"):
            return web.Response(body=data, headers=headers)
        if mode == "corrupt":
            return web.Response(body=bytes(b ^ 0x5A for b in data), headers=headers)
        half = data[: len(data) // 2]
        if mode == "short":
            return web.Response(body=half, headers=headers)
        resp = web.StreamResponse(headers=headers)
        resp.content_length = len(data)
        await resp.prepare(request)
        await resp.write(half)
        await asyncio.sleep(delay if mode == "stall" else 0.1)
        assert request.transport is not None
        request.transport.abort()  # drop the connection mid-body
        raise ConnectionResetError("cut short on purpose")

    app = web.Application(middlewares=[access_log], client_max_size=1 << 30)
    app.router.add_get("/v2/", base)
    app.router.add_get("/v2", base)
    app.router.add_route("PUT", "/__admin/blob", admin_blob)
    app.router.add_route("POST", "/__admin/blob", admin_blob)
    app.router.add_route("PUT", "/__admin/manifest", admin_manifest)
    app.router.add_route("*", "/v2/{tail:.+}", v2)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, handle_signals=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="A misbehaving OCI registry for the pull-through cache tests")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", type=Path, required=True)
    args = parser.parse_args()
    _serve(args.port, args.log)
