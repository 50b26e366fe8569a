"""skopeo, isolated from the machine's configuration, for the real-client tests (the `skopeo` fixture in
conftest.py), and the copies, inspections and layout checks several test modules make with it."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from tests.helpers import require
from tests.layouts import reachable, read_layout

Skopeo = Callable[..., subprocess.CompletedProcess[str]]


def isolated_skopeo(cfg: Path) -> Skopeo:
    """A skopeo runner with its own policy, registries.conf, (empty) auth file and tmpdir under `cfg`.

    Calls fail the test with the command and its output on a non-zero exit (unless check=False) or a timeout.
    Without skopeo installed, a skip (a failure under CI=true) saying so.
    """
    skopeo = require("skopeo", "apt-get install skopeo")
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
        skopeo,
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


def skopeo_push(
    skopeo: Skopeo, layout: Path, tag: str, dest: str, *, all_images: bool = False, creds: str | None = None
) -> None:
    """`skopeo copy` of `tag` in the OCI layout at `layout` to `docker://dest`, digests preserved."""
    args = ["copy", "--dest-tls-verify=false", "--preserve-digests"]
    if all_images:
        args.append("--all")
    if creds:
        args += ["--dest-creds", creds]
    skopeo(*args, f"oci:{layout}:{tag}", f"docker://{dest}")


def skopeo_pull(
    skopeo: Skopeo,
    src: str,
    layout: Path,
    tag: str,
    *,
    all_images: bool = False,
    arch: str = "",
    extra: Iterable[str] = (),
) -> None:
    """`skopeo copy` of `docker://src` into the OCI layout at `layout` as `tag`, digests preserved; `arch`
    picks a platform of an index."""
    args = ["--override-arch", arch, "--override-os", "linux"] if arch else []
    args += ["copy", "--src-tls-verify=false", "--preserve-digests", *extra]
    if all_images:
        args.append("--all")
    skopeo(*args, f"docker://{src}", f"oci:{layout}:{tag}")


def inspect_raw(skopeo: Skopeo, ref: str) -> bytes:
    """The manifest at `ref` (with its transport: docker://, oci:, oci-archive:...) byte for byte."""
    return skopeo("inspect", "--tls-verify=false", "--raw", ref).stdout.encode()


def assert_layout_matches(dst: Path, tag: str, top_digest: str, blobs: dict[str, bytes]) -> None:
    """The OCI layout at `dst` has `top_digest` under `tag` and exactly `blobs`, byte for byte."""
    got = read_layout(dst, tag)
    assert got.top_digest == top_digest, f"top digest changed: expected {top_digest}, got {got.top_digest}"
    missing, extra = sorted(set(blobs) - set(got.blobs)), sorted(set(got.blobs) - set(blobs))
    assert not missing and not extra, f"blob sets differ: missing={missing} extra={extra}"
    differing = [d for d in blobs if blobs[d] != got.blobs[d]]
    assert not differing, f"blob bytes differ for {differing}"
    assert reachable(got.blobs, got.top_digest) == set(blobs)
