"""The console's pages (repositories, a repository, an image) and its actions (delete an image or a tag,
restore an archived image).

Each page asks IAM what the APIs ask for the same data: the list shows the repositories the viewer may
`ecr:DescribeRepositories` (as DescribeRepositories and `_catalog` do), a repository page needs
`ecr:DescribeImages`, an image page `ecr:BatchGetImage` (and its scan's findings `ecr:DescribeImageScanFindings`,
as the API's). An action is a POST with the session's CSRF token
that needs what its API needs (`ecr:BatchDeleteImage`, `ecr:UpdateImageStorageClass`) and runs the same
operation (BatchDeleteImage's, UpdateImageStorageClass's; a tag is deleted as `/v2`'s DELETE of a tag deletes
it: the tag only, never the image); controls the viewer may not use are not drawn.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from registry import oci
from registry.errors import NameUnknown, RegistryError
from registry.service.ecr_shapes import Caller
from registry.web.auth import base_url, registry_host
from registry.web.console.sessions import CONSOLE, VIEWER, Viewer, checked_form, signed_in
from registry.web.context import ECR_OPERATIONS, IMAGES

PAGE_SIZE = 50  # repositories per page
ROWS_PER_PAGE = 100  # a repository's images (top-level rows) per page
MAX_QUERY = 256
NOTICES = {
    "deleted-image": "Deleted image {ref}.",
    "deleted-tag": "Deleted tag {ref}.",
    "restored": "Restored image {ref}: it can be pulled again.",
    "ImageReferencedByManifestList": "Image {ref} is listed by an index: delete the index first.",
    "ImageNotFound": "Image {ref} is not in the repository (any more).",
}


def repository_url(name: str, **query: object) -> str:
    url = f"/console/repositories/{urllib.parse.quote(name, safe='/')}"
    return url + ("?" + urllib.parse.urlencode(query) if query else "")


def image_url(name: str, digest: str) -> str:
    return f"/console/images/{urllib.parse.quote(name, safe='/')}@{urllib.parse.quote(digest, safe=':')}"


def _bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(reason=message)


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise _bad(f"?{name}= must be a whole number from {low} to {high}.")
    return int(raw)


def _repository_name(raw: str) -> str:
    try:
        return oci.validate_name(raw)
    except RegistryError:
        raise NameUnknown(f"There is no repository {raw!r}.") from None


@signed_in
async def repositories(request: web.Request) -> web.StreamResponse:
    viewer: Viewer = request[VIEWER]
    query = request.query.get("q", "").strip()
    after = request.query.get("after") or None
    if len(query) > MAX_QUERY or (after is not None and len(after) > MAX_QUERY):
        raise _bad(f"The search and the page cursor are at most {MAX_QUERY} characters.")
    limit = _int_param(request, "n", PAGE_SIZE, 1, 500)
    rows, more = await request.app[CONSOLE].data.repositories(
        query, after, limit, lambda repo: viewer.can("ecr:DescribeRepositories", repo.name, repo.policy)
    )
    params: dict[str, object] = {"q": query} if query else {}
    if limit != PAGE_SIZE:
        params["n"] = limit  # the next and first pages keep the page size asked for
    next_url = "?" + urllib.parse.urlencode({**params, "after": rows[-1].record.name}) if more and rows else None
    first_url = "?" + urllib.parse.urlencode(params) if after else None
    return aiohttp_jinja2.render_template(
        "repositories.html",
        request,
        {"viewer": viewer, "rows": rows, "q": query, "next_url": next_url, "first_url": first_url, "after": after},
    )


@signed_in
async def repository(request: web.Request) -> web.StreamResponse:
    viewer: Viewer = request[VIEWER]
    name = _repository_name(request.match_info["name"])
    policy = await request.config_dict[IMAGES].policy_of(name)
    viewer.check("ecr:DescribeImages", name, policy)
    data = request.app[CONSOLE].data
    row = await data.repository(name)
    images = await data.repository_images(name)
    pages = max(1, -(-len(images.rows) // ROWS_PER_PAGE))
    page = _int_param(request, "page", 1, 1, pages)
    notice = NOTICES.get(request.query.get("notice", ""))
    return aiohttp_jinja2.render_template(
        "repository.html",
        request,
        {
            "viewer": viewer,
            "repo": row,
            "images": images,
            "rows": images.rows[(page - 1) * ROWS_PER_PAGE : page * ROWS_PER_PAGE],
            "page": page,
            "pages": pages,
            "host": registry_host(request),
            "notice": notice.format(ref=request.query.get("ref", "")) if notice else None,
            "can_delete": viewer.can("ecr:BatchDeleteImage", name, policy),
            "can_restore": viewer.can("ecr:UpdateImageStorageClass", name, policy),
            "can_pull": viewer.can("ecr:BatchGetImage", name, policy),
        },
    )


@signed_in
async def image(request: web.Request) -> web.StreamResponse:
    viewer: Viewer = request[VIEWER]
    name = _repository_name(request.match_info["name"])
    digest = request.match_info["digest"]
    if not oci.is_digest(digest):
        raise web.HTTPNotFound()
    oci.validate_digest(digest)
    policy = await request.config_dict[IMAGES].policy_of(name)
    viewer.check("ecr:BatchGetImage", name, policy)
    page = await request.app[CONSOLE].data.image(name, digest)
    if page.scan is not None and not viewer.can("ecr:DescribeImageScanFindings", name, policy):
        page = dataclasses.replace(page, scan=None)  # findings need what DescribeImageScanFindings needs
    return aiohttp_jinja2.render_template(
        "image.html",
        request,
        {
            "viewer": viewer,
            "name": name,
            "page": page,
            "host": registry_host(request),
            "can_delete": viewer.can("ecr:BatchDeleteImage", name, policy),
        },
    )


# -- actions ---------------------------------------------------------------------------------------------


def _field(form: Mapping[str, Any], name: str) -> str:
    value = form.get(name)
    if not isinstance(value, str) or not value:
        raise _bad(f"The form lacks {name}.")
    return value


def _operation(request: web.Request, name: str) -> Callable[..., Awaitable[dict[str, Any]]]:
    """The ECR operation `name` (snake case), as the ECR API dispatches it."""
    for provider in request.config_dict[ECR_OPERATIONS]:
        if hasattr(provider, name):
            return getattr(provider, name)
    raise AssertionError(f"no ECR operation {name}")


def _caller(request: web.Request, viewer: Viewer) -> Caller:
    return Caller(viewer.principal.name if viewer.principal else None, base_url(request))


def _done(name: str, notice: str, ref: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(repository_url(name, notice=notice, ref=ref))


async def _action(request: web.Request, action: str) -> tuple[Viewer, Mapping[str, Any], str]:
    """The checked form (CSRF, origin), its repository, and 403 unless the viewer is allowed `action` on it."""
    viewer: Viewer = request[VIEWER]
    form = await checked_form(request)
    name = _repository_name(_field(form, "repository"))
    viewer.check(action, name, await request.config_dict[IMAGES].policy_of(name))
    return viewer, form, name


@signed_in
async def delete_image(request: web.Request) -> web.StreamResponse:
    viewer, form, name = await _action(request, "ecr:BatchDeleteImage")
    digest = oci.validate_digest(_field(form, "digest"))
    result = await _operation(request, "batch_delete_image")(
        {"repositoryName": name, "imageIds": [{"imageDigest": digest}]}, _caller(request, viewer)
    )
    failures = result.get("failures") or []
    raise _done(name, failures[0]["failureCode"] if failures else "deleted-image", digest)


@signed_in
async def delete_tag(request: web.Request) -> web.StreamResponse:
    _, form, name = await _action(request, "ecr:BatchDeleteImage")
    tag = oci.validate_tag(_field(form, "tag"))
    await request.config_dict[IMAGES].delete_manifest(name, tag)
    raise _done(name, "deleted-tag", tag)


@signed_in
async def restore_image(request: web.Request) -> web.StreamResponse:
    viewer, form, name = await _action(request, "ecr:UpdateImageStorageClass")
    digest = oci.validate_digest(_field(form, "digest"))
    await _operation(request, "update_image_storage_class")(
        {"repositoryName": name, "imageId": {"imageDigest": digest}, "targetStorageClass": "STANDARD"},
        _caller(request, viewer),
    )
    raise _done(name, "restored", digest)


def add_routes(console: web.Application) -> None:
    console.router.add_get("/repositories", repositories)
    console.router.add_get("/repositories/{name:.+}", repository)
    console.router.add_get("/images/{name:[^@]+}@{digest:[^/@]+}", image)
    console.router.add_post("/actions/delete-image", delete_image)
    console.router.add_post("/actions/delete-tag", delete_tag)
    console.router.add_post("/actions/restore-image", restore_image)
