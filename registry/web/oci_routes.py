"""The OCI Distribution v1.1 /v2 API: one flat route table and thin handlers.

Repository names contain slashes, so /v2/<name>/... paths are matched here, longest name first, against the
raw (un-normalised) path; every handler gets a validated name.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

from registry import oci
from registry.auth.principals import Principal
from registry.cache import BytesLRU
from registry.errors import (
    AuthenticationRequired,
    BlobArchived,
    BlobUnknown,
    ImageArchived,
    ManifestTooLarge,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    NotFound,
    PaginationInvalid,
    Unsupported,
)
from registry.replication.peer import REPLICATION_HEADER
from registry.service.images import MAX_PAGE, PUSH_REASON, REPLICATION
from registry.service.reader import ArrivingBlob, AuthorizeImport
from registry.service.uploads import upload_range
from registry.web.auth import (
    AUTHENTICATED,
    TOKEN_PATH,
    condition_keys,
    download_principal,
    has_download_signature,
    registry_challenge,
    registry_principal,
    token_endpoint,
    upload_owner,
)
from registry.web.context import ACCESS, BLOBS, IMAGES, PULL_THROUGH, READER, UPLOADS
from registry.web.middleware import ACTION, PRINCIPAL, REPOSITORY, ROUTE, read_body, stamp
from registry.web.sendfile import SendfileResponse
from storage.blobs import BlobStore, FileRange, RedirectURL
from storage.errors import BlobNotFound
from storage.records import ManifestRecord

OCTET_STREAM = "application/octet-stream"
SMALL_BLOB = 64 * 1024  # blobs up to this size are served from memory
SMALL_BLOBS = web.AppKey("small_blobs", BytesLRU)

RouteHandler = Callable[..., Awaitable[web.StreamResponse]]


# -- helpers ---------------------------------------------------------------------------------------


def _body(request: web.Request) -> AsyncIterator[bytes] | None:
    return request.content.iter_any() if request.body_exists else None


def _page_args(request: web.Request) -> tuple[str | None, int | None]:
    raw_n = request.query.get("n")
    n = None
    if raw_n is not None:
        # ASCII digits only: str.isdigit() and int() also take "²" and other scripts' digits (and int() fails
        # on ²). Like Distribution's strconv.Atoi, a number too big for 64 bits is invalid.
        digits = raw_n.lstrip("0")
        if not (raw_n.isascii() and raw_n.isdigit()) or len(digits) > 19 or int(digits or "0") >= 2**63:
            raise PaginationInvalid("n must be a non-negative integer", detail={"n": raw_n[:50]})
        n = int(digits or "0")
    return request.query.get("last"), n


def _paged(path: str, key: str, items: list[str], more: bool, n: int | None, extra: dict) -> web.Response:
    """A page, with a Link to the next one when there is more. The Link's `last` is the page's own last item:
    never a name the caller was not shown (so `more` must mean "more that the caller may see")."""
    headers = {}
    if more and items:
        headers["Link"] = f'<{path}?n={n or MAX_PAGE}&last={quote(items[-1], safe="")}>; rel="next"'
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
    """200 for a valid token (an anonymous one too: that is how a token-flow client without credentials learns
    it may go on); without one, the challenge that tells the client how to get one."""
    access = request.app[ACCESS]
    if access.enabled and registry_principal(request) is None and not request.get(AUTHENTICATED):
        raise AuthenticationRequired(headers=registry_challenge(request))
    return web.json_response({})


async def catalog(request: web.Request) -> web.Response:
    last, n = _page_args(request)
    if n == 0:
        return web.json_response({"repositories": []})
    access = request.app[ACCESS]
    images = request.app[IMAGES]
    if not access.enabled:
        page = await images.catalog(last, n)
        return _paged("/v2/_catalog", "repositories", page.items, page.more, n, {})
    principal = registry_principal(request)
    if principal is None and not request.get(AUTHENTICATED):  # an anonymous token lists what "*" may describe
        raise AuthenticationRequired(headers=registry_challenge(request, "registry:catalog:*"))
    keys = condition_keys(request, principal)
    page = await images.visible_catalog(
        last, n, lambda r: access.allowed(principal, ("ecr:DescribeRepositories",), r.name, r.policy, keys)
    )
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
    app = request.app
    images = app[IMAGES]
    record = await app[READER].get_manifest(name, reference, import_authorizer(request, name))
    if record.archived:
        raise ImageArchived(
            f"{name}@{record.digest} is archived, and pulls of archived images fail until it is restored: "
            f"aws ecr update-image-storage-class --repository-name {name} --image-id imageDigest={record.digest} "
            "--target-storage-class STANDARD (or push the same image again)",
            detail={"name": name, "digest": record.digest, "storageClass": "ARCHIVE"},
        )
    method = request.method
    if images.pull_checks and (method == "GET" or PUSH_REASON.get() != REPLICATION):  # (not a replication's HEAD)
        await images.check_pull(name, record)  # [signing] enforce
    if method == "GET":
        principal = request.get(PRINCIPAL)
        images.note_pull(name, record.digest, principal.arn if principal is not None else None)
    if not oci.accepts(request.headers.getall("Accept", []), record.media_type):
        raise ManifestUnknown(
            f"manifest is {record.media_type}, which the request's Accept header excludes",
            detail={"mediaType": record.media_type},
        )
    return web.Response(body=record.body, headers=manifest_headers(record))


def manifest_headers(record: ManifestRecord) -> dict[str, str]:
    """The header fields of a manifest's GET and HEAD (here and in the fast lane)."""
    return {"Content-Type": record.media_type, "Docker-Content-Digest": record.digest, "ETag": f'"{record.digest}"'}


