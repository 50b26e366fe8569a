"""OCI distribution-spec v1.1 conformance, content management: deleting manifests (by digest and by
tag) and blobs, and what stays retrievable afterwards."""

from __future__ import annotations

import json

import pytest

from tests.oci import OCI_INDEX, OCI_MANIFEST, Client, descriptor, digest_of, error_codes, make_image, random_blob


def assert_manifest_gone(client: Client, repo: str, ref: str) -> None:
    r = client.get(f"/v2/{repo}/manifests/{ref}")
    assert r.status_code == 404, (ref, r.status_code, r.text)
    assert "MANIFEST_UNKNOWN" in error_codes(r)
    assert client.head(f"/v2/{repo}/manifests/{ref}").status_code == 404


def assert_manifest(client: Client, repo: str, ref: str, body: bytes) -> None:
    r = client.get(f"/v2/{repo}/manifests/{ref}")
    assert r.status_code == 200, (ref, r.status_code, r.text)
    assert r.content == body
    assert r.headers["Docker-Content-Digest"] == digest_of(body)


def tags(client: Client, repo: str) -> list[str]:
    r = client.get(f"/v2/{repo}/tags/list")
    assert r.status_code == 200, (r.status_code, r.text)
    return r.json()["tags"] or []


# -- manifests ------------------------------------------------------------------------------------


def test_delete_manifest_by_digest(client: Client, repo: str) -> None:
    img, keep = make_image(1, 64), make_image(1, 64)
    client.push_image(repo, "a", img)
    client.push_manifest(repo, "b", img.manifest)
    client.push_image(repo, "keep", keep)

    r = client.delete(f"/v2/{repo}/manifests/{img.digest}")
    assert r.status_code == 202, (r.status_code, r.text)

    for ref in (img.digest, "a", "b"):
        assert_manifest_gone(client, repo, ref)
    assert tags(client, repo) == ["keep"]
    assert_manifest(client, repo, "keep", keep.manifest)


def test_delete_manifest_by_tag_removes_only_the_tag(client: Client, repo: str) -> None:
    img = make_image(1, 64)
    client.push_image(repo, "a", img)
    client.push_manifest(repo, "b", img.manifest)

    r = client.delete(f"/v2/{repo}/manifests/a")
    assert r.status_code == 202, (r.status_code, r.text)

    assert_manifest_gone(client, repo, "a")
    assert_manifest(client, repo, "b", img.manifest)
    assert_manifest(client, repo, img.digest, img.manifest)
    assert tags(client, repo) == ["b"]


def test_delete_last_tag_keeps_manifest(client: Client, repo: str) -> None:
    img = make_image(1, 64)
    client.push_image(repo, "only", img)
    assert client.delete(f"/v2/{repo}/manifests/only").status_code == 202
    assert_manifest_gone(client, repo, "only")
    assert_manifest(client, repo, img.digest, img.manifest)
    # Its blobs are still served too.
    for blob in img.blobs:
        assert client.get(f"/v2/{repo}/blobs/{digest_of(blob)}").content == blob


@pytest.mark.parametrize("ref", ["nosuchtag", digest_of(b"no such manifest")], ids=["tag", "digest"])
def test_delete_unknown_manifest(client: Client, repo: str, ref: str) -> None:
    img = make_image(1, 64)
    client.push_image(repo, "v1", img)
    r = client.delete(f"/v2/{repo}/manifests/{ref}")
    assert r.status_code == 404, (r.status_code, r.text)
    assert "MANIFEST_UNKNOWN" in error_codes(r)
    assert_manifest(client, repo, "v1", img.manifest)


@pytest.mark.parametrize("by", ["tag", "digest"])
def test_delete_manifest_twice(client: Client, repo: str, by: str) -> None:
    img = make_image(1, 64)
    client.push_image(repo, "v1", img)
    ref = "v1" if by == "tag" else img.digest
    assert client.delete(f"/v2/{repo}/manifests/{ref}").status_code == 202
    r = client.delete(f"/v2/{repo}/manifests/{ref}")
    assert r.status_code == 404
    assert "MANIFEST_UNKNOWN" in error_codes(r)


def test_repush_after_delete(client: Client, repo: str) -> None:
    img = make_image(1, 64)
    client.push_image(repo, "v1", img)
    assert client.delete(f"/v2/{repo}/manifests/{img.digest}").status_code == 202
    assert_manifest_gone(client, repo, "v1")
    client.push_image(repo, "v1", img)
    assert_manifest(client, repo, "v1", img.manifest)
    assert_manifest(client, repo, img.digest, img.manifest)


