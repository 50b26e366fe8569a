"""The clients: wrk (with a Lua `done` hook that prints its summary as JSON), skopeo (isolated from the
machine's containers config), and a few plain-HTTP helpers (timed GETs, pagination walks, streaming upload).
Every run has a timeout; a run that saw errors or non-2xx answers raises BenchError instead of giving a number.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import requests

from bench.servers import BenchError

WRK_BIN = shutil.which("wrk") or "wrk"
SKOPEO_BIN = shutil.which("skopeo") or "skopeo"

WRK_LUA = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d, "mean_us": %f}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    bytes: int
    errors: dict[str, int]
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def bytes_per_s(self) -> float:
        return self.bytes / self.seconds if self.seconds else 0.0


class Wrk:
    def __init__(self, workdir: Path) -> None:
        self.script = workdir / "summary.lua"
        self.script.write_text(WRK_LUA)

    def run(
        self,
        url: str,
        *,
        duration: float,
        connections: int,
        threads: int | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> WrkResult:
        """`wrk -c connections -d duration`; raises BenchError when any request failed or was not 2xx/3xx."""
        threads = threads or min(connections, 2)
        cmd = [WRK_BIN, "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(duration))}s"]
        cmd += ["--timeout", f"{int(timeout)}s", "-s", str(self.script)]
        for key, value in (headers or {}).items():
            cmd += ["-H", f"{key}: {value}"]
        cmd.append(url)
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + timeout + 30, check=False)
        except subprocess.TimeoutExpired:
            raise BenchError(f"wrk on {url} did not finish") from None
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
        if p.returncode != 0 or line is None:
            raise BenchError(f"wrk failed ({p.returncode}): {p.stderr.strip()[-500:]} {p.stdout.strip()[-500:]}")
        data = json.loads(line.removeprefix("WRKJSON "))
        errors = {k: data[k] for k in ("connect", "read", "write", "status", "timeout") if data[k]}
        if errors or data["requests"] == 0:
            raise BenchError(f"wrk on {url}: {data['requests']} requests, errors {errors}")
        return WrkResult(
            data["requests"],
            data["duration_us"] / 1e6,
            data["bytes"],
            errors,
            data["p50_us"] / 1000,
            data["p99_us"] / 1000,
        )


class Skopeo:
    """skopeo with its own policy (accept anything), empty registries.conf, auth file and tmpdir."""

    def __init__(self, workdir: Path) -> None:
        cfg = workdir / "skopeo"
        (cfg / "registries.d").mkdir(parents=True, exist_ok=True)
        (cfg / "tmp").mkdir(exist_ok=True)
        (cfg / "policy.json").write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        (cfg / "registries.conf").write_text("")
        (cfg / "auth.json").write_text("{}")
        self.env = {
            **os.environ,
            "CONTAINERS_REGISTRIES_CONF": str(cfg / "registries.conf"),
            "REGISTRY_AUTH_FILE": str(cfg / "auth.json"),
        }
        self.base = [
            SKOPEO_BIN,
            "--policy", str(cfg / "policy.json"),
            "--registries.d", str(cfg / "registries.d"),
            "--tmpdir", str(cfg / "tmp"),
        ]  # fmt: skip

    def copy_cmd(self, src: str, dst: str, *, src_creds: str | None = None, dest_creds: str | None = None) -> list[str]:
        cmd = [*self.base, "copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false", "--preserve-digests"]
        if src_creds:
            cmd += ["--src-creds", src_creds]
        if dest_creds:
            cmd += ["--dest-creds", dest_creds]
        return [*cmd, src, dst]

    def copy(
        self, src: str, dst: str, *, src_creds: str | None = None, dest_creds: str | None = None, timeout: float = 900
    ) -> float:
        """Run one copy; its wall time in seconds."""
        cmd = self.copy_cmd(src, dst, src_creds=src_creds, dest_creds=dest_creds)
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise BenchError(f"skopeo copy {src} -> {dst} took over {timeout}s") from None
        elapsed = time.perf_counter() - t0
        if p.returncode != 0:
            raise BenchError(f"skopeo copy {src} -> {dst} failed: {p.stderr.strip()[-800:]}")
        return elapsed

    def copy_concurrently(self, jobs: list[tuple[str, str, str | None]], timeout: float = 900) -> list[float]:
        """Start every (src, dst, src_creds) copy at once; each one's wall time. All are killed on failure."""
        procs: list[subprocess.Popen[str]] = []
        times: list[float] = []
        t0 = time.perf_counter()
        try:
            for src, dst, creds in jobs:
                cmd = self.copy_cmd(src, dst, src_creds=creds)
                procs.append(
                    subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                )
            for p in procs:
                left = max(1.0, timeout - (time.perf_counter() - t0))
                try:
                    _, err = p.communicate(timeout=left)
                except subprocess.TimeoutExpired:
                    raise BenchError(f"concurrent skopeo copies took over {timeout}s") from None
                if p.returncode != 0:
                    raise BenchError(f"skopeo copy failed: {err.strip()[-800:]}")
                times.append(time.perf_counter() - t0)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        return times