async def put_manifest(request: web.Request, name: str, reference: str) -> web.Response:
    oci.validate_reference(reference)
    body = await read_body(request, oci.MAX_MANIFEST_BYTES, lambda m: ManifestTooLarge(f"manifest: {m}"))
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
    head = request.method == "HEAD"
    if await request.app[IMAGES].blob_archived_only(name, digest):
        raise BlobArchived(
            f"blob {digest} in {name} is used only by archived images; restore one of them "
            "(aws ecr update-image-storage-class ... --target-storage-class STANDARD) to pull it",
            detail={"digest": digest, "storageClass": "ARCHIVE"},
        )
    blob = await request.app[READER].open_blob(name, digest, import_authorizer(request, name), head=head)
    headers = blob_headers(digest)
    if isinstance(blob, ArrivingBlob):  # arriving from upstream right now: stream it as it comes
        resp = web.StreamResponse(status=200, headers=headers)
        if blob.size is not None:
            resp.content_length = blob.size
        stamp(request, resp)
        await resp.prepare(request)
        if blob.chunks is not None:
            try:
                async for chunk in blob.chunks:
                    await resp.write(chunk)
            except ConnectionError:
                # The upstream download failed after the headers went out: cut the connection, so the client
                # sees a truncated body (and retries) rather than a complete one or a second response.
                if request.transport is not None:
                    request.transport.abort()
                raise
        await resp.write_eof()
        return resp
    size = blob.size
    offset, count, status = 0, size, 200
    if not head:
        rng = oci.parse_range(request.headers.get("Range"), size)
        if rng is not None:
            offset, count = rng
            status = 206
            headers["Content-Range"] = f"bytes {offset}-{offset + count - 1}/{size}"
    blobs = request.app[BLOBS]
    if size <= SMALL_BLOB and not head:
        # Small blobs (configs, tiny layers) from memory: a thread-pool open and a sendfile set-up cost more
        # than the bytes. Content-addressed, so a cached copy is never stale.
        small = request.app[SMALL_BLOBS]
        data = small.get(digest)
        if data is None:
            data = await _read_small(blobs, digest, size)
            small.put(digest, data)
        return web.Response(body=data[offset : offset + count], status=status, headers=headers)
    try:
        body = await blobs.open(digest, offset, count, redirect=not head)
    except BlobNotFound:
        raise BlobUnknown(f"blob {digest} is not readable", detail={"digest": digest}) from None
    if isinstance(body, FileRange):
        return SendfileResponse(Path(body.file), body.offset, body.length, status=status, headers=headers)
    if isinstance(body, RedirectURL):
        return web.Response(status=307, headers={"Location": body.url, "Docker-Content-Digest": digest})
    resp = web.StreamResponse(status=status, headers=headers)
    resp.content_length = count
    stamp(request, resp)
    await resp.prepare(request)
    if not head:
        async for chunk in body.chunks:
            await resp.write(chunk)
    await resp.write_eof()
    return resp


