"""The console's pure parts, table-driven: formatting, the image tree (platforms under their index, referrers
under their subject), manifests and configs as shown, CSRF tokens, the same-origin check and the limiter."""

from __future__ import annotations

import hashlib
import json

import pytest

from registry.console.session import SignInLimiter, csrf_token, csrf_valid, same_origin
from registry.console.views import (
    artifact_kind,
    command_line,
    config_view,
    human_size,
    image_tree,
    manifest_view,
    short_digest,
)
from storage.records import ImageRecord, ManifestRecord

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def digest(n: int) -> str:
    return "sha256:" + f"{n:064x}"


def image(n: int, *, subject: int | None = None, media_type: str = OCI_MANIFEST, artifact: str | None = None):
    return ImageRecord(
        n, "r", digest(n), media_type, 100, 1000 * n, None, artifact, digest(subject) if subject else None, n, None, ()
    )


@pytest.mark.parametrize(
    ("size", "shown"),
    [(None, "\N{EN DASH}"), (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (5 * 1024**3, "5.0 GiB")],
)
def test_human_size(size: int | None, shown: str) -> None:
    assert human_size(size) == shown


@pytest.mark.parametrize(
    ("artifact_type", "kind"),
    [
        ("application/vnd.dev.cosign.artifact.sig.v1+json", "signature"),
        ("application/vnd.cncf.notary.signature", "signature"),
        ("application/spdx+json", "SBOM"),
        ("application/vnd.cyclonedx+json", "SBOM"),
        ("application/vnd.in-toto+json", "attestation"),
        ("application/vnd.example.thing", "artifact"),
        (None, "artifact"),
    ],
)
def test_artifact_kind(artifact_type: str | None, kind: str) -> None:
    assert artifact_kind(artifact_type) == kind


def test_short_digest_and_command_line() -> None:
    assert short_digest(digest(1)) == "sha256:000000000000"
    assert command_line(["/bin/sh", "-c", "echo hi"]) == '["/bin/sh", "-c", "echo hi"]'
    assert command_line(None) == "\N{EN DASH}"


def test_image_tree_nests_platforms_and_referrers() -> None:
    index_body = json.dumps(
        {
            "manifests": [
                {"digest": digest(2), "size": 10, "platform": {"os": "linux", "architecture": "amd64"}},
                {"digest": digest(3), "size": 11, "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
                {"digest": digest(9), "size": 12, "platform": {"os": "linux", "architecture": "s390x"}},
            ]
        }
    ).encode()
    images = [
        image(1, media_type=OCI_INDEX),
        image(2),
        image(3),
        image(4, subject=1, artifact="application/spdx+json"),  # SBOM of the index
        image(5, subject=2, artifact="application/vnd.dev.cosign.artifact.sig.v1+json"),  # signature of a child
        image(6, subject=77),  # its subject is elsewhere: a row of its own
        image(7),
    ]
    top = image_tree(images, {digest(1): index_body})
    assert [row.image.id for row in top] == [1, 6, 7]
    index = top[0]
    assert [(p.name, p.row.image.id if p.row else None) for p in index.platforms] == [
        ("linux/amd64", 2),
        ("linux/arm/v7", 3),
        ("linux/s390x", None),  # listed, not stored here
    ]
    assert [(r.image.id, r.kind) for r in index.referrers] == [(4, "SBOM")]
    assert index.platforms[0].row is not None
    assert [(r.image.id, r.kind) for r in index.platforms[0].row.referrers] == [(5, "signature")]
    assert index.kind == "index" and top[2].kind == "image"


def test_manifest_view_verifies_the_stored_bytes() -> None:
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(8), "size": 3},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(9), "size": 5}],
        },
        separators=(",", ":"),
    ).encode()
    right = "sha256:" + hashlib.sha256(body).hexdigest()
    view = manifest_view(ManifestRecord("r", right, OCI_MANIFEST, len(body), None, None, None, 0.0, body))
    assert view.verified and view.computed == right and view.total_size == 5
    assert [layer.digest for layer in view.layers] == [digest(9)] and view.config and view.config.size == 3
    assert view.artifact_type is None  # a plain image's config type is not shown as an artifact type
    assert json.loads(view.pretty) == json.loads(body) and "\n" in view.pretty
    tampered = manifest_view(ManifestRecord("r", digest(1), OCI_MANIFEST, len(body), None, None, None, 0.0, body))
    assert not tampered.verified and tampered.computed == right
    broken = manifest_view(ManifestRecord("r", digest(1), OCI_MANIFEST, 3, None, None, None, 0.0, b"{]}"))
    assert broken.error and not broken.layers


def test_config_view() -> None:
    config = {
        "os": "linux",
        "architecture": "arm64",
        "variant": "v8",
        "config": {
            "Env": ["PATH=/bin", "A=b"],
            "Entrypoint": ["/app"],
            "Cmd": "serve",  # a string, as some builders write it
            "Labels": {"b": "2", "a": "1"},
            "ExposedPorts": {"80/tcp": {}},
            "User": "10001",
        },
        "history": [{"created_by": "ADD rootfs /"}, {"created_by": "ENV A=b", "empty_layer": True}, "junk"],
    }
    view = config_view(json.dumps(config).encode())
    assert view is not None
    assert (view.os, view.architecture, view.user) == ("linux", "arm64/v8", "10001")
    assert view.env == ("PATH=/bin", "A=b") and view.entrypoint == ("/app",) and view.cmd == ("serve",)
    assert view.labels == (("a", "1"), ("b", "2")) and view.exposed_ports == ("80/tcp",)
    assert view.history == (("", "ADD rootfs /", False), ("", "ENV A=b", True))
    assert config_view(b"not json") is None and config_view(b"[1]") is None
    empty = config_view(b"{}")
    assert empty is not None and empty.entrypoint is None and empty.env == ()


def test_csrf_tokens_belong_to_their_session() -> None:
    assert csrf_valid("one", csrf_token("one"))
    assert not csrf_valid("one", csrf_token("two"))
    assert not csrf_valid("one", None) and not csrf_valid("one", "") and not csrf_valid("one", "one")


@pytest.mark.parametrize(
    ("origin", "referer", "ok"),
    [
        ("http://127.0.0.1:5000", None, True),
        ("http://127.0.0.1:5000", "http://evil.example/", True),  # Origin decides when sent
        ("http://evil.example", "http://127.0.0.1:5000/console/", False),
        ("null", None, False),
        (None, "http://127.0.0.1:5000/console/repositories?q=a", True),
        (None, "http://127.0.0.1:5001/console/", False),
        (None, None, False),
    ],
)
def test_same_origin(origin: str | None, referer: str | None, ok: bool) -> None:
    assert same_origin(origin, referer, {"http://127.0.0.1:5000"}) is ok


def test_sign_in_limiter_slides_and_forgets() -> None:
    limiter = SignInLimiter(failures=3, window=60.0, addresses=2)
    for t in (0.0, 1.0, 2.0):
        assert limiter.retry_after("a", t) == 0.0
        limiter.failed("a", t)
    assert limiter.retry_after("a", 3.0) == pytest.approx(57.0)
    assert limiter.retry_after("b", 3.0) == 0.0  # per address
    assert limiter.retry_after("a", 60.5) == 0.0  # the first failure left the window
    limiter.failed("b", 61.0)
    limiter.failed("c", 61.0)  # a third address: the oldest ("a") is forgotten
    assert "a" not in limiter._seen and set(limiter._seen) == {"b", "c"}