# -- plain HTTP -------------------------------------------------------------------------------------------


def check_get(url: str, headers: dict[str, str] | None = None, timeout: float = 60) -> requests.Response:
    """A GET that must answer 200 (the preflight before a wrk run)."""
    try:
        r = requests.get(url, headers=headers, timeout=timeout, stream=True)
    except requests.RequestException as e:
        raise BenchError(f"GET {url}: {e}") from None
    r.close()
    if r.status_code != 200:
        raise BenchError(f"GET {url} answered {r.status_code}")
    return r


class Connection:
    """One keep-alive HTTP/1.1 connection to a host, reading bodies with recv_into a buffer (`view`: 4 MiB here,
    each lean client's own in bench/lean.py)."""

    def __init__(self, netloc: str, timeout: float, view: memoryview) -> None:
        host, _, port = netloc.rpartition(":") if ":" in netloc else (netloc, "", "80")
        self.netloc = netloc
        self.view = view
        try:
            self.sock = socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout)
        except OSError as e:
            raise BenchError(f"connecting to {netloc}: {e}") from None

    def get(
        self, target: str, headers: dict[str, str], sink: Callable[[memoryview], None] | None = None
    ) -> tuple[str, dict[str, str], int]:
        """GET `target`; its body goes to `sink` piece by piece, or is dropped: (status, header fields, body
        length)."""
        lines = [f"GET {target} HTTP/1.1", f"Host: {self.netloc}", *(f"{k}: {v}" for k, v in headers.items())]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(65536)
            if not chunk or len(head) > 65536:
                raise BenchError(f"GET {target[:100]}: the connection closed before the headers ended")
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        head_lines = head.decode("latin-1").split("\r\n")
        status = head_lines[0].split(" ")[1] if " " in head_lines[0] else "?"
        fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in head_lines[1:])}
        if "content-length" not in fields:
            raise BenchError(f"GET {target[:100]}: {head_lines[0]!r} without Content-Length, headers {fields}")
        length = int(fields["content-length"])
        if len(rest) > length:
            raise BenchError(f"GET {target[:100]}: {len(rest) - length} bytes past the body")
        if sink is not None and rest:
            sink(memoryview(rest))
        got = len(rest)
        while got < length:
            n = self.sock.recv_into(self.view, min(len(self.view), length - got))
            if n == 0:
                raise BenchError(f"GET {target[:100]}: the connection closed after {got} of {length} bytes")
            if sink is not None:
                sink(self.view[:n])
            got += n
        return status, fields, length

    def close(self) -> None:
        self.sock.close()


