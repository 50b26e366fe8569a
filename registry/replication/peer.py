"""A replication destination's registry, written to over the Distribution API (`/v2`).

Authentication is the pull-through client's (`registry.proxy.upstream.UpstreamClient`): Basic, Bearer-token
challenges, or access keys for another Moorage (or ECR), whose GetAuthorizationToken gives the token /v2 takes.
Every request carries `Moorage-Replication: <this registry's id>`, which a Moorage destination reads as
ECR's `ecr:ReplicateImage` (and creates a missing repository with its REPLICATION creation template).

Destinations are the operator's own configuration, so any host may be one, except the addresses Moorage never
contacts (cloud metadata services); credentials go only to the destination's origin and its token realm.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, Callable

import aiohttp
from yarl import URL

from registry.config.schema import DestinationConfig
from registry.proxy.upstream import (
    MANIFEST_ACCEPT,
    AwsCredentials,
    BasicCredentials,
    Credentials,
    GuardedResolver,
    UpstreamClient,
    UpstreamError,
    open_session,
)
from registry.upstream_url import UpstreamPolicy

REPLICATION_HEADER = "Moorage-Replication"
ANYWHERE = UpstreamPolicy.parse(["*", "0.0.0.0/0", "::/0"])  # still never the addresses Moorage never contacts


def open_peer_session() -> tuple[aiohttp.ClientSession, GuardedResolver]:
    return open_session(ANYWHERE)


def credentials_of(d: DestinationConfig) -> Credentials | None:
    if d.access_key_id:
        return AwsCredentials(d.access_key_id, d.secret_access_key.reveal(), d.region)
    if d.username:
        return BasicCredentials(d.username, d.password.reveal())
    return None


class PeerClient(UpstreamClient):
    user_agent = "moorage-replication"
    timeout_setting = "[replication] timeout"
    response_timeout_setting = "[replication] timeout"

    def __init__(
        self,
        session: aiohttp.ClientSession,
        guard: GuardedResolver,
        destination: DestinationConfig,
        source_registry: str,
        timeout: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            session,
            destination.endpoint,
            credentials_of(destination),
            timeout,
            clock,
            guard=guard,
            response_timeout=timeout,
        )
        self.destination = destination
        self.headers = {REPLICATION_HEADER: source_registry}

    def _scope(self, repository: str) -> str:
        return f"repository:{repository}:pull,push"

    async def _call(
        self,
        method: str,
        path: str,
        repository: str,
        headers: dict[str, str] | None = None,
        data: bytes | Callable[[], AsyncIterable[bytes]] | None = None,
    ) -> aiohttp.ClientResponse:
        return await self._send(method, path, self._scope(repository), {**self.headers, **(headers or {})}, data)

    async def _exists(self, path: str, repository: str, headers: dict[str, str] | None = None) -> bool:
        resp = await self._call("HEAD", path, repository, headers)
        resp.release()
        if resp.status == 200:
            return True
        if resp.status == 404:
            return False
        raise await self._error(resp, f"HEAD {path}")

    async def has_blob(self, repository: str, digest: str) -> bool:
        return await self._exists(f"/v2/{repository}/blobs/{digest}", repository)

    async def has_manifest(self, repository: str, digest: str) -> bool:
        return await self._exists(f"/v2/{repository}/manifests/{digest}", repository, {"Accept": MANIFEST_ACCEPT})

    async def put_blob(
        self, repository: str, digest: str, size: int, chunks: Callable[[], AsyncIterable[bytes]]
    ) -> None:
        """Upload a blob in one PUT after the session's POST (what every registry takes)."""
        resp = await self._call("POST", f"/v2/{repository}/blobs/uploads/", repository)
        location = resp.headers.get("Location", "")
        if resp.status != 202 or not location:
            raise await self._error(resp, f"starting the upload of {digest}")
        resp.release()
        target = URL(self.base_url + "/").join(URL(location))
        if target.origin() != URL(self.base_url).origin():
            raise UpstreamError(self.base_url, "invalid", f"the upload of {digest} was sent to another host")
        path = target.raw_path + "?" + target.with_query({**target.query, "digest": digest}).raw_query_string
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        resp = await self._call("PUT", path, repository, headers, chunks)
        if resp.status != 201:
            raise await self._error(resp, f"uploading {digest}")
        resp.release()

    async def put_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> None:
        resp = await self._call(
            "PUT", f"/v2/{repository}/manifests/{reference}", repository, {"Content-Type": media_type}, body
        )
        if resp.status not in (200, 201):
            raise await self._error(resp, f"PUT {repository}:{reference}")
        resp.release()
