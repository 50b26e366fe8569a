"""The `moorage` command as an operator meets it: `serve`'s start-up and shutdown, `check-config`,
`config-example`, `serve --help`, and the README's quick start run as written."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from tests.dockerd import Dockerd, rootfs_tar
from tests.helpers import running, wait_for
from tests.pki import PrivateNetwork
from tests.server import AUTH_OFF, MoorageServer, assert_closed_by_server

MakeServer = Callable[..., MoorageServer]


# -- shutdown: inside docker stop's grace period -------------------------------------------------------------


def _sigterm(srv: MoorageServer) -> tuple[int, float]:
    """SIGTERM the server; its exit code and how long it took to exit."""
    assert srv.proc is not None
    started = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    code = srv.wait(30)
    return code, time.monotonic() - started


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_on_an_idle_server_exits_within_a_second(make_server: MakeServer, workers: int) -> None:
    srv = make_server(workers=workers)
    keepalive = requests.Session()  # an idle keep-alive connection holds nothing up
    assert keepalive.get(srv.url + "/healthz", timeout=10).status_code == 200
    code, took = _sigterm(srv)
    assert code == 0 and took < 1.0, f"exit {code} after {took:.2f}s\n{srv.log()[-3000:]}"


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_with_stalled_uploads_exits_by_the_drain_timeout(make_server: MakeServer, workers: int) -> None:
    """Clients that started a PATCH body and stopped sending are cut at the deadline: the process is gone by
    [server] drain_timeout (docker stop's 10 s grace period holds the image's 8 s), not after it."""
    drain = 3.0
    srv = make_server(AUTH_OFF + f'[server]\ndrain_timeout = "{drain:g}s"\n', workers=workers)
    stalled, locations = [], []
    for i in range(2 * workers):  # over new connections: with two workers, both likely get one
        loc = requests.post(f"{srv.url}/v2/stall/app{i}/blobs/uploads/", timeout=10).headers["Location"]
        sock = socket.create_connection(("127.0.0.1", srv.port))
        head = f"PATCH {loc} HTTP/1.1\r\nHost: {srv.host}\r\nContent-Length: {4 << 20}\r\n\r\n"
        sock.sendall(head.encode() + b"x" * (3 << 19))  # 1.5 MiB of 4, then nothing: a stalled client
        stalled.append(sock)
        locations.append(loc)
        # In flight for sure once its first MiB is stored (the upload's Range shows it).
        wait_for(
            lambda loc=loc: requests.get(srv.url + loc, timeout=10).headers.get("Range", "0-0") != "0-0",
            what="the stalled PATCH to reach the server",
        )
    code, took = _sigterm(srv)
    log = srv.log()
    facts = f"exit {code} after {took:.2f}s (drain_timeout {drain:g}s)\n{log[-3000:]}"
    assert code == 0, facts
    assert drain - 1.0 < took <= drain + 0.3, facts  # they were waited for, then cut in time
    assert "cancelling" in log, facts
    for sock in stalled:  # each stalled client sees its connection closed (no reply: it never sent its body)
        assert_closed_by_server(sock, within=5)

    # What a cut upload had stored stays, and the upload resumes from there.
    srv.start()
    loc = locations[0]
    stored = int(requests.get(srv.url + loc, timeout=10).headers["Range"].split("-")[1]) + 1
    assert 1 << 20 <= stored <= 3 << 19, stored
    total = 2 << 20
    rest = requests.patch(
        srv.url + loc, data=b"x" * (total - stored), headers={"Content-Range": f"{stored}-{total - 1}"}, timeout=30
    )
    assert rest.status_code == 202, (rest.status_code, rest.text)
    digest = "sha256:" + hashlib.sha256(b"x" * total).hexdigest()
    done = requests.put(srv.url + rest.headers["Location"], params={"digest": digest}, timeout=30)
    assert done.status_code == 201, (done.status_code, done.text)


# -- start-up: say only what happened ----------------------------------------------------------------------


def moorage(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`moorage ARGS` as the venv runs it (python -m registry), with the environment cleared of MOORAGE_*."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
    return subprocess.run(
        [sys.executable, "-m", "registry", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_a_busy_port_is_reported_without_claiming_to_serve(tmp_path: Path, workers: int) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        config = tmp_path / "c.toml"
        config.write_text(AUTH_OFF + '[server]\nbind_retry = "200ms"\n')
        p = moorage(
            "serve", "--config", str(config), "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "d"),
            "--workers", str(workers), env={"MOORAGE_LOG_FORMAT": "text"},
        )  # fmt: skip
    finally:
        holder.close()
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use (still after 0.2s" in out, out
    assert "serving on" not in out and "Traceback" not in out, out


BAD_CONFIG = """\
[server]
listen = "nowhere"
workers = -3
drain_timeout = "soon"
colour = "blue"
[registry]
account_id = "12"
[auth]
token_ttl = true
[[auth.principals]]
name = "ci"
[log]
level = "loud"
[nope]
x = 1
[secrets."bad name"]
username = "u"
"""
BAD_CONFIG_PROBLEMS = [
    "environment variable MOORAGE_FOO_BAR: no such section",
    "server.listen: expected HOST:PORT",
    "server.workers: must be 0 (one per CPU, up to 4) or a number of processes from 1 to 64 (got -3)",
    "server.drain_timeout: expected a duration",
    "unknown key server.colour",
    "registry.account_id: must be 12 digits",
    'auth.token_ttl: expected a duration such as "12h", got True',
    "auth.principals[0]: missing required key access_key_id, secret_access_key, policy",
    "log.level: must be one of debug, info, warning, error (got 'loud')",
    "log.format: must be auto (JSON when not a terminal), json or text (got 'xml')",
    "unknown section [nope]",
    "[secrets.bad name]: a secret's name may have",
]


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_every_configuration_problem_is_reported_at_once(tmp_path: Path, command: str) -> None:
    """Each bad key and value (from the file and from MOORAGE_* variables) on a line of its own that names it;
    exit 2, and `serve` starts nothing."""
    config = tmp_path / "bad.toml"
    config.write_text(BAD_CONFIG)
    args = [str(config)] if command == "check-config" else ["--config", str(config)]
    p = moorage(command, *args, env={"MOORAGE_FOO_BAR": "1", "MOORAGE_LOG_FORMAT": "xml"})
    assert p.returncode == 2, p.stderr
    lines = p.stderr.splitlines()
    assert all(line.startswith("moorage: configuration error: ") for line in lines), p.stderr
    for problem in BAD_CONFIG_PROBLEMS:
        assert sum(problem in line for line in lines) == 1, f"{problem!r} not reported once:\n{p.stderr}"
    assert len(lines) == len(BAD_CONFIG_PROBLEMS), p.stderr
    assert "serving on" not in p.stdout + p.stderr


def test_check_config_reports_unusable_tls_files(tmp_path: Path) -> None:
    config = tmp_path / "tls.toml"
    config.write_text(f'[server]\ntls_cert_file = "{tmp_path}/no.pem"\ntls_key_file = "{tmp_path}/no-key.pem"\n')
    p = moorage("check-config", str(config))
    assert p.returncode == 2 and f"server.tls_cert_file: cannot read {tmp_path}/no.pem" in p.stderr, p.stderr


def test_serve_help_describes_the_options_and_every_environment_variable() -> None:
    from registry.config import environment_variables

    p = moorage("serve", "--help")
    assert p.returncode == 0, p.stderr
    text = " ".join(p.stdout.split())  # argparse wraps option help
    for option in ("--config FILE", "--listen HOST:PORT", "--data-dir DIR", "--workers N"):
        assert option in text, p.stdout
    for phrase in ("default 127.0.0.1:5000", "default ./data", "one per CPU", "$MOORAGE_CONFIG", "drain_timeout"):
        assert phrase in text, phrase
    variables = environment_variables()
    assert len(variables) > 30
    for name, default in [("MOORAGE_CONFIG", "the configuration file, when --config is not given"), *variables]:
        assert re.search(rf"^  {name} +{re.escape(default)}$", p.stdout, re.M), f"{name} {default} not listed"
    # What it shows can be written as it is: every variable set to its listed default is a valid configuration.
    check = moorage("check-config", os.devnull, env=dict(variables))
    assert check.returncode == 0, check.stderr


def test_the_installed_package_prints_config_example(tmp_path: Path) -> None:
    """`moorage config-example` from a wheel built from this checkout and installed apart from it prints the
    same bytes as the repository's config.example.toml (package data, not a file beside the source)."""
    pytest.importorskip("setuptools", minversion="70.1")  # bdist_wheel without the wheel package; offline
    repo = Path(__file__).resolve().parent.parent
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "config.example.toml"):
        shutil.copy(repo / name, src / name)
    for package in ("registry", "storage"):  # symlinks as they are: the build must follow them
        shutil.copytree(repo / package, src / package, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    built = subprocess.run(
        [*pip, "wheel", "--no-index", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp_path / "dist").glob("moorage-*.whl")
    site = tmp_path / "site"
    installed = subprocess.run(
        [*pip, "install", "--no-index", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert (site / "registry" / "config.example.toml").is_file() and not (site / "registry").is_symlink()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import registry; print(registry.__file__)"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert where.stdout.startswith(str(site)), where.stdout  # the installed copy, not this checkout
    printed = subprocess.run(
        [sys.executable, "-m", "registry", "config-example"], env=env, cwd=tmp_path, capture_output=True, timeout=60
    )
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == (repo / "config.example.toml").read_bytes()


# -- the README's quick start, as written ---------------------------------------------------------------------


def readme_quick_start() -> str:
    """The first shell block of README.md's "Using it" section: what a new user types after `make run`."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("\n## Using it\n") :]
    start = section.index("```sh\n") + len("```sh\n")
    return section[start : section.index("```", start)]


def test_readme_quick_start_stops_at_errors() -> None:
    """No `eval "$(...)"`, which runs on without credentials when the command fails."""
    block = readme_quick_start()
    assert "moorage credentials" in block and "moorage get-login-password" in block, block
    assert not re.search(r"eval\s+\"?\$\(", block), block
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert not re.search(r"eval\s+\"?\$\(", readme), "README.md still has an eval of a command substitution"


@pytest.mark.docker
@pytest.mark.slow
def test_readme_quick_start_runs_as_written(dockerd: Dockerd, tmp_path: Path) -> None:
    """A fresh clone after `make run`: the Makefile and a .venv whose bin is this venv's, `make run` itself,
    then the README's block run by bash (stopping at the first failing command, or the first failing part of a
    pipe) in a second "terminal" whose PATH does not have the venv. All in a private network namespace (only
    loopback), so 127.0.0.1:5000 is the test's own, with a private dockerd that has `myimage`."""
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        pytest.skip("unshare/nsenter are not installed")
    venv_bin = Path(sys.executable).parent
    if not (venv_bin / "moorage").exists():
        pytest.fail(f"{venv_bin}/moorage does not exist: run the tests with the venv's python (make test)")
    repo = Path(__file__).resolve().parent.parent
    clone = tmp_path / "clone"
    (clone / ".venv").mkdir(parents=True)
    (clone / ".venv" / "bin").symlink_to(venv_bin)
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(repo / name, clone / name)
    (clone / ".venv" / ".installed").touch()  # what make run's install step leaves: it has nothing to do now
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != venv_bin)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOORAGE_", "DOCKER_", "VIRTUAL_ENV"))}
    env |= {"PATH": path, "HOME": str(tmp_path / "home")}
    (tmp_path / "home").mkdir()

    try:
        ns = PrivateNetwork({})
    except RuntimeError as e:
        pytest.skip(str(e))
    inside = [*ns.wrap, f"--wd={clone}"]
    log_path = tmp_path / "make-run.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [*inside, "make", "run"], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    d: Dockerd | None = None
    try:
        wait_for(
            lambda: (
                running(server, log_path)
                and ns.run("curl", "-sf", "http://127.0.0.1:5000/healthz", check=False).returncode == 0
            ),
            60,
            "`make run` to answer",
            interval=0.2,
        )
        d = Dockerd(dockerd.dockerd_bin, dockerd.docker_bin, wrap=ns.wrap)
        d.start()
        d.run("import", str(rootfs_tar(tmp_path / "rootfs.tar", "my image\n")), "myimage")

        block = readme_quick_start()
        docker_env = {k: d.env[k] for k in ("DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_BUILDKIT", "DOCKER_CLI_HINTS")}
        run = subprocess.run(
            [*inside, "bash", "-e", "-o", "pipefail", "-c", block],
            env={**env, **docker_env}, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        facts = f"$ {block}\nexit {run.returncode}\n{run.stdout}\n{run.stderr}"
        facts += f"\n--- make run ---\n{log_path.read_text()}"
        assert run.returncode == 0, facts
        assert "Login Succeeded" in run.stdout, facts
        digest = re.search(r"digest: (sha256:[0-9a-f]{64})", run.stdout)
        assert digest and f"Digest: {digest[1]}" in run.stdout, facts  # pushed, then pulled back
        access = [json.loads(x) for x in log_path.read_text().splitlines() if '"moorage.access"' in x]
        put = [x for x in access if x["method"] == "PUT" and x["path"] == "/v2/team/app/manifests/1.0"]
        assert put and put[-1]["status"] == 201 and put[-1]["principal"] == "admin", facts
    finally:
        if d is not None:
            d.stop()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        ns.close()
