"""Cross-cutting HTTP behaviour: the one place errors are rendered, and the headers every /v2 reply has."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from registry import logs
from registry.auth.principals import Principal
from registry.errors import BodyTimeout, NotFound, RegistryError, StorageFull, StorageUnavailable, Unsupported
from registry.web.bodies import BodyWatch
from registry.web.sendfile import SendfileResponse
from storage.coordination import ChangeFeed
from storage.errors import StorageFull as OutOfSpace
from storage.errors import StorageUnavailable as Unreachable

log = logging.getLogger("moorage.http")
access_log = logging.getLogger("moorage.access")

API_VERSION_HEADER = "Docker-Distribution-API-Version"
ECR_TARGET_HEADER = "X-Amz-Target"
# What handlers record about a request, for the access log and metrics (typed keys of the request's storage).
REQUEST_ID = web.RequestKey("moorage.request_id", str)
ROUTE = web.RequestKey("moorage.route", str)
REPOSITORY = web.RequestKey[str | None]("moorage.repository")
ACTION = web.RequestKey("moorage.action", str)
PRINCIPAL = web.RequestKey[Principal | None]("moorage.principal")
# the SendfileResponse being sent (its byte count survives a cut transfer)
STREAMING = web.RequestKey("moorage.streaming", SendfileResponse)
_INCOMING_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Request ids: a random per-process prefix and a counter (unique, and far cheaper than uuid4 per request).
_ID_PREFIX = uuid.uuid4().hex[:8]
_request_numbers = itertools.count()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_ecr_request(request: web.Request) -> bool:
    """An ECR API call (its JSON protocol names the operation in X-Amz-Target), not a /v2 or console request."""
    return request.method == "POST" and ECR_TARGET_HEADER in request.headers


def render_error(request: web.Request, err: RegistryError) -> web.Response:
    """Write `err` in the protocol's own shape: `__type` JSON on the ECR API, OCI error JSON elsewhere."""
    headers = dict(err.headers)
    if is_ecr_request(request):  # whichever layer failed: the handler, or a middleware before it
        # ECR answers 400 or 500; an unreachable backend is 503 here too, so SDKs retry it as throttling-like
        # and a load balancer (nginx's proxy_next_upstream http_503) tries another replica.
        status = 503 if err.status == 503 else 500 if err.status >= 500 else 400
        headers["X-Amzn-ErrorType"] = err.ecr_code
        body = {"__type": err.ecr_code, "message": err.message, **err.fields}
        return web.Response(
            status=status, headers=headers, content_type="application/x-amz-json-1.1", text=json.dumps(body)
        )
    error: dict[str, object] = {"code": err.oci_code, "message": err.message}
    if err.detail is not None:
        error["detail"] = err.detail
    text = "" if request.method == "HEAD" else json.dumps({"errors": [error]})
    return web.Response(status=err.status, headers=headers, content_type="application/json", text=text)


@web.middleware
async def error_middleware(
    request: web.Request, handler: Handler, before: Callable[[web.Request], Awaitable[None]] | None = None
) -> web.StreamResponse:
    """Errors rendered once, in the protocol's shape. `before` runs first, its errors rendered the same way."""
    try:
        if before is not None:
            await before(request)
        resp = await handler(request)
        if isinstance(resp, SendfileResponse):
            await _send(request, resp)
        return resp
    except RegistryError as err:
        if err.status >= 500:
            log.error("%s %s failed: %s", request.method, request.path, err.message)
        resp = render_error(request, err)
        if isinstance(err, BodyTimeout):  # the rest of the body is never read: the connection can't be reused
            log.info("%s %s: %s", request.method, request.path, err.message)
            resp.force_close()
        return resp
    except web.HTTPMethodNotAllowed as exc:
        return render_error(
            request,
            Unsupported(
                f"{request.method} is not supported on {request.path}",
                headers={"Allow": ",".join(sorted(exc.allowed_methods))},
            ),
        )
    except web.HTTPNotFound:
        return render_error(request, NotFound(f"no such endpoint: {request.path}"))
    except web.HTTPException:
        raise
    except ConnectionError as exc:  # the client went away, or a stream was cut after its headers were sent
        log.info("%s %s: client went away: %s", request.method, request.path, exc)
        raise
    except Exception as exc:
        if request.writer.output_size:
            # A response is going out already (a blob streamed from object storage that turned out corrupt, or
            # whose connection broke): no error can follow it, only cutting the connection (aiohttp does) tells
            # the client that the body it has is not whole.
            log.error("%s %s failed while sending its response: %s", request.method, request.path, exc)
            raise
        if isinstance(exc, OutOfSpace):  # any store, any route: the client learns the disk is full, the log says where
            log.error("%s %s failed: %s", request.method, request.path, exc)
            return render_error(request, StorageFull())
        if isinstance(exc, Unreachable):  # object storage (or a database) down or overloaded: the client may retry
            log.error("%s %s failed: %s", request.method, request.path, exc)
            return render_error(request, StorageUnavailable(headers={"Retry-After": "1"}))
        log.exception("%s %s: unhandled error", request.method, request.path)
        return render_error(request, RegistryError("internal error; see the server log"))


