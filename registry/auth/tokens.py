"""Registry tokens: what GetAuthorizationToken hands out and `docker login --username AWS` presents, and the
signatures of the download URLs GetDownloadUrlForLayer hands out.

A token is a JWT (ES256) naming the principal, signed by a key generated into `<data_dir>/keys/` on first
start and kept across restarts. Each key has an id (`kid`); `keys/current` names the one that signs, and every
key in the folder verifies, so a key can be rotated (`moorage rotate-signing-key`) without invalidating the
tokens already out. A running server notices a rotation at its next signature (every worker stats
`keys/current` before it signs: a few microseconds, next to a millisecond of ES256), so rotating needs no
restart. A token carries no permissions: they are evaluated at request time, so a token never grants more than
its principal has now. Verified tokens are cached until they expire.

A download URL's signature is a JWT of its own kind (`aud` "moorage:download") bound to one repository and one
digest, valid for an hour: it is refused as a registry token, and a registry token is refused as a download
signature.

An anonymous token (`aud` "moorage:anonymous", no principal) is what the Docker token flow's endpoint hands a
client that has no credentials: it names nobody, so every request made with it is evaluated as the anonymous
principal (what `Principal: "*"` statements grant). It exists only so token-flow clients have a token to send.

A console session (`aud` "moorage:console") is the web console's cookie: the principal's name, a random session
id (from which the console derives its CSRF token) and an expiry. It is signed like a token, so sessions survive
restarts and work on every replica, and it is refused wherever a registry token or a download URL is expected.

    <data_dir>/keys/
      current            the kid that signs new tokens
      <kid>.pem          PKCS#8 EC P-256 private keys (mode 0600)

Replicas on a shared backend keep the keys in the metadata store instead (`storage.metadata.SharedValues`:
`signing-key/<kid>` and `signing-key-current`), so a token issued by one replica verifies on every other; each
replica reloads them when another process's commit moves the change feed (`refresh_shared`). A rotated key
signs only from ROTATION_DELAY after the rotation (`signing-key-current` is `<kid>@<unix time>`), by when every
replica has loaded it: no replica ever signs with a key that another one does not know yet.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from registry.cache import LRUCache
from storage.files import atomic_write
from storage.metadata import SharedValues

ALGORITHM = "ES256"
ISSUER = "moorage"
DOWNLOAD_AUDIENCE = "moorage:download"
ANONYMOUS_AUDIENCE = "moorage:anonymous"
CONSOLE_AUDIENCE = "moorage:console"  # a web console session (the cookie's value): never a registry token
DOWNLOAD_PARAM = "signature"  # the query parameter of a download URL that carries its signature
DOWNLOAD_TTL = 3600.0  # ECR's presigned layer URLs last an hour
# What an expired token or download URL is refused with (ECR's words for a token: a 403, not a 401).
TOKEN_EXPIRED = "Your authorization token has expired. Reauthenticate and try again."
DOWNLOAD_EXPIRED = "The download URL has expired; get a new one with GetDownloadUrlForLayer."


class TokenError(Exception):
    """Why a token was refused. `expired` tokens get ECR's 403; the others a 401 that says which."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        # "expired" | "malformed" | "unknown_key" | "bad_signature" | "wrong_use" (a download signature presented
        # as a token, or the reverse) | "wrong_blob" (a download signature for another repository or blob)
        self.kind = kind
        self.message = message


@dataclass(frozen=True, slots=True)
class Claims:
    principal: str
    issued_at: float
    expires_at: float
    kid: str
    repository: str | None = None  # download signatures only: the one blob they fetch
    digest: str | None = None
    anonymous: bool = False  # an anonymous token: names no principal (`principal` is "")
    session: str | None = None  # console sessions only: the session's id (what its CSRF token derives from)

    @property
    def is_download(self) -> bool:
        return self.repository is not None


_KID = re.compile(r"[0-9a-f]{16}")


def _kid(key: ec.EllipticCurvePrivateKey) -> str:
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:16]


