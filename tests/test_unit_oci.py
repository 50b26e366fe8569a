"""Table-driven tests of the pure OCI grammar and manifest module."""

from __future__ import annotations

import json

import pytest

from registry import errors, oci

SHA = "sha256:" + "a" * 64


@pytest.mark.parametrize("name", ["a", "ab", "team/app", "a.b_c__d-e--f/g", "x" * 256, "0/1/2/3", "a-b/c.d"])
def test_valid_names(name: str) -> None:
    assert oci.validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "A",
        "team/App",
        "a/../b",
        "..",
        "a//b",
        "/a",
        "a/",
        "-a",
        "a-",
        "a_",
        "a___b",
        "a..b",
        "x" * 257,
        "a/b c",
        "a:b",
        "a\x00b",
    ],
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(errors.NameInvalid):
        oci.validate_name(name)


@pytest.mark.parametrize("tag", ["latest", "v1.0.0", "_x", "A-b_c.d", "a" * 128, "1"])
def test_valid_tags(tag: str) -> None:
    assert oci.validate_tag(tag) == tag


@pytest.mark.parametrize("tag", ["", "-x", ".x", "a" * 129, "a:b", "a/b", "a b", "ä"])
def test_invalid_tags(tag: str) -> None:
    with pytest.raises(errors.TagInvalid):
        oci.validate_tag(tag)


@pytest.mark.parametrize("digest", [SHA, "sha512:" + "0" * 128])
def test_valid_digests(digest: str) -> None:
    assert oci.validate_digest(digest) == digest


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "sha256:" + "A" * 64,
        "sha256:",
        "sha256",
        "md5:" + "a" * 32,
        "sha512:" + "a" * 64,
        "SHA256:" + "a" * 64,
        ":" + "a" * 64,
        "sha256:" + "g" * 64,
    ],
)
def test_invalid_digests(digest: str) -> None:
    with pytest.raises(errors.DigestInvalid):
        oci.validate_digest(digest)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0-9", (0, 9)),
        ("10-19", (10, 19)),
        ("bytes 0-9/100", (0, 9)),
        ("bytes 5-5/*", (5, 5)),
    ],
)
def test_content_range(value: str, expected: tuple[int, int]) -> None:
    assert oci.parse_content_range(value) == expected


@pytest.mark.parametrize("value", ["", "abc", "5-2", "bytes=0-1", "-1-2", "0-", "1-2-3", "0x1-2"])
def test_content_range_invalid(value: str) -> None:
    with pytest.raises(errors.BlobUploadInvalid):
        oci.parse_content_range(value)


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 10, None),
        ("bytes=0-4", 10, (0, 5)),
        ("bytes=5-", 10, (5, 5)),
        ("bytes=-3", 10, (7, 3)),
        ("bytes=-30", 10, (0, 10)),
        ("bytes=8-100", 10, (8, 2)),
        ("items=0-1", 10, None),
    ],
)
def test_range(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert oci.parse_range(header, size) == expected


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=10-", 10),
        ("bytes=10-20", 10),
        ("bytes=5-2", 10),
        ("bytes=0-1,3-4", 10),
        ("bytes=-0", 10),
        ("bytes=a-b", 10),
        ("bytes=-", 10),
        ("bytes=0-0", 0),
    ],
)
def test_range_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(errors.RangeNotSatisfiable):
        oci.parse_range(header, size)


def _desc(mt: str = "application/vnd.oci.image.layer.v1.tar+gzip", **kw: object) -> dict:
    return {"mediaType": mt, "digest": SHA, "size": 3, **kw}


def _image(**kw: object) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": oci.OCI_MANIFEST,
            "config": _desc("application/vnd.oci.image.config.v1+json"),
            "layers": [_desc()],
            **kw,
        }
    ).encode()


