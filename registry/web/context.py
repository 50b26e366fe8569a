"""Typed keys for what the application carries (no global state: everything hangs off the app)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from registry.auth.access import AccessControl
from registry.config import Config
from registry.gc import GarbageCollector
from registry.proxy.pullthrough import PullThrough
from registry.proxy.rule_service import PullThroughRuleService
from registry.service.ecr import EcrService
from registry.service.images import ImageService
from registry.service.lifecycle import LifecycleService, SweepReport
from registry.service.reader import ImageReader
from registry.service.uploads import UploadService
from storage.blobs import BlobStore
from storage.factory import Stores
from storage.metadata import MetadataStore

CONFIG = web.AppKey("config", Config)
META = web.AppKey("meta", MetadataStore)
BLOBS = web.AppKey("blobs", BlobStore)
STORES = web.AppKey("stores", Stores)
IMAGES = web.AppKey("images", ImageService)
UPLOADS = web.AppKey("uploads", UploadService)
ACCESS = web.AppKey("access", AccessControl)
ECR = web.AppKey("ecr", EcrService)
# Objects whose snake_case methods are ECR operations (the repository, image and layer APIs, pull-through cache
# rules, lifecycle, templates).
ECR_OPERATIONS = web.AppKey("ecr_operations", tuple)
PULL_THROUGH = web.AppKey("pull_through", PullThrough)
# What the /v2 read routes ask (the pull-through cache, wrapping the image service).
READER = web.AppKey("reader", ImageReader)
# The services behind the console's operations pages (also among ECR_OPERATIONS, typed here).
RULES = web.AppKey("rules", PullThroughRuleService)
LIFECYCLE = web.AppKey("lifecycle", LifecycleService)
GC = web.AppKey("gc", GarbageCollector)
# Apply one repository's lifecycle policy now, under the sweep's lock (None: a sweep holds it).
SWEEP_NOW: web.AppKey[Callable[[str], Awaitable[list[SweepReport] | None]]] = web.AppKey("sweep_now")