def blob_gets(
    url: str,
    headers: dict[str, str] | None = None,
    *,
    duration: float = 0,
    max_gets: int = 1000,
    timeout: float = 600,
    follow: bool = False,
) -> tuple[int, float, int]:
    """GET `url` again and again on one keep-alive connection until `duration` seconds have passed (at least
    once), reading bodies with recv_into a 4 MiB buffer and throwing them away: (body bytes, seconds, GETs).
    With `follow`, a 307 is followed as docker does (the Location's GET on a keep-alive connection of its own to
    that host, without the registry's headers), and both requests count in the time: end to end.

    This is the large-blob client rather than wrk, which reads 8 KiB at a time and so tops out below what a
    sendfile server delivers over loopback: the client must not be the limit being measured."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    view = memoryview(bytearray(4 << 20))
    total = gets = 0
    connections: dict[str, Connection] = {}

    def connection(netloc: str) -> Connection:
        if netloc not in connections:
            connections[netloc] = Connection(netloc, timeout, view)
        return connections[netloc]

    connection(parts.netloc)  # connected before the clock starts, as a client that pulls would be
    t0 = time.perf_counter()
    try:
        while gets < max_gets and (gets == 0 or time.perf_counter() - t0 < duration):
            status, fields, length = connection(parts.netloc).get(target, headers or {})
            if follow and status == "307" and "location" in fields:
                location = urlsplit(urljoin(url, fields["location"]))
                moved = location.path + (f"?{location.query}" if location.query else "")
                status, fields, length = connection(location.netloc).get(moved, {})
            if status != "200":
                raise BenchError(f"GET {url}: {status}, headers {fields}")
            total += length
            gets += 1
    except OSError as e:
        raise BenchError(f"GET {url}: {e}") from None
    finally:
        for conn in connections.values():
            conn.close()
    return total, time.perf_counter() - t0, gets


def latencies(
    url: str, headers: dict[str, str] | None = None, *, count: int = 5, budget: float = 60
) -> tuple[list[float], dict]:
    """Seconds taken by up to `count` sequential GETs of a JSON document (keep-alive), stopping early after
    `budget` seconds; and the last document."""
    out: list[float] = []
    deadline = time.monotonic() + budget
    body: dict = {}
    with requests.Session() as s:
        for _ in range(count):
            t0 = time.perf_counter()
            r = s.get(url, headers=headers, timeout=max(5.0, budget))
            _ = r.content
            out.append(time.perf_counter() - t0)
            if r.status_code != 200:
                raise BenchError(f"GET {url} answered {r.status_code}: {r.text[:200]}")
            if time.monotonic() > deadline:
                break
        body = r.json()
    return out, body


def walk_pages(
    url: str, key: str, headers: dict[str, str] | None = None, *, max_pages: int = 2000, budget: float = 300
) -> tuple[int, int, float]:
    """Follow `Link: <...>; rel="next"` from `url`: (pages, items, seconds). Bounded in pages and time."""
    pages = items = 0
    t0 = time.perf_counter()
    deadline = time.monotonic() + budget
    with requests.Session() as s:
        next_url: str | None = url
        while next_url and pages < max_pages and time.monotonic() < deadline:
            r = s.get(next_url, headers=headers, timeout=max(5.0, budget))
            if r.status_code != 200:
                raise BenchError(f"GET {next_url} answered {r.status_code}: {r.text[:200]}")
            pages += 1
            items += len(r.json().get(key) or [])
            link = r.links.get("next", {}).get("url")
            next_url = urljoin(url, link) if link else None
        if next_url:
            raise BenchError(f"walking {url}: gave up after {pages} pages / {time.perf_counter() - t0:.0f}s")
    return pages, items, time.perf_counter() - t0


def upload_file(
    base_url: str, repo: str, path: Path, digest: str, headers: dict[str, str] | None = None, timeout: float = 900
) -> float:
    """A monolithic blob upload streamed from a file (POST, then PUT ?digest=); its seconds."""
    t0 = time.perf_counter()
    r = requests.post(f"{base_url}/v2/{repo}/blobs/uploads/", headers=headers, timeout=60)
    if r.status_code != 202:
        raise BenchError(f"starting an upload to {repo}: {r.status_code} {r.text[:200]}")
    location = urljoin(base_url, r.headers["Location"])
    sep = "&" if "?" in location else "?"
    with open(path, "rb") as fh:
        r = requests.put(
            f"{location}{sep}digest={digest}",
            data=fh,
            headers={**(headers or {}), "Content-Type": "application/octet-stream"},
            timeout=timeout,
        )
    if r.status_code != 201:
        raise BenchError(f"uploading {path.name} to {repo}: {r.status_code} {r.text[:200]}")
    return time.perf_counter() - t0


def put_manifest(base_url: str, repo: str, tag: str, body: bytes, media_type: str, headers=None) -> None:
    r = requests.put(
        f"{base_url}/v2/{repo}/manifests/{tag}",
        data=body,
        headers={**(headers or {}), "Content-Type": media_type},
        timeout=60,
    )
    if r.status_code != 201:
        raise BenchError(f"PUT {repo}:{tag}: {r.status_code} {r.text[:200]}")
