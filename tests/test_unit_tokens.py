"""KeyRing without a server: download signatures versus registry tokens, expiry, and rotation noticed by a
ring that did not rotate (another worker, or `moorage rotate-signing-key`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.auth.tokens import KeyRing, TokenError

DIGEST = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64
NOW = 1_700_000_000.0  # in the past: pyjwt refuses an iat in the future


@pytest.fixture
def ring(tmp_path: Path) -> KeyRing:
    r = KeyRing(tmp_path / "keys")
    r.load()
    return r


def kind(fn, *args) -> str:
    with pytest.raises(TokenError) as e:
        fn(*args)
    return e.value.kind


def test_download_signature_is_bound_to_its_blob_and_expires(ring: KeyRing):
    sig, expires = ring.issue_download("alice", "team/app", DIGEST, NOW, 3600)
    assert expires == NOW + 3600
    claims = ring.verify_download(sig, NOW + 3599, "team/app", DIGEST)
    assert (claims.principal, claims.repository, claims.digest) == ("alice", "team/app", DIGEST)
    assert kind(ring.verify_download, sig, NOW + 3600, "team/app", DIGEST) == "expired"
    assert kind(ring.verify_download, sig, NOW, "team/app", OTHER) == "wrong_blob"
    assert kind(ring.verify_download, sig, NOW, "team/other", DIGEST) == "wrong_blob"


def test_download_signatures_and_tokens_are_not_interchangeable(ring: KeyRing):
    sig, _ = ring.issue_download("alice", "team/app", DIGEST, NOW, 3600)
    token, _ = ring.issue("alice", NOW, 3600)
    assert kind(ring.verify, sig, NOW) == "wrong_use"
    assert kind(ring.verify_download, token, NOW, "team/app", DIGEST) == "wrong_use"
    assert ring.verify(token, NOW).principal == "alice"


def test_a_rotation_elsewhere_is_noticed_and_old_tokens_still_verify(ring: KeyRing, tmp_path: Path):
    old, _ = ring.issue("alice", NOW, 3600)
    old_kid = ring.current_kid
    other = KeyRing(tmp_path / "keys")  # the rotating process
    other.load()
    new_kid = other.rotate()
    assert new_kid != old_kid
    assert ring.current_kid == new_kid  # no reload, no restart
    new, _ = ring.issue("alice", NOW, 3600)
    for token in (old, new):
        assert ring.verify(token, NOW).principal == "alice"
        assert other.verify(token, NOW).principal == "alice"
    assert ring.verify(new, NOW).kid == new_kid and ring.verify(old, NOW).kid == old_kid


def test_a_current_file_naming_an_unreadable_key_keeps_the_signing_key(ring: KeyRing, tmp_path: Path):
    kid = ring.current_kid
    (tmp_path / "keys" / "current").write_text("0123456789abcdef")  # no such key file
    assert ring.current_kid == kid
    token, _ = ring.issue("alice", NOW, 60)
    assert ring.verify(token, NOW).kid == kid


def test_a_shared_rotation_signs_only_once_every_replica_can_have_loaded_it(tmp_path: Path):
    """Replicas keep their keys in the shared store: the rotating one writes the new key and from when it signs
    (ROTATION_DELAY ahead), so no replica signs a token another can't verify yet; until then the old key signs."""
    import asyncio
    import time

    from storage.sqlite import SQLiteMetadataStore

    async def main() -> None:
        store = SQLiteMetadataStore(tmp_path / "moorage.db")
        await store.open()
        try:
            one, two = KeyRing(tmp_path / "one", shared=store), KeyRing(tmp_path / "two", shared=store)
            await one.load_shared()  # the first key signs at once
            await two.load_shared()
            first = one.current_kid
            assert two.current_kid == first
            kid, signs_from = await one.rotate_shared(delay=0.4)
            assert kid != first and time.time() < signs_from
            assert one.current_kid == first, "the rotating replica keeps signing with the old key for the delay"
            await two.refresh_shared()
            assert two.current_kid == first, "so does every other replica"
            early, _ = two.issue("alice", time.time() - 1, 3600)
            assert one.verify(early, time.time()).kid == first
            late_start = time.monotonic()
            while time.time() < signs_from:
                assert time.monotonic() - late_start < 5
                await asyncio.sleep(0.05)
            assert one.current_kid == kid and two.current_kid == kid
            late, _ = one.issue("alice", time.time() - 1, 3600)
            assert two.verify(late, time.time()).kid == kid, "a token from the new key verifies everywhere"
            assert two.verify(early, time.time()).kid == first, "and the old key's tokens still do"
            third = KeyRing(tmp_path / "three", shared=store)  # a replica started after the switch
            await third.load_shared()
            assert third.current_kid == kid
        finally:
            await store.close()

    asyncio.run(main())


def test_console_sessions_are_neither_tokens_nor_download_signatures(ring: KeyRing):
    session, expires = ring.issue_session("alice", "sid-1", NOW, 600)
    token, _ = ring.issue("alice", NOW, 3600)
    sig, _ = ring.issue_download("alice", "team/app", DIGEST, NOW, 3600)
    claims = ring.verify_session(session, NOW + 599)
    assert (claims.principal, claims.session, claims.expires_at) == ("alice", "sid-1", expires)
    assert kind(ring.verify_session, session, NOW + 600) == "expired"
    assert kind(ring.verify, session, NOW) == "wrong_use"
    assert kind(ring.verify_download, session, NOW, "team/app", DIGEST) == "wrong_use"
    assert kind(ring.verify_session, token, NOW) == "wrong_use"
    assert kind(ring.verify_session, sig, NOW) == "wrong_use"
