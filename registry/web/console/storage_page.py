"""The console's storage and health page (`/console/storage`): bytes of images against bytes stored, the
pull-through cache's size against its bound, garbage collection's last run, readiness problems, and two small
charts drawn on the server (storage by repository, the cache's hits per minute).

It shows registry-wide numbers, so it needs `ecr:DescribeRegistry` (on `*`), as the API's registry-wide
description does; the chart names only repositories the viewer may `ecr:DescribeRepositories`.
"""

from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web

from registry.console.storage import storage_page
from registry.web.console.sessions import VIEWER, Viewer, signed_in
from registry.web.context import ACCESS, CONFIG, GC, IMAGES, LIFECYCLE, PULL_THROUGH, STORES


@signed_in
async def storage(request: web.Request) -> web.StreamResponse:
    viewer: Viewer = request[VIEWER]
    viewer.check("ecr:DescribeRegistry")
    app, images = request.config_dict, request.config_dict[IMAGES]

    async def visible(name: str) -> bool:
        return viewer.can("ecr:DescribeRepositories", name, await images.policy_of(name))

    page = await storage_page(
        app[STORES],
        app[GC],
        app[PULL_THROUGH],
        app[LIFECYCLE],
        max_cache_bytes=app[CONFIG].pull_through.max_cache_bytes,
        visible=visible,
        now=app[ACCESS].clock(),
    )
    return aiohttp_jinja2.render_template("storage.html", request, {"viewer": viewer, "page": page})


def add_routes(console: web.Application) -> None:
    console.router.add_get("/storage", storage)
