"""The container image: build it from the repository's Dockerfile and run it in a private dockerd.

The base is a debootstrap'd Debian bookworm with python3 (tests/base_image.py, cached on disk), the wheels are
built on the host (`pip wheel`), and `docker build --network none --build-arg BASE=<that base>` installs them
from wheels/ in the build context, as a user without PyPI access in the build would.
Containers run on a user-defined bridge network (the private dockerd has no default bridge) with port 5000
published on a free 127.0.0.1 port; docker, skopeo and boto3 talk to them from the host.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.base_image import BaseImageUnavailable, load_base_image
from tests.dockerd import Dockerd
from tests.helpers import wait_for
from tests.layouts import read_layout, write_single_image
from tests.server import auth_config, free_port, login_password
from tests.skopeo import Skopeo
from tests.test_docker import build_image
from tests.test_docker import push as docker_push

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(900)]

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = "/var/lib/moorage"
MAX_IMAGE_BYTES = 250 * 1000 * 1000
# What a graceful stop says in the server's log.
DRAIN_TIMEOUT = 8.0  # the image's MOORAGE_SERVER_DRAIN_TIMEOUT
DOCKER_GRACE = 10.0  # docker stop's default, after which it sends SIGKILL (exit 137)
DRAINING_ONE = "shutting down: draining 1 in-flight requests"
# Files of the source tree a build needs when it isn't a git checkout.
SOURCE_FALLBACK = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "registry", "storage")


# -- containers ------------------------------------------------------------------------------------


@dataclass
class Container:
    d: Dockerd
    name: str
    port: int

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def inspect(self, fmt: str) -> str:
        return self.d.run("inspect", "--format", fmt, self.name).stdout.strip()

    def logs(self) -> str:
        r = self.d.run("logs", self.name, check=False)
        return r.stdout + r.stderr

    def wait_healthy(self, timeout: float = 60.0) -> float:
        """Poll the HEALTHCHECK status until it is `healthy`; returns the seconds it took."""
        started = time.monotonic()
        state = status = ""
        while time.monotonic() - started < timeout:
            out = self.inspect("{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}")
            state, _, status = out.partition(" ")
            if status == "healthy":
                return time.monotonic() - started
            if state in ("exited", "dead") or status == "unhealthy":
                break
            time.sleep(0.25)
        pytest.fail(
            f"container {self.name} did not become healthy in {timeout:.0f}s (state {state!r}, health {status!r})\n"
            f"--- health ---\n{self.inspect('{{json .State.Health}}')}\n--- log ---\n{self.logs()[-5000:]}"
        )

    def stop(self, timeout: float | None = None) -> tuple[int, float]:
        """`docker stop` (SIGTERM, then SIGKILL after docker's grace period); (exit code, seconds it took)."""
        started = time.monotonic()
        self.d.run("stop", *(["--time", str(int(timeout))] if timeout is not None else []), self.name, timeout=90)
        elapsed = time.monotonic() - started
        return int(self.inspect("{{.State.ExitCode}}")), elapsed


class Containers:
    """Starts containers of the image on the module's network and removes them (and their volumes) at the end."""

    def __init__(self, d: Dockerd, image: str, network: str, prefix: str) -> None:
        self.d, self.image, self.network, self.prefix = d, image, network, prefix
        self.names: list[str] = []
        self.volumes: list[str] = []

    def volume(self) -> str:
        name = f"{self.prefix}-vol{len(self.volumes)}"
        self.d.run("volume", "create", name)
        self.volumes.append(name)
        return name

    def start(
        self,
        *,
        env: dict[str, str] | None = None,
        volume: str | None = None,
        mounts: dict[Path, str] | None = None,
    ) -> Container:
        """`docker run -d` with port 5000 on a free loopback port; returns once the HEALTHCHECK says healthy."""
        name = f"{self.prefix}-c{len(self.names)}"
        port = free_port()
        args = ["run", "-d", "--name", name, "--network", self.network, "-p", f"127.0.0.1:{port}:5000"]
        # The image's own HEALTHCHECK command, run every second instead of every 10 s so that tests wait less.
        args += ["--health-interval", "1s"]
        if volume is not None:
            args += ["-v", f"{volume}:{DATA_DIR}"]
        for src, dest in (mounts or {}).items():
            args += ["-v", f"{src}:{dest}:ro"]
        for k, v in (env or {}).items():
            args += ["-e", f"{k}={v}"]
        self.names.append(name)
        self.d.run(*args, self.image)
        c = Container(self.d, name, port)
        c.wait_healthy()
        return c

    def remove_all(self) -> None:
        if self.names:
            self.d.run("rm", "-f", "-v", *self.names, check=False)
        if self.volumes:
            self.d.run("volume", "rm", "-f", *self.volumes, check=False)


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(dockerd: Dockerd) -> str:
    try:
        return load_base_image(dockerd)
    except BaseImageUnavailable as e:
        pytest.skip(f"cannot build the debootstrap base image: {e}")


def _source_files() -> list[str]:
    """The working tree's files that git doesn't ignore (tracked or not), as a user's `docker build .` sees."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO_ROOT,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return list(SOURCE_FALLBACK)
    return [f for f in out.decode().split("\0") if f and (REPO_ROOT / f).exists()]


def make_context(ctx: Path) -> Path:
    """A copy of the source tree plus wheels/ with moorage's wheel and every dependency's, built on the host."""
    for rel in _source_files():
        src, dest = REPO_ROOT / rel, ctx / rel
        if src.is_dir():
            shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), dirs_exist_ok=True)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
    cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check"]
    cmd += ["--wheel-dir", str(ctx / "wheels"), str(ctx)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert p.returncode == 0, f"$ {' '.join(cmd)}\nexit {p.returncode}\n{p.stdout}\n{p.stderr}"
    wheels = sorted(w.name for w in (ctx / "wheels").glob("*.whl"))
    assert any(w.startswith("moorage-") for w in wheels), wheels
    return ctx


@pytest.fixture(scope="module")
def image(dockerd: Dockerd, base: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Moorage image, built by the legacy builder with no network: BASE is the local base, wheels/ the input."""
    ctx = make_context(tmp_path_factory.mktemp("image-ctx"))
    ref = f"moorage-test/moorage:{os.urandom(4).hex()}"
    started = time.monotonic()
    dockerd.run("build", "--network", "none", "--build-arg", f"BASE={base}", "-t", ref, str(ctx), timeout=600)
    print(f"\nbuilt {ref} in {time.monotonic() - started:.0f}s")
    yield ref
    dockerd.run("rmi", "-f", ref, check=False)


@pytest.fixture(scope="module")
def containers(dockerd: Dockerd, image: str) -> Iterator[Containers]:
    prefix = f"moorage-ct-{os.urandom(3).hex()}"
    network = f"{prefix}-net"
    dockerd.run("network", "create", network)
    cs = Containers(dockerd, image, network, prefix)
    try:
        yield cs
    finally:
        cs.remove_all()
        dockerd.run("network", "rm", network, check=False)


@pytest.fixture(scope="module")
def anonymous(containers: Containers) -> Container:
    """Auth off by environment variable, data in the image's anonymous volume (no -v)."""
    return containers.start(env={"MOORAGE_AUTH_ENABLED": "false"})


def skopeo_roundtrip(skopeo: Skopeo, c: Container, repo: str, tmp: Path) -> str:
    """Copy an OCI layout into the registry and back out; byte-exact. Returns the manifest digest."""
    img = write_single_image(tmp / "src", "v1", n_layers=2)
    skopeo(
        "copy", "--dest-tls-verify=false", "--preserve-digests", f"oci:{tmp / 'src'}:v1", f"docker://{c.host}/{repo}:v1"
    )
    skopeo_pull_matches(skopeo, c, repo, tmp / "dst", img.digest, img.blobs)
    return img.digest


def skopeo_pull_matches(skopeo: Skopeo, c: Container, repo: str, dst: Path, digest: str, blobs: dict) -> None:
    skopeo("copy", "--src-tls-verify=false", "--preserve-digests", f"docker://{c.host}/{repo}:v1", f"oci:{dst}:v1")
    got = read_layout(dst, "v1")
    assert got.top_digest == digest, (got.top_digest, digest)
    assert got.blobs == blobs, "the blobs pulled back differ from the ones pushed"


def docker_roundtrip(d: Dockerd, c: Container, repo: str, tmp: Path) -> None:
    """Build a FROM scratch image, push it, delete it locally, pull it back: same digest, image id and files."""
    ref = f"{c.host}/{repo}:v1"
    built = build_image(d, tmp / "ctx", ref)
    try:
        digest, _ = docker_push(d, ref)
        d.run("rmi", ref)
        assert d.run("image", "inspect", built.image_id, check=False).returncode != 0, "image still present locally"
        pulled = d.run("pull", ref, timeout=180).stdout
        assert f"Digest: {digest}" in pulled, pulled
        assert d.run("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip() == built.image_id
        cid = d.run("create", "--network", "none", ref, "/nonexistent").stdout.strip()
        try:
            d.run("cp", f"{cid}:/data/blob.bin", str(tmp / "blob.bin"))
        finally:
            d.run("rm", cid, check=False)
        assert (tmp / "blob.bin").read_bytes() == built.files["/data/blob.bin"]
    finally:
        d.run("rmi", "-f", ref, check=False)


# -- the image -------------------------------------------------------------------------------------


def test_image_is_small_non_root_and_configured(dockerd: Dockerd, image: str):
    size = int(dockerd.run("image", "inspect", "--format", "{{.Size}}", image).stdout)
    print(f"\nmoorage image {image}: {size / 1e6:.1f} MB")
    assert size < MAX_IMAGE_BYTES, f"the image is {size / 1e6:.1f} MB, more than {MAX_IMAGE_BYTES / 1e6:.0f} MB"

    config = json.loads(dockerd.run("image", "inspect", "--format", "{{json .Config}}", image).stdout)
    assert config["User"] and config["User"].split(":")[0] not in ("root", "0"), config["User"]
    assert "5000/tcp" in config["ExposedPorts"], config["ExposedPorts"]
    assert DATA_DIR in config["Volumes"], config["Volumes"]
    assert config["Entrypoint"] == ["moorage"], "exec-form ENTRYPOINT (moorage is PID 1 and gets SIGTERM)"
    health = config["Healthcheck"]
    assert "/healthz" in " ".join(health["Test"]) and 0 < health["Interval"] <= 30e9, health
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["MOORAGE_SERVER_LISTEN"] == "0.0.0.0:5000" and env["MOORAGE_SERVER_DATA_DIR"] == DATA_DIR, env

    run = ["run", "--rm", "--network", "none"]
    assert dockerd.run(*run, image, "--version").stdout.startswith("moorage ")
    # Multi-stage: no build inputs or installer in the final image.
    probe = "test ! -e /wheels && test ! -e /src && ! python3 -m pip --version >/dev/null 2>&1 && id -u"
    assert dockerd.run(*run, "--entrypoint", "/bin/sh", image, "-c", probe).stdout.strip() == "10001"
    # MOORAGE_* variables reach the configuration (an unknown one fails the start, naming it).
    bad = dockerd.run(*run, "-e", "MOORAGE_NO_SUCH_SECTION=1", image, check=False)
    assert bad.returncode == 2 and "MOORAGE_NO_SUCH_SECTION" in bad.stderr, (bad.returncode, bad.stderr)


# -- auth off (environment variable) ---------------------------------------------------------------


def test_anonymous_container_is_healthy_non_root_with_data_in_a_volume(dockerd: Dockerd, anonymous: Container):
    assert dockerd.run("exec", anonymous.name, "id", "-u").stdout.strip() != "0"
    mounts = json.loads(anonymous.inspect("{{json .Mounts}}"))
    assert [m["Type"] for m in mounts if m["Destination"] == DATA_DIR] == ["volume"], mounts
    r = requests.get(f"{anonymous.url}/readyz", timeout=10)
    assert r.status_code == 200, (r.status_code, r.text)
    r = requests.get(f"{anonymous.url}/v2/", timeout=10)
    assert r.status_code == 200, (r.status_code, r.text)


def test_anonymous_docker_push_pull(dockerd: Dockerd, anonymous: Container, tmp_path: Path):
    docker_roundtrip(dockerd, anonymous, "ct/docker", tmp_path)


def test_anonymous_skopeo_push_pull(anonymous: Container, skopeo: Skopeo, tmp_path: Path):
    skopeo_roundtrip(skopeo, anonymous, "ct/skopeo", tmp_path)


# -- auth on (mounted config file) -----------------------------------------------------------------


def test_config_file_with_auth_docker_and_skopeo(
    dockerd: Dockerd, containers: Containers, skopeo: Skopeo, tmp_path: Path
):
    config = tmp_path / "config.toml"
    config.write_text(auth_config())
    config.chmod(0o644)
    c = containers.start(mounts={config: "/etc/moorage/config.toml"})

    r = requests.get(f"{c.url}/v2/", timeout=10)
    assert r.status_code == 401 and "WWW-Authenticate" in r.headers, (r.status_code, dict(r.headers))
    password = login_password(c)  # GetAuthorizationToken with boto3, against the container
    out = dockerd.run("login", "--username", "AWS", "--password-stdin", c.host, input=password)
    assert "Login Succeeded" in out.stdout, out
    try:
        docker_roundtrip(dockerd, c, "ct/auth-docker", tmp_path / "docker")
    finally:
        dockerd.run("logout", c.host, check=False)
    assert "Login Succeeded" in skopeo("login", "--tls-verify=false", "-u", "AWS", "-p", password, c.host).stdout
    skopeo_roundtrip(skopeo, c, "ct/auth-skopeo", tmp_path / "skopeo")


# -- data and stopping -----------------------------------------------------------------------------


def test_data_persists_in_the_volume_across_containers(
    dockerd: Dockerd, containers: Containers, skopeo: Skopeo, tmp_path: Path
):
    volume = containers.volume()
    first = containers.start(env={"MOORAGE_AUTH_ENABLED": "false"}, volume=volume)
    img = write_single_image(tmp_path / "src", "v1", n_layers=2)
    dest = f"docker://{first.host}/ct/persist:v1"
    skopeo("copy", "--dest-tls-verify=false", "--preserve-digests", f"oci:{tmp_path / 'src'}:v1", dest)

    code, took = first.stop()
    assert code == 0 and took < DRAIN_TIMEOUT, f"docker stop: exit {code} after {took:.1f}s\n{first.logs()[-3000:]}"
    dockerd.run("rm", first.name)

    second = containers.start(env={"MOORAGE_AUTH_ENABLED": "false"}, volume=volume)
    tags = requests.get(f"{second.url}/v2/ct/persist/tags/list", timeout=10)
    assert tags.status_code == 200 and tags.json()["tags"] == ["v1"], (tags.status_code, tags.text)
    skopeo_pull_matches(skopeo, second, "ct/persist", tmp_path / "dst", img.digest, img.blobs)
    # Everything in the volume belongs to the image's user.
    foreign = dockerd.run("exec", second.name, "find", DATA_DIR, "!", "-user", "10001").stdout
    assert not foreign.strip(), f"files in the volume not owned by uid 10001:\n{foreign}"


def test_sigterm_drains_an_in_flight_chunked_upload(dockerd: Dockerd, containers: Containers):
    """`docker stop` while a slow chunked PATCH is streaming: the server finishes that request, then exits 0
    well within docker's 10 s grace period, saying so in its log; the upload is complete after a restart."""
    volume = containers.volume()
    c = containers.start(env={"MOORAGE_AUTH_ENABLED": "false"}, volume=volume)
    r = requests.post(f"{c.url}/v2/ct/inflight/blobs/uploads/", timeout=10)
    assert r.status_code == 202, (r.status_code, r.text)
    location = r.headers["Location"]

    chunks = [os.urandom(256 * 1024) for _ in range(5)]
    data = b"".join(chunks)
    halfway = threading.Event()
    result: dict[str, object] = {}

    def body() -> Iterator[bytes]:
        for i, chunk in enumerate(chunks):
            if i == 2:
                halfway.set()
            yield chunk
            time.sleep(0.4)

    def upload() -> None:
        try:
            resp = requests.patch(
                c.url + location, data=body(), headers={"Content-Type": "application/octet-stream"}, timeout=60
            )
            result["status"], result["range"] = resp.status_code, resp.headers.get("Range")
        except requests.RequestException as e:
            result["error"] = repr(e)
        finally:
            halfway.set()

    thread = threading.Thread(target=upload, daemon=True)
    thread.start()
    assert halfway.wait(20), "the upload did not start"
    code, took = c.stop()
    thread.join(60)
    log = c.logs()
    facts = f"docker stop: exit {code} after {took:.1f}s; in-flight PATCH: {result}\n--- log ---\n{log[-4000:]}"
    assert result.get("status") == 202, f"the in-flight upload was not drained: {facts}"
    assert result.get("range") == f"0-{len(data) - 1}", facts
    assert code == 0 and took < DRAIN_TIMEOUT, facts  # it ended when the upload did, not at the deadline
    assert DRAINING_ONE in log and "drain timed out" not in log and "stopped" in log, facts

    # The drained chunk was kept: a new container on the same volume completes the upload.
    dockerd.run("rm", c.name)
    again = containers.start(env={"MOORAGE_AUTH_ENABLED": "false"}, volume=volume)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    done = requests.put(f"{again.url}{location}", params={"digest": digest}, timeout=30)
    assert done.status_code == 201, (done.status_code, done.text)
    blob = requests.get(f"{again.url}/v2/ct/inflight/blobs/{digest}", timeout=30)
    assert blob.status_code == 200 and blob.content == data, blob.status_code


def test_sigterm_with_a_stalled_upload_exits_within_dockers_grace_period(containers: Containers):
    """A client that stops sending mid-upload must not hold the container past `docker stop`'s default 10 s
    (then SIGKILL, exit 137): the image's drain timeout gives up on it in time and the server exits 0."""
    c = containers.start(env={"MOORAGE_AUTH_ENABLED": "false"})
    r = requests.post(f"{c.url}/v2/ct/stalled/blobs/uploads/", timeout=10)
    assert r.status_code == 202, (r.status_code, r.text)
    sent, release = threading.Event(), threading.Event()
    result: dict[str, object] = {}

    def body() -> Iterator[bytes]:
        yield os.urandom(3 << 19)  # 1.5 MiB: the store writes whole MiBs, so the upload's Range shows it arrived
        sent.set()
        release.wait(60)  # stall, as a hung client does
        yield b"x"

    def upload() -> None:
        try:
            resp = requests.patch(c.url + r.headers["Location"], data=body(), timeout=60)
            result["status"] = resp.status_code
        except requests.RequestException as e:
            result["error"] = repr(e)
        finally:
            sent.set()

    thread = threading.Thread(target=upload, daemon=True)
    thread.start()
    assert sent.wait(20), "the upload did not start"
    wait_for(
        lambda: requests.get(c.url + r.headers["Location"], timeout=10).headers.get("Range", "0-0") != "0-0",
        20,
        "the stalled PATCH's first MiB to reach the server",
    )
    code, took = c.stop()
    release.set()
    thread.join(60)
    log = c.logs()
    facts = f"docker stop: exit {code} after {took:.1f}s; stalled PATCH: {result}\n--- log ---\n{log[-4000:]}"
    assert code == 0 and took < DOCKER_GRACE, facts  # exit 0 before docker's SIGKILL
    assert DRAINING_ONE in log and "drain timed out: cancelling 1 requests" in log, facts
