"""create_app(config): the one place that picks concrete stores and wires services, routes and jobs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from registry.auth.access import AccessControl
from registry.auth.principals import Directory
from registry.auth.tokens import KeyRing
from registry.config import Config
from registry.proxy import rules
from registry.proxy.pullthrough import PullThrough
from registry.service.ecr import EcrService
from registry.service.images import ImageService
from registry.service.uploads import UploadService
from registry.web import ecr_api, metrics, oci_routes
from registry.web.context import ACCESS, BLOBS, CONFIG, ECR, IMAGES, META, PULL_THROUGH, UPLOADS
from registry.web.middleware import add_api_version, error_middleware
from storage.base import PullThroughRule
from storage.fs import FilesystemBlobStore
from storage.sqlite import SQLiteMetadataStore

log = logging.getLogger("moorage")
PULL_FLUSH_INTERVAL = 5.0  # seconds between writes of recorded pull times


def create_app(config: Config) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=1024**2)
    app[CONFIG] = config
    data_dir = config.server.data_dir
    meta = SQLiteMetadataStore(data_dir / "moorage.db")
    blobs = FilesystemBlobStore(data_dir)
    images = ImageService(
        meta, blobs, create_on_push=config.registry.create_on_push, cache_entries=config.registry.metadata_cache_entries
    )
    uploads = UploadService(images, meta, blobs)
    keyring = KeyRing(data_dir / "keys")
    directory = Directory.load(config.auth, config.registry.account_id, data_dir)
    access = AccessControl(
        enabled=config.auth.enabled,
        directory=directory,
        keyring=keyring,
        account_id=config.registry.account_id,
        region=config.registry.region,
        token_ttl=config.auth.token_ttl,
    )

    def issue_token(principal: str | None, ttl: float | None) -> tuple[str, float]:
        return keyring.issue(principal or "anonymous", access.clock(), ttl or config.auth.token_ttl)

    app[META] = meta
    app[BLOBS] = blobs
    app[IMAGES] = images
    app[UPLOADS] = uploads
    app[ACCESS] = access
    pull_through = PullThrough(
        images, meta, blobs, config=config.pull_through, secrets=config.secrets, region=config.registry.region
    )
    app[PULL_THROUGH] = pull_through
    app[ECR] = EcrService(
        images,
        uploads,
        meta,
        pull_through,
        account_id=config.registry.account_id,
        region=config.registry.region,
        issue_token=issue_token,
    )

    async def stores(app: web.Application) -> AsyncIterator[None]:
        keyring.load()
        await meta.open()
        await _declare_rules(config, meta)
        await pull_through.start()
        try:
            yield
        finally:
            await pull_through.close()
            await images.flush_pulls()
            await blobs.close()
            await meta.close()

    async def pull_recorder(app: web.Application) -> AsyncIterator[None]:
        async def run() -> None:
            while True:
                await asyncio.sleep(PULL_FLUSH_INTERVAL)
                try:
                    await images.flush_pulls()
                except Exception:  # a failed flush must not stop later ones
                    log.exception("recording pull times failed")

        task = asyncio.create_task(run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(stores)
    app.cleanup_ctx.append(pull_recorder)
    app.on_response_prepare.append(add_api_version)
    app.router.add_post("/{tail:.*}", _post_root)
    oci_routes.add_routes(app)
    metrics.setup(app)
    if directory.created_admin is not None:
        _announce_admin(config, directory)
    return app


async def _declare_rules(config: Config, meta: SQLiteMetadataStore) -> None:
    """Rules declared in the configuration are (re)written at every start."""
    now = time.time()
    existing = {rule.prefix: rule for rule in await meta.list_rules()}
    for declared in config.pull_through.rules:
        prefix = rules.normalize_prefix(declared.ecr_repository_prefix)
        arn = (
            rules.secret_arn(config.registry.region, config.registry.account_id, declared.credential)
            if declared.credential
            else None
        )
        created = existing[prefix].created_at if prefix in existing else now
        await meta.upsert_rule(
            PullThroughRule(
                prefix,
                declared.upstream_registry_url,
                rules.normalize_prefix(declared.upstream_repository_prefix),
                arn,
                rules.infer_upstream_registry(declared.upstream_registry_url),
                created,
                now,
            )
        )


async def _post_root(request: web.Request) -> web.StreamResponse:
    """ECR API calls are POSTs to the endpoint's path (any path) with an X-Amz-Target header."""
    if ecr_api.is_ecr_request(request):
        return await ecr_api.handle(request)
    return await oci_routes.dispatch(request)


def _announce_admin(config: Config, directory: Directory) -> None:
    host, port = config.listen
    endpoint = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"
    (admin,) = directory.by_name.values()
    log.warning(
        "No [[auth.principals]] configured: created principal %r (access key %s); its keys are in %s (mode 0600).\n"
        "  Log in with:\n"
        '    eval "$(moorage credentials --data-dir %s)"\n'
        "    moorage get-login-password --endpoint %s | docker login --username AWS --password-stdin %s",
        admin.name,
        admin.access_key_id,
        directory.created_admin,
        config.server.data_dir,
        endpoint,
        endpoint.removeprefix("http://"),
    )
