"""Run a real Moorage server as a subprocess on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import requests

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
        self, data_dir: Path, config: str = AUTH_OFF, port: int | None = None, workers: int | None = None
    ) -> None:
        self.data_dir = Path(data_dir)
        # One process unless a test asks for more (test_workers.py) or TEST_WORKERS says so for the whole
        # suite (`TEST_WORKERS=2 make test`): workers double every start's cost.
        self.workers = workers if workers is not None else int(os.environ.get("TEST_WORKERS", "1"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.config_path = self.data_dir.parent / f"moorage-{self.port}.toml"
        self.config_path.write_text(config)
        self.log_path = self.data_dir.parent / f"moorage-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.credentials: tuple[str, str] | None = None  # what a /v2 client sends when auth is on
        self._log_fh: IO[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self, timeout: float = 20.0) -> MoorageServer:
        self._log_fh = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
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
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # kill() takes the whole process group (a supervisor and its workers)
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (code := self.proc.poll()) is not None:
                self._reaped()
                raise RuntimeError(f"moorage exited with {code}:\n{self.log()}")
            try:
                requests.get(self.url + "/v2/", timeout=1)
                return self
            except (requests.ConnectionError, requests.Timeout):  # workers still starting behind a bound socket
                time.sleep(0.05)
        raise RuntimeError(f"moorage did not start in {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reaped()

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit on its own; its exit code."""
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self._reaped()
        return code

    def kill(self) -> None:
        """SIGKILL to every process of the server: the crash case."""
        if self.proc:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._reaped()

    def _reaped(self) -> None:
        self.proc = None
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def restart(self) -> MoorageServer:
        self.stop()
        return self.start()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def ecr_client(srv: MoorageServer, key: str = ADMIN_KEY, secret: str = ADMIN_SECRET, region: str = "us-east-1"):
    """A real boto3 ECR client pointed at the server."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "ecr",
        endpoint_url=srv.url,
        region_name=region,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}),
    )


def login_password(srv: MoorageServer, key: str = ADMIN_KEY, secret: str = ADMIN_SECRET) -> str:
    """GetAuthorizationToken as `aws ecr get-login-password` does: the token after `AWS:`."""
    import base64

    token = ecr_client(srv, key, secret).get_authorization_token()["authorizationData"][0]["authorizationToken"]
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
