"""Registry tokens: what GetAuthorizationToken hands out and `docker login --username AWS` presents.

A token is a JWT (ES256) naming the principal, signed by a key generated into `<data_dir>/keys/` on first
start and kept across restarts. Each key has an id (`kid`); `keys/current` names the one that signs, and every
key in the folder verifies, so a key can be rotated (`moorage rotate-signing-key`) without invalidating the
tokens already out. A token carries no permissions: they are evaluated at request time, so a token never
grants more than its principal has now. Verified tokens are cached until they expire.

    <data_dir>/keys/
      current            the kid that signs new tokens
      <kid>.pem          PKCS#8 EC P-256 private keys (mode 0600)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from registry.cache import LRUCache

ALGORITHM = "ES256"
ISSUER = "moorage"


class TokenError(Exception):
    """Why a token was refused. `expired` tokens get ECR's 403; the others a 401 that says which."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # "expired" | "malformed" | "unknown_key" | "bad_signature"
        self.message = message


@dataclass(frozen=True, slots=True)
class Claims:
    principal: str
    issued_at: float
    expires_at: float
    kid: str


_KID = re.compile(r"[0-9a-f]{16}")


def _kid(key: ec.EllipticCurvePrivateKey) -> str:
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:16]


class KeyRing:
    def __init__(self, directory: Path, cache_entries: int = 4096) -> None:
        self.directory = Path(directory)
        self._keys: dict[str, ec.EllipticCurvePrivateKey] = {}
        self._current: str | None = None
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

    def rotate(self) -> str:
        """Create a new signing key and make it current; older keys keep verifying."""
        key = ec.generate_private_key(ec.SECP256R1())
        kid = _kid(key)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write_private(self.directory / f"{kid}.pem", pem)
        _write_private(self.directory / "current", kid.encode())
        self._keys[kid] = key
        self._current = kid
        return kid

    def _key(self, kid: str) -> ec.EllipticCurvePrivateKey | None:
        """The key `kid`, read from the folder when another process (a worker restarted after
        `moorage rotate-signing-key`) created it after this one loaded the ring."""
        key = self._keys.get(kid)
        if key is None and _KID.fullmatch(kid):
            pem = self.directory / f"{kid}.pem"
            with contextlib.suppress(OSError, ValueError):
                loaded = serialization.load_pem_private_key(pem.read_bytes(), password=None)
                if isinstance(loaded, ec.EllipticCurvePrivateKey) and _kid(loaded) == kid:
                    key = self._keys[kid] = loaded
        return key

    @property
    def current_kid(self) -> str:
        assert self._current is not None, "key ring not loaded"
        return self._current

    # -- tokens ------------------------------------------------------------------------------------
    def issue(self, principal: str, now: float, ttl: float) -> tuple[str, float]:
        expires_at = now + ttl
        token = jwt.encode(
            {"iss": ISSUER, "sub": principal, "iat": int(now), "exp": int(expires_at)},
            self._keys[self.current_kid],
            algorithm=ALGORITHM,
            headers={"kid": self.current_kid},
        )
        return token, float(int(expires_at))

    def verify(self, token: str, now: float) -> Claims:
        claims = self._verified.get(token)
        if claims is None:
            claims = self._verify_signature(token)
            self._verified.put(token, claims)
        if now >= claims.expires_at:
            raise TokenError("expired", "Your authorization token has expired. Reauthenticate and try again.")
        return claims

    def _verify_signature(self, token: str) -> Claims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:  # undecodable, or a header pyjwt refuses (e.g. a non-string kid)
            raise TokenError("malformed", "authorization token is malformed (not a Moorage token)") from None
        kid = header.get("kid")
        key = self._key(kid) if isinstance(kid, str) else None
        if key is None:
            raise TokenError(
                "unknown_key", f"authorization token was signed by an unknown key (kid {kid!r}); get a new token"
            ) from None
        try:
            payload = jwt.decode(
                token,
                key.public_key(),
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                options={"verify_exp": False, "require": ["sub", "iat", "exp", "iss"]},
            )
        except jwt.InvalidSignatureError:
            raise TokenError(
                "bad_signature", "authorization token signature is invalid (the token was altered)"
            ) from None
        except jwt.InvalidTokenError as e:
            raise TokenError("malformed", f"authorization token is malformed: {e}") from None
        if not isinstance(payload.get("sub"), str):
            raise TokenError("malformed", "authorization token names no principal")
        return Claims(payload["sub"], float(payload["iat"]), float(payload["exp"]), kid)


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
