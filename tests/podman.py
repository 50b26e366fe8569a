"""podman, isolated from the machine's configuration and storage, for the real-client tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

Podman = Callable[..., subprocess.CompletedProcess[str]]


@contextlib.contextmanager
def isolated_podman(tmp_path: Path, home: Path | None = None) -> Iterator[Podman]:
    """`run(*args, check=True)`: podman with its own root (vfs), no credentials, no registries.conf; every
    image it pulled is removed afterwards. Skips when podman is not installed. `home`: its HOME, where
    containers/image looks for .config/containers/policy.json and registries.d/ before /etc's."""
    podman = shutil.which("podman")
    if podman is None:
        pytest.skip("podman is not installed (apt-get install podman)")
    run_root = Path(tempfile.mkdtemp(prefix="mpr-", dir="/tmp"))  # podman wants a runroot under 50 characters
    (tmp_path / "auth.json").write_text("{}")  # no credentials
    (tmp_path / "registries.conf").write_text("")
    (tmp_path / "storage.conf").write_text(
        f'[storage]\ndriver = "vfs"\nrunroot = "{run_root}"\ngraphroot = "{tmp_path / "root"}"\n'
    )
    env = {
        **os.environ,
        "REGISTRY_AUTH_FILE": str(tmp_path / "auth.json"),
        "CONTAINERS_REGISTRIES_CONF": str(tmp_path / "registries.conf"),
        "CONTAINERS_STORAGE_CONF": str(tmp_path / "storage.conf"),
        "DOCKER_CONFIG": str(tmp_path),
        "TMPDIR": str(tmp_path),
        **({"HOME": str(home)} if home is not None else {}),
    }
    base = [
        podman,
        "--root", str(tmp_path / "root"),
        "--runroot", str(run_root),
        "--storage-driver", "vfs",
        "--cgroup-manager", "cgroupfs",
        "--events-backend", "none",
    ]  # fmt: skip

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([*base, *args], env=env, capture_output=True, text=True, timeout=180, check=False)
        assert not check or p.returncode == 0, f"podman {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
        return p

    try:
        yield run
    finally:
        run("rmi", "-a", "-f", check=False)
        shutil.rmtree(run_root, ignore_errors=True)
