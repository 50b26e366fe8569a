"""An async client for an upstream OCI registry: the pull side of the Distribution API, with auth.

Handles anonymous access, Basic challenges, Bearer-token challenges (Docker Hub, Quay, GHCR style: the token
is fetched from the challenge's realm and cached per scope until it expires) and ECR-style upstreams
(access keys: a SigV4-signed GetAuthorizationToken, the token cached and renewed before it expires). Every
request has bounded connect and read timeouts.

Every host it contacts is held to `[pull_through] allowed_upstreams` (`registry.upstream_url.UpstreamPolicy`):
the upstream, each redirect it answers with (followed here, one hop at a time) and a Bearer challenge's token
realm. Names are checked when a URL is used, and the addresses they resolve to when connecting
(`GuardedResolver`), so a name that resolves, or is rebound, to 169.254.169.254 or a loopback address is refused
too. Credentials go only to the upstream's own origin (Basic, Bearer, the SigV4-signed token call) and to its
token realm (Basic, to get a token); a redirect to another origin is followed without them. Error messages never
carry an upstream's response body: only its status and OCI error codes (with their messages, for a public
upstream).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import json
import re
import socket
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from registry import oci
from registry.auth.sigv4 import AMZ_DATE_FORMAT, canonical_request, sign
from registry.upstream_url import NotAllowed, UpstreamPolicy, is_public, normalize_host

MANIFEST_ACCEPT = ", ".join([oci.OCI_INDEX, oci.OCI_MANIFEST, oci.DOCKER_LIST, oci.DOCKER_MANIFEST])
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
_ERROR_CODE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_AWS_TYPE = re.compile(r"[A-Za-z0-9#.:_-]{1,128}")
USER_AGENT = "moorage-pull-through"
REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
ERROR_BODY_BYTES = 16 * 1024  # read of an error response, for its OCI error codes


@dataclass(frozen=True, slots=True)
class BasicCredentials:
    username: str
    password: str


@dataclass(frozen=True, slots=True)
class AwsCredentials:
    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"


Credentials = BasicCredentials | AwsCredentials


class UpstreamError(Exception):
    """The upstream could not answer: `kind` says how (not_found, denied, throttled, unavailable; forbidden
    when the allowlist refused a host or address; invalid when it answered something unusable)."""

    def __init__(self, upstream: str, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(f"upstream {upstream}: {message}")
        self.upstream, self.kind, self.status, self.message = upstream, kind, status, message


@dataclass(frozen=True, slots=True)
class UpstreamManifest:
    digest: str
    media_type: str
    body: bytes | None  # None for a HEAD


def _kind(status: int) -> str:
    if status == 404:
        return "not_found"
    if status in (401, 403):
        return "denied"
    if status == 429:
        return "throttled"
    return "unavailable"


# -- where Moorage may connect -----------------------------------------------------------------------------


class UpstreamNotAllowed(OSError):
    """Raised by the resolver (aiohttp reports it as a connection error whose os_error is this)."""


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that only returns addresses the policy allows for the name and port asked for.

    aiohttp resolves every connection's host through it (IP literals skip resolvers: `UpstreamClient` checks
    those itself), so the check happens at connect time, on the addresses actually used. It also remembers
    whether each name last resolved to public addresses only, which decides how much of an upstream's error
    messages may be shown to clients."""

    def __init__(self, policy: UpstreamPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self.inner = inner if inner is not None else DefaultResolver()
        self._public: dict[str, bool] = {}

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            self.policy.check_host(host, port)
        except NotAllowed as e:
            raise UpstreamNotAllowed(str(e)) from None
        found = await self.inner.resolve(host, port, family)
        allowed: list[ResolveResult] = []
        refused: list[str] = []
        for result in found:
            try:
                self.policy.check_address(host, port, result["host"])
            except NotAllowed as e:
                refused.append(str(e))
                continue
            allowed.append(result)
        self._public[normalize_host(host)] = not refused and all(_public_address(r["host"]) for r in allowed)
        if not allowed:
            raise UpstreamNotAllowed(refused[0] if refused else f"{host} resolved to no address")
        return allowed

    async def close(self) -> None:
        await self.inner.close()

    def is_public(self, host: str) -> bool:
        """Whether `host` is known to be public (an IP literal that is, or a name last resolved only to public
        addresses). Unknown names count as internal."""
        host = normalize_host(host)
        literal = _public_address(host)
        return literal if literal is not None else self._public.get(host, False)


def _public_address(text: str) -> bool | None:
    try:
        return is_public(ipaddress.ip_address(text.split("%", 1)[0]))
    except ValueError:
        return None


def open_session(policy: UpstreamPolicy) -> tuple[aiohttp.ClientSession, GuardedResolver]:
    """The HTTP session every upstream request goes through, and its resolver (call inside the event loop)."""
    resolver = GuardedResolver(policy)
    connector = aiohttp.TCPConnector(resolver=resolver)
    return aiohttp.ClientSession(connector=connector, auto_decompress=False, trust_env=False), resolver


def _origin(url: URL) -> tuple[str, str, int | None]:
    return (url.scheme, normalize_host(url.host or ""), url.port)


# -- the client --------------------------------------------------------------------------------------------


# A request body: bytes, or a function making a fresh stream of it (called again if the request is resent).
Body = bytes | Callable[[], AsyncIterable[bytes]] | None


class UpstreamClient:
    user_agent = USER_AGENT
    timeout_setting = "[pull_through] upstream_timeout"
    response_timeout_setting = "[pull_through] upstream_response_timeout"

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        credentials: Credentials | None,
        timeout: float,
        clock: Callable[[], float] = time.time,
        *,
        guard: GuardedResolver,
        response_timeout: float | None = None,
    ) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.credentials = credentials
        self.timeout = aiohttp.ClientTimeout(total=None, connect=timeout, sock_connect=timeout, sock_read=timeout)
        self.response_timeout = response_timeout  # connected and response headers in, per request (None: no bound)
        self.clock = clock
        self.guard = guard
        self._base = URL(self.base_url)
        self._auth: dict[str, tuple[str, float]] = {}  # scope -> (Authorization header, expires at)

    # -- requests ----------------------------------------------------------------------------------
    def _allow(self, url: URL) -> None:
        """Refuse a URL whose host the allowlist does not permit (literal addresses included: aiohttp does not
        pass those through the resolver)."""
        try:
            self.guard.policy.check_url(str(url))
        except NotAllowed as e:
            raise UpstreamError(self.base_url, "forbidden", str(e)) from None

    async def _send(
        self, method: str, path: str, scope: str, headers: dict[str, str] | None = None, data: Body = None
    ) -> aiohttp.ClientResponse:
        headers = {"User-Agent": self.user_agent, **(headers or {})}
        cached = self._auth.get(scope)
        if cached and cached[1] > self.clock():
            headers["Authorization"] = cached[0]
        resp = await self._follow(method, URL(self.base_url + path), headers, data)
        if resp.status == 401 and _origin(resp.url) == _origin(self._base):
            challenge = resp.headers.get("WWW-Authenticate", "")
            resp.release()
            header = await self._authenticate(challenge, scope)
            if header is None:
                raise UpstreamError(
                    self.base_url,
                    "denied",
                    "authentication required and no credentials are configured for this upstream",
                    401,
                )
            headers["Authorization"] = header
            resp = await self._follow(method, URL(self.base_url + path), headers, data)
        return resp

    async def _follow(
        self, method: str, url: URL, headers: dict[str, str], data: Body = None
    ) -> aiohttp.ClientResponse:
        """A request whose redirects are followed here, each hop held to the allowlist; the Authorization
        header goes only to the upstream's own origin (it is dropped at the first hop away from it)."""
        headers = dict(headers)
        for _ in range(MAX_REDIRECTS + 1):
            self._allow(url)
            resp = await self._request(method, url, headers, data)
            if resp.status not in REDIRECTS or method not in ("GET", "HEAD"):
                return resp
            location = resp.headers.get("Location", "")
            resp.release()
            try:
                target = url.join(URL(location))
            except ValueError:
                target = URL()
            if not location or target.scheme not in ("http", "https") or not target.host:
                raise UpstreamError(self.base_url, "unavailable", f"redirected to an unusable location ({resp.status})")
            if url.scheme == "https" and target.scheme == "http":
                raise UpstreamError(self.base_url, "forbidden", f"redirected from https to plain http ({target.host})")
            if _origin(target) != _origin(self._base):
                headers.pop("Authorization", None)
            url = target
        raise UpstreamError(self.base_url, "unavailable", f"more than {MAX_REDIRECTS} redirects")

    async def _request(
        self, method: str, url: URL, headers: dict[str, str], data: Body = None
    ) -> aiohttp.ClientResponse:
        deadline = asyncio.timeout(self.response_timeout)  # request() returns once the headers are in
        body = data() if callable(data) else data
        progress = None
        if self.response_timeout is not None and body is not None and not isinstance(body, bytes):
            # A streamed body (an upload) is sent within request(): the deadline moves on with every piece sent,
            # so a large one over a slow link is not cut off while one that stops moving still is.
            progress = _Progress(deadline, self.response_timeout)
            body = progress.stream(body)
        try:
            async with deadline:
                try:
                    return await self.session.request(
                        method, url, headers=headers, data=body, timeout=self.timeout, allow_redirects=False
                    )
                finally:
                    if progress is not None:
                        progress.done = True
        except TimeoutError:
            if deadline.expired():
                said = f"did not answer within {self.response_timeout:g}s ({self.response_timeout_setting})"
            else:
                said = f"timed out ({self.timeout.sock_read:g}s without a byte; {self.timeout_setting})"
            raise UpstreamError(self.base_url, "timeout", said) from None
        except aiohttp.ClientConnectorError as e:
            if isinstance(e.os_error, UpstreamNotAllowed):
                raise UpstreamError(self.base_url, "forbidden", str(e.os_error)) from None
            raise UpstreamError(self.base_url, "unavailable", f"unreachable: {e}") from None
        except aiohttp.ClientError as e:
            raise UpstreamError(self.base_url, "unavailable", f"unreachable: {e}") from None

    async def _read_small(self, resp: aiohttp.ClientResponse, limit: int) -> bytes:
        """A small body (an error's, a token's) read within the response timeout (else the read timeout) as a
        whole: one trickled a byte at a time never idles long enough for the read timeout alone to end it."""
        async with asyncio.timeout(self.response_timeout or self.timeout.sock_read):
            return await _read_at_most(resp, limit)

    async def _error(self, resp: aiohttp.ClientResponse, what: str) -> UpstreamError:
        """An UpstreamError for a failed response. Its body is never shown: an upstream may be an internal
        service, and a rule must not become a way to read it. Only OCI error codes are quoted, with their
        messages when the host is public (Docker Hub's rate limit message, for instance)."""
        public = self.guard.is_public(resp.url.host or "")
        try:
            body = await self._read_small(resp, ERROR_BODY_BYTES)
        except (aiohttp.ClientError, TimeoutError):
            body = b""
        finally:
            resp.release()
        said = _oci_errors(body, with_messages=public)
        message = f"{what}: HTTP {resp.status}" + (f" ({said})" if said else "")
        return UpstreamError(str(resp.url.origin()), _kind(resp.status), message, resp.status)

    # -- authentication ----------------------------------------------------------------------------
    async def _authenticate(self, challenge: str, scope: str) -> str | None:
        scheme, _, rest = challenge.strip().partition(" ")
        params = dict(_CHALLENGE_PARAM.findall(rest))
        if scheme.lower() == "bearer":
            token, expires_at = await self._bearer_token(params, scope)
            header = f"Bearer {token}"
        elif scheme.lower() == "basic":
            if self.credentials is None:
                return None
            header, expires_at = await self._basic()
        else:
            raise UpstreamError(self.base_url, "denied", f"unsupported authentication challenge {scheme[:40]!r}")
        self._auth[scope] = (header, expires_at)
        return header

    async def _bearer_token(self, params: dict[str, str], scope: str) -> tuple[str, float]:
        """A token from the challenge's realm: a host the allowlist permits, reached without redirects, never
        over plain http from an https upstream; Basic credentials go there to get it."""
        realm = params.get("realm")
        if not realm:
            raise UpstreamError(self.base_url, "denied", "Bearer challenge without a realm")
        try:
            realm_url = URL(realm)
        except ValueError:
            realm_url = URL()
        if realm_url.scheme not in ("http", "https") or not realm_url.host:
            raise UpstreamError(self.base_url, "denied", "Bearer challenge with an unusable realm")
        if self._base.scheme == "https" and realm_url.scheme == "http":
            raise UpstreamError(self.base_url, "forbidden", f"token realm {realm_url.host} is plain http")
        self._allow(realm_url)
        query = {"service": params.get("service", ""), "scope": params.get("scope") or scope}
        headers = {"User-Agent": self.user_agent}
        if isinstance(self.credentials, BasicCredentials):
            raw = f"{self.credentials.username}:{self.credentials.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        elif isinstance(self.credentials, AwsCredentials):  # an ECR-style upstream with a token endpoint (Moorage)
            ecr_token, _ = await self._ecr_token(self.credentials)
            headers["Authorization"] = f"Basic {ecr_token}"  # base64("AWS:<token>"), as docker login sends it
        try:
            resp = await self._request("GET", realm_url.update_query(query), headers)
            if resp.status != 200:
                raise await self._error(resp, "token request was refused")
            try:
                doc = json.loads(await self._read_small(resp, 1 << 20))
            finally:
                resp.release()
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise UpstreamError(self.base_url, "unavailable", f"token service unreachable: {e}") from None
        token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(token, str):
            raise UpstreamError(self.base_url, "denied", "token service returned no token")
        ttl = doc.get("expires_in") if isinstance(doc.get("expires_in"), int | float) else 60
        return token, self.clock() + max(float(ttl) - 10, 5)

    async def _basic(self) -> tuple[str, float]:
        creds = self.credentials
        if isinstance(creds, BasicCredentials):
            raw = f"{creds.username}:{creds.password}".encode()
            return "Basic " + base64.b64encode(raw).decode(), float("inf")
        assert isinstance(creds, AwsCredentials)
        token, expires_at = await self._ecr_token(creds)
        return f"Basic {token}", expires_at - 300

    async def _ecr_token(self, creds: AwsCredentials) -> tuple[str, float]:
        """GetAuthorizationToken on an ECR-style upstream, signed with SigV4 (sent to the upstream itself, no
        redirects)."""
        body = b"{}"
        amz_date = datetime.fromtimestamp(self.clock(), UTC).strftime(AMZ_DATE_FORMAT)
        host = self.base_url.split("://", 1)[1]
        headers = {
            "Host": host,
            "X-Amz-Date": amz_date,
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken",
        }
        signed = ["content-type", "host", "x-amz-date", "x-amz-target"]
        creq = canonical_request("POST", "/", "", headers, signed, hashlib.sha256(body).hexdigest())
        signature = sign(creds.secret_access_key, amz_date, creds.region, "ecr", creq)
        headers["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={creds.access_key_id}/{amz_date[:8]}/{creds.region}"
            f"/ecr/aws4_request, SignedHeaders={';'.join(signed)}, Signature={signature}"
        )
        del headers["Host"]
        url = URL(self.base_url + "/")
        self._allow(url)
        try:
            async with self.session.post(
                url, data=body, headers=headers, timeout=self.timeout, allow_redirects=False
            ) as response:
                doc: Any = json.loads(await self._read_small(response, 1 << 20))
                if not isinstance(doc, dict):
                    raise ValueError("not a JSON object")
                if response.status != 200:
                    public = self.guard.is_public(url.host or "")
                    kind = type_name if isinstance(type_name := doc.get("__type"), str) else ""
                    said = kind if _AWS_TYPE.fullmatch(kind) else ""
                    if public and isinstance(doc.get("message"), str):
                        said += f": {doc['message'][:200]}"
                    raise UpstreamError(
                        self.base_url,
                        "denied",
                        f"GetAuthorizationToken failed: HTTP {response.status} {said}".rstrip(),
                        response.status,
                    )
        except aiohttp.ClientConnectorError as e:
            if isinstance(e.os_error, UpstreamNotAllowed):
                raise UpstreamError(self.base_url, "forbidden", str(e.os_error)) from None
            raise UpstreamError(self.base_url, "unavailable", f"GetAuthorizationToken failed: {e}") from None
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise UpstreamError(self.base_url, "unavailable", f"GetAuthorizationToken failed: {e}") from None
        try:
            data = doc["authorizationData"][0]
            token, expires_at = data["authorizationToken"], float(data["expiresAt"])
            if not isinstance(token, str):
                raise TypeError("authorizationToken is not a string")
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise UpstreamError(
                self.base_url, "denied", f"GetAuthorizationToken answered without a token ({type(e).__name__})"
            ) from None
        return token, expires_at

    # -- the API -----------------------------------------------------------------------------------
    async def ping(self) -> None:
        """GET /v2/ with authentication: what ValidatePullThroughCacheRule checks."""
        resp = await self._send("GET", "/v2/", "registry:catalog:*")
        if resp.status != 200:
            raise await self._error(resp, "GET /v2/ failed")
        resp.release()

    async def manifest(self, repository: str, reference: str, *, head: bool = False) -> UpstreamManifest:
        scope = f"repository:{repository}:pull"
        resp = await self._send(
            "HEAD" if head else "GET", f"/v2/{repository}/manifests/{reference}", scope, {"Accept": MANIFEST_ACCEPT}
        )
        if resp.status != 200:
            raise await self._error(resp, f"{'HEAD' if head else 'GET'} {repository}:{reference}")
        media_type = oci.media_type_of(resp.headers.get("Content-Type")) or ""
        if head:
            digest = resp.headers.get("Docker-Content-Digest", "")
            resp.release()
            return UpstreamManifest(digest, media_type, None)
        too_large = UpstreamError(
            self.base_url,
            "invalid",
            f"manifest {repository}:{reference} is larger than {oci.MAX_MANIFEST_BYTES} bytes (4 MiB), the limit "
            "for a manifest; it cannot be cached",
        )
        try:
            if resp.content_length is not None and resp.content_length > oci.MAX_MANIFEST_BYTES:
                raise too_large
            body = await _read_at_most(resp, oci.MAX_MANIFEST_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError) as e:
            raise UpstreamError(self.base_url, "unavailable", f"manifest body cut short: {e}") from None
        finally:
            resp.release()
        if len(body) > oci.MAX_MANIFEST_BYTES:
            raise too_large
        algorithm = oci.digest_algorithm(reference) if oci.is_digest(reference) else "sha256"
        return UpstreamManifest(oci.compute_digest(body, algorithm), media_type, body)

    async def blob(self, repository: str, digest: str) -> aiohttp.ClientResponse:
        """Start a blob download (redirects followed, each held to the allowlist); the caller reads the body
        and releases the response."""
        resp = await self._send("GET", f"/v2/{repository}/blobs/{digest}", f"repository:{repository}:pull")
        if resp.status != 200:
            raise await self._error(resp, f"GET blob {digest}")
        return resp


