"""An async client for an upstream OCI registry: the pull side of the Distribution API, with auth.

Handles anonymous access, Basic challenges, Bearer-token challenges (Docker Hub, Quay, GHCR style: the token
is fetched from the challenge's realm and cached per scope until it expires) and ECR-style upstreams
(access keys: a SigV4-signed GetAuthorizationToken, the token cached and renewed before it expires). Every
request has bounded connect and read timeouts.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from registry import oci
from registry.auth.sigv4 import canonical_request, sign

MANIFEST_ACCEPT = ", ".join([oci.OCI_INDEX, oci.OCI_MANIFEST, oci.DOCKER_LIST, oci.DOCKER_MANIFEST])
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
USER_AGENT = "moorage-pull-through"


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
    """The upstream could not answer: `kind` says how (not_found, denied, throttled, unavailable)."""

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


class UpstreamClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        credentials: Credentials | None,
        timeout: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.credentials = credentials
        self.timeout = aiohttp.ClientTimeout(total=None, connect=timeout, sock_connect=timeout, sock_read=timeout)
        self.clock = clock
        self._auth: dict[str, tuple[str, float]] = {}  # scope -> (Authorization header, expires at)

    # -- requests ----------------------------------------------------------------------------------
    async def _send(
        self, method: str, path: str, scope: str, headers: dict[str, str] | None = None
    ) -> aiohttp.ClientResponse:
        headers = {"User-Agent": USER_AGENT, **(headers or {})}
        cached = self._auth.get(scope)
        if cached and cached[1] > self.clock():
            headers["Authorization"] = cached[0]
        resp = await self._request(method, path, headers)
        if resp.status == 401:
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
            resp = await self._request(method, path, headers)
        return resp

    async def _request(self, method: str, path: str, headers: dict[str, str]) -> aiohttp.ClientResponse:
        try:
            return await self.session.request(method, self.base_url + path, headers=headers, timeout=self.timeout)
        except TimeoutError:
            raise UpstreamError(self.base_url, "unavailable", "timed out") from None
        except aiohttp.ClientError as e:
            raise UpstreamError(self.base_url, "unavailable", f"unreachable: {e}") from None

    @staticmethod
    async def _error(resp: aiohttp.ClientResponse, what: str) -> UpstreamError:
        try:
            body = (await resp.read())[:2000].decode(errors="replace")
            errors = json.loads(body).get("errors") or []
            said = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors) or body.strip()
        except (ValueError, AttributeError, aiohttp.ClientError, TimeoutError):
            said = ""
        finally:
            resp.release()
        message = f"{what}: HTTP {resp.status}" + (f" ({said[:300]})" if said else "")
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
            raise UpstreamError(self.base_url, "denied", f"unsupported authentication challenge {challenge[:100]!r}")
        self._auth[scope] = (header, expires_at)
        return header

    async def _bearer_token(self, params: dict[str, str], scope: str) -> tuple[str, float]:
        realm = params.get("realm")
        if not realm:
            raise UpstreamError(self.base_url, "denied", "Bearer challenge without a realm")
        query = {"service": params.get("service", ""), "scope": params.get("scope") or scope}
        headers = {"User-Agent": USER_AGENT}
        if isinstance(self.credentials, BasicCredentials):
            raw = f"{self.credentials.username}:{self.credentials.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        try:
            async with self.session.get(realm, params=query, headers=headers, timeout=self.timeout) as resp:
                if resp.status != 200:
                    raise await self._error(resp, "token request was refused")
                doc = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as e:
            raise UpstreamError(self.base_url, "unavailable", f"token service unreachable: {e}") from None
        token = doc.get("token") or doc.get("access_token")
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
        """GetAuthorizationToken on an ECR-style upstream, signed with SigV4."""
        body = b"{}"
        amz_date = datetime.fromtimestamp(self.clock(), UTC).strftime("%Y%m%dT%H%M%SZ")
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
        try:
            async with self.session.post(self.base_url + "/", data=body, headers=headers, timeout=self.timeout) as r:
                doc: dict[str, Any] = await r.json(content_type=None)
                if r.status != 200:
                    raise UpstreamError(
                        self.base_url,
                        "denied",
                        f"GetAuthorizationToken failed: {doc.get('__type')}: {doc.get('message')}",
                        r.status,
                    )
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise UpstreamError(self.base_url, "unavailable", f"GetAuthorizationToken failed: {e}") from None
        data = doc["authorizationData"][0]
        return data["authorizationToken"], float(data["expiresAt"])

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
        try:
            body = await resp.content.read(oci.MAX_MANIFEST_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError) as e:
            raise UpstreamError(self.base_url, "unavailable", f"manifest body cut short: {e}") from None
        finally:
            resp.release()
        if len(body) > oci.MAX_MANIFEST_BYTES:
            raise UpstreamError(self.base_url, "unavailable", f"manifest {repository}:{reference} is over 4 MiB")
        algorithm = oci.digest_algorithm(reference) if oci.is_digest(reference) else "sha256"
        return UpstreamManifest(oci.compute_digest(body, algorithm), media_type, body)

    async def blob(self, repository: str, digest: str) -> aiohttp.ClientResponse:
        """Start a blob download; the caller reads the body and releases the response."""
        resp = await self._send("GET", f"/v2/{repository}/blobs/{digest}", f"repository:{repository}:pull")
        if resp.status != 200:
            raise await self._error(resp, f"GET blob {digest}")
        return resp