def stamp(request: web.Request, response: web.StreamResponse) -> None:
    """Every /v2 response says which API it speaks, and every response carries its request id. The access
    middleware stamps what handlers return; whatever is sent before that (a handler that streams, a blob sent
    with sendfile) is stamped first. (Cheaper than an on_response_prepare signal: a coroutine per response.)"""
    if request.path.startswith("/v2"):
        response.headers[API_VERSION_HEADER] = "registry/2.0"
    if REQUEST_ID in request:
        response.headers["X-Request-Id"] = request[REQUEST_ID]


class InFlight:
    """Requests being served right now (aiohttp runs each in its own task); shutdown waits for them to finish
    (draining), then cancels those still running at its deadline."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[object]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False  # set at shutdown: every response from then on closes its connection

    @property
    def count(self) -> int:
        return len(self._tasks)

    def enter(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._idle.clear()

    def leave(self) -> None:
        if (task := asyncio.current_task()) is not None:
            self._tasks.discard(task)
        if not self._tasks:
            self._idle.set()

    async def wait_idle(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), max(seconds, 0.0))
            return True
        except TimeoutError:
            return False

    def cancel(self) -> int:
        """Cancel every request still in flight (an upload whose client stopped sending, a download whose client
        stopped reading): each ends as if its client had gone away (499 in the access log). How many."""
        for task in self._tasks:
            task.cancel()
        return len(self._tasks)


class Recorder:
    """One log line and one metrics observation per request: id, principal, repository, action, status, bytes
    and duration (and which worker served it, with several). The path is logged without its query string
    (download URLs carry their signatures there). Called by the access middleware and by the fast lane."""

    __slots__ = ("enabled", "observe", "served_by", "worker")

    def __init__(
        self, observe: Callable[[str, str, int, float, int, int], None], enabled: bool = True, worker: int | None = None
    ) -> None:
        self.observe, self.enabled, self.worker = observe, enabled, worker
        self.served_by = {} if worker is None else {"worker": worker}

    def __call__(
        self,
        request: web.Request,
        rid: str,
        route: str,
        status: int,
        seconds: float,
        bytes_in: int,
        bytes_out: int,
        principal: Principal | None,
        repository: str | None,
        action: str | None,
    ) -> None:
        self.observe(route, request.method, status, seconds, bytes_in, bytes_out)
        if not self.enabled:
            return
        access = logs.access_logger()
        if access is not None:
            access.request(
                rid,
                request.method,
                request.path,
                route,
                status,
                bytes_in,
                bytes_out,
                seconds,
                principal.name if principal else None,
                repository,
                action,
                request.remote,
                request.headers.get("User-Agent", "")[:200],
                self.worker,
            )
            return
        # Logging not set up through registry.logs (e.g. an embedding application).
        fields = {
            "request_id": rid,
            "method": request.method,
            "path": request.path,
            "route": route,
            "status": status,
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "duration_ms": round(seconds * 1000, 3),
            "principal": principal.name if principal else None,
            "repository": repository,
            "action": action,
            "remote": request.remote,
            "user_agent": request.headers.get("User-Agent", "")[:200],
            **self.served_by,
        }
        access_log.info("%s %s %d", request.method, request.path, status, extra={"fields": fields})


def request_id(request: web.Request) -> str:
    """The request's id: the client's X-Request-Id when it is a sane one, else a new one."""
    incoming = request.headers.get("X-Request-Id", "")
    if incoming and _INCOMING_ID.fullmatch(incoming):
        return incoming
    return f"{_ID_PREFIX}{next(_request_numbers):08x}"


def access_middleware(
    record: Recorder,
    in_flight: InFlight,
    changes: ChangeFeed | None = None,
    before: Callable[[web.Request], Awaitable[None]] | None = None,
    body_timeout: float = 0.0,
):
    """`record` every request (see Recorder). Before a response goes out, the change feed's `settle` waits until
    the other replicas can have heard of the writes made so far: a client that writes through one replica and
    reads through another at once reads its write. `before` runs ahead of the handler (the registry settings'
    refresh), inside the same error handling: one middleware layer, not two. A request with a body has it
    watched (registry/web/bodies.py): one that stops arriving for `body_timeout` seconds while the handler waits
    for it is answered 408 (0, the default here: never)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        request[REQUEST_ID] = request_id(request)
        start = time.perf_counter()
        status, resp = 499, None
        in_flight.enter()
        watch = None
        if body_timeout and request.body_exists:
            watch = BodyWatch(request.content, body_timeout, asyncio.get_running_loop())
        try:
            resp = await error_middleware(request, handler, before)  # one middleware layer, not three
            if changes is not None and not resp.prepared and changes.unsettled():
                await changes.settle()
            status = resp.status
            if in_flight.draining:
                resp.force_close()
            if not resp.prepared:
                stamp(request, resp)
            return resp
        except web.HTTPException as e:
            if changes is not None and changes.unsettled():
                await changes.settle()
            status = e.status
            stamp(request, e)
            if in_flight.draining:
                e.force_close()
            raise
        except (ConnectionError, asyncio.CancelledError):
            status = 499  # the client went away (nginx's convention)
            raise
        finally:
            if watch is not None:
                watch.stop()
            in_flight.leave()
            bytes_in = getattr(request.content, "total_bytes", 0) if request.body_exists else 0
            bytes_out = _bytes_out(resp if resp is not None else request.get(STREAMING))
            record(
                request,
                request[REQUEST_ID],
                request.get(ROUTE) or _route_of(request),
                status,
                time.perf_counter() - start,
                bytes_in,
                bytes_out,
                request.get(PRINCIPAL),
                request.get(REPOSITORY),
                request.get(ACTION),
            )

    return middleware


