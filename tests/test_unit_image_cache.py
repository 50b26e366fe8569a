"""ImageService's reads through its cache (registry/service/images.py): when another process's commit moves the
epoch, the cache is emptied and every request in flight misses the same keys at once; they share one store read
per key, as long as nothing invalidated the cache since that read began."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, cast

import pytest

from registry.errors import ManifestUnknown
from registry.service.images import ImageService
from storage.metadata import MetadataStore
from tests.helpers import FakeChangeFeed, HeldReads

DIGEST = "sha256:" + "a" * 64


class Store(HeldReads):
    """The reads a manifest GET makes, counted, each held until released when `gated`."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: dict[str, int] = {}
        self.tags = {("r", "v1"): DIGEST}

    async def _read(self, what: str) -> None:
        self.reads[what] = self.reads.get(what, 0) + 1
        await self.hold()

    async def resolve_tag(self, name: str, tag: str) -> str | None:
        digest = self.tags.get((name, tag))  # what the store held when the read began
        await self._read("tag")
        return digest

    async def get_manifest(self, name: str, digest: str) -> object:
        await self._read("manifest")
        return ("manifest", name, digest)

    async def get_repository(self, name: str) -> object:
        await self._read("repo")
        return ("repository", name)


def make() -> tuple[ImageService, Store, FakeChangeFeed]:
    store, feed = Store(), FakeChangeFeed()
    return ImageService(cast(MetadataStore, store), cast(Any, None), cast(Any, feed)), store, feed


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(scenario, 10))


async def let_go(store: Store, count: int) -> None:
    """Release the first `count` reads held, once they are all waiting."""
    for _ in range(200):
        if len(store.gates) >= count:
            break
        await asyncio.sleep(0)
    for gate in store.gates[:count]:
        gate.set()


def test_requests_in_flight_when_the_epoch_moves_share_one_read_per_key() -> None:
    async def scenario() -> None:
        images, store, feed = make()
        await images.get_manifest("r", "v1")
        assert store.reads == {"tag": 1, "manifest": 1}
        feed.now, store.gated = 1, True  # another process committed: the cache is emptied on its next use
        callers = [asyncio.ensure_future(images.get_manifest("r", "v1")) for _ in range(16)]
        for _ in range(20):
            await asyncio.sleep(0)
        assert store.reads["tag"] == 2, "one read of the tag for the 16 callers"
        await let_go(store, 1)
        await let_go(store, 2)
        records = await asyncio.gather(*callers)
        assert store.reads == {"tag": 2, "manifest": 2}, "one read of the tag and one of the manifest for all 16"
        assert set(records) == {("manifest", "r", DIGEST)}
        store.gated = False
        await images.get_manifest("r", "v1")
        assert store.reads == {"tag": 2, "manifest": 2}, "and what they read is cached"

    run(scenario())


def test_a_caller_after_an_invalidation_does_not_join_a_read_begun_before_it() -> None:
    async def scenario() -> None:
        images, store, feed = make()
        store.gated = True
        early = asyncio.ensure_future(images.resolve("r", "v1"))
        for _ in range(100):
            if store.gates:
                break
            await asyncio.sleep(0)
        store.tags[("r", "v1")] = "sha256:" + "b" * 64  # moved by another process, which the epoch tells
        feed.now = 1
        late = asyncio.ensure_future(images.resolve("r", "v1"))
        await let_go(store, 2)
        assert await early == DIGEST, "the read begun before the move answers what it read"
        assert await late == "sha256:" + "b" * 64, "the caller after it reads again"
        assert store.reads == {"tag": 2}
        store.gated = False
        assert await images.resolve("r", "v1") == "sha256:" + "b" * 64, "the older read was not kept"

    run(scenario())


def test_a_failed_read_fails_every_caller_that_shared_it_and_is_not_kept() -> None:
    async def scenario() -> None:
        images, store, _ = make()
        store.gated, store.fail = True, RuntimeError("database down")
        callers = [asyncio.ensure_future(images.repository("r")) for _ in range(3)]
        await let_go(store, 1)
        outcomes = await asyncio.gather(*callers, return_exceptions=True)
        assert all(isinstance(o, RuntimeError) for o in outcomes), outcomes
        assert store.reads == {"repo": 1}
        store.gated, store.fail = False, None
        assert await images.repository("r") == ("repository", "r")
        assert store.reads == {"repo": 2}

    run(scenario())


def test_a_caller_that_leaves_does_not_cancel_the_others_read_and_misses_are_not_kept() -> None:
    async def scenario() -> None:
        images, store, _ = make()
        store.gated = True
        leaving, staying = (asyncio.ensure_future(images.get_manifest("r", "v1")) for _ in range(2))
        for _ in range(100):
            if store.gates:
                break
            await asyncio.sleep(0)
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
        await let_go(store, 1)  # the tag
        await let_go(store, 2)  # the manifest
        assert await staying == ("manifest", "r", DIGEST)
        store.gated = False
        with pytest.raises(ManifestUnknown):
            await images.get_manifest("r", "v2")
        with pytest.raises(ManifestUnknown):
            await images.get_manifest("r", "v2")
        assert store.reads["tag"] == 3, "an unknown tag is asked again each time"

    run(scenario())
