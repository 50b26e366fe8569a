"""A throwaway PostgreSQL cluster for a test session, as the session-scoped fixture `postgres_dsn`.

Import the fixture into a conftest (`from tests.services.postgres import postgres_dsn  # noqa: F401`) and request
it: it yields the DSN of an empty database in a cluster of its own (initdb into a temporary directory, a free
loopback port, fsync off), stopped and removed at the end of the session. PostgreSQL refuses to run as root, so
as root the cluster runs as `nobody`. With `MOORAGE_TEST_POSTGRES` set (a DSN: a CI service, a developer's
server), that server is used instead and nothing is started.

It skips, with the reason (and the tail of the server's log), when the server binaries are missing
(`apt-get install postgresql`) or the cluster does not start. Tests give each case a schema of its own in the
database (`with_schema`), which a Moorage DSN selects with `?search_path=NAME`.

`session_dsn()` is the DSN the fixture yielded (None outside it), for code that can't take a fixture argument
(the contract suite's backend registry).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ENV = "MOORAGE_TEST_POSTGRES"
DATABASE = "moorage_test"
USER = "moorage"
START_TIMEOUT = 60
_BIN_GLOB = "/usr/lib/postgresql/*/bin/initdb"

_session_dsn: str | None = None
_cluster: PostgresCluster | None = None
_users = 0


def session_dsn() -> str | None:
    """The DSN of the session's PostgreSQL (while the `postgres_dsn` fixture is active), else None."""
    return _session_dsn


def find_bindir() -> Path | None:
    """The newest installed server's bin directory (Debian's /usr/lib/postgresql/N/bin), or initdb's on PATH."""
    found = sorted(glob.glob(_BIN_GLOB), key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def with_schema(dsn: str, schema: str) -> str:
    """`dsn` selecting `schema` (Moorage's `?search_path=` parameter), other parameters kept."""
    parts = urllib.parse.urlsplit(dsn)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k not in ("search_path", "schema")]
    query.append(("search_path", schema))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PostgresCluster:
    """initdb, pg_ctl start and stop, as an unprivileged user when this process is root."""

    def __init__(self, bindir: Path, durable: bool = False) -> None:
        self.bindir = bindir
        # Not durable (the session's cluster): no fsync, commits acknowledged before their WAL is written, fast
        # but a `halt` loses the last commits. Durable: PostgreSQL's defaults, for tests that crash the server.
        self.durable = durable
        # Short path under /tmp: the unix socket's path is limited to ~108 bytes, and `nobody` must reach it
        # (pytest's own temp dirs are private to root).
        self.root = Path(tempfile.mkdtemp(prefix="mpg-", dir="/tmp"))
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.log = self.root / "postgres.log"
        self.port = 0
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            self._as = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
            os.chown(self.root, nobody.pw_uid, nobody.pw_gid)
        self.sockets.mkdir()
        if self._as:
            os.chown(self.sockets, self._as["user"], self._as["group"])

    @property
    def dsn(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, *args: str, timeout: float = START_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "TZ": "UTC"},
            **self._as,
        )

    def _check(self, what: str, proc: subprocess.CompletedProcess[str]) -> None:
        if proc.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{what} failed (exit {proc.returncode}): {proc.stdout}{proc.stderr}\n{log}".strip())

    def start(self) -> str:
        """Create and start the cluster and its database; returns the DSN."""
        self._check(
            "initdb",
            self._run("initdb", "-D", str(self.data), "-U", USER, "-A", "trust", "-E", "UTF8", "--no-sync"),
        )
        self.port = _free_port()
        self.resume()
        self._check("createdb", self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, DATABASE))
        return self.dsn

    def resume(self) -> None:
        """Start the server on the cluster's data and port (after `start`'s initdb, or a `halt`)."""
        options = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._check(
            "pg_ctl start",
            self._run(
                "pg_ctl",
                "start",
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-w",
                "-t",
                str(START_TIMEOUT),
                "-o",
                options,
            ),
        )

    def halt(self) -> None:
        """Stop the server at once, as a crash or a lost host would (`-m immediate`), keeping its data."""
        self._check("pg_ctl stop", self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w"))

    def stop(self) -> None:
        if self.data.exists():
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w")
        shutil.rmtree(self.root, ignore_errors=True)


def _start() -> tuple[str, PostgresCluster | None]:
    """The server's DSN, and the cluster started for it (None: an external server); skips when there is none."""
    external = os.environ.get(ENV)
    if external:
        return external, None
    bindir = find_bindir()
    if bindir is None:
        pytest.skip(
            f"PostgreSQL server binaries not found ({_BIN_GLOB}, or initdb on PATH): apt-get install "
            f"postgresql, or set {ENV} to a server's DSN"
        )
    cluster = PostgresCluster(bindir)
    try:
        return cluster.start(), cluster
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        cluster.stop()
        pytest.skip(f"the test PostgreSQL cluster did not start: {e}")


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """The DSN of an empty database on a PostgreSQL server for the whole session (see the module's doc). A
    process starts one cluster however many conftests register the fixture: the last to finish stops it."""
    global _session_dsn, _cluster, _users
    if _session_dsn is None:
        _session_dsn, _cluster = _start()
    _users += 1
    try:
        yield _session_dsn
    finally:
        _users -= 1
        if _users == 0:
            cluster, _cluster, _session_dsn = _cluster, None, None
            if cluster is not None:
                cluster.stop()
