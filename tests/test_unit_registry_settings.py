"""RegistrySettings.refresh (registry/service/registry_settings.py): when another process's commit moves the epoch,
every request in flight asks for a refresh at once; one read serves all that saw the same epoch, and no read
begun earlier overwrites one begun later."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, cast

import pytest

from registry.service.registry_settings import POLICY, RegistrySettings
from storage.metadata import MetadataStore
from tests.helpers import FakeChangeFeed, HeldReads


class Store(HeldReads):
    """The two reads a refresh makes, each held until `release`d when `gated`; what they answer is `policy`."""

    def __init__(self) -> None:
        super().__init__()
        self.policy = "p0"
        self.reads = 0

    async def registry_settings(self) -> dict[str, tuple[str, float]]:
        self.reads += 1
        policy = self.policy  # what the store held when the read began
        await self.hold()
        return {POLICY: (policy, 1.0)}

    async def pull_time_exclusions(self) -> list[tuple[str, float]]:
        return []


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(scenario, 10))


def make() -> tuple[RegistrySettings, Store, FakeChangeFeed]:
    store, feed = Store(), FakeChangeFeed()
    return RegistrySettings(cast(MetadataStore, store), cast(Any, feed)), store, feed


async def until(predicate: Any) -> None:
    for _ in range(100):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("never happened")


def test_the_callers_that_see_one_epoch_share_one_read() -> None:
    async def scenario() -> None:
        settings, store, feed = make()
        await settings.refresh()
        assert (store.reads, settings.get(POLICY)) == (1, "p0")
        store.policy, store.gated, feed.now = "p1", True, 1
        assert settings.stale()
        callers = [asyncio.ensure_future(settings.refresh()) for _ in range(20)]
        await until(lambda: store.gates)
        for _ in range(10):
            await asyncio.sleep(0)
        assert store.reads == 2, "one read for the 20 callers"
        store.gates[0].set()
        await asyncio.gather(*callers)
        assert settings.get(POLICY) == "p1" and not settings.stale()

    run(scenario())


def test_a_read_begun_earlier_never_overwrites_one_begun_later() -> None:
    async def scenario() -> None:
        settings, store, feed = make()
        await settings.refresh()
        store.policy, store.gated, feed.now = "p1", True, 1
        early = asyncio.ensure_future(settings.refresh())
        await until(lambda: len(store.gates) == 1)
        store.policy, feed.now = "p2", 2  # another commit while the first read is under way: a new read
        late = asyncio.ensure_future(settings.refresh())
        await until(lambda: len(store.gates) == 2)
        store.gates[1].set()
        await late
        assert settings.get(POLICY) == "p2"
        store.gates[0].set()
        await early
        assert settings.get(POLICY) == "p2" and not settings.stale(), "the earlier read's answer is dropped"

    run(scenario())


def test_a_failed_read_fails_its_callers_and_the_next_refresh_reads_again() -> None:
    async def scenario() -> None:
        settings, store, feed = make()
        await settings.refresh()
        store.fail, store.gated, feed.now = RuntimeError("store down"), True, 1
        callers = [asyncio.ensure_future(settings.refresh()) for _ in range(3)]
        await until(lambda: store.gates)
        store.gates[0].set()
        outcomes = await asyncio.gather(*callers, return_exceptions=True)
        assert all(isinstance(o, RuntimeError) for o in outcomes), outcomes
        assert settings.stale()
        store.fail, store.gated, store.policy = None, False, "p1"
        await settings.refresh()
        assert settings.get(POLICY) == "p1" and store.reads == 3

    run(scenario())


def test_a_caller_that_leaves_does_not_cancel_the_others_read() -> None:
    async def scenario() -> None:
        settings, store, feed = make()
        await settings.refresh()
        store.policy, store.gated, feed.now = "p1", True, 1
        leaving, staying = (asyncio.ensure_future(settings.refresh()) for _ in range(2))
        await until(lambda: store.gates)
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
        store.gates[0].set()
        await staying
        assert settings.get(POLICY) == "p1" and store.reads == 2

    run(scenario())
