"""A private dockerd for real-client tests: own data/exec roots, pidfile and unix socket under a temp dir.

The session-scoped `dockerd` fixture is registered in tests/conftest.py, so the whole session shares one daemon
(importing it into a module would make a daemon per module).
It skips, with the reason and the tail of the daemon's log, when not root, when dockerd/docker are
missing, or when the daemon does not come up.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

START_TIMEOUT = 60.0


class DockerError(AssertionError):
    pass


def _fmt(cmd: list[str], proc: subprocess.CompletedProcess[str] | None, extra: str = "") -> str:
    out = f"$ {' '.join(cmd)}\n{extra}"
    if proc is not None:
        out += f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    return out


class Dockerd:
    """One dockerd process and a `docker` CLI bound to it (DOCKER_HOST, DOCKER_CONFIG, DOCKER_BUILDKIT=0).

    Options for tests that need a daemon of their own: `daemon_config` (daemon.json, e.g. registry-mirrors),
    `daemon_env` (the daemon's environment on top of ours, e.g. proxies) and `wrap` (a command prefix for the
    daemon and the CLI alike, e.g. `nsenter` into a private mount and network namespace)."""

    def __init__(
        self,
        dockerd_bin: str,
        docker_bin: str,
        *,
        daemon_config: dict[str, object] | None = None,
        daemon_env: dict[str, str] | None = None,
        wrap: list[str] | None = None,
    ) -> None:
        # Short path: unix socket paths (ours and containerd's under exec-root) are limited to ~108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="mdk-", dir="/tmp"))
        self.dockerd_bin = dockerd_bin
        self.docker_bin = docker_bin
        self.sock = self.root / "docker.sock"
        self.log_path = self.root / "dockerd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        (self.root / "cli").mkdir()
        (self.root / "daemon.json").write_text(json.dumps(daemon_config or {}))
        self.daemon_env = {**os.environ, **(daemon_env or {})}
        self.wrap = list(wrap or [])
        self.env = {
            **os.environ,
            "DOCKER_HOST": f"unix://{self.sock}",
            "DOCKER_CONFIG": str(self.root / "cli"),
            "DOCKER_BUILDKIT": "0",
            "DOCKER_CLI_HINTS": "false",
        }
        for var in ("DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
            self.env.pop(var, None)

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        cmd = [
            *self.wrap,
            self.dockerd_bin,
            "--data-root", str(self.root / "data"),
            "--exec-root", str(self.root / "exec"),
            "--pidfile", str(self.root / "dockerd.pid"),
            "--config-file", str(self.root / "daemon.json"),
            "-H", f"unix://{self.sock}",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-masq=false",
            "--ip-forward=false",
            "--bridge=none",
        ]  # fmt: skip
        # The child keeps its own copy of the log descriptor; ours is closed right away.
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=self.daemon_env,
            )
        deadline = time.monotonic() + START_TIMEOUT
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited with {self.proc.returncode}")
            if self.sock.exists():
                r = self.run("info", "--format", "{{.ServerVersion}}", check=False, timeout=15)
                if r.returncode == 0:
                    return
                last = r.stderr
            time.sleep(0.25)
        raise RuntimeError(f"dockerd did not answer `docker info` within {START_TIMEOUT}s: {last}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                # The daemon and its managed containerd share the session we created for it.
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None
        self._unmount_all()
        shutil.rmtree(self.root, ignore_errors=True)

    def _unmount_all(self) -> None:
        """Unmount anything dockerd left mounted under our temp dir, deepest first."""
        prefix = str(self.root) + "/"
        try:
            with open("/proc/self/mountinfo") as f:
                points = [line.split()[4] for line in f]
        except OSError:
            return
        for mp in sorted((p for p in points if p.startswith(prefix) or p == str(self.root)), reverse=True):
            subprocess.run(["umount", "-l", mp], capture_output=True, timeout=30, check=False)

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])

    # -- CLI ---------------------------------------------------------------------------------------
    def run(
        self, *args: str, check: bool = True, timeout: float = 120, cwd: Path | None = None, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `docker ARGS...` against this daemon; on failure (check=True) raise with full output."""
        cmd = [*self.wrap, self.docker_bin, *args]
        try:
            proc = subprocess.run(
                cmd, env=self.env, capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False, input=input
            )
        except subprocess.TimeoutExpired as e:
            raise DockerError(
                _fmt(cmd, None, f"timed out after {timeout}s\nstdout: {e.stdout!r}\nstderr: {e.stderr!r}\n")
                + f"\n--- dockerd log ---\n{self.log_tail()}"
            ) from None
        if check and proc.returncode != 0:
            raise DockerError(_fmt(cmd, proc) + f"\n--- dockerd log ---\n{self.log_tail()}")
        return proc


def rootfs_tar(path: Path, text: str) -> Path:
    """A one-file root filesystem tarball for `docker import`."""
    data = text.encode()
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="session", name="dockerd")
def dockerd_fixture() -> Iterator[Dockerd]:
    """A private dockerd for the whole session, or a skip with the reason."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("dockerd tests need root (a private dockerd is started as root)")
    dockerd_bin, docker_bin = shutil.which("dockerd"), shutil.which("docker")
    if not dockerd_bin or not docker_bin:
        pytest.skip(f"dockerd/docker not installed (dockerd={dockerd_bin}, docker={docker_bin})")
    d = Dockerd(dockerd_bin, docker_bin)
    try:
        d.start()
    except (RuntimeError, DockerError, OSError) as e:
        tail = d.log_tail()
        d.stop()
        pytest.skip(f"private dockerd failed to start: {e}\n--- last lines of dockerd log ---\n{tail}")
    try:
        yield d
    finally:
        d.stop()