SHARED_KEY_PREFIX, SHARED_CURRENT = "signing-key/", "signing-key-current"
ROTATION_DELAY = 10.0  # seconds from a shared rotation until the new key signs (replicas reload every second)


def parse_current(value: bytes) -> tuple[str, float]:
    """`signing-key-current`: the kid, and from when it signs (0: at once; a value without a time is that)."""
    kid, _, at = value.decode(errors="replace").partition("@")
    try:
        return kid, float(at) if at else 0.0
    except ValueError:
        return kid, 0.0


def shared_key_values(directory: Path) -> dict[str, bytes]:
    """The keys of a single machine's ring (`<data_dir>/keys`) as replicas keep them in the shared store, so that
    `moorage migrate-storage` carries them over and tokens issued before the move verify after it. Empty when
    the folder holds no key. Raises ValueError for a file that is not one of the ring's keys."""
    values: dict[str, bytes] = {}
    modified: dict[str, float] = {}
    for pem in sorted(Path(directory).glob("*.pem")):
        data = pem.read_bytes()
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{pem} is not a readable signing key: {e}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{pem} is not an EC signing key")
        values[SHARED_KEY_PREFIX + _kid(key)] = data
        modified[_kid(key)] = pem.stat().st_mtime
    current = Path(directory) / "current"
    kid = current.read_text().strip() if current.is_file() else ""
    if SHARED_KEY_PREFIX + kid in values:
        values[SHARED_CURRENT] = kid.encode()
    elif values:  # no current key named: the newest signs (as `load` would make a new one current)
        values[SHARED_CURRENT] = max(modified, key=lambda k: modified[k]).encode()
    return values


