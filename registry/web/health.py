"""`GET /healthz` (the process is up) and `GET /readyz` (storage and database are usable, and the disk has at least
`[storage] min_free_space` free). No auth."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from aiohttp import web

from registry.config import StorageConfig
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
    problems += await asyncio.to_thread(_free_space_problems, data_dir, request.app[CONFIG].storage)
    if problems:
        return web.json_response({"status": "unavailable", "problems": problems}, status=503)
    return web.json_response({"status": "ready"})


def _free_space_problems(data_dir: Path, storage: StorageConfig) -> list[str]:
    """Each filesystem under the data dir (the database's, blobs/, uploads/: usually one) with less free space
    than `[storage] min_free_space`, or no free inodes. Runs in a thread (statvfs may block on a network mount)."""
    problems, seen = [], set()
    for path in (data_dir, data_dir / "blobs", data_dir / "uploads"):
        try:
            device, st = os.stat(path).st_dev, os.statvfs(path)
        except OSError:
            continue  # missing or unreadable: the writability check says so
        if device in seen:
            continue
        seen.add(device)
        where = "the data directory" if path == data_dir else f"{path.name}/"
        free, floor = st.f_bavail * st.f_frsize, storage.free_space_floor(st.f_blocks * st.f_frsize)
        if free < floor:
            problems.append(
                f"storage: {free / 2**20:.1f} MiB free for {where}, below [storage] min_free_space "
                f"({storage.min_free_space}); writes may fail"
            )
        if st.f_files and not st.f_favail:
            problems.append(f"storage: no free inodes for {where}; writes will fail")
    return problems


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
