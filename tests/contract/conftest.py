"""Fixtures of the storage contract suite: one event loop per case, and stores on each backend in turn.

The repository does not use pytest-asyncio: a case here is an `async def test_...`, which
`pytest_pyfunc_call` below runs to completion in the case's own `asyncio.Runner` (the one its fixtures opened
the stores in), bounded by CASE_TIMEOUT so that a contract violation that deadlocks fails quickly instead of
waiting for pytest-timeout.

- `stores`: a `storage.factory.Stores` on a fresh backend, opened, closed after the case; `meta` and `blobs`
  are its two stores.
- `peer()`: another process's stores on the same backend (opened; closed after the case).
- `backend`: the provisioned backend, for a case that starts a real child process on it.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from storage.blobs import BlobStore
from storage.factory import Stores
from storage.metadata import MetadataStore
from tests.contract.backends import BACKENDS, BackendUnavailable, Provisioned
from tests.services.postgres import postgres_dsn  # noqa: F401 - the session's PostgreSQL (backends' `services`)

CASE_TIMEOUT = 30.0


# -- async cases ------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def runner() -> Iterator[asyncio.Runner]:
    """The event loop of one case: its fixtures open stores in it, the case runs in it, teardown closes them."""
    with asyncio.Runner() as loop:
        yield loop


async def _bounded(case: Coroutine[Any, Any, None], name: str) -> None:
    try:
        async with asyncio.timeout(CASE_TIMEOUT):
            await case
    except TimeoutError:
        pytest.fail(f"{name} did not finish in {CASE_TIMEOUT:.0f}s (a lock or a wait that never ends?)")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run an `async def` case in its runner; leave plain functions to pytest."""
    function = pyfuncitem.obj
    if not inspect.iscoroutinefunction(function):
        return None
    loop = pyfuncitem.funcargs["runner"]
    assert isinstance(loop, asyncio.Runner)
    kwargs = {name: pyfuncitem.funcargs[name] for name in inspect.signature(function).parameters}
    loop.run(_bounded(function(**kwargs), pyfuncitem.name))
    return True


# -- backends ---------------------------------------------------------------------------------------------


@pytest.fixture(params=[pytest.param(b.id, id=b.id, marks=b.marks) for b in BACKENDS.values()])
def backend(request: pytest.FixtureRequest, runner: asyncio.Runner, tmp_path: Path) -> Iterator[Provisioned]:
    chosen = BACKENDS[request.param]
    for service in chosen.services:  # started once per session; skips the backend's cases when it can't start
        request.getfixturevalue(service)
    try:
        address = runner.run(chosen.provision(tmp_path))
    except BackendUnavailable as e:
        if chosen.required:
            pytest.fail(f"backend {chosen.id} is required but unavailable: {e}")
        pytest.skip(f"backend {chosen.id} unavailable: {e}")
    provisioned = Provisioned(chosen, address)
    try:
        yield provisioned
    finally:
        runner.run(provisioned.close())


@pytest.fixture
def stores(backend: Provisioned, runner: asyncio.Runner) -> Stores:
    """This process's stores on a fresh backend (opened; closed after the case)."""
    return runner.run(backend.attach())


@pytest.fixture
def meta(stores: Stores) -> MetadataStore:
    return stores.meta


@pytest.fixture
def blobs(stores: Stores) -> BlobStore:
    return stores.blobs


@pytest.fixture
def peer(backend: Provisioned, stores: Stores) -> Callable[[], Awaitable[Stores]]:
    """`await peer()`: another process's stores on the same backend (after this case's own `stores`)."""
    return backend.attach


# -- sqlite+s3: the session's SeaweedFS, started for that backend's cases only ---------------------------------


@pytest.fixture(autouse=True)
def _s3_service(request: pytest.FixtureRequest) -> None:
    """Runs before `backend` (autouse fixtures come first in their scope): a case on sqlite+s3 brings up the
    session's SeaweedFS, which `tests.contract.backends` then finds (or skips with the reason it has none)."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("backend") in ("sqlite+s3", "postgresql+s3"):
        request.getfixturevalue("seaweedfs")
