"""Cross-cutting HTTP behaviour: the one place errors are rendered, and the headers every /v2 reply has."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from registry.errors import AuthenticationRequired, NotFound, RegistryError, Unsupported

log = logging.getLogger("moorage.http")

API_VERSION_HEADER = "Docker-Distribution-API-Version"
ECR_TARGET_HEADER = "X-Amz-Target"
PROTOCOL = "moorage.protocol"  # request key: "ecr" once the request is known to be an ECR API call

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def render_error(request: web.Request, err: RegistryError) -> web.Response:
    """Write `err` in the protocol's own shape: `__type` JSON on the ECR API, OCI error JSON elsewhere."""
    headers = dict(err.headers)
    if request.get(PROTOCOL) == "ecr":
        status = 500 if err.status >= 500 else 400
        headers["X-Amzn-ErrorType"] = err.ecr_code
        body = {"__type": err.ecr_code, "message": err.message, **err.fields}
        return web.Response(
            status=status, headers=headers, content_type="application/x-amz-json-1.1", text=json.dumps(body)
        )
    if isinstance(err, AuthenticationRequired):
        return web.Response(status=401, headers=headers, content_type="text/plain", text=err.message)
    error: dict[str, object] = {"code": err.oci_code, "message": err.message}
    if err.detail is not None:
        error["detail"] = err.detail
    text = "" if request.method == "HEAD" else json.dumps({"errors": [error]})
    return web.Response(status=err.status, headers=headers, content_type="application/json", text=text)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RegistryError as err:
        if err.status >= 500:
            log.error("%s %s failed: %s", request.method, request.path, err.message)
        return render_error(request, err)
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
    except Exception:
        log.exception("%s %s: unhandled error", request.method, request.path)
        return render_error(request, RegistryError("internal error; see the server log"))


async def add_api_version(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every /v2 response says which API it speaks (streamed ones included)."""
    if request.path.startswith("/v2"):
        response.headers[API_VERSION_HEADER] = "registry/2.0"
