"""OCI distribution-spec v1.1 conformance, pull workflow: the base endpoint, blobs (whole and ranged),
manifests of every supported type by tag and by digest, and Accept negotiation."""

from __future__ import annotations

import json

import pytest

from tests.oci import (
    ALL_MANIFEST_TYPES,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    Client,
    Image,
    descriptor,
    digest_of,
    error_codes,
    make_image,
    random_blob,
)

MISSING_DIGEST = digest_of(b"this blob was never pushed anywhere")


def make_index(children: list[Image], media_type: str = OCI_INDEX, **extra: object) -> bytes:
    """A pretty-printed image index / manifest list over already-built child images."""
    doc = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [
            descriptor(c.media_type, c.manifest, platform={"architecture": f"arch{i}", "os": "linux"})
            for i, c in enumerate(children)
        ],
        **extra,
    }
    return json.dumps(doc, indent=2).encode()


KINDS = [
    "oci-manifest",
    "oci-index",
    "docker-manifest",
    "docker-list",
    "oci-artifact",
    "oci-with-subject",
    "oci-empty-layer",
]


def push_kind(client: Client, repo: str, kind: str, tag: str = "v1") -> tuple[bytes, str]:
    """Push a manifest of `kind` (and everything it references) under `tag`; return (bytes, media type)."""
    if kind in ("oci-manifest", "docker-manifest"):
        img = make_image(docker=kind == "docker-manifest")
        for blob in img.blobs:
            client.push_blob(repo, blob)
        body, media_type = img.manifest, img.media_type
    elif kind in ("oci-index", "docker-list"):
        docker = kind == "docker-list"
        children = [make_image(1, 64, docker=docker, platform=p) for p in ("amd64", "arm64")]
        for child in children:
            client.push_image(repo, child.digest, child)
        media_type = DOCKER_LIST if docker else OCI_INDEX
        body = make_index(children, media_type)
    elif kind == "oci-artifact":
        payload = random_blob(100)
        client.push_blob(repo, b"{}")
        client.push_blob(repo, payload)
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.thing.v1",
            "config": descriptor(OCI_EMPTY, b"{}"),
            "layers": [descriptor("application/vnd.example.payload", payload)],
        }
        body, media_type = json.dumps(doc, indent=4).encode(), OCI_MANIFEST
    elif kind == "oci-with-subject":
        subject = make_image(1, 32)  # never pushed: a subject need not exist
        img = make_image(1, 64, subject=descriptor(OCI_MANIFEST, subject.manifest))
        for blob in img.blobs:
            client.push_blob(repo, blob)
        body, media_type = img.manifest, img.media_type
    elif kind == "oci-empty-layer":
        img = make_image(1, 64)
        for blob in [*img.blobs, b""]:
            client.push_blob(repo, blob)
        doc = json.loads(img.manifest)
        doc["layers"].append(descriptor(doc["layers"][0]["mediaType"], b""))
        body, media_type = json.dumps(doc, indent=3).encode(), OCI_MANIFEST
    else:
        raise AssertionError(kind)
    r = client.push_manifest(repo, tag, body, media_type)
    assert r.headers["Docker-Content-Digest"] == digest_of(body)
    return body, media_type


# -- base endpoint ----------------------------------------------------------------------------------


def test_base_endpoint(client: Client) -> None:
    r = client.get("/v2/")
    assert r.status_code == 200
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"


def test_base_endpoint_head(client: Client) -> None:
    r = client.head("/v2/")
    assert r.status_code == 200
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"


# -- blobs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 4096, 1024 * 1024 + 7])
def test_blob_get_and_head(client: Client, repo: str, size: int) -> None:
    data = random_blob(size)
    d = client.push_blob(repo, data)

    r = client.get(f"/v2/{repo}/blobs/{d}")
    assert r.status_code == 200
    assert r.content == data
    assert int(r.headers["Content-Length"]) == size
    assert r.headers["Docker-Content-Digest"] == d

    r = client.head(f"/v2/{repo}/blobs/{d}")
    assert r.status_code == 200
    assert r.content == b""
    assert int(r.headers["Content-Length"]) == size
    assert r.headers["Docker-Content-Digest"] == d


def test_blob_sha512_get_and_head(client: Client, repo: str) -> None:
    data = random_blob(3000)
    d = client.push_blob(repo, data, alg="sha512")
    assert d.startswith("sha512:") and len(d) == 7 + 128

    r = client.get(f"/v2/{repo}/blobs/{d}")
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["Docker-Content-Digest"] == d

    r = client.head(f"/v2/{repo}/blobs/{d}")
    assert r.status_code == 200
    assert int(r.headers["Content-Length"]) == len(data)


