"""create_app(config): the one place that picks concrete stores and wires services, routes and jobs."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from registry.config import Config
from registry.service.images import ImageService
from registry.service.uploads import UploadService
from registry.web import oci_routes
from registry.web.context import BLOBS, CONFIG, IMAGES, META, UPLOADS
from registry.web.middleware import add_api_version, error_middleware
from storage.fs import FilesystemBlobStore
from storage.sqlite import SQLiteMetadataStore


def create_app(config: Config) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=1024**2)
    app[CONFIG] = config
    data_dir = config.server.data_dir
    meta = SQLiteMetadataStore(data_dir / "moorage.db")
    blobs = FilesystemBlobStore(data_dir)
    images = ImageService(
        meta,
        blobs,
        create_on_push=config.registry.create_on_push,
        cache_entries=config.registry.metadata_cache_entries,
    )
    app[META] = meta
    app[BLOBS] = blobs
    app[IMAGES] = images
    app[UPLOADS] = UploadService(images, meta, blobs)

    async def stores(app: web.Application) -> AsyncIterator[None]:
        await meta.open()
        try:
            yield
        finally:
            await blobs.close()
            await meta.close()

    app.cleanup_ctx.append(stores)
    app.on_response_prepare.append(add_api_version)
    oci_routes.add_routes(app)
    return app
