"""Who is calling: registry tokens on /v2 (Basic `AWS:<token>` or Bearer), a download URL's signature on the
blob GET it was issued for, SigV4 on the ECR API; and the Docker token flow's endpoint (`/v2/token`), which
hands token-flow clients a token: an anonymous one without credentials, the caller's own for `AWS:<token>`.

The registry's address (`[registry] hostname`, or the host the request came to) names the challenge's realm,
`proxyEndpoint` and `repositoryUri` alike, so that a client can use whichever it is given.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
from datetime import UTC, datetime

from aiohttp import web

from registry.auth.access import basic_challenge, bearer_challenge
from registry.auth.principals import Principal
from registry.auth.sigv4 import SigV4Error, verify
from registry.auth.tokens import DOWNLOAD_PARAM, TokenError
from registry.cache import LRUCache
from registry.config import split_hostname
from registry.errors import SIGV4_ERRORS, AuthFailure, Denied, MalformedCredentials, Unauthorized, Unsupported
from registry.web.context import ACCESS, CONFIG
from registry.web.middleware import PRINCIPAL

_HASH_OFF_LOOP = 256 * 1024
TOKEN_PATH = "/v2/token"
# Request key: the request carried a valid registry token, anonymous or not (what `GET /v2/` asks for).
AUTHENTICATED = web.RequestKey("moorage.authenticated", bool)


def registry_host(request: web.Request) -> str:
    """The registry's address, host[:port]: `[registry] hostname`, or the host the request came to."""
    configured = request.app[CONFIG].registry.hostname
    return split_hostname(configured)[1] if configured else request.host


def base_url(request: web.Request) -> str:
    """scheme://host[:port] of the registry, as clients should reach it (`proxyEndpoint`, realms, URLs). The
    scheme is the connection's (https when Moorage serves TLS) unless the hostname names one."""
    configured = request.app[CONFIG].registry.hostname
    scheme = split_hostname(configured)[0] if configured else None
    return f"{scheme or request.scheme}://{registry_host(request)}"


def realm(request: web.Request) -> str:
    """ECR's Basic realm: the registry's base URL with a trailing slash."""
    return base_url(request) + "/"


def registry_challenge(request: web.Request, scope: str | None = None) -> dict[str, str]:
    """The WWW-Authenticate header of a /v2 401: the Docker token flow's Bearer challenge naming the token
    endpoint (and the scope the request needed), or ECR's Basic one with `[auth] challenge = "basic"`."""
    if request.app[ACCESS].challenge_scheme == "basic":
        return basic_challenge(realm(request))
    return bearer_challenge(base_url(request) + TOKEN_PATH, registry_host(request), scope)


def condition_keys(request: web.Request, principal: Principal | None) -> dict[str, str]:
    keys = {"aws:SourceIp": request.remote or "", "aws:SecureTransport": str(request.secure).lower()}
    if principal is not None:
        keys["aws:username"] = principal.name
        keys["aws:PrincipalArn"] = principal.arn
    return keys


# Authorization headers already read: header -> the token in it. A client sends the same header with every
# request, and decoding its kilobyte of base64 cost more than the rest of the check.
_PRESENTED = LRUCache(1024)


def _presented_token(request: web.Request) -> str | None:
    """The registry token in the Authorization header: Basic `AWS:<token>` or `Bearer <token>`; None without
    one (or with skopeo's `Basic :`, which means "no credentials")."""
    header = request.headers.get("Authorization")
    if not header:
        return None
    token: str | None = _PRESENTED.get(header)
    if token is None:
        token = _read_token(request, header)
        if token is not None:
            _PRESENTED.put(header, token)
    return token


def _read_token(request: web.Request, header: str) -> str | None:
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() == "basic":
        try:
            user, sep, token = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise MalformedCredentials("the Basic credentials are not valid base64 of user:password") from None
        if not user and not token:
            return None
        _check_user(request, user if sep else None)
        return token
    if scheme.lower() == "bearer":
        return credentials.strip()
    raise MalformedCredentials(f"unsupported authorization scheme {scheme!r}; use Basic or Bearer")


def _check_user(request: web.Request, user: str | None) -> None:
    if user != "AWS":
        raise Unauthorized(
            "the user name must be AWS (the password is a token from GetAuthorizationToken)",
            headers=basic_challenge(realm(request)) if request.path == TOKEN_PATH else registry_challenge(request),
        )


def registry_principal(request: web.Request) -> Principal | None:
    """The principal a request's Authorization header names; None for an anonymous request (no credentials, or
    an anonymous token). (Never a token in the query string: a URL ends up in logs, histories and Referer
    headers.)"""
    if PRINCIPAL in request:
        return request[PRINCIPAL]
    return presented_principal(request)[0]


def presented_principal(request: web.Request) -> tuple[Principal | None, float | None]:
    """`registry_principal`, with when the token it was read from expires (None: no token)."""
    access = request.app[ACCESS]
    token = _presented_token(request)
    principal, expires_at = None, None
    if token:
        principal, claims = access.verify_token(token, lambda: registry_challenge(request))
        expires_at = claims.expires_at
        request[AUTHENTICATED] = True
    request[PRINCIPAL] = principal
    return principal, expires_at


async def token_endpoint(request: web.Request) -> web.Response:
    """The Docker token flow's endpoint, the realm of the Bearer challenge. `GET` without credentials: an
    anonymous token (requests made with it get what `Principal: "*"` is granted). `GET` with Basic
    `AWS:<token>` (docker login, credential helpers, containerd's fallback): that token back, for as long as it
    is valid: a token from here never outlives the credentials it was given for. `POST` is the OAuth2 password
    grant (`grant_type=password`, `username=AWS`, `password=<token>`) that containerd tries first. `scope` and
    `service` are not needed: permissions are evaluated on every request."""
    access = request.app[ACCESS]
    if not access.enabled:  # nothing to exchange: anyone may do anything, and the token says so
        token = None
    elif request.method == "POST":
        form = await request.post()
        if form.get("grant_type") != "password":
            raise Unsupported("only grant_type=password is supported; or GET this endpoint with Basic credentials")
        username, password = form.get("username"), form.get("password")
        _check_user(request, username if isinstance(username, str) else None)
        token = password if isinstance(password, str) and password else None
        if token is None:
            raise Unauthorized("no password given", headers=basic_challenge(realm(request)))
    else:
        token = _presented_token(request)
    now = access.clock()
    if token is None:
        request[PRINCIPAL] = None
        token, issued_at, expires_at = access.anonymous_token()
    else:
        principal, claims = access.verify_token(token, basic_challenge(realm(request)))
        request[PRINCIPAL] = principal
        issued_at, expires_at = claims.issued_at, claims.expires_at
    body = {
        "token": token,
        "access_token": token,
        "expires_in": max(int(expires_at - now), 0),
        "issued_at": datetime.fromtimestamp(issued_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return web.json_response(body, headers={"Cache-Control": "no-store"})


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
        raise Unauthorized(e.message, headers=registry_challenge(request)) from None
    principal = access.directory.by_name.get(claims.principal)
    if principal is None:
        raise Unauthorized(f"principal {claims.principal!r} no longer exists", headers=registry_challenge(request))
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