def test_blob_unknown(client: Client, repo: str) -> None:
    client.push_blob(repo, random_blob(10))  # the repository exists; the blob does not
    r = client.get(f"/v2/{repo}/blobs/{MISSING_DIGEST}")
    assert r.status_code == 404
    assert "BLOB_UNKNOWN" in error_codes(r)
    r = client.head(f"/v2/{repo}/blobs/{MISSING_DIGEST}")
    assert r.status_code == 404
    assert r.content == b""


def test_blob_in_unknown_repository(client: Client, repo: str) -> None:
    r = client.get(f"/v2/{repo}/blobs/{MISSING_DIGEST}")
    assert r.status_code == 404
    assert set(error_codes(r)) & {"BLOB_UNKNOWN", "NAME_UNKNOWN"}


@pytest.mark.parametrize("this_repo_exists", [True, False])
def test_blob_linked_only_in_other_repo_is_invisible(client: Client, repo: str, this_repo_exists: bool) -> None:
    data = random_blob(500)
    d = client.push_blob(f"{repo}-other", data)
    if this_repo_exists:
        client.push_blob(repo, random_blob(10))

    r = client.get(f"/v2/{repo}/blobs/{d}")
    assert r.status_code == 404
    assert set(error_codes(r)) & {"BLOB_UNKNOWN", "NAME_UNKNOWN"}
    assert client.head(f"/v2/{repo}/blobs/{d}").status_code == 404
    # ...while the owner still has it.
    assert client.get(f"/v2/{repo}-other/blobs/{d}").content == data


RANGE_SIZE = 100


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-0", 0, 0),
        ("bytes=10-19", 10, 19),
        ("bytes=0-99", 0, 99),
        ("bytes=99-99", 99, 99),
        ("bytes=50-1000", 50, 99),  # last-byte-pos past the end is clamped (RFC 9110 14.1.1)
        ("bytes=90-", 90, 99),
        ("bytes=0-", 0, 99),
        ("bytes=-10", 90, 99),
        ("bytes=-1", 99, 99),
        ("bytes=-1000", 0, 99),  # a suffix longer than the blob is the whole blob
    ],
)
def test_blob_range(client: Client, repo: str, header: str, start: int, end: int) -> None:
    data = random_blob(RANGE_SIZE)
    d = client.push_blob(repo, data)
    r = client.get(f"/v2/{repo}/blobs/{d}", headers={"Range": header})
    assert r.status_code == 206, (r.status_code, r.headers)
    assert r.headers["Content-Range"] == f"bytes {start}-{end}/{RANGE_SIZE}"
    assert int(r.headers["Content-Length"]) == end - start + 1
    assert r.content == data[start : end + 1]


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=100-200", "bytes=5000-6000"])
def test_blob_range_unsatisfiable(client: Client, repo: str, header: str) -> None:
    data = random_blob(RANGE_SIZE)
    d = client.push_blob(repo, data)
    r = client.get(f"/v2/{repo}/blobs/{d}", headers={"Range": header})
    assert r.status_code == 416
    # The blob itself is unaffected.
    assert client.get(f"/v2/{repo}/blobs/{d}").content == data