class KeyRing:
    def __init__(self, directory: Path, cache_entries: int = 4096, *, shared: SharedValues | None = None) -> None:
        self.directory = Path(directory)
        self.shared = shared  # keys in the shared metadata store, not in `directory`
        self._keys: dict[str, ec.EllipticCurvePrivateKey] = {}
        self._current: str | None = None
        self._current_stamp: tuple[int, int, int] | None = None  # (inode, mtime, size) of `current` when read
        self._next: tuple[str, float] | None = None  # a shared rotation's key, and from when it signs
        self._verified = LRUCache(cache_entries)

    # -- keys --------------------------------------------------------------------------------------
    def load(self) -> None:
        """Read every key in the folder; create the first one if there is none."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for pem in sorted(self.directory.glob("*.pem")):
            key = serialization.load_pem_private_key(pem.read_bytes(), password=None)
            assert isinstance(key, ec.EllipticCurvePrivateKey), f"{pem} is not an EC key"
            self._keys[_kid(key)] = key
        current = self.directory / "current"
        kid = current.read_text().strip() if current.exists() else None
        if kid not in self._keys:
            kid = self.rotate()
        self._current = kid
        self._current_stamp = self._stamp()

    def rotate(self) -> str:
        """Create a new signing key and make it current; older keys keep verifying."""
        key = ec.generate_private_key(ec.SECP256R1())
        kid = _kid(key)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        atomic_write(self.directory / f"{kid}.pem", pem, mode=0o600)
        atomic_write(self.directory / "current", kid.encode(), mode=0o600)
        self._keys[kid] = key
        self._current = kid
        self._current_stamp = self._stamp()
        return kid

    # -- keys in the shared store (replicas) ----------------------------------------------------------
    async def load_shared(self) -> None:
        """Read every key from the shared store; create the first one if there is none (the caller holds the
        start-up lock, so replicas starting together create one)."""
        assert self.shared is not None
        await self.refresh_shared()
        if self._current is None:
            await self.rotate_shared()

    async def refresh_shared(self) -> None:
        """Pick up keys and a current key another process stored (a rotation, a replica's first key)."""
        assert self.shared is not None
        for name, pem in (await self.shared.values(SHARED_KEY_PREFIX)).items():
            if name[len(SHARED_KEY_PREFIX) :] not in self._keys:
                key = serialization.load_pem_private_key(pem, password=None)
                if isinstance(key, ec.EllipticCurvePrivateKey):
                    self._keys[_kid(key)] = key
        current = await self.shared.get_value(SHARED_CURRENT)
        if current is None:
            return
        kid, signs_from = parse_current(current)
        if kid not in self._keys or kid == self._current:
            return
        if self._current is None or signs_from <= time.time():
            self._current, self._next = kid, None
        else:
            self._next = (kid, signs_from)

    async def rotate_shared(self, delay: float = ROTATION_DELAY) -> tuple[str, float]:
        """Create a new signing key in the shared store and make it current there `delay` seconds from now
        (once every replica has loaded it). The new kid, and the unix time from when it signs."""
        assert self.shared is not None
        key = ec.generate_private_key(ec.SECP256R1())
        kid = _kid(key)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        signs_from = time.time() + delay if self._current is not None else 0.0
        await self.shared.put_value(SHARED_KEY_PREFIX + kid, pem)
        await self.shared.put_value(SHARED_CURRENT, f"{kid}@{signs_from:.3f}".encode())
        self._keys[kid] = key
        if signs_from:
            self._next = (kid, signs_from)
        else:
            self._current = kid
        return kid, signs_from

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            current = os.stat(self.directory / "current")
        except OSError:
            return None
        return current.st_ino, current.st_mtime_ns, current.st_size

    def refresh(self) -> None:
        """Sign with the key `keys/current` names now, if another process (`moorage rotate-signing-key`, or
        another worker) changed it since it was read. `rotate` writes the key before `current` (each by an atomic
        rename), so the named key is there to load; one that is not readable leaves the current key as it is."""
        if self.shared is not None:
            return  # refresh_shared does this job
        stamp = self._stamp()
        if stamp is None or stamp == self._current_stamp:
            return
        try:
            kid = (self.directory / "current").read_text().strip()
        except OSError:
            return
        if self._key(kid) is not None:
            self._current = kid
            self._current_stamp = stamp

    def _key(self, kid: str) -> ec.EllipticCurvePrivateKey | None:
        """The key `kid`, read from the folder when another process (a worker restarted after
        `moorage rotate-signing-key`) created it after this one loaded the ring."""
        key = self._keys.get(kid)
        if key is None and self.shared is None and _KID.fullmatch(kid):
            pem = self.directory / f"{kid}.pem"
            with contextlib.suppress(OSError, ValueError):
                loaded = serialization.load_pem_private_key(pem.read_bytes(), password=None)
                if isinstance(loaded, ec.EllipticCurvePrivateKey) and _kid(loaded) == kid:
                    key = self._keys[kid] = loaded
        return key

    @property
    def current_kid(self) -> str:
        assert self._current is not None, "key ring not loaded"
        self.refresh()
        if self._next is not None and self._next[1] <= time.time():  # a shared rotation's key signs from now
            self._current, self._next = self._next[0], None
        return self._current

    # -- tokens ------------------------------------------------------------------------------------
    def issue(self, principal: str, now: float, ttl: float) -> tuple[str, float]:
        return self._sign({"sub": principal}, now, ttl)

    def issue_anonymous(self, now: float, ttl: float) -> tuple[str, float]:
        """A token naming no principal: requests made with it are evaluated as anonymous."""
        return self._sign({"sub": "", "aud": ANONYMOUS_AUDIENCE}, now, ttl)

    def issue_download(self, principal: str, repository: str, digest: str, now: float, ttl: float) -> tuple[str, float]:
        """A download URL's signature: `principal` may GET `digest` from `repository` (and nothing else)."""
        return self._sign({"sub": principal, "aud": DOWNLOAD_AUDIENCE, "repo": repository, "digest": digest}, now, ttl)

    def issue_session(self, principal: str, session_id: str, now: float, ttl: float) -> tuple[str, float]:
        """A web console session: `principal` ("" with auth off) signed in as session `session_id`."""
        return self._sign({"sub": principal, "aud": CONSOLE_AUDIENCE, "sid": session_id}, now, ttl)

    def verify_session(self, token: str, now: float) -> Claims:
        """A console session's claims (anything else, or an expired session, is refused)."""
        claims = self._claims(token)
        if claims.session is None:
            raise TokenError("wrong_use", "not a console session")
        if now >= claims.expires_at:
            raise TokenError("expired", "the console session has expired; sign in again")
        return claims

    def _sign(self, claims: dict[str, str], now: float, ttl: float) -> tuple[str, float]:
        kid = self.current_kid
        expires_at = now + ttl
        token = jwt.encode(
            {"iss": ISSUER, **claims, "iat": int(now), "exp": int(expires_at)},
            self._keys[kid],
            algorithm=ALGORITHM,
            headers={"kid": kid},
        )
        return token, float(int(expires_at))

    def verify(self, token: str, now: float) -> Claims:
        """A registry token's claims (a download URL's signature is refused)."""
        claims = self._claims(token)
        if claims.is_download:
            raise TokenError("wrong_use", "this is a download URL's signature, not an authorization token")
        if claims.session is not None:
            raise TokenError("wrong_use", "this is a console session, not an authorization token")
        if now >= claims.expires_at:
            raise TokenError("expired", TOKEN_EXPIRED)
        return claims

    def verify_download(self, token: str, now: float, repository: str, digest: str) -> Claims:
        """A download URL's claims, when it is one for `digest` in `repository` and has not expired."""
        claims = self._claims(token)
        if not claims.is_download or claims.session is not None:
            raise TokenError("wrong_use", "the download signature is not one GetDownloadUrlForLayer issued")
        if claims.repository != repository or claims.digest != digest:
            raise TokenError("wrong_blob", "the download URL is for another repository or layer")
        if now >= claims.expires_at:
            raise TokenError("expired", DOWNLOAD_EXPIRED)
        return claims

    def _claims(self, token: str) -> Claims:
        claims = self._verified.get(token)
        if claims is None:
            claims = self._verify_signature(token)
            self._verified.put(token, claims)
        return claims

    def _verify_signature(self, token: str) -> Claims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:  # undecodable, or a header pyjwt refuses (e.g. a non-string kid)
            raise TokenError("malformed", "authorization token is malformed (not a Moorage token)") from None
        kid = header.get("kid")
        key = self._key(kid) if isinstance(kid, str) else None
        if key is None or not isinstance(kid, str):
            raise TokenError(
                "unknown_key", f"authorization token was signed by an unknown key (kid {kid!r}); get a new token"
            ) from None
        try:
            payload = jwt.decode(
                token,
                key.public_key(),
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                options={"verify_exp": False, "verify_aud": False, "require": ["sub", "iat", "exp", "iss"]},
            )
        except jwt.InvalidSignatureError:
            raise TokenError(
                "bad_signature", "authorization token signature is invalid (the token was altered)"
            ) from None
        except jwt.InvalidTokenError as e:
            raise TokenError("malformed", f"authorization token is malformed: {e}") from None
        if not isinstance(payload.get("sub"), str):
            raise TokenError("malformed", "authorization token names no principal")
        claims = Claims(payload["sub"], float(payload["iat"]), float(payload["exp"]), kid)
        if "aud" not in payload:
            if not payload["sub"]:
                raise TokenError("malformed", "authorization token names no principal")
            return claims
        if payload["aud"] == ANONYMOUS_AUDIENCE:
            return Claims("", claims.issued_at, claims.expires_at, kid, anonymous=True)
        if payload["aud"] == CONSOLE_AUDIENCE:
            if not isinstance(payload.get("sid"), str) or not payload["sid"]:
                raise TokenError("malformed", "console session is malformed: no session id")
            return Claims(claims.principal, claims.issued_at, claims.expires_at, kid, session=payload["sid"])
        repository, digest = payload.get("repo"), payload.get("digest")
        if payload["aud"] != DOWNLOAD_AUDIENCE or not isinstance(repository, str) or not isinstance(digest, str):
            raise TokenError("malformed", "authorization token is malformed: an unknown audience")
        return Claims(claims.principal, claims.issued_at, claims.expires_at, kid, repository, digest)
