"""skopeo, isolated from the machine's configuration, for the real-client tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

SKOPEO = shutil.which("skopeo")
Skopeo = Callable[..., subprocess.CompletedProcess[str]]


def isolated_skopeo(cfg: Path) -> Skopeo:
    """A skopeo runner with its own policy, registries.conf, (empty) auth file and tmpdir under `cfg`.

    Calls fail the test with the command and its output on a non-zero exit (unless check=False) or a timeout.
    """
    if SKOPEO is None:
        pytest.skip("skopeo is not on PATH (apt-get install skopeo)")
    (cfg / "policy.json").write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    (cfg / "registries.conf").write_text("")
    (cfg / "auth.json").write_text("{}")
    (cfg / "registries.d").mkdir(exist_ok=True)
    (cfg / "tmp").mkdir(exist_ok=True)
    env = {
        **os.environ,
        "CONTAINERS_REGISTRIES_CONF": str(cfg / "registries.conf"),
        "REGISTRY_AUTH_FILE": str(cfg / "auth.json"),
        "DOCKER_CONFIG": str(cfg),  # no ~/.docker/config.json credentials either
    }
    base = [
        SKOPEO,
        "--policy",
        str(cfg / "policy.json"),
        "--registries.d",
        str(cfg / "registries.d"),
        "--tmpdir",
        str(cfg / "tmp"),
    ]

    def run(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [*base, *args]
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"$ {' '.join(cmd)}\ntimed out after {timeout}s\nstdout: {e.stdout!r}\nstderr: {e.stderr!r}")
        if check and proc.returncode != 0:
            pytest.fail(
                f"$ {' '.join(cmd)}\nexit {proc.returncode}\n--- stdout ---\n{proc.stdout}\n"
                f"--- stderr ---\n{proc.stderr}"
            )
        return proc

    return run
