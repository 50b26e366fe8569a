"""Who is calling: registry tokens on /v2 (Basic `AWS:<token>` or Bearer), a download URL's signature on the
blob GET it was issued for, SigV4 on the ECR API."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
from datetime import UTC, datetime

from aiohttp import web

from registry.auth.access import challenge
from registry.auth.principals import Principal
from registry.auth.sigv4 import SigV4Error, verify
from registry.auth.tokens import DOWNLOAD_PARAM, TokenError
from registry.errors import SIGV4_ERRORS, AuthFailure, Denied, MalformedCredentials, Unauthorized
from registry.web.context import ACCESS
from registry.web.middleware import PRINCIPAL

_HASH_OFF_LOOP = 256 * 1024


def realm(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}/"


def condition_keys(request: web.Request, principal: Principal | None) -> dict[str, str]:
    keys = {"aws:SourceIp": request.remote or "", "aws:SecureTransport": str(request.secure).lower()}
    if principal is not None:
        keys["aws:username"] = principal.name
        keys["aws:PrincipalArn"] = principal.arn
    return keys


def registry_principal(request: web.Request) -> Principal | None:
    """The principal a request's Authorization header names; None for an anonymous request. (Never a token in
    the query string: a URL ends up in logs, histories and Referer headers.)"""
    if PRINCIPAL in request:
        return request[PRINCIPAL]
    access = request.app[ACCESS]
    token = None
    header = request.headers.get("Authorization")
    if header:
        scheme, _, credentials = header.strip().partition(" ")
        if scheme.lower() == "basic":
            try:
                user, sep, token = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                raise MalformedCredentials("the Basic credentials are not valid base64 of user:password") from None
            if not user and not token:  # `Basic :` is how some clients (skopeo) say "no credentials"
                token = None
            elif not sep or user != "AWS":
                raise Unauthorized(
                    "the user name must be AWS (the password is a token from GetAuthorizationToken)",
                    headers=challenge(realm(request)),
                )
        elif scheme.lower() == "bearer":
            token = credentials.strip()
        else:
            raise MalformedCredentials(f"unsupported authorization scheme {scheme!r}; use Basic or Bearer")
    principal = access.principal_for_token(token, realm(request)) if token else None
    request[PRINCIPAL] = principal
    return principal


def has_download_signature(request: web.Request) -> bool:
    """A GET that carries a download URL's signature and no Authorization header."""
    return request.method == "GET" and DOWNLOAD_PARAM in request.query and "Authorization" not in request.headers


def download_principal(request: web.Request, repository: str, digest: str) -> Principal:
    """The principal a download URL was issued to, when its signature is for this repository and blob and has
    not expired. (What the principal may do is still evaluated for the request, as for a token.)"""
    access = request.app[ACCESS]
    try:
        claims = access.keyring.verify_download(request.query[DOWNLOAD_PARAM], access.clock(), repository, digest)
    except TokenError as e:
        if e.kind in ("expired", "wrong_blob"):
            raise Denied(e.message) from None
        raise Unauthorized(e.message, headers=challenge(realm(request))) from None
    principal = access.directory.by_name.get(claims.principal)
    if principal is None:
        raise Unauthorized(f"principal {claims.principal!r} no longer exists", headers=challenge(realm(request)))
    request[PRINCIPAL] = principal
    return principal


def upload_owner(request: web.Request) -> str | None:
    """Who an upload session started by this request belongs to: the principal's name, "" for an anonymous
    caller (allowed to push by a repository policy), None with auth off (nobody: anyone may continue it)."""
    if not request.app[ACCESS].enabled:
        return None
    principal = request.get(PRINCIPAL)
    return principal.name if principal is not None else ""


async def api_principal(request: web.Request, body: bytes) -> Principal | None:
    """Verify an ECR API request's SigV4 signature; the principal whose access key signed it."""
    access = request.app[ACCESS]
    if not access.enabled:
        return None
    digest = (
        await asyncio.to_thread(hashlib.sha256, body) if len(body) > _HASH_OFF_LOOP else hashlib.sha256(body)
    ).hexdigest()
    path, _, query = request.raw_path.partition("?")
    try:
        header = verify(
            method=request.method,
            raw_path=path,
            raw_query=query,
            headers=list(request.headers.items()),
            body_sha256=digest,
            secret_for=access.directory.secret_for,
            now=datetime.fromtimestamp(access.clock(), UTC),
            region=access.region,
        )
    except SigV4Error as e:
        raise SIGV4_ERRORS.get(e.code, AuthFailure)(e.message) from None
    principal = access.directory.by_access_key[header.access_key_id]
    request[PRINCIPAL] = principal
    return principal
