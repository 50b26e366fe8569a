from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.oci import Client
from tests.server import MoorageServer

_names = itertools.count()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    """One registry shared by the whole session; tests isolate themselves by repository name."""
    srv = MoorageServer(tmp_path_factory.mktemp("shared") / "data").start()
    yield srv
    srv.stop()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., MoorageServer]]:
    """A factory for private servers (restarts, crashes, special configs); all stopped at teardown."""
    started: list[MoorageServer] = []

    def make(config: str = "", data_dir: Path | None = None, start: bool = True) -> MoorageServer:
        srv = MoorageServer(data_dir or tmp_path / f"data{len(started)}", config)
        started.append(srv)
        return srv.start() if start else srv

    yield make
    for srv in started:
        srv.kill() if srv.proc else None


@pytest.fixture
def client(server: MoorageServer) -> Client:
    return Client(server.url)


@pytest.fixture
def repo(request: pytest.FixtureRequest) -> str:
    """A fresh, valid repository name per test (with a namespace)."""
    base = request.node.name.lower().replace("[", "-").replace("]", "").replace("_", "-")
    base = "".join(c for c in base if c.isalnum() or c == "-")[:60].strip("-")
    return f"t{next(_names)}/{base}"
