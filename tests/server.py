"""Run a real Moorage server as a subprocess on a free loopback port."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import requests

from tests.helpers import wait_for

REPO_ROOT = Path(__file__).resolve().parent.parent
AUTH_OFF = "[auth]\nenabled = false\n"
ADMIN_KEY = "AKIAMOORAGETESTADMIN"
ADMIN_SECRET = "moorage-test-admin-secret-0123456789abcdef"
ALLOW_ALL = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}'


def principal_toml(name: str, key: str, secret: str, policy: str) -> str:
    return (
        f'[[auth.principals]]\nname = "{name}"\naccess_key_id = "{key}"\nsecret_access_key = "{secret}"\n'
        f"policy = '''{policy}'''\n"
    )


def auth_config(*principals: str, extra: str = "") -> str:
    """A config with auth on, the test admin, and the given `principal_toml` blocks."""
    admin = principal_toml("admin", ADMIN_KEY, ADMIN_SECRET, ALLOW_ALL)
    return "[auth]\nenabled = true\n" + extra + admin + "".join(principals)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MoorageServer:
    """A `moorage serve` child process with its own data dir and config file."""

    def __init__(
        self,
        data_dir: Path,
        config: str = AUTH_OFF,
        port: int | None = None,
        workers: int | None = None,
        tls_ca: Path | None = None,
        wrap: list[str] | None = None,
    ) -> None:
        """`wrap`: a command the server runs under (valgrind and its options, say), before the interpreter."""
        self.data_dir = Path(data_dir)
        self.wrap = list(wrap or [])
        # A config serving TLS names the CA that signed its certificate: the URL is https, verified with it.
        self.tls_ca = tls_ca
        # One process unless a test asks for more (test_workers.py) or TEST_WORKERS says so for the whole
        # suite (`TEST_WORKERS=2 make test`): workers double every start's cost.
        self.workers = workers if workers is not None else int(os.environ.get("TEST_WORKERS", "1"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.config_path = self.data_dir.parent / f"moorage-{self.port}.toml"
        self.config_path.write_text(config)
        self.log_path = self.data_dir.parent / f"moorage-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.instance_id: str | None = None  # this start's MOORAGE_INSTANCE_ID, echoed by /healthz (a header)
        self.credentials: tuple[str, str] | None = None  # what a /v2 client sends when auth is on
        self._log_fh: IO[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_ca else 'http'}://{self.host}"

    def start(self, timeout: float = 20.0) -> MoorageServer:
        """Start the server and wait until this very process answers: `/healthz` must carry this start's
        MOORAGE_INSTANCE_ID, so another process on the port (a crashed server's orphan, any listener) never
        passes for it. Raises RuntimeError, with this start's log, if the process exits or does not answer in
        `timeout`; either way nothing it started is left running."""
        self._log_fh = open(self.log_path, "ab")
        log_from = self._log_fh.tell()
        self.instance_id = uuid.uuid4().hex
        self.proc = subprocess.Popen(
            [
                *self.wrap,
                sys.executable,
                "-m",
                "registry",
                "serve",
                "--config",
                str(self.config_path),
                "--listen",
                self.host,
                "--data-dir",
                str(self.data_dir),
                "--workers",
                str(self.workers),
            ],
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "MOORAGE_INSTANCE_ID": self.instance_id},
            start_new_session=True,  # its own process group: a supervisor and its workers, killed together
        )
        deadline = time.monotonic() + timeout
        other = ""  # what answered on the port instead, for the error
        while time.monotonic() < deadline:
            if (code := self.proc.poll()) is not None:
                self._kill_group(self.proc.pid)  # whatever it started and left behind
                self._reaped()
                raise RuntimeError(f"moorage exited with {code} before it answered{other}:\n{self.log(log_from)}")
            try:
                r = requests.get(self.url + "/healthz", timeout=1, verify=str(self.tls_ca) if self.tls_ca else True)
            except (requests.ConnectionError, requests.Timeout):  # workers still starting behind a bound socket
                r = None
            if r is not None:
                if r.status_code == 200 and r.headers.get("Moorage-Instance") == self.instance_id:
                    return self
                other = (
                    f" (another process answers on {self.host}: /healthz -> {r.status_code}, "
                    f"Moorage-Instance: {r.headers.get('Moorage-Instance')}, not {self.instance_id})"
                )
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"moorage did not answer in {timeout}s{other}:\n{self.log(log_from)}")

    def stop(self) -> None:
        """SIGTERM, so the server drains and cleans up after itself (a supervisor removes its metrics dir);
        after a 10 s grace, SIGKILL to the whole process group."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self._kill_group(self.proc.pid)
                self.proc.wait()
        if self.proc:
            self._kill_group(self.proc.pid)  # anything of it still there (say, workers whose supervisor was killed)
        self._reaped()

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit on its own; its exit code."""
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self._reaped()
        return code

    def kill(self, group: bool = True) -> None:
        """SIGKILL to every process of the server: the crash case. With `group=False`, to the main process
        alone, as the OOM killer or `docker kill` would: a supervisor's workers are left to go by themselves."""
        if self.proc:
            if group:
                self._kill_group(self.proc.pid)
            else:
                self.proc.kill()
            self.proc.wait()
        self._reaped()

    @staticmethod
    def _kill_group(pgid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)

    def _reaped(self) -> None:
        self.proc = None
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def restart(self) -> MoorageServer:
        self.stop()
        return self.start()

    def log(self, since: int = 0) -> str:
        """The server's output (every start's, appended), from byte offset `since`."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_containing(self, *needles: str, timeout: float = 10.0) -> str:
        """The server's output once it holds every one of `needles`. Lines go out through a writer thread
        (registry/logs.py), so a line logged before a response may reach the file a moment after it."""

        def holding() -> str | None:
            text = self.log()
            return text if all(n in text for n in needles) else None

        return wait_for(
            holding,
            timeout,
            f"{list(needles)} in the server log",
            details=lambda: self.log()[-3000:],
        )

    def access_log(self) -> list[dict[str, Any]]:
        """The access log written so far, one dict per request (JSON lines: the server's output is not a tty)."""
        out = []
        for line in self.log().splitlines():
            if line.startswith("{") and '"moorage.access"' in line:
                entry = json.loads(line)
                if entry.get("logger") == "moorage.access":
                    out.append(entry)
        return out

    def access_log_until(
        self, done: Callable[[list[dict[str, Any]]], object], what: str, timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """The access log once `done(entries)` holds: a request's line is written just after its response."""

        def when_done() -> list[dict[str, Any]] | None:
            entries = self.access_log()
            return entries if done(entries) else None

        return wait_for(
            when_done,
            timeout,
            what,
            details=lambda: self.log()[-3000:],
        )

    def worker_pids(self) -> list[int]:
        """The running server's child processes: a supervisor's workers (none for a single process)."""
        assert self.proc is not None
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True)
        return [int(x) for x in out.stdout.split()]


def spawn(
    config: str, root: Path, listen: str, wrap: list[str] | None = None, workers: int = 1
) -> subprocess.Popen[bytes]:
    """`moorage serve` as a bare process, for what `MoorageServer` cannot probe (a server inside namespaces, or
    one that must fail to start); `config` goes to <root>/moorage.toml, its output to <root>/moorage.log."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "moorage.toml").write_text(config)
    with open(root / "moorage.log", "ab") as log:
        return subprocess.Popen(
            [
                *(wrap or []),
                sys.executable,
                "-m",
                "registry",
                "serve",
                "--config",
                str(root / "moorage.toml"),
                "--listen",
                listen,
                "--data-dir",
                str(root / "data"),
                "--workers",
                str(workers),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def terminate(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGTERM a process (a `spawn`ed server, say); SIGKILL after `grace` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def assert_closed_by_server(sock: socket.socket, within: float) -> None:
    """The server closes `sock` (EOF or a reset) within `within` seconds, sending nothing; then close our end."""
    sock.settimeout(within)
    try:
        assert sock.recv(4096) == b""
    except ConnectionResetError:
        pass
    finally:
        sock.close()


def blob_file(srv: MoorageServer, digest: str) -> Path:
    """Where the filesystem store keeps a blob: <data_dir>/blobs/<alg>/<xx>/<hex>."""
    alg, _, hexd = digest.partition(":")
    return srv.data_dir / "blobs" / alg / hexd[:2] / hexd


def moorage_cli(
    *args: object, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `moorage ARGS...` (python -m registry) from the repository root; nothing asserted."""
    return subprocess.run(
        [sys.executable, "-m", "registry", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO_ROOT,
    )


def moorage_json(srv: MoorageServer, *args: object, config: Path | None = None, timeout: float = 120) -> Any:
    """Run `moorage ARGS... --config <srv's> --data-dir <srv's>` (while the server runs or not), which must
    succeed; its JSON output."""
    p = moorage_cli(*args, "--config", config or srv.config_path, "--data-dir", srv.data_dir, timeout=timeout)
    assert p.returncode == 0, f"moorage {' '.join(map(str, args))} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
    return json.loads(p.stdout)


@functools.cache
def _ecr_model_dir() -> str:
    """A botocore data directory holding the ECR model Moorage serves (botocore's, with the operations a newer
    botocore has: replication backfills), for clients that call them."""
    from registry.ecr_model import model_document

    root = Path(tempfile.mkdtemp(prefix="moorage-ecr-model-"))
    (root / "ecr" / "2015-09-21").mkdir(parents=True)
    (root / "ecr" / "2015-09-21" / "service-2.json").write_text(json.dumps(model_document()))
    return str(root)


def ecr_client(srv: MoorageServer, key: str = ADMIN_KEY, secret: str = ADMIN_SECRET, region: str = "us-east-1"):
    """A real boto3 ECR client pointed at the server (with the whole model Moorage serves)."""
    import boto3
    import botocore.session
    from botocore.config import Config

    session = botocore.session.get_session()
    session.get_component("data_loader").search_paths.insert(0, _ecr_model_dir())
    return boto3.Session(botocore_session=session).client(
        "ecr",
        endpoint_url=srv.url,
        region_name=region,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}),
    )


def login_password(
    srv: MoorageServer, key: str = ADMIN_KEY, secret: str = ADMIN_SECRET, region: str = "us-east-1"
) -> str:
    """GetAuthorizationToken as `aws ecr get-login-password` does: the token after `AWS:`."""
    import base64

    token = ecr_client(srv, key, secret, region).get_authorization_token()["authorizationData"][0]["authorizationToken"]
    user, _, password = base64.b64decode(token).decode().partition(":")
    assert user == "AWS" and ":" not in password
    return password


def aws_cli(
    srv: MoorageServer, *args: str, key: str = ADMIN_KEY, secret: str = ADMIN_SECRET, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run the real AWS CLI (`aws ecr ... --endpoint-url`) against the server with the given keys."""
    aws = Path(sys.executable).with_name("aws")
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_MAX_ATTEMPTS": "1",
    }
    p = subprocess.run(
        [str(aws), *args, "--endpoint-url", srv.url], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if check:
        assert p.returncode == 0, f"aws {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p
