"""The registry's own settings (policy, account settings, configurations) and pull-time update exclusions in
PostgreSQL. Two replicas registering one exclusion at once: `ON CONFLICT DO NOTHING`, one of them wins."""

from __future__ import annotations

from storage.postgres.connection import PostgresConnection, rowcount


class RegistrySettingsQueries(PostgresConnection):
    async def registry_settings(self) -> dict[str, tuple[str, float]]:
        rows = await self._fetch("SELECT name, value, updated_at FROM registry_settings ORDER BY name")
        return {name: (value, updated_at) for name, value, updated_at in rows}

    async def put_registry_setting(self, name: str, value: str, now: float) -> None:
        async with self._tx() as db:
            await db.execute(
                "INSERT INTO registry_settings (name, value, updated_at) VALUES ($1, $2, $3) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                name,
                value,
                now,
            )

    async def delete_registry_setting(self, name: str) -> str | None:
        async with self._tx() as db:
            value: str | None = await db.fetchval("DELETE FROM registry_settings WHERE name = $1 RETURNING value", name)
        return value

    async def pull_time_exclusions(self) -> list[tuple[str, float]]:
        rows = await self._fetch("SELECT principal_arn, created_at FROM pull_time_exclusions ORDER BY principal_arn")
        return [(arn, created_at) for arn, created_at in rows]

    async def add_pull_time_exclusion(self, principal_arn: str, now: float) -> bool:
        async with self._tx() as db:
            status = await db.execute(
                "INSERT INTO pull_time_exclusions (principal_arn, created_at) VALUES ($1, $2) "
                "ON CONFLICT (principal_arn) DO NOTHING",
                principal_arn,
                now,
            )
        return rowcount(status) > 0

    async def remove_pull_time_exclusion(self, principal_arn: str) -> bool:
        async with self._tx() as db:
            status = await db.execute("DELETE FROM pull_time_exclusions WHERE principal_arn = $1", principal_arn)
        return rowcount(status) > 0