class _Progress:
    """Moves a request's deadline `seconds` past each piece of its body handed to the connection (and past the
    last, for the answer), until `done`: the request returned, and the deadline is no longer running."""

    def __init__(self, deadline: asyncio.Timeout, seconds: float) -> None:
        self.deadline = deadline
        self.seconds = seconds
        self.done = False

    def _extend(self) -> None:
        if not self.done and not self.deadline.expired():
            self.deadline.reschedule(asyncio.get_running_loop().time() + self.seconds)

    async def stream(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            self._extend()
            yield chunk
        self._extend()


async def _read_at_most(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or its first `limit` + 1 bytes when it is longer (one `read(n)` returns only what has
    arrived so far, which cut large manifests short)."""
    body = bytearray()
    async for chunk in resp.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:
            break
    return bytes(body[: limit + 1])


def _oci_errors(body: bytes, *, with_messages: bool) -> str:
    """`CODE: message; CODE` from an OCI error body; nothing from anything else."""
    try:
        doc = json.loads(body)
    except ValueError:
        return ""
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(errors, list):
        return ""
    said = []
    for e in errors[:3]:
        code = e.get("code") if isinstance(e, dict) else None
        if not isinstance(code, str) or not _ERROR_CODE.fullmatch(code):
            continue
        message = e.get("message")
        said.append(f"{code}: {message[:200]}" if with_messages and isinstance(message, str) and message else code)
    return "; ".join(said)
