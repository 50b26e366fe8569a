"""Signing on push, signing statuses, and pulls that need a signature (`[signing] enforce`).

- **The key**: ECDSA P-256, made by the first process that needs it and kept in the metadata store's shared values
  (`image-signing-key`, PKCS#8 PEM; `put_value(replace=False)` settles two processes making one at once), so
  every worker and replica signs and verifies with the same key. It is never logged; `moorage signing-key public`
  prints its public half.
- **What is signed**: a push (a /v2 manifest PUT or PutImage; `push_hooks` of the image service, which the server
  alone registers this on) of a manifest to a repository that a rule of the signing configuration
  (PutSigningConfiguration) covers, before the push is acknowledged. An index is signed with every platform
  manifest it lists that is not signed yet, so a signed multi-platform image pulls (and verifies) platform by
  platform. Not signed: signature manifests (nor anything this signer pushes: no recursion), pushes that arrive
  by replication (their signatures come with them), pull-through cache fills and `moorage import` (which keeps
  the signatures it carries). A manifest that already has a valid signature by the key is not signed again.
- **The signature**: a cosign simple-signing payload naming `<host>/<repository>` and the digest, signed, added
  as a layer to the manifest tagged `sha256-<hex>.sig` (the other signatures there are kept), pushed through
  the image service like any push: replication copies it, the referrers API lists it (`subject`).
- **Statuses** (DescribeImageSigningStatus): COMPLETE while a valid signature by the key is stored; otherwise what
  the last attempt recorded in the shared values (`image-signing/<repository>@<digest>`: IN_PROGRESS while it
  runs, FAILED with a code and reason; an attempt that stopped half-way, a process killed, reads as FAILED
  after STALE_AFTER), or FAILED `ImageNotSigned` when nothing was attempted.
- A signing that fails does not fail the push: the image is stored (and queued for replication), the status says
  FAILED and why, and pushing the image again signs it.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from registry import oci, sigstore
from registry.cache import LRUCache
from registry.config import split_hostname
from registry.errors import ImageNotSigned, ManifestUnknown, RegistryError
from registry.glob import compile_glob, glob_matches
from registry.service.images import PUSH_REASON, REPLICATION, ImageService, Pushed
from registry.service.registry_settings import SIGNING, RegistrySettings
from storage.blobs import BlobStore
from storage.errors import BlobNotFound, StorageError
from storage.metadata import MetadataStore
from storage.records import ManifestRecord

log = logging.getLogger("moorage.signing")

KEY_NAME = "image-signing-key"
STATE_PREFIX = "image-signing/"  # + <repository>@<digest>: the last attempt, while it runs or when it failed
STALE_AFTER = 120.0  # seconds after which an attempt still IN_PROGRESS is taken for one that stopped half-way
NOT_SIGNED_CODE = "ImageNotSigned"
NOT_SIGNED = (
    "No valid signature by this registry's key is stored for the image: it was pushed before a signing rule "
    "covered its repository, it arrived by replication, a pull-through cache or `moorage import`, or its "
    "signature manifest (tag sha256-<hex>.sig) was replaced. Push it again to sign it."
)
INTERRUPTED_CODE = "SigningInterrupted"
INTERRUPTED = "Signing started but never finished (the process signing it stopped). Push the image again to sign it."
# Set while this signer pushes a signature manifest: its push hooks must not sign it again.
_SIGNING: contextvars.ContextVar[bool] = contextvars.ContextVar("signing", default=False)


def registry_host(hostname: str, listen: str) -> str:
    """The host[:port] signatures name the registry by: `[registry] hostname` without its scheme when set, else the
    listen address as configured (host:port)."""
    return split_hostname(hostname)[1] if hostname else listen


def covering_profiles(config: dict[str, Any], repository: str) -> list[str]:
    """The signing profile ARNs (each once, in rule order) of the rules that cover the repository: those without
    repository filters, and those with a WILDCARD_MATCH filter (`*` any run of characters) matching its name."""
    found: list[str] = []
    for rule in config.get("rules") or ():
        filters = rule.get("repositoryFilters")
        if filters is not None and not any(glob_matches(f["filter"], repository, single=False) for f in filters):
            continue
        if rule["signingProfileArn"] not in found:
            found.append(rule["signingProfileArn"])
    return found


class SigningFailed(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


class ImageSigner:
    def __init__(
        self,
        images: ImageService,
        meta: MetadataStore,
        blobs: BlobStore,
        settings: RegistrySettings,
        *,
        host: str,
        enforce: tuple[str, ...] = (),
        clock: Callable[[], float] = time.time,
        cache_entries: int = 4096,
    ) -> None:
        self.images = images
        self.meta = meta
        self.blobs = blobs
        self.settings = settings
        self.host = host
        self.enforce = tuple(compile_glob(g, single=False) for g in enforce)
        self.clock = clock
        self._key: ec.EllipticCurvePrivateKey | None = None
        # (repository, digest, signature manifest digest) -> whether it holds a valid signature by the key: both
        # manifests are content-addressed and the key never changes, so an answer never goes stale.
        self._verified = LRUCache(cache_entries)

    # -- the key --------------------------------------------------------------------------------------------
    async def key(self, *, create: bool = True) -> ec.EllipticCurvePrivateKey | None:
        """The registry's signing key, made and stored on first use (None without one when `create` is false)."""
        if self._key is None:
            pem = await self.meta.get_value(KEY_NAME)
            if pem is None and create:
                pem = await self.meta.put_value(KEY_NAME, sigstore.generate_key(), replace=False)
            if pem is not None:
                self._key = sigstore.load_key(pem)
        return self._key

    async def public_pem(self) -> str:
        key = await self.key()
        assert key is not None
        return sigstore.public_pem(key)

    # -- what applies where ---------------------------------------------------------------------------------
    def profiles_for(self, repository: str) -> list[str]:
        """The signing profiles whose rules cover the repository (empty: its pushes are not signed)."""
        config = self.settings.document(SIGNING)
        return covering_profiles(config, repository) if config else []

    def enforced(self, repository: str) -> bool:
        return any(glob.matches(repository) for glob in self.enforce)

    def reference(self, repository: str) -> str:
        return f"{self.host}/{repository}"

    # -- signing on push ------------------------------------------------------------------------------------
    async def on_push(self, pushed: Pushed) -> None:
        """The push hook: sign what a push stored, when a rule covers its repository. Shielded: a client that
        goes away mid-push does not leave a signature half-made."""
        if _SIGNING.get() or PUSH_REASON.get() == REPLICATION or sigstore.is_signature_manifest(pushed.manifest):
            return
        await self.settings.refresh()
        if not self.profiles_for(pushed.repository):
            return
        children = tuple(d.digest for d in pushed.manifest.manifests)
        await asyncio.shield(self.sign(pushed.repository, pushed.result.digest, children))

    async def sign(self, repository: str, digest: str, children: tuple[str, ...] = ()) -> bool:
        """Sign the manifest (and the listed children not signed yet) unless it has a valid signature by the key,
        recording the attempt; False when it failed (the status says why). Never raises."""
        flag = _SIGNING.set(True)
        try:
            return await self._sign(repository, digest, children)
        finally:
            _SIGNING.reset(flag)

    async def _sign(self, repository: str, digest: str, children: tuple[str, ...]) -> bool:
        todo = [d for d in dict.fromkeys((digest, *children)) if not await self._verified_quietly(repository, d)]
        if not todo:
            return True
        state = STATE_PREFIX + f"{repository}@{digest}"
        try:
            await self._record(state, {"status": "IN_PROGRESS", "since": self.clock()})
            for manifest in todo:
                await self._sign_one(repository, manifest)
        except Exception as e:
            code, reason = _failure(e)
            log.warning("signing %s@%s failed: %s: %s", repository, digest, code, reason)
            await self._record(state, {"status": "FAILED", "code": code, "reason": reason, "at": self.clock()})
            return False
        try:
            await self.meta.delete_value(state)
        except StorageError as e:
            log.warning("signing %s@%s: its status could not be cleared: %s", repository, digest, e)
        return True

    async def _record(self, name: str, state: dict[str, Any]) -> None:
        try:
            await self.meta.put_value(name, json.dumps(state).encode())
        except StorageError as e:
            log.warning("signing: the status %s could not be stored: %s", name, e)

    async def _verified_quietly(self, repository: str, digest: str) -> bool:
        try:
            return await self.verified(repository, digest)
        except (RegistryError, StorageError):
            return False

    async def _sign_one(self, repository: str, digest: str) -> None:
        key = await self.key()
        assert key is not None
        subject = await self.images.get_manifest(repository, digest)
        tag = oci.validate_tag(sigstore.attachment_tag(digest))
        payload = sigstore.payload(self.reference(repository), digest)
        layers = [sigstore.signature_layer(payload, sigstore.sign(key, payload))]
        try:
            existing = await self.images.get_manifest(repository, tag)
        except ManifestUnknown:
            existing = None
        if existing is not None:  # other signatures (cosign's, an older one of ours): ours is added to them
            if existing.media_type != oci.OCI_MANIFEST:
                raise SigningFailed(
                    "SignatureTagInUse", f"the tag {tag} holds a {existing.media_type}, not a signature manifest"
                )
            doc = json.loads(existing.body)
            layers = [*(doc.get("layers") or []), *layers]
        config = sigstore.config_for(layers)
        await self._store_blob(repository, payload)
        await self._store_blob(repository, config)
        body = sigstore.attachment_manifest(
            layers, config, {"mediaType": subject.media_type, "digest": digest, "size": subject.size}
        )
        await self.images.put_manifest(repository, tag, body, oci.OCI_MANIFEST)

    async def _store_blob(self, repository: str, data: bytes) -> None:
        digest = oci.compute_digest(data)
        for attempt in range(2):
            if await self.blobs.stat(digest) is None:
                async with self.blobs.writer() as writer:
                    await writer.write(data)
                    await writer.commit(digest)
            try:
                await self.images.link_blob(repository, digest, len(data))
                return
            except BlobNotFound:  # garbage collection took the bytes as they were linked: once more
                if attempt:
                    raise

    # -- checking signatures --------------------------------------------------------------------------------
    async def verified(self, repository: str, digest: str) -> bool:
        """Whether the repository holds a valid signature by the key for the manifest: a simple-signing layer of
        its `sha256-<hex>.sig` manifest whose payload the key signed, naming this digest and repository."""
        key = await self.key(create=False)
        if key is None:
            return False
        try:
            signatures = await self.images.resolve(repository, sigstore.attachment_tag(digest))
        except RegistryError:  # no such tag (ManifestUnknown), or repository
            return False
        cache_key = (repository, digest, signatures)
        answer = self._verified.get(cache_key)
        if answer is None:
            try:
                record = await self.images.get_manifest(repository, signatures)
            except ManifestUnknown:
                return False
            answer = await self._holds_signature(repository, digest, record.body, key.public_key())
            self._verified.put(cache_key, answer)
        return bool(answer)

    async def _holds_signature(
        self, repository: str, digest: str, body: bytes, public_key: ec.EllipticCurvePublicKey
    ) -> bool:
        for layer in sigstore.signature_layers(body):
            signature = (layer.get("annotations") or {}).get(sigstore.SIGNATURE_ANNOTATION)
            size = layer.get("size")
            if not isinstance(signature, str) or not isinstance(size, int) or size > sigstore.MAX_PAYLOAD:
                continue
            data = await self.images.read_small_blob(repository, layer["digest"], sigstore.MAX_PAYLOAD)
            if data is None or not sigstore.verify(public_key, data, signature):
                continue
            signed = sigstore.parse_payload(data)
            if signed is not None and signed[1] == digest and sigstore.repository_of(signed[0]) == repository:
                return True
        return False

    async def status(self, repository: str, digest: str) -> tuple[str, str | None, str | None]:
        """(status, failureCode, failureReason) of an image a signing rule covers."""
        if await self.verified(repository, digest):
            return "COMPLETE", None, None
        raw = await self.meta.get_value(STATE_PREFIX + f"{repository}@{digest}")
        state = json.loads(raw) if raw else {}
        if state.get("status") == "IN_PROGRESS":
            if self.clock() - float(state.get("since", 0)) < STALE_AFTER:
                return "IN_PROGRESS", None, None
            return "FAILED", INTERRUPTED_CODE, INTERRUPTED
        if state.get("status") == "FAILED":
            return "FAILED", str(state.get("code")), str(state.get("reason"))
        return "FAILED", NOT_SIGNED_CODE, NOT_SIGNED

    async def check_pull(self, repository: str, record: ManifestRecord) -> None:
        """The pull check of `[signing] enforce`: ImageNotSigned for a manifest of an enforced repository without a
        valid signature by the key. Signature manifests themselves pass (verifying clients fetch them), but only
        those whose every layer is a simple-signing payload: nothing a runtime could unpack as a file system."""
        if not self.enforce or not self.enforced(repository) or await self.verified(repository, record.digest):
            return
        if await self._only_signatures(repository, record):
            return
        raise ImageNotSigned(
            f"{repository}@{record.digest} is not signed by this registry's key, and [signing] enforce covers "
            f"the repository: pulls of unsigned images are refused. Push the image while a signing rule "
            "(PutSigningConfiguration) covers the repository to sign it.",
            detail={"name": repository, "digest": record.digest},
        )

    async def _only_signatures(self, repository: str, record: ManifestRecord) -> bool:
        cache_key = ("signatures only", repository, record.digest)
        answer = self._verified.get(cache_key)
        if answer is None:
            answer = False
            try:
                parsed = oci.parse_manifest(record.body, record.media_type)
            except RegistryError:
                parsed = None
            if parsed is not None and sigstore.is_signature_manifest(parsed):
                answer = True
                for layer in parsed.layers:
                    data = None
                    if layer.size <= sigstore.MAX_PAYLOAD:
                        data = await self.images.read_small_blob(repository, layer.digest, sigstore.MAX_PAYLOAD)
                    if data is None or sigstore.parse_payload(data) is None:
                        answer = False
                        break
            self._verified.put(cache_key, answer)
        return bool(answer)


def _failure(e: Exception) -> tuple[str, str]:
    """(failureCode, failureReason) of a signing that failed."""
    if isinstance(e, SigningFailed):
        return e.code, e.reason
    if isinstance(e, RegistryError):
        return type(e).__name__, e.message
    if isinstance(e, StorageError):
        return "StorageUnavailable", f"the signature could not be stored: {e}"
    return "SigningError", f"{type(e).__name__}: {e}"