async def read_body(request: web.Request, limit: int, too_large: Callable[[str], RegistryError]) -> bytes:
    """The whole request body, refusing (with `too_large(message)`) anything over `limit` bytes, before reading
    it when Content-Length says so."""
    if request.content_length is not None and request.content_length > limit:
        raise too_large(f"the body is {request.content_length} bytes; the limit is {limit}")
    parts, size = [], 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise too_large(f"the body is over the {limit} byte limit")
        parts.append(chunk)
    return b"".join(parts)


async def _send(request: web.Request, resp: SendfileResponse) -> None:
    """The transfer, inside the middleware: timed by the access log, counted as in flight (so a drain waits for
    it), and a blob gone before its headers were sent is answered like any other error."""
    request[STREAMING] = resp
    stamp(request, resp)
    try:
        await resp.prepare(request)
    except RegistryError:
        if not resp.prepared:
            raise
        if request.transport is not None:  # part of the body went out: all the client can be told is "cut"
            request.transport.abort()
        raise ConnectionResetError("the blob ended before its declared size") from None


def _bytes_out(resp: web.StreamResponse | None) -> int:
    if resp is None:
        return 0
    if isinstance(resp, SendfileResponse):
        return resp.sent
    return resp.body_length if resp.prepared else (resp.content_length or 0)


def _route_of(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"
