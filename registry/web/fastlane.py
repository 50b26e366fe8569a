"""The fast lane: a manifest's GET and HEAD, and a small blob's GET, answered from memory ahead of aiohttp's
router and middleware chain.

A pull is mostly these requests, and once one has been served what they need is in memory: the tag's digest,
the manifest, the blob's link and bytes, the principal behind an Authorization header, the repository's policy
and the decision. Routing such a request through the Application (its resource index, the middleware chain,
the dispatch coroutines) cost more than answering it. The lane sits in front of the Application, as the
server's request handler, and answers a request only when it can answer exactly as the full path would:
with success. Everything else goes the full way, which gives the same answer and renders every error: another
route or method, a query string or body, a `Range`, anything not in memory (a cache miss, a tag whose upstream
check is due), an archived image, `[signing] enforce`, a replication, a refusal, settings to reload, writes not
yet settled across replicas. Both paths record a request the same way (`Recorder`): the access log and the
metrics see no difference, and neither does a client (tests/test_fastlane.py compares the two answers).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import cast

from aiohttp import web
from aiohttp.web_urldispatcher import UrlMappingMatchInfo
from multidict import CIMultiDictProxy

from registry import oci
from registry.auth.access import AccessControl
from registry.auth.principals import Principal
from registry.cache import BytesLRU
from registry.errors import RegistryError
from registry.proxy.pullthrough import PullThrough
from registry.service.images import ImageService
from registry.service.registry_settings import RegistrySettings
from registry.web.auth import condition_keys, presented_principal
from registry.web.middleware import (
    API_VERSION_HEADER,
    InFlight,
    Recorder,
    request_id,
)
from registry.web.oci_routes import (
    LAYER_PULL,
    PULL,
    ROUTE_NAMES,
    ROUTES,
    SMALL_BLOB,
    blob_headers,
    dispatch,
    manifest_headers,
)
from registry.web.prepared import Heads, fits, respond
from storage.coordination import ChangeFeed
from storage.records import RepositoryRecord

log = logging.getLogger("moorage.http")
ServerHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
# (principal, when the token expires, the principals' directory, the repository record, the registry policy)
Decision = tuple[Principal | None, float, object, RepositoryRecord, tuple[str | None, str]]
DECISIONS = 4096  # access decisions remembered (Authorization header, repository, action, connection facts)
CONNECTIONS = 1024  # connections whose last decision is remembered (see _authorized)
_READS = frozenset(("GET", "HEAD"))
_MANIFEST_ROUTE = ROUTE_NAMES[ROUTES[0][0]]
_BLOB_ROUTE = next(ROUTE_NAMES[pattern] for pattern, methods in ROUTES if "{digest}" in ROUTE_NAMES[pattern])


class FastLane:
    """The server's request handler: the lane's answer when it has one, else `slow` (the Application's)."""

    __slots__ = (
        "access",
        "answered",
        "changes",
        "connections",
        "decisions",
        "heads",
        "images",
        "in_flight",
        "match_info",
        "reader",
        "record",
        "settings",
        "slow",
        "small_blobs",
    )

    def __init__(
        self,
        *,
        access: AccessControl,
        images: ImageService,
        reader: PullThrough,
        small_blobs: BytesLRU,
        settings: RegistrySettings,
        changes: ChangeFeed | None,
        in_flight: InFlight,
        record: Recorder,
    ) -> None:
        self.access, self.images, self.reader, self.small_blobs = access, images, reader, small_blobs
        self.settings, self.changes, self.in_flight, self.record = settings, changes, in_flight, record
        self.slow: ServerHandler | None = None
        self.decisions: dict[tuple[object, ...], Decision] = {}  # see _authorized
        self.connections: dict[object, tuple[str | None, str, str, Decision]] = {}
        self.heads = Heads()  # rendered response heads (registry/web/prepared)
        self.answered = 0  # requests the lane answered (metrics: moorage_http_fast_lane_requests)
        self.match_info: UrlMappingMatchInfo | None = None

    def install(self, app: web.Application, slow: ServerHandler) -> ServerHandler:
        """In front of `slow`, the handler aiohttp's server would call: the lane's own handler."""
        self.slow = slow
        # What `request.app` reads on a request the lane answers (the helpers it shares with the full path use
        # it): the /v2 dispatch route's match, in the application, frozen, shared by every such request.
        route = next(r for r in app.router.routes() if r.handler is dispatch)
        match_info = UrlMappingMatchInfo({}, route)
        match_info.add_app(app)
        match_info.freeze()
        self.match_info = match_info
        return self.handle

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if (
            request.method in _READS
            and not request.query_string
            and not request.body_exists
            and request.path.startswith("/v2/")
        ):
            try:
                # (The server's requests are the Application's: web.Request, made by its request factory.)
                resp = self.answer(cast(web.Request, request))
            except Exception:  # a bug here must cost speed, never an answer: the full path answers
                log.exception("the fast lane failed on %s %s; the full path answers it", request.method, request.path)
                resp = None
            if resp is not None:
                return resp
        assert self.slow is not None
        return await self.slow(request)

    def answer(self, request: web.Request) -> web.StreamResponse | None:
        """The response, when memory holds it and it is a success; None: the full path answers."""
        start = time.perf_counter()
        changes = self.changes
        if self.settings.stale() or (changes is not None and changes.unsettled()):
            return None
        path = request.path
        head, _, last = path.rpartition("/")
        prefix, _, kind = head.rpartition("/")
        name = prefix[4:]  # after "/v2/"
        headers = request.headers
        try:
            if kind == "manifests":
                oci.validate_name(name)
                oci.validate_reference(last)
                route, action = _MANIFEST_ROUTE, PULL
            elif kind == "blobs" and request.method == "GET" and "Range" not in headers:
                oci.validate_name(name)
                oci.validate_digest(last)
                route, action = _BLOB_ROUTE, LAYER_PULL
            else:
                return None
        except RegistryError:  # the full path says what is wrong with it
            return None
        principal = None
        if self.access.enabled:
            repository = self.images.cached_repository(name)
            if repository is None:
                return None
            # (With the replication header, the full path also allows ecr:ReplicateImage; pull suffices here, and
            # is all a replication changes for a manifest read without `[signing] enforce`.)
            allowed, principal = self._authorized(request, headers, name, action[0], repository)
            if not allowed:
                return None
        rid = request_id(request)
        draining = self.in_flight.draining
        prepared = not draining and fits(request)
        if route is _MANIFEST_ROUTE:
            answer = self._manifest(request, name, last, principal, rid, prepared)
        else:
            answer = self._blob(name, last, rid, prepared)
        if answer is None:
            return None
        resp, size = answer
        if draining:
            resp.force_close()
        self.answered += 1
        seconds = time.perf_counter() - start
        self.record(request, rid, route, 200, seconds, 0, size, principal, name, action[0])
        return resp

    def _authorized(
        self, request: web.Request, headers: CIMultiDictProxy[str], name: str, action: str, repository: RepositoryRecord
    ) -> tuple[bool, Principal | None]:
        """Whether the request may `action` on the repository, and its principal. A decision is remembered per
        Authorization header, repository, action and connection facts (the condition keys), and reused while
        everything it was made from stands: the token unexpired, the same principals, the same repository
        record (its policy), the same registry policy. Refusals are not remembered (the full path renders them).

        Each connection's last decision is also kept by the connection (its protocol object, whose address and
        TLS never change): a client pulling over keep-alive sends the same header for the same repository again,
        and comparing it with the last one costs less than hashing a kilobyte of header into the key."""
        access = self.access
        authorization = headers.get("Authorization")
        protocol = request._protocol  # (the attribute behind request.protocol, a property)
        last = self.connections.get(protocol)
        if last is not None and last[0] == authorization and last[1] == name and last[2] == action:
            hit: Decision | None = last[3]
            key = None
        else:
            key = (authorization, name, action, request.remote, request.secure)
            hit = self.decisions.get(key)
        registry_policy = access.registry_policy()
        if hit is not None:
            principal, expires_at, directory, record, policy = hit
            if (
                access.clock() < expires_at
                and directory is access.directory
                and record is repository
                and policy is registry_policy
            ):
                if key is not None:
                    self._remember(protocol, authorization, name, action, hit)
                return True, principal
        request._match_info = self.match_info  # (the helpers shared with the full path read request.app)
        try:
            principal, token_expires = presented_principal(request)
        except Exception:  # a bad or expired token: the full path renders its 401
            return False, None
        if not access.allowed(principal, (action,), name, repository.policy, condition_keys(request, principal)):
            return False, None
        expires_at = token_expires if token_expires is not None else math.inf
        decision = (principal, expires_at, access.directory, repository, registry_policy)
        decisions = self.decisions
        if len(decisions) >= DECISIONS:
            decisions.clear()
        if key is None:  # (the connection's last decision matched, but no longer stands)
            key = (authorization, name, action, request.remote, request.secure)
        decisions[key] = decision
        self._remember(protocol, authorization, name, action, decision)
        return True, principal

    def _remember(self, protocol: object, authorization: str | None, name: str, action: str, hit: Decision) -> None:
        connections = self.connections
        if len(connections) >= CONNECTIONS:  # (closed connections' entries go with the rest)
            connections.clear()
        connections[protocol] = (authorization, name, action, hit)

    def _manifest(
        self, request: web.Request, name: str, reference: str, principal: Principal | None, rid: str, prepared: bool
    ) -> tuple[web.StreamResponse, int] | None:
        """The answer and its body's size."""
        images = self.images
        record = self.reader.cached_manifest(name, reference)
        if record is None or record.archived or images.pull_checks:
            return None
        if not oci.accepts(request.headers.getall("Accept", []), record.media_type):
            return None
        self.reader.count_hit(name, "manifest")
        if request.method == "GET":
            images.note_pull(name, record.digest, principal.arn if principal is not None else None)
        if prepared:
            body = record.body
            key = ("m", record.digest, record.media_type)
            head = self.heads.get(key) or self.heads.render(key, _stamped(manifest_headers(record)), len(body))
            if head is not None:
                return respond(head, rid, body if request.method == "GET" else None), len(body)
        return web.Response(body=record.body, headers=_stamped(manifest_headers(record), rid)), len(record.body)

    def _blob(self, name: str, digest: str, rid: str, prepared: bool) -> tuple[web.StreamResponse, int] | None:
        size = self.reader.cached_blob(name, digest)
        if size is None or size > SMALL_BLOB:
            return None
        data = self.small_blobs.get(digest)
        if data is None or len(data) != size:
            return None
        self.reader.count_hit(name, "blob")
        if prepared:
            key = ("b", digest)
            head = self.heads.get(key) or self.heads.render(key, _stamped(blob_headers(digest)), size)
            if head is not None:
                return respond(head, rid, data), size
        return web.Response(body=data, headers=_stamped(blob_headers(digest), rid)), size


def _stamped(headers: dict[str, str], rid: str | None = None) -> dict[str, str]:
    """What `middleware.stamp` adds to a /v2 response on the full path, added before the response is built (the
    request id: unless the head is kept for other requests)."""
    headers[API_VERSION_HEADER] = "registry/2.0"
    if rid is not None:
        headers["X-Request-Id"] = rid
    return headers
