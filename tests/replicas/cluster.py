"""Several Moorage replicas on one PostgreSQL schema and one S3 prefix, behind nginx with deploy/nginx.conf.

`Cluster(root, storage_toml)` starts N `moorage serve` processes with the same config (auth on, the test admin,
the shared `[storage]`), all at once as a deployment would (one of them migrates the schema, under the start-up
lock), then nginx in front of them with the shipped nginx.conf rendered for loopback (deploy/run_local.py's
`render_nginx`) and its access log in a file, so a test can see which replica answered each request.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import requests

from tests.helpers import require
from tests.server import REPO_ROOT, MoorageServer, auth_config, free_port, login_password
from tests.shared_storage import Target

DEPLOY = REPO_ROOT / "deploy"
START_TIMEOUT = 60.0
# nginx.conf's `registry` log format: $remote_addr "$request" $status $body_bytes_sent $request_time upstream=...
_ACCESS = re.compile(r'^\S+ "(?P<method>\S+) (?P<path>\S+) [^"]*" (?P<status>\d+) \S+ \S+ upstream=(?P<upstream>.*?) ')


def run_local() -> ModuleType:
    """deploy/run_local.py as a module (its nginx rendering is what a local deployment uses)."""
    spec = importlib.util.spec_from_file_location("deploy_run_local", DEPLOY / "run_local.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Access:
    method: str
    path: str
    status: int
    upstreams: tuple[str, ...]  # the replicas nginx tried, in order (more than one after a retry)


class Balancer:
    """nginx with deploy/nginx.conf over the given replica addresses, on a free loopback port."""

    def __init__(self, root: Path, replicas: list[str]) -> None:
        self.nginx = require("/usr/sbin/nginx", "apt-get install nginx-light")
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.access_log = root / "access.log"
        conf = run_local().render_nginx((DEPLOY / "nginx.conf").read_text(), f"127.0.0.1:{self.port}", replicas, root)
        conf, n = re.subn(r"access_log /dev/stdout registry;", f"access_log {self.access_log} registry;", conf)
        assert n == 1, "nginx.conf's access_log line changed"
        self.conf = root / "nginx.conf"
        self.conf.write_text(conf)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> Balancer:
        command = run_local().nginx_command(self.nginx, self.root, self.conf, "-g", "daemon off;")
        with open(self.root / "nginx.out", "ab") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {(self.root / 'nginx.out').read_text(errors='replace')}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            time.sleep(0.1)
        raise RuntimeError("nginx did not answer")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def accesses(self, pattern: str = "") -> list[Access]:
        """Requests nginx has logged so far whose `METHOD PATH` matches the regex `pattern`."""
        rx = re.compile(pattern)
        found = []
        for line in self.access_log.read_text(errors="replace").splitlines() if self.access_log.exists() else ():
            m = _ACCESS.match(line)
            if m and rx.search(f"{m['method']} {m['path']}"):
                upstreams = tuple(u.strip() for u in m["upstream"].replace(" : ", ", ").split(",") if u.strip())
                found.append(Access(m["method"], m["path"], int(m["status"]), upstreams))
        return found


class Cluster:
    """N replicas with one config (auth on, shared storage) and a balancer in front."""

    def __init__(self, root: Path, storage_toml: str, extra: str = "", replicas: int = 3) -> None:
        self.root = root
        self.config = auth_config() + extra + storage_toml
        self.replicas = [MoorageServer(root / f"moorage-{i}" / "data", self.config) for i in range(1, replicas + 1)]
        self.balancer = Balancer(root / "nginx", [r.host for r in self.replicas])
        self.target: Target | None = None  # the shared storage, when the fixture provisioned it

    @property
    def url(self) -> str:
        return self.balancer.url

    @property
    def host(self) -> str:
        return self.balancer.host

    def start(self) -> Cluster:
        with ThreadPoolExecutor(len(self.replicas)) as pool:  # together: they race for the migration lock
            list(pool.map(lambda r: r.start(timeout=START_TIMEOUT), self.replicas))
        self.balancer.start()
        return self

    def stop(self) -> None:
        self.balancer.stop()
        for replica in self.replicas:
            replica.stop()

    def password(self) -> str:
        """A registry password (GetAuthorizationToken through the balancer): any replica accepts it."""
        return login_password(self.balancer_as_server())

    def balancer_as_server(self) -> MoorageServer:
        """A MoorageServer-shaped handle on the balancer's address, for helpers that take a server."""
        handle = MoorageServer.__new__(MoorageServer)
        handle.port, handle.tls_ca, handle.credentials = self.balancer.port, None, None
        return handle
