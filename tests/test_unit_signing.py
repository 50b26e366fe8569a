"""Signing's pure parts (`registry.sigstore`: the payload containers/image accepts, attachment tags and manifests,
ECDSA signatures checked with `cryptography` from the public PEM alone) and `ImageSigner`'s statuses and key on a
real SQLite store."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from registry import oci, sigstore
from registry.errors import DigestInvalid, ImageNotSigned, TagInvalid
from registry.service.images import ImageService
from registry.service.registry_settings import SIGNING, RegistrySettings
from registry.service.signing import (
    INTERRUPTED_CODE,
    KEY_NAME,
    NOT_SIGNED_CODE,
    STALE_AFTER,
    STATE_PREFIX,
    ImageSigner,
    covering_profiles,
    registry_host,
)
from storage.factory import open_stores

DIGEST = "sha256:" + "ab" * 32
REFERENCE = "registry.example.com:5000/team/app"


def public_key_of(pem: str) -> ec.EllipticCurvePublicKey:
    """The public key as a verifier gets it: from the PEM text alone."""
    key = serialization.load_pem_public_key(pem.encode())
    assert isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    return key


# -- the payload ---------------------------------------------------------------------------------------------


def test_the_payload_is_cosigns_simple_signing_document_byte_for_byte() -> None:
    assert sigstore.payload(REFERENCE, DIGEST) == (
        b'{"critical":{"identity":{"docker-reference":"registry.example.com:5000/team/app"},'
        b'"image":{"docker-manifest-digest":"sha256:' + b"ab" * 32 + b'"},'
        b'"type":"cosign container image signature"},"optional":null}'
    )
    assert sigstore.parse_payload(sigstore.payload(REFERENCE, DIGEST)) == (REFERENCE, DIGEST)


@pytest.mark.parametrize(
    "doc",
    [
        {"critical": {"identity": {"docker-reference": "r/a"}, "image": {"docker-manifest-digest": DIGEST}}},
        {
            "critical": {
                "identity": {"docker-reference": "r/a"},
                "image": {"docker-manifest-digest": DIGEST},
                "type": "atomic container signature",
            },
            "optional": None,
        },
        {
            "critical": {
                "identity": {"docker-reference": "r/a"},
                "image": {"docker-manifest-digest": DIGEST, "extra": "x"},
                "type": sigstore.SIGNATURE_TYPE,
            },
            "optional": None,
        },
        {
            "critical": {"identity": {"docker-reference": 7}, "image": {"docker-manifest-digest": DIGEST}}
            | {"type": sigstore.SIGNATURE_TYPE},
            "optional": None,
        },
        ["not", "an", "object"],
    ],
    ids=["no type or optional", "another type", "an extra field", "a reference that is no string", "a list"],
)
def test_payloads_containers_image_would_refuse_are_refused(doc: object) -> None:
    assert sigstore.parse_payload(json.dumps(doc).encode()) is None
    assert sigstore.parse_payload(b"{not json") is None


def test_the_repository_of_a_docker_reference() -> None:
    assert sigstore.repository_of("127.0.0.1:5000/team/app") == "team/app"
    assert sigstore.repository_of("registry.example.com/a/b/c:v1") == "a/b/c"
    assert sigstore.repository_of("localhost:5000/app@sha256:" + "0" * 64) == "app"


def test_attachment_tags_are_cosigns_and_valid_tags() -> None:
    assert sigstore.attachment_tag(DIGEST) == "sha256-" + "ab" * 32 + ".sig"
    assert oci.validate_tag(sigstore.attachment_tag(DIGEST))
    with pytest.raises(DigestInvalid):
        sigstore.attachment_tag("latest")
    too_long = sigstore.attachment_tag("sha512:" + "ab" * 64)  # 139 characters: no tag can be that long
    with pytest.raises(TagInvalid):
        oci.validate_tag(too_long)


# -- keys and signatures -------------------------------------------------------------------------------------


def test_a_signature_verifies_with_the_public_pem_and_only_over_its_payload() -> None:
    key = sigstore.load_key(sigstore.generate_key())
    pem = sigstore.public_pem(key)
    assert pem.startswith("-----BEGIN PUBLIC KEY-----\n")
    data = sigstore.payload(REFERENCE, DIGEST)
    signature = sigstore.sign(key, data)
    # Checked the way cosign's verifier does, independently of registry.sigstore: ASN.1 ECDSA over SHA-256.
    public_key_of(pem).verify(base64.b64decode(signature), data, ec.ECDSA(hashes.SHA256()))
    digest = hashlib.sha256(data).digest()
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

    public_key_of(pem).verify(base64.b64decode(signature), digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    assert sigstore.verify(public_key_of(pem), data, signature)

    tampered = sigstore.payload(REFERENCE, "sha256:" + "cd" * 32)
    with pytest.raises(InvalidSignature):
        public_key_of(pem).verify(base64.b64decode(signature), tampered, ec.ECDSA(hashes.SHA256()))
    assert not sigstore.verify(public_key_of(pem), tampered, signature)
    other = sigstore.load_key(sigstore.generate_key())
    assert not sigstore.verify(other.public_key(), data, signature), "another key's signature"
    assert not sigstore.verify(key.public_key(), data, "not base64!"), "garbage is no signature"


def test_only_p256_keys_load() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError, match="P-256"):
        sigstore.load_key(p384)


# -- the attachment manifest ---------------------------------------------------------------------------------


def test_the_attachment_manifest_is_an_oci_image_manifest_with_subject_layers_and_config() -> None:
    key = sigstore.load_key(sigstore.generate_key())
    data = sigstore.payload(REFERENCE, DIGEST)
    layers = [{"mediaType": sigstore.SIMPLE_SIGNING, "size": 3, "digest": "sha256:" + "11" * 32}]
    layers.append(sigstore.signature_layer(data, sigstore.sign(key, data)))
    config = sigstore.config_for(layers)
    subject = {"mediaType": oci.OCI_MANIFEST, "digest": DIGEST, "size": 123}
    body = sigstore.attachment_manifest(layers, config, subject)
    parsed = oci.parse_manifest(body, oci.OCI_MANIFEST)
    assert parsed.media_type == oci.OCI_MANIFEST and sigstore.is_signature_manifest(parsed)
    assert parsed.subject == oci.Descriptor(oci.OCI_MANIFEST, DIGEST, 123)
    assert parsed.config == oci.Descriptor(sigstore.OCI_CONFIG, oci.compute_digest(config), len(config))
    assert [layer.digest for layer in parsed.layers] == ["sha256:" + "11" * 32, oci.compute_digest(data)]
    assert parsed.layers[1].annotations == {
        sigstore.SIGNATURE_ANNOTATION: layers[1]["annotations"][sigstore.SIGNATURE_ANNOTATION]
    }
    assert json.loads(config)["rootfs"] == {"type": "layers", "diff_ids": [d["digest"] for d in layers]}
    assert sigstore.signature_layers(body) == layers


def test_only_manifests_of_simple_signing_layers_are_signature_manifests() -> None:
    def manifest(*media_types: str, kind: str = oci.OCI_MANIFEST) -> oci.ParsedManifest:
        layers = [
            {"mediaType": mt, "size": 1, "digest": "sha256:" + f"{i:02x}" * 32} for i, mt in enumerate(media_types)
        ]
        config = {"mediaType": sigstore.OCI_CONFIG, "size": 2, "digest": "sha256:" + "ee" * 32}
        return oci.parse_manifest(json.dumps({"schemaVersion": 2, "config": config, "layers": layers}).encode(), kind)

    assert sigstore.is_signature_manifest(manifest(sigstore.SIMPLE_SIGNING, sigstore.SIMPLE_SIGNING))
    assert not sigstore.is_signature_manifest(
        manifest(sigstore.SIMPLE_SIGNING, "application/vnd.oci.image.layer.v1.tar")
    )
    assert not sigstore.is_signature_manifest(manifest()), "no layer at all"
    assert not sigstore.is_signature_manifest(
        manifest(sigstore.SIMPLE_SIGNING, kind="application/vnd.docker.distribution.manifest.v2+json")
    ), "containers/image reads OCI attachments only"


# -- configuration ------------------------------------------------------------------------------------------


def test_the_registry_host_is_the_configured_hostname_else_the_listen_address() -> None:
    assert registry_host("", "127.0.0.1:5000") == "127.0.0.1:5000"
    assert registry_host("registry.example.com", "0.0.0.0:5000") == "registry.example.com"
    assert registry_host("https://registry.example.com:8443", "0.0.0.0:5000") == "registry.example.com:8443"


def test_the_rules_covering_a_repository() -> None:
    arn = "arn:aws:signer:us-east-1:000000000000:/signing-profiles/"
    config = {
        "rules": [
            {
                "signingProfileArn": arn + "prod",
                "repositoryFilters": [{"filter": "prod/*", "filterType": "WILDCARD_MATCH"}],
            },
            {"signingProfileArn": arn + "all"},
            {
                "signingProfileArn": arn + "prod",
                "repositoryFilters": [{"filter": "*app", "filterType": "WILDCARD_MATCH"}],
            },
        ]
    }
    assert covering_profiles(config, "prod/api") == [arn + "prod", arn + "all"]
    assert covering_profiles(config, "team/app") == [arn + "all", arn + "prod"]
    assert covering_profiles({"rules": config["rules"][:1]}, "dev/api") == []
    assert covering_profiles({"rules": []}, "prod/api") == []


# -- the signer on a real store ------------------------------------------------------------------------------


def test_the_key_is_made_once_and_statuses_follow_the_recorded_attempt(tmp_path: Path) -> None:
    async def main() -> None:
        stores = open_stores(tmp_path / "data")
        await stores.open()
        try:
            settings = RegistrySettings(stores.meta, stores.changes)
            images = ImageService(stores.meta, stores.blobs, stores.changes)
            now = [1_700_000_000.0]

            def signer() -> ImageSigner:
                return ImageSigner(
                    images, stores.meta, stores.blobs, settings, host="h:1", enforce=("prod/*",), clock=lambda: now[0]
                )

            one = signer()
            assert await one.key(create=False) is None, "no key is made by asking whether there is one"
            assert await stores.meta.get_value(KEY_NAME) is None
            pem = await one.public_pem()
            assert await signer().public_pem() == pem, "another process finds the same key"
            assert (await stores.meta.get_value(KEY_NAME) or b"").startswith(b"-----BEGIN PRIVATE KEY-----")

            await settings.put(SIGNING, json.dumps({"rules": [{"signingProfileArn": "arn:x"}]}))
            assert one.profiles_for("any/repo") == ["arn:x"]
            state = STATE_PREFIX + f"r/a@{DIGEST}"
            status, code, reason = await one.status("r/a", DIGEST)
            assert (status, code) == ("FAILED", NOT_SIGNED_CODE) and "Push it again" in (reason or ""), reason
            await stores.meta.put_value(state, json.dumps({"status": "IN_PROGRESS", "since": now[0]}).encode())
            assert await one.status("r/a", DIGEST) == ("IN_PROGRESS", None, None)
            now[0] += STALE_AFTER + 1
            assert (await one.status("r/a", DIGEST))[:2] == ("FAILED", INTERRUPTED_CODE), "an attempt that stopped"
            failed = {"status": "FAILED", "code": "TagImmutable", "reason": "the tag is immutable"}
            await stores.meta.put_value(state, json.dumps(failed).encode())
            assert await one.status("r/a", DIGEST) == ("FAILED", "TagImmutable", "the tag is immutable")

            assert one.enforced("prod/api") and not one.enforced("dev/api") and not one.enforced("prod")
        finally:
            await stores.close()

    asyncio.run(main())


def test_an_unsigned_manifest_is_refused_only_where_enforced(tmp_path: Path) -> None:
    from storage.records import ManifestRecord

    async def main() -> None:
        stores = open_stores(tmp_path / "data")
        await stores.open()
        try:
            settings = RegistrySettings(stores.meta, stores.changes)
            images = ImageService(stores.meta, stores.blobs, stores.changes)
            signer = ImageSigner(images, stores.meta, stores.blobs, settings, host="h:1", enforce=("prod/*",))
            body = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": oci.OCI_MANIFEST,
                    "config": {"mediaType": sigstore.OCI_CONFIG, "size": 2, "digest": "sha256:" + "ee" * 32},
                    "layers": [],
                }
            ).encode()
            record = ManifestRecord(
                "prod/api", oci.compute_digest(body), oci.OCI_MANIFEST, len(body), None, None, None, 0.0, body
            )
            await signer.check_pull("dev/api", record)  # not enforced: nothing asked
            with pytest.raises(ImageNotSigned, match="not signed by this registry's key") as refused:
                await signer.check_pull("prod/api", record)
            assert refused.value.status == 403 and refused.value.oci_code == "DENIED"
        finally:
            await stores.close()

    asyncio.run(main())


def test_a_signing_is_in_progress_for_every_process_until_it_completes_or_fails(tmp_path: Path) -> None:
    from storage.errors import StorageError

    class Held(ImageSigner):
        """Signs once `go` is set; raises StorageError instead when `fail` is."""

        go: asyncio.Event
        fail = False

        async def _sign_one(self, repository: str, digest: str) -> None:
            await self.go.wait()
            if self.fail:
                raise StorageError("the database went away")
            await super()._sign_one(repository, digest)

    async def main() -> None:
        stores = open_stores(tmp_path / "data")
        await stores.open()
        try:
            settings = RegistrySettings(stores.meta, stores.changes)
            images = ImageService(stores.meta, stores.blobs, stores.changes)
            config = b'{"rootfs":{"type":"layers","diff_ids":[]}}'
            async with stores.blobs.writer() as writer:
                await writer.write(config)
                await writer.commit(oci.compute_digest(config))
            digests = []
            for n in range(2):
                await images.create_repository(f"r/{n}", "CREATE_ON_PUSH")
                await images.link_blob(f"r/{n}", oci.compute_digest(config), len(config))
                body = json.dumps(
                    {
                        "schemaVersion": 2,
                        "mediaType": oci.OCI_MANIFEST,
                        "config": {
                            "mediaType": sigstore.OCI_CONFIG,
                            "size": len(config),
                            "digest": oci.compute_digest(config),
                        },
                        "layers": [],
                    }
                ).encode()
                digests.append((await images.put_manifest(f"r/{n}", "v1", body, oci.OCI_MANIFEST)).digest)
            signer = Held(images, stores.meta, stores.blobs, settings, host="h:1")
            signer.go = asyncio.Event()
            other = ImageSigner(images, stores.meta, stores.blobs, settings, host="h:1")  # another process

            running = asyncio.ensure_future(signer.sign("r/0", digests[0]))
            await asyncio.sleep(0.05)
            assert await other.status("r/0", digests[0]) == ("IN_PROGRESS", None, None)
            signer.go.set()
            assert await running is True
            assert await other.status("r/0", digests[0]) == ("COMPLETE", None, None)
            assert await stores.meta.values(STATE_PREFIX) == {}, "nothing is left recorded for a signed image"
            assert digests[0] == digests[1], "the same manifest in both repositories"
            assert await other.verified("r/0", digests[0]) and not await other.verified("r/1", digests[1])
            # r/0's valid signature, copied whole into r/1 (as any pusher to r/1 could): it names r/0, so it
            # does not sign r/1's copy of the manifest (else one signed push would sign it everywhere).
            tag = sigstore.attachment_tag(digests[0])
            copied = await images.get_manifest("r/0", tag)
            for layer in [*sigstore.signature_layers(copied.body), json.loads(copied.body)["config"]]:
                await images.link_blob("r/1", layer["digest"], layer["size"])
            await images.put_manifest("r/1", tag, copied.body, oci.OCI_MANIFEST)
            assert await images.resolve("r/1", tag) == copied.digest
            assert not await other.verified("r/1", digests[1])

            signer.fail = True
            assert await signer.sign("r/1", digests[1]) is False
            status, code, reason = await other.status("r/1", digests[1])
            assert (status, code) == ("FAILED", "StorageUnavailable") and "went away" in (reason or ""), reason
        finally:
            await stores.close()

    asyncio.run(main())