def test_delete_index_keeps_children(client: Client, repo: str) -> None:
    children = [make_image(1, 32) for _ in range(2)]
    for child in children:
        client.push_image(repo, child.digest, child)
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [descriptor(OCI_MANIFEST, c.manifest) for c in children],
        },
        indent=2,
    ).encode()
    client.push_manifest(repo, "multi", index, OCI_INDEX)
    assert client.delete(f"/v2/{repo}/manifests/{digest_of(index)}").status_code == 202
    assert_manifest_gone(client, repo, "multi")
    for child in children:
        assert_manifest(client, repo, child.digest, child.manifest)


def test_delete_manifest_is_scoped_to_repository(client: Client, repo: str) -> None:
    img = make_image(1, 64)
    other = f"{repo}-other"
    client.push_image(repo, "v1", img)
    client.push_image(other, "v1", img)
    assert client.delete(f"/v2/{repo}/manifests/{img.digest}").status_code == 202
    assert_manifest_gone(client, repo, img.digest)
    assert_manifest(client, other, "v1", img.manifest)
    assert_manifest(client, other, img.digest, img.manifest)


def test_delete_manifest_in_unknown_repository(client: Client, repo: str) -> None:
    r = client.delete(f"/v2/{repo}/manifests/{digest_of(b'x')}")
    assert r.status_code == 404
    assert set(error_codes(r)) & {"MANIFEST_UNKNOWN", "NAME_UNKNOWN"}


# -- blobs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["sha256", "sha512"])
def test_delete_blob(client: Client, repo: str, alg: str) -> None:
    data, keep = random_blob(500), random_blob(500)
    d = client.push_blob(repo, data, alg=alg)
    kd = client.push_blob(repo, keep)
    r = client.delete(f"/v2/{repo}/blobs/{d}")
    assert r.status_code == 202, (r.status_code, r.text)
    r = client.get(f"/v2/{repo}/blobs/{d}")
    assert r.status_code == 404
    assert "BLOB_UNKNOWN" in error_codes(r)
    assert client.head(f"/v2/{repo}/blobs/{d}").status_code == 404
    assert client.get(f"/v2/{repo}/blobs/{kd}").content == keep


def test_delete_blob_twice(client: Client, repo: str) -> None:
    d = client.push_blob(repo, random_blob(10))
    assert client.delete(f"/v2/{repo}/blobs/{d}").status_code == 202
    r = client.delete(f"/v2/{repo}/blobs/{d}")
    assert r.status_code == 404
    assert "BLOB_UNKNOWN" in error_codes(r)


def test_delete_unknown_blob(client: Client, repo: str) -> None:
    client.push_blob(repo, random_blob(10))
    r = client.delete(f"/v2/{repo}/blobs/{digest_of(b'never pushed')}")
    assert r.status_code == 404
    assert "BLOB_UNKNOWN" in error_codes(r)


def test_delete_blob_is_scoped_to_repository(client: Client, repo: str) -> None:
    data = random_blob(800)
    other = f"{repo}-other"
    d = client.push_blob(repo, data)
    client.push_blob(other, data)
    assert client.delete(f"/v2/{repo}/blobs/{d}").status_code == 202
    assert client.get(f"/v2/{repo}/blobs/{d}").status_code == 404
    r = client.get(f"/v2/{other}/blobs/{d}")
    assert r.status_code == 200
    assert r.content == data


def test_blob_repush_after_delete(client: Client, repo: str) -> None:
    data = random_blob(300)
    d = client.push_blob(repo, data)
    assert client.delete(f"/v2/{repo}/blobs/{d}").status_code == 202
    assert client.push_blob(repo, data) == d
    assert client.get(f"/v2/{repo}/blobs/{d}").content == data


def test_deleted_blob_cannot_back_a_new_manifest(client: Client, repo: str) -> None:
    img = make_image(1, 64)
    for blob in img.blobs:
        client.push_blob(repo, blob)
    assert client.delete(f"/v2/{repo}/blobs/{digest_of(img.layers[0])}").status_code == 202
    r = client.put(f"/v2/{repo}/manifests/v1", data=img.manifest, headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 400
    assert "MANIFEST_BLOB_UNKNOWN" in error_codes(r)
