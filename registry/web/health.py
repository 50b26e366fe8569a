"""`GET /healthz` (the process is up) and `GET /readyz` (storage and database are usable). No auth."""

from __future__ import annotations

import asyncio
import os

from aiohttp import web

from registry.web.context import CONFIG, META


async def healthz(request: web.Request) -> web.Response:
    response = web.json_response({"status": "ok"})
    # Whoever started the server may set MOORAGE_INSTANCE_ID to tell this process's answer from another's on
    # the same port (a crashed server's orphan, say).
    if instance := os.environ.get("MOORAGE_INSTANCE_ID"):
        response.headers["Moorage-Instance"] = instance
    return response


async def readyz(request: web.Request) -> web.Response:
    problems = []
    try:
        await asyncio.wait_for(request.app[META].ping(), timeout=5)
    except Exception as e:  # any failure means "not ready", said plainly
        problems.append(f"database: {e or type(e).__name__}")
    data_dir = request.app[CONFIG].server.data_dir
    for sub in ("blobs", "uploads"):
        if not await asyncio.to_thread(os.access, data_dir / sub, os.W_OK | os.X_OK):
            problems.append(f"storage: {data_dir / sub} is not writable")
    if problems:
        return web.json_response({"status": "unavailable", "problems": problems}, status=503)
    return web.json_response({"status": "ready"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
