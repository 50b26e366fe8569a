"""The registry's own settings (policy, account settings, configurations) and pull-time update exclusions in
SQLite."""

from __future__ import annotations

from storage.sqlite.connection import SQLiteConnection


class RegistrySettingsQueries(SQLiteConnection):
    async def registry_settings(self) -> dict[str, tuple[str, float]]:
        rows = await self._fetchall("SELECT name, value, updated_at FROM registry_settings ORDER BY name")
        return {name: (value, updated_at) for name, value, updated_at in rows}

    async def put_registry_setting(self, name: str, value: str, now: float) -> None:
        async with self._tx() as db:
            await db.execute(
                "INSERT INTO registry_settings (name, value, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                (name, value, now),
            )

    async def delete_registry_setting(self, name: str) -> str | None:
        async with self._tx() as db:
            row = await self._one(db, "SELECT value FROM registry_settings WHERE name = ?", (name,))
            await db.execute("DELETE FROM registry_settings WHERE name = ?", (name,))
        return row[0] if row else None

    async def pull_time_exclusions(self) -> list[tuple[str, float]]:
        rows = await self._fetchall("SELECT principal_arn, created_at FROM pull_time_exclusions ORDER BY principal_arn")
        return [(arn, created_at) for arn, created_at in rows]

    async def add_pull_time_exclusion(self, principal_arn: str, now: float) -> bool:
        async with self._tx() as db:
            cur = await db.execute(
                "INSERT OR IGNORE INTO pull_time_exclusions (principal_arn, created_at) VALUES (?, ?)",
                (principal_arn, now),
            )
            return cur.rowcount > 0

    async def remove_pull_time_exclusion(self, principal_arn: str) -> bool:
        async with self._tx() as db:
            cur = await db.execute("DELETE FROM pull_time_exclusions WHERE principal_arn = ?", (principal_arn,))
            return cur.rowcount > 0
