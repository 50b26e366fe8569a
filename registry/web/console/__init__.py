"""The web console, served by the registry itself under /console/ (`[console] enabled`), and `GET /`, which
leads there.

A sub-application of its own, so that its errors are pages (its middleware renders a 403, 404 or 500 in the
console's style, never a traceback, and adds the headers every page has), while /v2 and the ECR API (`POST /`
with X-Amz-Target, routed by the application's catch-all) are untouched. Pages are rendered by aiohttp-jinja2
with autoescaping from the templates in `registry/console/templates`; their data comes from
`registry.console.data`, their permissions from the same IAM evaluation as the APIs (`AccessControl`).

    /console/                                   -> /console/repositories
    /console/sign-in                            GET the form, POST access key + secret (or a registry token)
    /console/sign-out                           POST
    /console/repositories?q=&after=             the list (search, pages)
    /console/repositories/{name}                a repository's images
    /console/images/{name}@{digest}             an image: manifest, layers, config
    /console/actions/{delete-image,delete-tag,restore-image}   POST forms with the session's CSRF token
    /console/pull-through[/rules/{prefix}]      pull-through cache rules, counters, cache repositories (cache_pages)
    /console/lifecycle/{name}                   a repository's lifecycle policy, preview, apply now (lifecycle_pages)
    /console/permissions/{name}                 a repository's policy and who can pull / push (permission_pages)
    /console/storage                            storage and health (storage_page)
    /console/actions/{pull-through,lifecycle,policy}/...      their POST forms
    /console/static/...                         CSS and JavaScript
"""

from __future__ import annotations

import logging

import aiohttp_jinja2
import jinja2
from aiohttp import web

from registry.console import STATIC, TEMPLATES, views
from registry.console.cache import ratio
from registry.console.data import ConsoleData
from registry.console.session import SignInLimiter
from registry.errors import RegistryError
from registry.web.console import (
    cache_pages,
    lifecycle_pages,
    pages,
    permission_pages,
    sessions,
    storage_page,
)
from registry.web.console.sessions import CONSOLE, ConsoleState, page_headers
from registry.web.context import ACCESS, CONFIG, IMAGES, PULL_THROUGH

log = logging.getLogger("moorage.console")
PREFIX = "/console"
HOME = f"{PREFIX}/repositories"


def setup(app: web.Application) -> None:
    """Add the console to `app` (after its services are set), unless `[console] enabled = false`."""
    if not app[CONFIG].console.enabled:
        return
    console = web.Application(middlewares=[_console_middleware])
    # What the helpers shared with the APIs (registry.web.auth: base_url, registry_host) read from request.app.
    console[CONFIG], console[ACCESS] = app[CONFIG], app[ACCESS]
    console[CONSOLE] = ConsoleState(ConsoleData(app[IMAGES], app[PULL_THROUGH]), SignInLimiter())
    env = aiohttp_jinja2.setup(
        console,
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        size=views.human_size,
        time=views.timestamp,
        short=views.short_digest,
        command=views.command_line,
        ratio=ratio,
    )
    env.globals.update(
        repository_url=pages.repository_url,
        image_url=pages.image_url,
        lifecycle_url=lifecycle_pages.lifecycle_url,
        permissions_url=permission_pages.permissions_url,
        rule_url=cache_pages.rule_url,
        home=HOME,
    )
    console.router.add_get("/", _home)
    sessions.add_routes(console)
    pages.add_routes(console)
    for module in (cache_pages, lifecycle_pages, permission_pages, storage_page):
        module.add_routes(console)
    console.router.add_static("/static/", STATIC, append_version=False)
    app.add_subapp(PREFIX, console)
    app.router.add_get("/", _home)
    app.router.add_get(PREFIX, _home)


async def _home(request: web.Request) -> web.Response:
    raise web.HTTPFound(HOME)


@web.middleware
async def _console_middleware(request: web.Request, handler: sessions.Handler) -> web.StreamResponse:
    """Errors as pages in the console's style, and the headers of every console response."""
    try:
        response = await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            page_headers(e)
            sessions.finish(request, e)
            raise
        response = _error(request, e.status, e.reason if e.status != 404 else "There is no such page.")
        if e.status == 405:
            response.headers["Allow"] = e.headers.get("Allow", "")
    except RegistryError as e:
        if e.status >= 500:
            log.error("%s %s failed: %s", request.method, request.path, e.message)
            response = _error(request, e.status, "The registry could not answer; see its log.")
        else:
            response = _error(request, e.status if e.status in (400, 403, 404) else 400, e.message)
    except (ConnectionError, TimeoutError):
        raise
    except Exception:
        log.exception("%s %s: unhandled error", request.method, request.path)
        response = _error(request, 500, "Something went wrong; see the registry's log.")
    page_headers(response)
    sessions.finish(request, response)
    return response


def _error(request: web.Request, status: int, message: str) -> web.Response:
    titles = {400: "Bad request", 401: "Sign-in needed", 403: "Not allowed", 404: "Not found", 429: "Slow down"}
    viewer = request.get(sessions.VIEWER)
    return aiohttp_jinja2.render_template(
        "error.html",
        request,
        {"viewer": viewer, "status": status, "title": titles.get(status, "Error"), "message": message},
        status=status,
    )
