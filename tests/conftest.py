from __future__ import annotations

import itertools
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from tests.dockerd import dockerd_fixture  # noqa: F401 - the session's one private dockerd
from tests.helpers import CI
from tests.oci import Client
from tests.server import AUTH_OFF, MoorageServer, auth_config, login_password
from tests.services.postgres import postgres_dsn  # noqa: F401 - the session's one PostgreSQL
from tests.services.seaweedfs import seaweedfs  # noqa: F401 - the session's one SeaweedFS (S3)
from tests.shared_storage import make_target  # noqa: F401 - PostgreSQL schemas / S3 prefixes for servers
from tests.skopeo import Skopeo, isolated_skopeo

_names = itertools.count()


# -- skips under CI --------------------------------------------------------------------------------


def _skip_reason(longrepr: object) -> str:
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """With CI=true a skip is a failure (a missing tool, a daemon that did not start), reported with its
    reason, unless the test is marked `may_skip`. Elsewhere skips stay skips, their reasons listed by -ra."""
    report = yield
    if CI and report.skipped and not hasattr(report, "wasxfail") and item.get_closest_marker("may_skip") is None:
        report.outcome = "failed"
        report.longrepr = f"skipped, which fails under CI=true: {_skip_reason(report.longrepr)}"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """The same for a whole module skipped at collection."""
    report = yield
    if CI and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped, which fails under CI=true: {_skip_reason(report.longrepr)}"
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A supervisor that was SIGKILLed (by a test on purpose, or by `make_server`'s teardown) leaves its
    metrics directory in the temp dir; remove every such directory nobody holds any more, as the next
    supervisor to start would, so that the suite leaves no /tmp/moorage-* behind."""
    from registry.workers import remove_stale_metrics_dirs

    remove_stale_metrics_dirs()


# -- servers and clients ---------------------------------------------------------------------------


@pytest.fixture(scope="session", params=["anonymous", "token"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    """A registry shared by the session, in two modes: auth off, and auth on with `AWS:<token>` credentials
    from a real GetAuthorizationToken (so the whole OCI API is exercised both ways). Tests isolate themselves
    by repository name."""
    config = AUTH_OFF if request.param == "anonymous" else auth_config()
    srv = MoorageServer(tmp_path_factory.mktemp(request.param) / "data", config).start()
    srv.credentials = ("AWS", login_password(srv)) if request.param == "token" else None
    yield srv
    srv.stop()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., MoorageServer]]:
    """A factory for private servers (restarts, crashes, special configs); all stopped at teardown."""
    started: list[MoorageServer] = []

    def make(
        config: str = AUTH_OFF, data_dir: Path | None = None, start: bool = True, workers: int | None = None
    ) -> MoorageServer:
        srv = MoorageServer(data_dir or tmp_path / f"data{len(started)}", config, workers=workers)
        started.append(srv)
        return srv.start() if start else srv

    yield make
    for srv in started:
        srv.kill() if srv.proc else None


@pytest.fixture
def client(server: MoorageServer) -> Client:
    return Client(server.url, server.credentials)


@pytest.fixture
def repo(request: pytest.FixtureRequest) -> str:
    """A fresh, valid repository name per test (with a namespace)."""
    base = request.node.name.lower().replace("[", "-").replace("]", "").replace("_", "-")
    base = "".join(c for c in base if c.isalnum() or c == "-")[:60].strip("-")
    return f"t{next(_names)}/{base}"


@pytest.fixture(scope="module")
def skopeo(tmp_path_factory: pytest.TempPathFactory) -> Skopeo:
    """skopeo isolated from the machine's config: own policy, registries.conf, (empty) auth file and tmpdir.
    Tests that take it skip (fail under CI=true) when skopeo is not installed; no others do."""
    return isolated_skopeo(tmp_path_factory.mktemp("skopeo-cfg"))