def blob_headers(digest: str) -> dict[str, str]:
    """The header fields of a blob's GET and HEAD (here and in the fast lane; a range adds Content-Range)."""
    return {
        "Docker-Content-Digest": digest,
        "Content-Type": OCTET_STREAM,
        "Accept-Ranges": "bytes",
        "ETag": f'"{digest}"',
        "Cache-Control": "max-age=31536000",
    }


async def _read_small(blobs: BlobStore, digest: str, size: int) -> bytes:
    """A small blob's bytes, checked against the size the metadata says (a file that is not that: not cached)."""
    try:
        data = b"".join([chunk async for chunk in blobs.read(digest)])
    except BlobNotFound:
        data = b""
    if len(data) != size:
        raise BlobUnknown(f"blob {digest} is not readable", detail={"digest": digest})
    return data


def import_authorizer(request: web.Request, name: str) -> AuthorizeImport:
    """What a first pull through the cache needs besides pull: ecr:BatchImportUpstreamImage, and
    ecr:CreateRepository when the cache repository does not exist yet (as ECR requires)."""

    async def check(needs_create: bool) -> None:
        actions = ["ecr:BatchImportUpstreamImage", *(["ecr:CreateRepository"] if needs_create else [])]
        for action in actions:
            await authorize(request, (action,), name)

    return check


async def delete_blob(request: web.Request, name: str, digest: str) -> web.Response:
    oci.validate_digest(digest)
    await request.app[IMAGES].delete_blob(name, digest)
    return web.Response(status=202, headers={"Docker-Content-Digest": digest})


# -- uploads ---------------------------------------------------------------------------------------


