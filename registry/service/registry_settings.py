"""The registry's own settings, as every request of every process sees them: its policy, account settings,
scanning, signing and replication configurations, and pull-time update exclusions.

They live in the metadata store (`storage.metadata.RegistrySettingsStore`) and are held here in memory: access
checks are synchronous and ask for the registry policy on every request. `refresh` (called before each request is
handled) reloads them when the change feed says another process has committed since they were read; this
process's own writes update the copy as they commit. The requests in flight when the epoch moves all ask at once:
one read serves every caller that saw the same epoch.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from registry.registry_policy import BLOB_MOUNTING, REGISTRY_POLICY_SCOPE, check_setting
from storage.coordination import ChangeFeed
from storage.metadata import MetadataStore

POLICY = "registry-policy"
ACCOUNT = "account/"  # + the setting's name
SCANNING = "scanning-configuration"
SIGNING = "signing-configuration"
REPLICATION = "replication-configuration"


_DEFAULT_SCOPE = check_setting(REGISTRY_POLICY_SCOPE)


class RegistrySettings:
    def __init__(
        self, meta: MetadataStore, changes: ChangeFeed | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.meta = meta
        self.changes = changes
        self.clock = clock
        self._settings: dict[str, tuple[str, float]] = {}
        self._policy: tuple[str | None, str] = (None, _DEFAULT_SCOPE)  # registry_policy(), kept: see _changed
        self._exclusions: dict[str, float] = {}
        self._epoch: int | None = None  # None: never read
        self._reading: tuple[int, asyncio.Future[None]] | None = None  # the read under way, for that epoch

    def stale(self) -> bool:
        """Whether another process may have changed them since they were read (`refresh` would read them)."""
        return (self.changes.epoch() if self.changes is not None else 0) != self._epoch

    async def refresh(self) -> None:
        """Re-read everything if another process may have changed it (or nothing was read yet). Callers that see
        the same epoch share one read (begun after that epoch was seen, so it reads what moved it); a caller that
        sees a newer one starts its own."""
        epoch = self.changes.epoch() if self.changes is not None else 0
        if epoch == self._epoch:
            return
        reading = self._reading
        if reading is None or reading[0] != epoch:
            reading = (epoch, asyncio.ensure_future(self._read(epoch)))
            self._reading = reading
            reading[1].add_done_callback(lambda done: self._read_done(reading))
        await asyncio.shield(reading[1])  # (a caller that leaves does not cancel the others' read)

    async def _read(self, epoch: int) -> None:
        settings = await self.meta.registry_settings()
        exclusions = await self.meta.pull_time_exclusions()
        if self._epoch is None or epoch > self._epoch:  # not over a read begun later and done first
            self._settings, self._exclusions, self._epoch = settings, dict(exclusions), epoch
            self._changed()

    def _read_done(self, reading: tuple[int, asyncio.Future[None]]) -> None:
        if self._reading is reading:
            self._reading = None
        if not reading[1].cancelled():
            reading[1].exception()  # (retrieved: a failure is raised to the callers that await it)

    # -- what requests ask (synchronous, from memory) ----------------------------------------------------
    def get(self, name: str) -> str | None:
        entry = self._settings.get(name)
        return entry[0] if entry else None

    def document(self, name: str) -> Any:
        """A setting stored as JSON (the scanning, signing and replication configurations), parsed; None when never
        put."""
        text = self.get(name)
        return json.loads(text) if text is not None else None

    def updated_at(self, name: str) -> float | None:
        entry = self._settings.get(name)
        return entry[1] if entry else None

    def account_setting(self, name: str) -> str:
        """The setting's value, its default when never put."""
        default = check_setting(name)
        return self.get(ACCOUNT + name) or default

    def registry_policy(self) -> tuple[str | None, str]:
        """(the registry policy's text, None without one; the scope it governs). Asked by every access check: the
        same tuple until a setting changes, so a remembered decision checks it with `is`."""
        return self._policy

    def _changed(self) -> None:
        policy = self._settings.get(POLICY)
        scope = self._settings.get(ACCOUNT + REGISTRY_POLICY_SCOPE)
        self._policy = (policy[0] if policy else None), (scope[0] if scope else _DEFAULT_SCOPE)

    def blob_mounting(self) -> bool:
        return self.account_setting(BLOB_MOUNTING) == "ENABLED"

    def pull_time_excluded(self, principal_arn: str | None) -> bool:
        return principal_arn is not None and principal_arn in self._exclusions

    def exclusions(self) -> list[tuple[str, float]]:
        return sorted(self._exclusions.items())

    # -- writes ----------------------------------------------------------------------------------------
    async def put(self, name: str, value: str) -> None:
        now = self.clock()
        await self.meta.put_registry_setting(name, value, now)
        self._settings[name] = (value, now)
        self._changed()

    async def delete(self, name: str) -> str | None:
        old = await self.meta.delete_registry_setting(name)
        self._settings.pop(name, None)
        self._changed()
        return old

    async def exclude(self, principal_arn: str) -> float | None:
        """Register an exclusion; its creation time, None when the principal was excluded already."""
        now = self.clock()
        if not await self.meta.add_pull_time_exclusion(principal_arn, now):
            await self._reload_exclusions()
            return None
        self._exclusions[principal_arn] = now
        return now

    async def include(self, principal_arn: str) -> bool:
        removed = await self.meta.remove_pull_time_exclusion(principal_arn)
        self._exclusions.pop(principal_arn, None)
        return removed

    async def _reload_exclusions(self) -> None:
        self._exclusions = dict(await self.meta.pull_time_exclusions())