def test_pull_whole_image(client: Client, repo: str) -> None:
    """The full pull workflow: manifest by tag, then every blob it references, all verifiable."""
    img = make_image(3, 5000)
    client.push_image(repo, "latest", img)

    r = client.get(f"/v2/{repo}/manifests/latest", headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200
    assert r.content == img.manifest
    doc = r.json()
    for desc in [doc["config"], *doc["layers"]]:
        b = client.get(f"/v2/{repo}/blobs/{desc['digest']}")
        assert b.status_code == 200
        assert len(b.content) == desc["size"]
        assert digest_of(b.content) == desc["digest"]
    assert [digest_of(x) for x in img.blobs] == [doc["config"]["digest"], *(x["digest"] for x in doc["layers"])]


# -- manifests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("by", ["tag", "digest"])
def test_manifest_get(client: Client, repo: str, kind: str, by: str) -> None:
    body, media_type = push_kind(client, repo, kind, tag="v1")
    ref = "v1" if by == "tag" else digest_of(body)
    r = client.get(f"/v2/{repo}/manifests/{ref}", headers={"Accept": ALL_MANIFEST_TYPES})
    assert r.status_code == 200
    assert r.content == body  # byte-exact: the pretty-printed JSON was not re-serialised
    assert r.headers["Content-Type"] == media_type
    assert r.headers["Docker-Content-Digest"] == digest_of(body)
    assert int(r.headers["Content-Length"]) == len(body)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("by", ["tag", "digest"])
def test_manifest_head(client: Client, repo: str, kind: str, by: str) -> None:
    body, media_type = push_kind(client, repo, kind, tag="v1")
    ref = "v1" if by == "tag" else digest_of(body)
    r = client.head(f"/v2/{repo}/manifests/{ref}", headers={"Accept": ALL_MANIFEST_TYPES})
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["Content-Type"] == media_type
    assert r.headers["Docker-Content-Digest"] == digest_of(body)
    assert int(r.headers["Content-Length"]) == len(body)


def test_index_children_pullable_by_digest(client: Client, repo: str) -> None:
    body, _ = push_kind(client, repo, "oci-index")
    for child in json.loads(body)["manifests"]:
        r = client.get(f"/v2/{repo}/manifests/{child['digest']}", headers={"Accept": child["mediaType"]})
        assert r.status_code == 200
        assert digest_of(r.content) == child["digest"]
        assert len(r.content) == child["size"]
        assert r.headers["Content-Type"] == child["mediaType"]


@pytest.mark.parametrize("ref", ["missing", "v1.0-unknown", MISSING_DIGEST], ids=["tag", "tag-with-dots", "digest"])
def test_manifest_unknown(client: Client, repo: str, ref: str) -> None:
    push_kind(client, repo, "oci-manifest", tag="present")
    r = client.get(f"/v2/{repo}/manifests/{ref}")
    assert r.status_code == 404
    assert "MANIFEST_UNKNOWN" in error_codes(r)
    r = client.head(f"/v2/{repo}/manifests/{ref}")
    assert r.status_code == 404
    assert r.content == b""


@pytest.mark.parametrize("ref", ["latest", MISSING_DIGEST], ids=["tag", "digest"])
def test_manifest_in_unknown_repository(client: Client, repo: str, ref: str) -> None:
    r = client.get(f"/v2/{repo}/manifests/{ref}")
    assert r.status_code == 404
    assert "NAME_UNKNOWN" in error_codes(r)
    assert client.head(f"/v2/{repo}/manifests/{ref}").status_code == 404


def test_manifest_of_other_repo_is_invisible(client: Client, repo: str) -> None:
    body, _ = push_kind(client, f"{repo}-other", "oci-manifest", tag="v1")
    push_kind(client, repo, "oci-manifest", tag="mine")
    r = client.get(f"/v2/{repo}/manifests/{digest_of(body)}")
    assert r.status_code == 404
    assert "MANIFEST_UNKNOWN" in error_codes(r)


# -- Accept negotiation ---------------------------------------------------------------------------

NO_ACCEPT = None  # the header is removed entirely


@pytest.mark.parametrize(
    ("kind", "accept", "status"),
    [
        ("oci-manifest", OCI_MANIFEST, 200),
        ("oci-manifest", ALL_MANIFEST_TYPES, 200),
        ("oci-manifest", f"{DOCKER_MANIFEST}, {OCI_MANIFEST};q=0.5", 200),
        ("oci-manifest", NO_ACCEPT, 200),
        ("oci-manifest", "*/*", 200),
        ("oci-manifest", DOCKER_MANIFEST, 404),
        ("oci-manifest", f"{DOCKER_MANIFEST}, {DOCKER_LIST}", 404),
        ("oci-manifest", OCI_INDEX, 404),
        ("docker-manifest", DOCKER_MANIFEST, 200),
        ("docker-manifest", f"{OCI_MANIFEST}, {DOCKER_MANIFEST}", 200),
        ("docker-manifest", NO_ACCEPT, 200),
        ("docker-manifest", "*/*", 200),
        ("docker-manifest", OCI_MANIFEST, 404),
        ("oci-index", OCI_INDEX, 200),
        ("oci-index", "*/*", 200),
        ("oci-index", f"{OCI_MANIFEST}, {DOCKER_MANIFEST}", 404),
        ("docker-list", DOCKER_LIST, 200),
        ("docker-list", NO_ACCEPT, 200),
        ("docker-list", f"{OCI_MANIFEST}, {OCI_INDEX}", 404),
    ],
)
def test_manifest_accept_negotiation(client: Client, repo: str, kind: str, accept: str | None, status: int) -> None:
    body, media_type = push_kind(client, repo, kind, tag="v1")
    r = client.get(f"/v2/{repo}/manifests/v1", headers={"Accept": accept})
    if accept is None:
        assert "Accept" not in r.request.headers
    assert r.status_code == status, (r.status_code, r.text)
    if status == 200:
        assert r.content == body
        assert r.headers["Content-Type"] == media_type
    else:
        assert "MANIFEST_UNKNOWN" in error_codes(r)