async def start_upload(request: web.Request, name: str) -> web.Response:
    q = request.query
    digest = q.get("digest")
    mount, mount_from = q.get("mount"), q.get("from")
    access = request.app[ACCESS]
    if mount is not None:
        oci.validate_digest(mount)
        if mount_from is not None:
            oci.validate_name(mount_from)  # a malformed `from` is NAME_INVALID, with auth on or off alike
    if mount is not None and access.enabled:
        # A mount reads the source: the caller must be allowed to pull it there (without `from`: anywhere).
        principal = registry_principal(request)
        keys = condition_keys(request, principal)
        images = request.app[IMAGES]
        sources = [mount_from] if mount_from is not None else await images.repositories_with_blob(mount)
        readable = []
        for source in sources:
            try:
                oci.validate_name(source)
                policy = (await images.repository(source)).policy
            except (NameUnknown, NameInvalid):
                continue
            if access.allowed(principal, LAYER_PULL, source, policy, keys):
                readable.append(source)
        if not readable:
            mount = None  # fall back to a plain upload session, as the spec says
        elif mount_from is None:
            mount_from = readable[0]
    started = await request.app[UPLOADS].start(
        name,
        owner=upload_owner(request),
        digest=digest,
        body=request.content.iter_any() if digest is not None else None,
        length=request.content_length,
        mount=mount,
        mount_from=mount_from,
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
    size = await request.app[UPLOADS].size(name, upload_id, upload_owner(request))
    return web.Response(status=204, headers=_upload_headers(name, upload_id, size))


async def upload_chunk(request: web.Request, name: str, upload_id: str) -> web.Response:
    size = await request.app[UPLOADS].append(
        name,
        upload_id,
        request.content.iter_any(),
        content_range=request.headers.get("Content-Range"),
        length=request.content_length,
        owner=upload_owner(request),
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
        owner=upload_owner(request),
    )
    return web.Response(status=201, headers={"Location": _blob_location(name, digest), "Docker-Content-Digest": digest})


async def cancel_upload(request: web.Request, name: str, upload_id: str) -> web.Response:
    await request.app[UPLOADS].cancel(name, upload_id, upload_owner(request))
    return web.Response(status=204)


# -- routing ---------------------------------------------------------------------------------------

# Each method maps to its handler and the ecr:* actions that allow it (any one suffices).
PULL = ("ecr:BatchGetImage",)
LAYER_PULL = ("ecr:GetDownloadUrlForLayer",)
LAYER_CHECK = ("ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer")
ROUTES: list[tuple[re.Pattern[str], dict[str, tuple[RouteHandler, tuple[str, ...]]]]] = [
    (
        re.compile(r"/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)"),
        {
            "GET": (get_manifest, PULL),
            "HEAD": (get_manifest, PULL),
            "PUT": (put_manifest, ("ecr:PutImage",)),
            "DELETE": (delete_manifest, ("ecr:BatchDeleteImage",)),
        },
    ),
    (re.compile(r"/v2/(?P<name>.+)/blobs/uploads/?"), {"POST": (start_upload, ("ecr:InitiateLayerUpload",))}),
    (
        re.compile(r"/v2/(?P<name>.+)/blobs/uploads/(?P<upload_id>[^/]+)"),
        {
            "GET": (upload_status, ("ecr:UploadLayerPart",)),
            "HEAD": (upload_status, ("ecr:UploadLayerPart",)),
            "PATCH": (upload_chunk, ("ecr:UploadLayerPart",)),
            "PUT": (finish_upload, ("ecr:CompleteLayerUpload",)),
            "DELETE": (cancel_upload, ("ecr:UploadLayerPart",)),
        },
    ),
    (
        re.compile(r"/v2/(?P<name>.+)/blobs/(?P<digest>[^/]+)"),
        {
            "GET": (get_blob, LAYER_PULL),
            "HEAD": (get_blob, LAYER_CHECK),
            "DELETE": (delete_blob, ("ecr:BatchDeleteImage",)),
        },
    ),
    (
        re.compile(r"/v2/(?P<name>.+)/tags/list"),
        {"GET": (list_tags, ("ecr:ListImages",)), "HEAD": (list_tags, ("ecr:ListImages",))},
    ),
    (
        re.compile(r"/v2/(?P<name>.+)/referrers/(?P<digest>[^/]+)"),
        {"GET": (referrers, PULL), "HEAD": (referrers, PULL)},
    ),
]


async def authorize(
    request: web.Request, actions: tuple[str, ...], name: str | None, *, blob: str | None = None
) -> Principal | None:
    """Authenticate the request and check the actions on the repository (401 for anonymous, 403 otherwise).
    `blob` is the digest of a blob GET, which a download URL's signature may authenticate instead of a token."""
    access = request.app[ACCESS]
    if not access.enabled:
        return None
    if blob is not None and name is not None and has_download_signature(request):
        principal: Principal | None = download_principal(request, name, blob)
    else:
        principal = registry_principal(request)
    policy_text = await _policy(request, name) if name is not None else None
    access.check(
        principal,
        actions,
        name,
        policy_text=policy_text,
        condition_keys=condition_keys(request, principal),
        challenge=lambda: registry_challenge(request, _scope(request.method, name)),
    )
    return principal


async def _policy(request: web.Request, name: str) -> str | None:
    """The repository's policy. A cache repository that a first pull would create does not exist yet: for a
    pull, its policy is then the one it will be created with (the PULL_THROUGH_CACHE creation template's), so
    that a template can grant the first pull (anonymous pulls through a mirror, say) what it grants later ones."""
    app = request.app
    images = app[IMAGES]
    try:
        return (await images.repository(name)).policy
    except NameUnknown:
        pass
    pull_through = app[PULL_THROUGH]
    if request.method not in ("GET", "HEAD") or images.templates is None:
        return None
    await pull_through.sync()
    if pull_through.rule_for(name) is None:
        return None
    init = await images.templates(name, "PULL_THROUGH_CACHE")
    return init.policy if init is not None else None


def _scope(method: str, name: str | None) -> str | None:
    """The token scope a request needs, for the challenge (Distribution's names)."""
    if name is None:
        return None
    verbs = "pull" if method in ("GET", "HEAD") else "delete" if method == "DELETE" else "pull,push"
    return f"repository:{name}:{verbs}"


def _template(pattern: re.Pattern[str]) -> str:
    """A route's readable name for logs and metrics: /v2/{name}/manifests/{reference}."""
    return re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern.pattern).replace("/?", "/")


