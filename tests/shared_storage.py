"""Shared backends for whole-server tests: a fresh PostgreSQL schema and/or S3 prefix per target, as the
`[storage]` section of a Moorage config (the contract suite's tests/contract/backends.py does the same for
stores opened in-process).

`make_target(kind)` (the fixture) provisions "postgresql+s3", "postgresql+filesystem" or "sqlite+s3" and drops
the schema / empties the prefix at teardown. A kind whose service is missing skips (failing under CI=true, as
every skip does there).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from tests.services import seaweedfs
from tests.services.postgres import session_dsn, with_schema


@dataclass
class Target:
    kind: str
    dsn: str = ""  # selecting the schema (empty: SQLite in the data dir)
    schema: str = ""
    prefix: str = ""  # under seaweedfs.BUCKET (empty: the data dir's filesystem)

    @property
    def blobs_url(self) -> str:
        return f"s3://{seaweedfs.BUCKET}/{self.prefix}" if self.prefix else ""

    def toml(self) -> str:
        """The `[storage]` section (with `[storage.s3]`) naming this target."""
        lines = ["[storage]"]
        if self.dsn:
            lines.append(f'metadata = "{self.dsn}"')
        if self.prefix:
            assert seaweedfs.RUNNING is not None
            lines += [
                f'blobs = "{self.blobs_url}"',
                "[storage.s3]",
                f'endpoint_url = "{seaweedfs.RUNNING.endpoint_url}"',
                f'region = "{seaweedfs.REGION}"',
                f'access_key_id = "{seaweedfs.ACCESS_KEY}"',
                f'secret_access_key = "{seaweedfs.SECRET_KEY}"',
            ]
        return "\n".join(lines) + "\n"

    def objects(self, under: str = "blobs/") -> dict[str, int]:
        """The bucket's objects under this target's prefix (key below the prefix -> size)."""
        assert seaweedfs.RUNNING is not None and self.prefix
        client: Any = seaweedfs.RUNNING.client()
        found: dict[str, int] = {}
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=seaweedfs.BUCKET, Prefix=f"{self.prefix}/{under}"
        ):
            for item in page.get("Contents", ()):
                found[item["Key"][len(self.prefix) + 1 :]] = item["Size"]
        return found

    def run_sql(self, statement: str, *args: Any) -> Any:
        """One statement on the target's schema; its first value."""

        async def run() -> Any:
            conn = await asyncpg.connect(self.dsn)
            try:
                return await conn.fetchval(statement, *args)
            finally:
                await conn.close()

        return asyncio.run(run())


def _sql(dsn: str, statement: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


def provision(request: pytest.FixtureRequest, kind: str) -> Target:
    """A fresh target of `kind` (its services started through the session fixtures, which skip if missing)."""
    metadata, _, blobs = kind.partition("+")
    target = Target(kind)
    if metadata == "postgresql":
        request.getfixturevalue("postgres_dsn")
        dsn = session_dsn()
        assert dsn is not None
        target.schema = f"t_{uuid.uuid4().hex[:16]}"
        _sql(dsn, f'CREATE SCHEMA "{target.schema}"')
        target.dsn = with_schema(dsn, target.schema)
    if blobs == "s3":
        request.getfixturevalue("seaweedfs")
        target.prefix = f"tools/{uuid.uuid4().hex[:12]}"
    return target


def remove(target: Target) -> None:
    """Drop the target's schema and empty its prefix."""
    if target.schema and (dsn := session_dsn()) is not None:
        _sql(dsn, f'DROP SCHEMA IF EXISTS "{target.schema}" CASCADE')
    if target.prefix and seaweedfs.RUNNING is not None:
        seaweedfs.RUNNING.delete_prefix(target.prefix)


@pytest.fixture
def make_target(request: pytest.FixtureRequest) -> Iterator[Callable[[str], Target]]:
    """Provision targets of a kind; each torn down after the test."""
    made: list[Target] = []

    def make(kind: str) -> Target:
        made.append(provision(request, kind))
        return made[-1]

    yield make
    for target in made:
        remove(target)
