"""The OCI Distribution v1.1 /v2 API: one flat route table and thin handlers.

Repository names contain slashes, so /v2/<name>/... paths are matched here, longest name first, against the
raw (un-normalised) path; every handler gets a validated name.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import quote

from aiohttp import web

from registry import oci
from registry.errors import ManifestTooLarge, ManifestUnknown, NotFound, PaginationInvalid, Unsupported
from registry.service.uploads import upload_range
from registry.web.context import BLOBS, IMAGES, UPLOADS
from registry.web.sendfile import SendfileResponse

OCTET_STREAM = "application/octet-stream"

RouteHandler = Callable[..., Awaitable[web.StreamResponse]]


# -- helpers ---------------------------------------------------------------------------------------


def _body(request: web.Request) -> AsyncIterator[bytes] | None:
    return request.content.iter_any() if request.body_exists else None


async def _read_manifest(request: web.Request) -> bytes:
    limit = oci.MAX_MANIFEST_BYTES
    if request.content_length is not None and request.content_length > limit:
        raise ManifestTooLarge(f"manifest is {request.content_length} bytes; the limit is {limit}")
    parts, size = [], 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise ManifestTooLarge(f"manifest is over the {limit} byte limit")
        parts.append(chunk)
    return b"".join(parts)


def _page_args(request: web.Request) -> tuple[str | None, int | None]:
    raw_n = request.query.get("n")
    n = None
    if raw_n is not None:
        if not raw_n.isdigit():
            raise PaginationInvalid("n must be a non-negative integer", detail={"n": raw_n[:50]})
        n = int(raw_n)
    return request.query.get("last"), n


def _paged(path: str, key: str, items: list[str], more: bool, n: int | None, extra: dict) -> web.Response:
    headers = {}
    if more and items:
        headers["Link"] = f'<{path}?n={n or len(items)}&last={quote(items[-1], safe="")}>; rel="next"'
    return web.json_response({**extra, key: items}, headers=headers)


def _blob_location(name: str, digest: str) -> str:
    return f"/v2/{name}/blobs/{digest}"


def _upload_headers(name: str, upload_id: str, size: int) -> dict[str, str]:
    return {
        "Location": f"/v2/{name}/blobs/uploads/{upload_id}",
        "Range": upload_range(size),
        "Docker-Upload-UUID": upload_id,
    }


# -- base and discovery ----------------------------------------------------------------------------


async def api_base(request: web.Request) -> web.Response:
    return web.json_response({})


async def catalog(request: web.Request) -> web.Response:
    last, n = _page_args(request)
    if n == 0:
        return web.json_response({"repositories": []})
    page = await request.app[IMAGES].catalog(last, n)
    return _paged("/v2/_catalog", "repositories", page.items, page.more, n, {})


async def list_tags(request: web.Request, name: str) -> web.Response:
    last, n = _page_args(request)
    images = request.app[IMAGES]
    if n == 0:
        await images.repository(name)
        return web.json_response({"name": name, "tags": []})
    page = await images.list_tags(name, last, n)
    return _paged(f"/v2/{name}/tags/list", "tags", page.items, page.more, n, {"name": name})


async def referrers(request: web.Request, name: str, digest: str) -> web.Response:
    artifact_type = request.query.get("artifactType")
    body = await request.app[IMAGES].referrers(name, digest, artifact_type)
    headers = {"Content-Type": oci.OCI_INDEX}
    if artifact_type is not None:
        headers["OCI-Filters-Applied"] = "artifactType"
    return web.Response(body=body, headers=headers)


# -- manifests -------------------------------------------------------------------------------------


async def get_manifest(request: web.Request, name: str, reference: str) -> web.Response:
    oci.validate_reference(reference)
    record = await request.app[IMAGES].get_manifest(name, reference)
    if not oci.accepts(request.headers.getall("Accept", []), record.media_type):
        raise ManifestUnknown(
            f"manifest is {record.media_type}, which the request's Accept header excludes",
            detail={"mediaType": record.media_type},
        )
    return web.Response(
        body=record.body,
        headers={
            "Content-Type": record.media_type,
            "Docker-Content-Digest": record.digest,
            "ETag": f'"{record.digest}"',
        },
    )


async def put_manifest(request: web.Request, name: str, reference: str) -> web.Response:
    oci.validate_reference(reference)
    body = await _read_manifest(request)
    extra_tags = tuple(request.query.getall("tag", []))
    result = await request.app[IMAGES].put_manifest(
        name, reference, body, request.headers.get("Content-Type"), extra_tags
    )
    resp = web.Response(
        status=201,
        headers={"Location": f"/v2/{name}/manifests/{result.digest}", "Docker-Content-Digest": result.digest},
    )
    if result.subject:
        resp.headers["OCI-Subject"] = result.subject
    if extra_tags:
        for tag in result.tags:
            resp.headers.add("OCI-Tag", tag)
    return resp


async def delete_manifest(request: web.Request, name: str, reference: str) -> web.Response:
    oci.validate_reference(reference)
    await request.app[IMAGES].delete_manifest(name, reference)
    return web.Response(status=202)


# -- blobs -----------------------------------------------------------------------------------------


async def get_blob(request: web.Request, name: str, digest: str) -> web.StreamResponse:
    oci.validate_digest(digest)
    size = await request.app[IMAGES].blob_size(name, digest)
    headers = {
        "Docker-Content-Digest": digest,
        "Content-Type": OCTET_STREAM,
        "Accept-Ranges": "bytes",
        "ETag": f'"{digest}"',
        "Cache-Control": "max-age=31536000",
    }
    offset, count, status = 0, size, 200
    if request.method == "GET":
        rng = oci.parse_range(request.headers.get("Range"), size)
        if rng is not None:
            offset, count = rng
            status = 206
            headers["Content-Range"] = f"bytes {offset}-{offset + count - 1}/{size}"
    blobs = request.app[BLOBS]
    path = blobs.local_path(digest)
    if path is not None:
        return SendfileResponse(path, offset, count, status=status, headers=headers)
    resp = web.StreamResponse(status=status, headers=headers)
    resp.content_length = count
    await resp.prepare(request)
    if request.method == "GET":
        async for chunk in blobs.read(digest, offset, count):
            await resp.write(chunk)
    await resp.write_eof()
    return resp


async def delete_blob(request: web.Request, name: str, digest: str) -> web.Response:
    oci.validate_digest(digest)
    await request.app[IMAGES].delete_blob(name, digest)
    return web.Response(status=202, headers={"Docker-Content-Digest": digest})


# -- uploads ---------------------------------------------------------------------------------------


async def start_upload(request: web.Request, name: str) -> web.Response:
    q = request.query
    digest = q.get("digest")
    started = await request.app[UPLOADS].start(
        name,
        digest=digest,
        body=request.content.iter_any() if digest is not None else None,
        length=request.content_length,
        mount=q.get("mount"),
        mount_from=q.get("from"),
    )
    if started.digest is not None:
        return web.Response(
            status=201,
            headers={
                "Location": _blob_location(name, started.digest),
                "Docker-Content-Digest": started.digest,
            },
        )
    assert started.upload_id is not None
    return web.Response(status=202, headers=_upload_headers(name, started.upload_id, 0))


async def upload_status(request: web.Request, name: str, upload_id: str) -> web.Response:
    size = await request.app[UPLOADS].size(name, upload_id)
    return web.Response(status=204, headers=_upload_headers(name, upload_id, size))


async def upload_chunk(request: web.Request, name: str, upload_id: str) -> web.Response:
    size = await request.app[UPLOADS].append(
        name,
        upload_id,
        request.content.iter_any(),
        content_range=request.headers.get("Content-Range"),
        length=request.content_length,
    )
    return web.Response(status=202, headers=_upload_headers(name, upload_id, size))


async def finish_upload(request: web.Request, name: str, upload_id: str) -> web.Response:
    digest = await request.app[UPLOADS].finish(
        name,
        upload_id,
        request.query.get("digest"),
        _body(request),
        content_range=request.headers.get("Content-Range"),
        length=request.content_length,
    )
    return web.Response(status=201, headers={"Location": _blob_location(name, digest), "Docker-Content-Digest": digest})


async def cancel_upload(request: web.Request, name: str, upload_id: str) -> web.Response:
    await request.app[UPLOADS].cancel(name, upload_id)
    return web.Response(status=204)


# -- routing ---------------------------------------------------------------------------------------

ROUTES: list[tuple[re.Pattern[str], dict[str, RouteHandler]]] = [
    (
        re.compile(r"/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)"),
        {"GET": get_manifest, "HEAD": get_manifest, "PUT": put_manifest, "DELETE": delete_manifest},
    ),
    (re.compile(r"/v2/(?P<name>.+)/blobs/uploads/?"), {"POST": start_upload}),
    (
        re.compile(r"/v2/(?P<name>.+)/blobs/uploads/(?P<upload_id>[^/]+)"),
        {
            "GET": upload_status,
            "HEAD": upload_status,
            "PATCH": upload_chunk,
            "PUT": finish_upload,
            "DELETE": cancel_upload,
        },
    ),
    (
        re.compile(r"/v2/(?P<name>.+)/blobs/(?P<digest>[^/]+)"),
        {"GET": get_blob, "HEAD": get_blob, "DELETE": delete_blob},
    ),
    (re.compile(r"/v2/(?P<name>.+)/tags/list"), {"GET": list_tags, "HEAD": list_tags}),
    (re.compile(r"/v2/(?P<name>.+)/referrers/(?P<digest>[^/]+)"), {"GET": referrers, "HEAD": referrers}),
]


async def dispatch(request: web.Request) -> web.StreamResponse:
    path = request.path
    for pattern, methods in ROUTES:
        m = pattern.fullmatch(path)
        if m is None:
            continue
        handler = methods.get(request.method)
        if handler is None:
            raise Unsupported(f"{request.method} is not supported on {path}", headers={"Allow": ", ".join(methods)})
        args = m.groupdict()
        oci.validate_name(args["name"])
        return await handler(request, **args)
    raise NotFound(f"no such endpoint: {path}")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v2", api_base)
    app.router.add_get("/v2/", api_base)
    app.router.add_get("/v2/_catalog", catalog)
    app.router.add_route("*", "/v2/{tail:.+}", dispatch)