ROUTE_NAMES = {pattern: _template(pattern) for pattern, _ in ROUTES}


async def dispatch(request: web.Request) -> web.StreamResponse:
    path = request.path
    for pattern, methods in ROUTES:
        m = pattern.fullmatch(path)
        if m is None:
            continue
        route = methods.get(request.method)
        if route is None:
            raise Unsupported(f"{request.method} is not supported on {path}", headers={"Allow": ", ".join(methods)})
        handler, actions = route
        args = m.groupdict()
        request[ROUTE], request[ACTION], request[REPOSITORY] = ROUTE_NAMES[pattern], actions[0], args["name"]
        oci.validate_name(args["name"])
        if request.query_string and "ns" in request.query:  # a containerd mirror names the upstream it stands for
            args["name"] = request.app[PULL_THROUGH].name_for_namespace(request.query["ns"], args["name"])
            request[REPOSITORY] = args["name"]
        blob = args["digest"] if handler is get_blob and request.method == "GET" else None
        replicating = REPLICATION_HEADER in request.headers and _replicable(handler, request.method)
        if replicating:
            # Another registry's replication: ECR's ecr:ReplicateImage allows it too (a registry policy grants
            # it to the source), and a repository it creates gets the REPLICATION creation template.
            actions = (*actions, "ecr:ReplicateImage")
        principal = await authorize(request, actions, args["name"], blob=blob)
        if replicating and await _replicator(request, principal, args["name"]):
            PUSH_REASON.set(REPLICATION)  # only for a principal allowed to replicate: the header is anyone's to send
        return await handler(request, **args)
    raise NotFound(f"no such endpoint: {path}")


async def _replicator(request: web.Request, principal: Principal | None, name: str) -> bool:
    """Whether the principal may replicate to the repository (`ecr:ReplicateImage`): what makes a request with
    the replication header one (a repository created with the REPLICATION template where `create_on_push` is
    off, no signing, no `[signing] enforce` on its existence checks)."""
    access = request.app[ACCESS]
    if not access.enabled:
        return True
    return access.allowed(
        principal, ("ecr:ReplicateImage",), name, await _policy(request, name), condition_keys(request, principal)
    )


def _replicable(handler: RouteHandler, method: str) -> bool:
    """What a replication does on a destination: pushes and existence checks (HEAD); never a read of content or a
    deletion."""
    if method == "HEAD":
        return True
    return method != "DELETE" and handler not in (get_manifest, get_blob, list_tags, referrers)


async def v1_api(request: web.Request) -> web.StreamResponse:
    """The v1 registry API (`docker search` asks `GET /v1/search?q=`) is not served: a 404, as from a registry
    without it (Distribution's), not the 405 that the ECR API's catch-all POST route would cause."""
    raise NotFound(f"no such endpoint: {request.path} (Moorage serves the registry API v2; there is no search)")


def add_routes(app: web.Application) -> None:
    app[SMALL_BLOBS] = BytesLRU(64 * 1024 * 1024)
    app.router.add_get("/v2", api_base)
    app.router.add_get("/v2/", api_base)
    app.router.add_get("/v2/_catalog", catalog)
    app.router.add_get(TOKEN_PATH, token_endpoint)
    app.router.add_post(TOKEN_PATH, token_endpoint)
    app.router.add_route("*", "/v2/{tail:.+}", dispatch)
    app.router.add_get("/v1/{tail:.*}", v1_api)
