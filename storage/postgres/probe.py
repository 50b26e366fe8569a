"""Whether a PostgreSQL DSN reaches a database Moorage can use, without creating or migrating anything
(`moorage check-config`)."""

from __future__ import annotations

import asyncio

import asyncpg

from storage.errors import StorageError
from storage.postgres.connection import FAILURES, describe, parse_dsn, redact
from storage.postgres.schema import MIGRATIONS, current_schema


async def probe_postgres(dsn: str, wait: float) -> tuple[list[str], str]:
    """(problems, what was found): connect, find the schema the tables go in, read its version."""
    url, settings = parse_dsn(dsn)
    where = f"PostgreSQL {redact(url)}"
    try:
        async with asyncio.timeout(wait):
            conn = await asyncpg.connect(url, server_settings=settings, timeout=wait)
            try:
                schema = await current_schema(conn)
                exists = await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
                version = await conn.fetchval("SELECT max(version) FROM schema_version") if exists else 0
            finally:
                await conn.close()
    except TimeoutError:
        return [f"metadata: {where} did not answer within {wait:g}s"], ""
    except StorageError as e:
        return [f"metadata: {e}"], ""
    except FAILURES as e:
        return [f"metadata: {where} unreachable: {describe(e)}"], ""
    if (version or 0) > len(MIGRATIONS):
        return [f"metadata: schema {schema!r} of {where} has version {version}, newer than this Moorage knows"], ""
    state = f"version {version}" if version else "empty: the first start migrates it"
    return [], f"{where} reachable (schema {schema!r}, {state})"
