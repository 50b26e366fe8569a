"""Shared values (`storage.metadata.SharedValues`: the token signing keys, the image signing key, signing
statuses), on every backend: put with and without replacing, read one or by prefix, delete."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from storage.factory import Stores
from storage.metadata import MetadataStore


async def test_values_are_put_read_by_prefix_replaced_and_deleted(meta: MetadataStore):
    assert await meta.get_value("image-signing/a@sha256:1") is None
    assert await meta.put_value("image-signing/a@sha256:1", b"one") == b"one"
    assert await meta.put_value("image-signing/b@sha256:2", b"\x00two\xff") == b"\x00two\xff"
    await meta.put_value("other", b"x")
    assert await meta.values("image-signing/") == {
        "image-signing/a@sha256:1": b"one",
        "image-signing/b@sha256:2": b"\x00two\xff",
    }
    assert await meta.put_value("image-signing/a@sha256:1", b"uno") == b"uno", "replace=True replaces"
    assert await meta.put_value("image-signing/a@sha256:1", b"ein", replace=False) == b"uno", "the first one stays"
    assert await meta.get_value("image-signing/a@sha256:1") == b"uno"

    assert await meta.delete_value("image-signing/a@sha256:1") is True
    assert await meta.get_value("image-signing/a@sha256:1") is None
    assert await meta.delete_value("image-signing/a@sha256:1") is False, "nothing left to delete: False"
    assert await meta.values("image-signing/") == {"image-signing/b@sha256:2": b"\x00two\xff"}
    assert await meta.get_value("other") == b"x", "a delete removes only its own name"


async def test_another_process_sees_a_delete(meta: MetadataStore, peer: Callable[[], Awaitable[Stores]]):
    other = (await peer()).meta
    await meta.put_value("image-signing-key", b"pem")
    assert await other.get_value("image-signing-key") == b"pem"
    assert await other.delete_value("image-signing-key") is True
    assert await meta.get_value("image-signing-key") is None
