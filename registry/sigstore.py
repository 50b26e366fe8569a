"""Cosign's "simple signing" signatures, as containers/image (podman, skopeo) verifies them with a `sigstoreSigned`
policy and `use-sigstore-attachments: true`. Pure: no I/O.

- The payload names the image by repository and manifest digest (containers/image parses it strictly: exactly
  `critical` and `optional` at the top, exactly `identity`, `image` and `type` under `critical`):
  `{"critical":{"identity":{"docker-reference":"HOST/REPO"},"image":{"docker-manifest-digest":"sha256:..."},
  "type":"cosign container image signature"},"optional":null}`.
- The signature is ECDSA P-256 over the payload's SHA-256, ASN.1 (DER) encoded, in base64: the annotation
  `dev.cosignproject.cosign/signature` of a layer of media type `application/vnd.dev.cosign.simplesigning.v1+json`
  whose bytes are the payload.
- Such layers make up the image's attachment: an OCI image manifest tagged `sha256-<hex>.sig` in the same
  repository (cosign's convention, which containers/image reads), one layer per signature, with an OCI config
  listing them as its diff_ids (as cosign and containers/image write it). Moorage's also carries `subject`,
  the signed manifest, so the OCI 1.1 referrers API lists it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Sequence
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from registry import jsonsafe, oci

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIGNATURE_TYPE = "cosign container image signature"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MAX_PAYLOAD = 64 * 1024  # a payload is a few hundred bytes; containers/image reads at most 4 MiB
_CONFIG_DATE = "0001-01-01T00:00:00Z"  # cosign's config has Go's zero time


def attachment_tag(digest: str) -> str:
    """The tag of a manifest's signatures: `sha256:abc...` -> `sha256-abc....sig`."""
    algorithm, _, hexpart = oci.validate_digest(digest).partition(":")
    return f"{algorithm}-{hexpart}.sig"


def payload(reference: str, digest: str) -> bytes:
    """The simple-signing payload for the manifest `digest` known as `reference` (HOST/REPOSITORY)."""
    doc = {
        "critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": digest},
            "type": SIGNATURE_TYPE,
        },
        "optional": None,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def parse_payload(data: bytes) -> tuple[str, str] | None:
    """(docker-reference, docker-manifest-digest) of a payload in the shape containers/image accepts, else None."""
    try:
        doc = jsonsafe.loads(data)
    except ValueError:
        return None
    if not isinstance(doc, dict) or set(doc) != {"critical", "optional"}:
        return None
    critical = doc["critical"]
    if not isinstance(critical, dict) or set(critical) != {"identity", "image", "type"}:
        return None
    identity, image = critical["identity"], critical["image"]
    if critical["type"] != SIGNATURE_TYPE or not isinstance(identity, dict) or not isinstance(image, dict):
        return None
    if set(identity) != {"docker-reference"} or set(image) != {"docker-manifest-digest"}:
        return None
    reference, digest = identity["docker-reference"], image["docker-manifest-digest"]
    if not isinstance(reference, str) or not isinstance(digest, str):
        return None
    return reference, digest


def repository_of(reference: str) -> str:
    """The repository a docker-reference names (HOST/REPO[:TAG] -> REPO)."""
    _, _, path = reference.partition("/")
    name, _, _ = path.partition("@")
    last = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > last else name


# -- keys and signatures -------------------------------------------------------------------------------


def generate_key() -> bytes:
    """A new ECDSA P-256 private key, PKCS#8 PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    pkcs8 = serialization.PrivateFormat.PKCS8
    return key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption())


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("the stored image signing key is not an ECDSA P-256 key")
    return key


def public_pem(key: ec.EllipticCurvePrivateKey) -> str:
    """The public key as PEM (SubjectPublicKeyInfo): what a `sigstoreSigned` policy's keyPath names."""
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> str:
    """base64 of the ASN.1 ECDSA signature over SHA-256(data)."""
    return base64.b64encode(key.sign(data, ec.ECDSA(hashes.SHA256()))).decode()


def verify(public_key: ec.EllipticCurvePublicKey, data: bytes, signature: str) -> bool:
    try:
        raw = base64.b64decode(signature, validate=True)
        public_key.verify(raw, data, ec.ECDSA(hashes.SHA256()))
    except (ValueError, InvalidSignature):
        return False
    return True


# -- the attachment manifest -----------------------------------------------------------------------------


def signature_layer(data: bytes, signature: str) -> dict[str, Any]:
    """The layer descriptor of one signature."""
    return {
        "mediaType": SIMPLE_SIGNING,
        "size": len(data),
        "digest": oci.compute_digest(data),
        "annotations": {SIGNATURE_ANNOTATION: signature},
    }


def signature_layers(body: bytes) -> list[dict[str, Any]]:
    """The simple-signing layers of a stored attachment manifest (other layers are left out)."""
    try:
        doc = jsonsafe.loads(body)
    except ValueError:
        return []
    layers = doc.get("layers") if isinstance(doc, dict) else None
    return [
        layer
        for layer in layers or ()
        if isinstance(layer, dict) and layer.get("mediaType") == SIMPLE_SIGNING and isinstance(layer.get("digest"), str)
    ]


def is_signature_manifest(parsed: oci.ParsedManifest) -> bool:
    """An attachment of signatures (an OCI image manifest whose layers are all simple-signing payloads): never
    signed itself, and pulled without a signature of its own."""
    return (
        parsed.media_type == oci.OCI_MANIFEST
        and bool(parsed.layers)
        and all(layer.media_type == SIMPLE_SIGNING for layer in parsed.layers)
    )


def config_for(layers: Iterable[dict[str, Any]]) -> bytes:
    """The attachment's OCI config: its layers as diff_ids, times and platform empty (as cosign writes it)."""
    doc = {
        "architecture": "",
        "config": {},
        "created": _CONFIG_DATE,
        "history": [{"created": _CONFIG_DATE}],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def attachment_manifest(layers: Sequence[dict[str, Any]], config: bytes, subject: dict[str, Any]) -> bytes:
    """The attachment manifest holding `layers`, with `config` (`config_for(layers)`) and the signed manifest's
    descriptor as its subject."""
    doc = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "size": len(config), "digest": oci.compute_digest(config)},
        "layers": list(layers),
        "subject": subject,
    }
    return json.dumps(doc, separators=(",", ":")).encode()