def test_parse_image_manifest() -> None:
    sub = "sha256:" + "b" * 64
    p = oci.parse_manifest(
        _image(subject={"mediaType": oci.OCI_MANIFEST, "digest": sub, "size": 9}, annotations={"k": "v"}),
        oci.OCI_MANIFEST,
    )
    assert p.media_type == oci.OCI_MANIFEST and not p.is_index
    assert p.required_blobs == (SHA,)
    assert p.subject is not None and p.subject.digest == sub
    assert p.artifact_type == "application/vnd.oci.image.config.v1+json"
    assert p.annotations == {"k": "v"}


def test_artifact_type_field_wins_over_config_type() -> None:
    p = oci.parse_manifest(_image(artifactType="application/x.sbom"), None)
    assert p.artifact_type == "application/x.sbom"


def test_nondistributable_layers_are_not_required() -> None:
    other = "sha256:" + "c" * 64
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": oci.OCI_MANIFEST,
            "config": _desc("application/vnd.oci.image.config.v1+json"),
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                    "digest": other,
                    "size": 5,
                    "urls": ["https://example.com/layer"],
                }
            ],
        }
    ).encode()
    p = oci.parse_manifest(body, oci.OCI_MANIFEST)
    assert p.required_blobs == (SHA,)
    assert set(p.referenced_blobs) == {SHA, other}


def test_parse_index_and_inference_without_media_type() -> None:
    body = json.dumps({"schemaVersion": 2, "manifests": [_desc(oci.OCI_MANIFEST)]}).encode()
    p = oci.parse_manifest(body, "application/octet-stream")
    assert p.is_index and p.media_type == oci.OCI_INDEX and p.referenced_manifests == (SHA,)
    body = json.dumps({"schemaVersion": 2, "config": _desc(), "layers": []}).encode()
    assert oci.parse_manifest(body, None).media_type == oci.OCI_MANIFEST


@pytest.mark.parametrize(
    ("body", "content_type", "error"),
    [
        (b"not json", oci.OCI_MANIFEST, errors.ManifestInvalid),
        (b"[]", oci.OCI_MANIFEST, errors.ManifestInvalid),
        (json.dumps({"schemaVersion": 1}).encode(), None, errors.ManifestInvalid),
        (_image(), oci.DOCKER_MANIFEST, errors.ManifestInvalid),  # Content-Type disagrees with mediaType
        (
            json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "layers": []}).encode(),
            None,
            errors.ManifestInvalid,
        ),
        (
            json.dumps(
                {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "config": _desc(digest="sha256:x"), "layers": []}
            ).encode(),
            None,
            errors.ManifestInvalid,
        ),
        (
            json.dumps(
                {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "config": _desc(size=-1), "layers": []}
            ).encode(),
            None,
            errors.ManifestInvalid,
        ),
        (
            json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": {}}).encode(),
            None,
            errors.ManifestInvalid,
        ),
        (json.dumps({"schemaVersion": 2, "mediaType": "text/plain"}).encode(), None, errors.ManifestInvalid),
        (b" " * (oci.MAX_MANIFEST_BYTES + 1), None, errors.ManifestTooLarge),
    ],
)
def test_invalid_manifests(body: bytes, content_type: str | None, error: type[Exception]) -> None:
    with pytest.raises(error):
        oci.parse_manifest(body, content_type)


@pytest.mark.parametrize(
    ("accept", "media_type", "ok"),
    [
        ([], oci.OCI_MANIFEST, True),
        (["*/*"], oci.OCI_MANIFEST, True),
        ([f"{oci.DOCKER_MANIFEST}, {oci.OCI_MANIFEST}"], oci.OCI_MANIFEST, True),
        ([oci.DOCKER_MANIFEST, oci.OCI_INDEX], oci.OCI_INDEX, True),
        ([oci.DOCKER_MANIFEST], oci.OCI_MANIFEST, False),
        ([f"{oci.OCI_MANIFEST};q=0", oci.DOCKER_MANIFEST], oci.OCI_MANIFEST, False),
        ([f"{oci.OCI_MANIFEST};q=0.5"], oci.OCI_MANIFEST, True),
    ],
)
def test_accepts(accept: list[str], media_type: str, ok: bool) -> None:
    assert oci.accepts(accept, media_type) is ok
