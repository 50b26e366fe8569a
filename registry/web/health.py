"""`GET /healthz` (the process is up) and `GET /readyz` (the stores say they can serve: the database answers, the
blob store is writable with at least `[storage] min_free_space` free). No auth."""

from __future__ import annotations

import os

from aiohttp import web

from registry.web.context import STORES


async def healthz(request: web.Request) -> web.Response:
    response = web.json_response({"status": "ok"})
    # Whoever started the server may set MOORAGE_INSTANCE_ID to tell this process's answer from another's on
    # the same port (a crashed server's orphan, say).
    if instance := os.environ.get("MOORAGE_INSTANCE_ID"):
        response.headers["Moorage-Instance"] = instance
    return response


async def readyz(request: web.Request) -> web.Response:
    problems = await request.app[STORES].health()
    if problems:
        return web.json_response({"status": "unavailable", "problems": problems}, status=503)
    return web.json_response({"status": "ready"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
