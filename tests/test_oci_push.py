"""OCI distribution-spec v1.1 conformance, push workflow: upload sessions (monolithic, POST+PUT, chunked,
streamed), digest verification, sha512, cross-repository mounts, and manifest pushes with every rule the
registry enforces on them."""

from __future__ import annotations

import json
import uuid
from urllib.parse import urlsplit

import pytest
import requests

from tests.oci import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    Client,
    Image,
    descriptor,
    digest_of,
    error_codes,
    location,
    make_image,
    random_blob,
)

MiB = 1024 * 1024
OCTET = {"Content-Type": "application/octet-stream"}


def start_upload(client: Client, repo: str) -> requests.Response:
    r = client.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, (r.status_code, r.text)
    return r


def patch_chunk(client: Client, url: str, data: bytes, start: int) -> requests.Response:
    end = start + len(data) - 1
    return client.patch(
        url,
        data=data,
        headers={**OCTET, "Content-Range": f"{start}-{end}", "Content-Length": str(len(data))},
    )


def assert_blob(client: Client, repo: str, digest: str, data: bytes) -> None:
    r = client.get(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200, (r.status_code, r.text)
    assert r.content == data
    assert r.headers["Docker-Content-Digest"] == digest


def assert_no_blob(client: Client, repo: str, digest: str) -> None:
    r = client.get(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 404, (r.status_code, r.text)
    assert set(error_codes(r)) & {"BLOB_UNKNOWN", "NAME_UNKNOWN"}


def make_index(children: list[Image], media_type: str = OCI_INDEX, **extra: object) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [descriptor(c.media_type, c.manifest) for c in children],
        **extra,
    }
    return json.dumps(doc, indent=2).encode()


def split3(data: bytes) -> list[bytes]:
    a, b = len(data) // 3, 2 * len(data) // 3
    return [data[:a], data[a:b], data[b:]]


# -- starting an upload ---------------------------------------------------------------------------


def test_start_upload(client: Client, repo: str) -> None:
    r = start_upload(client, repo)
    assert r.headers["Docker-Upload-UUID"]
    assert r.headers["Range"] == "0-0"
    url = location(r)
    assert urlsplit(url).path.startswith(f"/v2/{repo}/blobs/uploads/")


def test_upload_status_empty(client: Client, repo: str) -> None:
    r = start_upload(client, repo)
    s = client.get(location(r))
    assert s.status_code == 204
    assert s.headers["Range"] == "0-0"
    assert s.headers["Docker-Upload-UUID"] == r.headers["Docker-Upload-UUID"]
    assert location(s)
    assert s.content == b""


# -- monolithic -----------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["sha256", "sha512"])
@pytest.mark.parametrize("size", [0, 1, 70_000])
def test_monolithic_post(client: Client, repo: str, alg: str, size: int) -> None:
    data = random_blob(size)
    d = digest_of(data, alg)
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": d}, data=data, headers=OCTET)
    assert r.status_code == 201, (r.status_code, r.text)
    assert urlsplit(location(r)).path == f"/v2/{repo}/blobs/{d}"
    assert r.headers["Docker-Content-Digest"] == d
    assert_blob(client, repo, d, data)
    assert client.get(location(r)).content == data


@pytest.mark.parametrize("alg", ["sha256", "sha512"])
def test_post_then_put(client: Client, repo: str, alg: str) -> None:
    data = random_blob(5000)
    d = digest_of(data, alg)
    url = location(start_upload(client, repo))
    r = client.put(url, params={"digest": d}, data=data, headers=OCTET)
    assert r.status_code == 201, (r.status_code, r.text)
    assert r.headers["Docker-Content-Digest"] == d
    assert urlsplit(location(r)).path == f"/v2/{repo}/blobs/{d}"
    assert_blob(client, repo, d, data)
    # The session is consumed.
    s = client.get(url)
    assert s.status_code == 404
    assert "BLOB_UPLOAD_UNKNOWN" in error_codes(s)


def test_push_same_blob_twice(client: Client, repo: str) -> None:
    """The second upload of a blob already there succeeds the same way: 201, its digest, its location."""
    data = random_blob(300)
    d = digest_of(data)
    for attempt in ("first", "again"):
        r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": d}, data=data, headers=OCTET)
        assert r.status_code == 201, (attempt, r.status_code, r.text)
        assert r.headers["Docker-Content-Digest"] == d, attempt
        assert urlsplit(location(r)).path == f"/v2/{repo}/blobs/{d}", attempt
        assert_blob(client, repo, d, data)


# -- chunked --------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["sha256", "sha512"])
@pytest.mark.parametrize("last_chunk_in_put", [False, True])
def test_chunked_upload(client: Client, repo: str, alg: str, last_chunk_in_put: bool) -> None:
    data = random_blob(30_001)
    d = digest_of(data, alg)
    chunks = split3(data)
    r = start_upload(client, repo)
    upload_id = r.headers["Docker-Upload-UUID"]
    url = location(r)
    to_patch = chunks[:-1] if last_chunk_in_put else chunks
    offset = 0
    for chunk in to_patch:
        r = patch_chunk(client, url, chunk, offset)
        offset += len(chunk)
        assert r.status_code == 202, (r.status_code, r.text)
        assert r.headers["Range"] == f"0-{offset - 1}"
        assert r.headers["Docker-Upload-UUID"] == upload_id
        url = location(r)

        s = client.get(url)
        assert s.status_code == 204
        assert s.headers["Range"] == f"0-{offset - 1}"
        assert s.headers["Docker-Upload-UUID"] == upload_id
        url = location(s)

    final = chunks[-1] if last_chunk_in_put else b""
    r = client.put(url, params={"digest": d}, data=final, headers=OCTET)
    assert r.status_code == 201, (r.status_code, r.text)
    assert r.headers["Docker-Content-Digest"] == d
    assert urlsplit(location(r)).path == f"/v2/{repo}/blobs/{d}"
    assert_blob(client, repo, d, data)


def test_chunked_upload_many_small_chunks(client: Client, repo: str) -> None:
    data = random_blob(1000)
    url = location(start_upload(client, repo))
    for off in range(0, len(data), 37):
        r = patch_chunk(client, url, data[off : off + 37], off)
        assert r.status_code == 202
        assert r.headers["Range"] == f"0-{min(off + 37, len(data)) - 1}"
        url = location(r)
    r = client.put(url, params={"digest": digest_of(data)})
    assert r.status_code == 201
    assert_blob(client, repo, digest_of(data), data)


@pytest.mark.parametrize("bad_start", [0, 5, 9, 11, 20], ids=lambda s: f"start{s}")
def test_out_of_order_chunk(client: Client, repo: str, bad_start: int) -> None:
    data = random_blob(20)
    url = location(start_upload(client, repo))
    r = patch_chunk(client, url, data[:10], 0)
    assert r.status_code == 202
    url = location(r)

    r = patch_chunk(client, url, data[10:], bad_start)
    assert r.status_code == 416, (r.status_code, r.text)
    assert "BLOB_UPLOAD_INVALID" in error_codes(r)

    # The session is intact: still at offset 10, and it can be finished correctly.
    s = client.get(url)
    assert s.status_code == 204
    assert s.headers["Range"] == "0-9"
    r = patch_chunk(client, location(s), data[10:], 10)
    assert r.status_code == 202
    assert r.headers["Range"] == "0-19"
    r = client.put(location(r), params={"digest": digest_of(data)})
    assert r.status_code == 201
    assert_blob(client, repo, digest_of(data), data)


def test_first_chunk_not_at_zero(client: Client, repo: str) -> None:
    url = location(start_upload(client, repo))
    r = patch_chunk(client, url, b"abcdef", 3)
    assert r.status_code == 416
    assert "BLOB_UPLOAD_INVALID" in error_codes(r)
    assert client.get(url).headers["Range"] == "0-0"


def test_streamed_patch(client: Client, repo: str) -> None:
    """PATCH without Content-Range appends the body to the upload."""
    data = random_blob(9000)
    url = location(start_upload(client, repo))
    r = client.patch(url, data=data[:4000], headers=OCTET)
    assert r.status_code == 202, (r.status_code, r.text)
    assert r.headers["Range"] == "0-3999"
    url = location(r)
    r = client.patch(url, data=data[4000:], headers=OCTET)
    assert r.status_code == 202
    assert r.headers["Range"] == f"0-{len(data) - 1}"
    r = client.put(location(r), params={"digest": digest_of(data)})
    assert r.status_code == 201
    assert_blob(client, repo, digest_of(data), data)


def test_streamed_patch_chunked_transfer_encoding(client: Client, repo: str) -> None:
    """A streamed PATCH with Transfer-Encoding: chunked (no Content-Length), as docker sends it."""
    parts = [random_blob(1000) for _ in range(5)]
    data = b"".join(parts)
    url = location(start_upload(client, repo))
    r = client.patch(url, data=iter(parts), headers=OCTET)
    assert r.request.headers.get("Transfer-Encoding") == "chunked"
    assert r.status_code == 202, (r.status_code, r.text)
    assert r.headers["Range"] == f"0-{len(data) - 1}"
    r = client.put(location(r), params={"digest": digest_of(data)})
    assert r.status_code == 201
    assert_blob(client, repo, digest_of(data), data)


def test_stream_then_chunk(client: Client, repo: str) -> None:
    data = random_blob(300)
    url = location(start_upload(client, repo))
    r = client.patch(url, data=data[:100], headers=OCTET)
    assert r.status_code == 202
    r = patch_chunk(client, location(r), data[100:200], 100)
    assert r.status_code == 202
    assert r.headers["Range"] == "0-199"
    r = client.put(location(r), params={"digest": digest_of(data)}, data=data[200:], headers=OCTET)
    assert r.status_code == 201
    assert_blob(client, repo, digest_of(data), data)


@pytest.mark.parametrize("same_blob", [True, False], ids=["same-blob", "different-blobs"])
def test_interleaved_uploads(client: Client, repo: str, same_blob: bool) -> None:
    """Two sessions in one repository progress independently, even when they carry the same bytes."""
    a = random_blob(2000)
    b = a if same_blob else random_blob(2000)
    url_a, url_b = location(start_upload(client, repo)), location(start_upload(client, repo))
    assert url_a != url_b
    ra = patch_chunk(client, url_a, a[:1000], 0)
    rb = patch_chunk(client, url_b, b[:500], 0)
    assert (ra.status_code, rb.status_code) == (202, 202)
    assert (ra.headers["Range"], rb.headers["Range"]) == ("0-999", "0-499")
    rb = patch_chunk(client, location(rb), b[500:], 500)
    ra = patch_chunk(client, location(ra), a[1000:], 1000)
    assert (ra.headers["Range"], rb.headers["Range"]) == ("0-1999", "0-1999")
    assert client.put(location(rb), params={"digest": digest_of(b)}).status_code == 201
    assert client.put(location(ra), params={"digest": digest_of(a)}).status_code == 201
    assert_blob(client, repo, digest_of(a), a)
    assert_blob(client, repo, digest_of(b), b)


# -- cancelling and unknown sessions --------------------------------------------------------------


def test_delete_upload(client: Client, repo: str) -> None:
    url = location(start_upload(client, repo))
    assert patch_chunk(client, url, b"some bytes", 0).status_code == 202
    r = client.delete(url)
    assert r.status_code == 204
    for method, kw in [
        ("GET", {}),
        ("PATCH", {"data": b"more", "headers": {**OCTET, "Content-Range": "10-13"}}),
        ("PUT", {"params": {"digest": digest_of(b"some bytes")}}),
        ("DELETE", {}),
    ]:
        r = client.request(method, url, **kw)
        assert r.status_code == 404, (method, r.status_code, r.text)
        assert "BLOB_UPLOAD_UNKNOWN" in error_codes(r)
    assert_no_blob(client, repo, digest_of(b"some bytes"))


@pytest.mark.parametrize(
    "upload_id",
    [str(uuid.uuid4()), "garbage", "0", "x" * 300, "sha256:abc", "...."],
    ids=["uuid", "garbage", "zero", "long", "colon", "dots"],
)
@pytest.mark.parametrize("method", ["GET", "PATCH", "PUT", "DELETE"])
def test_unknown_upload(client: Client, repo: str, method: str, upload_id: str) -> None:
    start_upload(client, repo)  # the repository has an upload, just not this one
    kw: dict = {
        "PATCH": {"data": b"abc", "headers": OCTET},
        "PUT": {"params": {"digest": digest_of(b"abc")}, "data": b"abc", "headers": OCTET},
    }.get(method, {})
    r = client.request(method, f"/v2/{repo}/blobs/uploads/{upload_id}", **kw)
    assert r.status_code == 404, (r.status_code, r.text)
    assert "BLOB_UPLOAD_UNKNOWN" in error_codes(r)


@pytest.mark.parametrize("method", ["GET", "PATCH", "PUT"])
def test_upload_session_is_bound_to_its_repository(client: Client, repo: str, method: str) -> None:
    r = start_upload(client, repo)
    upload_id = urlsplit(location(r)).path.rsplit("/", 1)[-1]
    other = f"{repo}-other"
    start_upload(client, other)
    kw: dict = {
        "PATCH": {"data": b"abc", "headers": OCTET},
        "PUT": {"params": {"digest": digest_of(b"abc")}, "data": b"abc", "headers": OCTET},
    }.get(method, {})
    r = client.request(method, f"/v2/{other}/blobs/uploads/{upload_id}", **kw)
    assert r.status_code == 404, (r.status_code, r.text)
    assert "BLOB_UPLOAD_UNKNOWN" in error_codes(r)
    assert_no_blob(client, other, digest_of(b"abc"))


# -- digest verification --------------------------------------------------------------------------


@pytest.mark.parametrize("flow", ["monolithic", "post-put", "chunked", "chunked-final-body"])
@pytest.mark.parametrize("alg", ["sha256", "sha512"])
def test_wrong_digest_rejected(client: Client, repo: str, flow: str, alg: str) -> None:
    data = random_blob(2000)
    claimed = digest_of(b"something else entirely", alg)
    if flow == "monolithic":
        r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": claimed}, data=data, headers=OCTET)
    else:
        url = location(start_upload(client, repo))
        if flow == "post-put":
            r = client.put(url, params={"digest": claimed}, data=data, headers=OCTET)
        else:
            r = patch_chunk(client, url, data[:1000], 0)
            assert r.status_code == 202
            rest = data[1000:]
            if flow == "chunked":
                r = patch_chunk(client, location(r), rest, 1000)
                assert r.status_code == 202
                rest = b""
            r = client.put(location(r), params={"digest": claimed}, data=rest, headers=OCTET)
    assert r.status_code == 400, (r.status_code, r.text)
    assert "DIGEST_INVALID" in error_codes(r)
    assert_no_blob(client, repo, claimed)
    assert_no_blob(client, repo, digest_of(data, alg))
    assert_no_blob(client, repo, digest_of(data))


# -- cross-repository mount -----------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["sha256", "sha512"])
def test_mount_from_other_repo(client: Client, repo: str, alg: str) -> None:
    data = random_blob(4000)
    src = f"{repo}-src"
    d = client.push_blob(src, data, alg=alg)
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"mount": d, "from": src})
    assert r.status_code == 201, (r.status_code, r.text)
    assert r.headers["Docker-Content-Digest"] == d
    assert urlsplit(location(r)).path == f"/v2/{repo}/blobs/{d}"
    assert_blob(client, repo, d, data)
    assert_blob(client, src, d, data)


def test_mount_missing_blob_starts_upload(client: Client, repo: str) -> None:
    src = f"{repo}-src"
    client.push_blob(src, random_blob(10))
    data = random_blob(500)
    d = digest_of(data)
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"mount": d, "from": src})
    assert r.status_code == 202, (r.status_code, r.text)
    assert r.headers["Docker-Upload-UUID"]
    # It is an ordinary upload session that can be completed.
    r = client.put(location(r), params={"digest": d}, data=data, headers=OCTET)
    assert r.status_code == 201
    assert_blob(client, repo, d, data)


def test_mount_without_from(client: Client, repo: str) -> None:
    data = random_blob(700)
    d = client.push_blob(f"{repo}-somewhere", data)
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"mount": d})
    assert r.status_code == 201, (r.status_code, r.text)
    assert r.headers["Docker-Content-Digest"] == d
    assert urlsplit(location(r)).path == f"/v2/{repo}/blobs/{d}"
    assert_blob(client, repo, d, data)


def test_mount_without_from_missing_blob(client: Client, repo: str) -> None:
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"mount": digest_of(b"never pushed, nowhere")})
    assert r.status_code == 202
    assert location(r)


def test_mount_into_repo_that_already_has_it(client: Client, repo: str) -> None:
    data = random_blob(50)
    d = client.push_blob(repo, data)
    client.push_blob(f"{repo}-src", data)
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"mount": d, "from": f"{repo}-src"})
    assert r.status_code == 201
    assert_blob(client, repo, d, data)


def test_mounted_blobs_satisfy_manifest(client: Client, repo: str) -> None:
    img = make_image(2, 100)
    src = f"{repo}-src"
    client.push_image(src, "v1", img)
    for blob in img.blobs:
        r = client.post(f"/v2/{repo}/blobs/uploads/", params={"mount": digest_of(blob), "from": src})
        assert r.status_code == 201
    r = client.push_manifest(repo, "v1", img.manifest)
    assert r.headers["Docker-Content-Digest"] == img.digest


# -- manifests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["tag", "digest"])
@pytest.mark.parametrize("docker", [False, True], ids=["oci", "docker"])
def test_push_manifest(client: Client, repo: str, by: str, docker: bool) -> None:
    img = make_image(docker=docker)
    for blob in img.blobs:
        client.push_blob(repo, blob)
    ref = "v1" if by == "tag" else img.digest
    r = client.put(f"/v2/{repo}/manifests/{ref}", data=img.manifest, headers={"Content-Type": img.media_type})
    assert r.status_code == 201, (r.status_code, r.text)
    assert r.headers["Docker-Content-Digest"] == digest_of(img.manifest)
    g = client.get(location(r), headers={"Accept": img.media_type})
    assert g.status_code == 200
    assert g.content == img.manifest


@pytest.mark.parametrize("media_type", [OCI_INDEX, DOCKER_LIST])
@pytest.mark.parametrize("by", ["tag", "digest"])
def test_push_index(client: Client, repo: str, media_type: str, by: str) -> None:
    children = [make_image(1, 64, docker=media_type == DOCKER_LIST) for _ in range(3)]
    for child in children:
        client.push_image(repo, child.digest, child)
    body = make_index(children, media_type)
    ref = "multi" if by == "tag" else digest_of(body)
    r = client.put(f"/v2/{repo}/manifests/{ref}", data=body, headers={"Content-Type": media_type})
    assert r.status_code == 201, (r.status_code, r.text)
    assert r.headers["Docker-Content-Digest"] == digest_of(body)
    assert client.get(location(r), headers={"Accept": media_type}).content == body


def test_push_index_of_indexes(client: Client, repo: str) -> None:
    child = make_image(1, 64)
    client.push_image(repo, child.digest, child)
    inner = make_index([child])
    client.push_manifest(repo, digest_of(inner), inner, OCI_INDEX)
    outer = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor(OCI_INDEX, inner)]}, indent=2
    ).encode()
    r = client.push_manifest(repo, "nested", outer, OCI_INDEX)
    assert r.headers["Docker-Content-Digest"] == digest_of(outer)


def test_manifest_with_no_layers(client: Client, repo: str) -> None:
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    client.push_blob(repo, config)
    body = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(OCI_CONFIG, config), "layers": []},
        indent=2,
    ).encode()
    r = client.push_manifest(repo, "nolayers", body)
    assert r.headers["Docker-Content-Digest"] == digest_of(body)
    assert client.get(f"/v2/{repo}/manifests/nolayers").content == body


def test_push_manifest_twice_is_idempotent(client: Client, repo: str) -> None:
    img = make_image()
    client.push_image(repo, "v1", img)
    r = client.push_manifest(repo, "v1", img.manifest)
    assert r.headers["Docker-Content-Digest"] == img.digest
    assert client.get(f"/v2/{repo}/manifests/v1").content == img.manifest


def test_manifest_digest_mismatch(client: Client, repo: str) -> None:
    img = make_image()
    for blob in img.blobs:
        client.push_blob(repo, blob)
    wrong = digest_of(img.manifest + b" ")
    r = client.put(f"/v2/{repo}/manifests/{wrong}", data=img.manifest, headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 400, (r.status_code, r.text)
    assert "DIGEST_INVALID" in error_codes(r)
    for ref in (wrong, img.digest):
        assert client.get(f"/v2/{repo}/manifests/{ref}").status_code == 404


@pytest.mark.parametrize("missing", ["config", "layer", "layer-in-other-repo", "config-in-other-repo"])
@pytest.mark.parametrize("docker", [False, True], ids=["oci", "docker"])
def test_manifest_blob_unknown(client: Client, repo: str, missing: str, docker: bool) -> None:
    img = make_image(2, 100, docker=docker)
    skip = img.config if missing.startswith("config") else img.layers[1]
    for blob in img.blobs:
        if blob is not skip:
            client.push_blob(repo, blob)
    if missing.endswith("other-repo"):
        client.push_blob(f"{repo}-other", skip)
    r = client.put(f"/v2/{repo}/manifests/v1", data=img.manifest, headers={"Content-Type": img.media_type})
    assert r.status_code == 400, (r.status_code, r.text)
    assert "MANIFEST_BLOB_UNKNOWN" in error_codes(r)
    assert client.get(f"/v2/{repo}/manifests/v1").status_code == 404
    assert client.get(f"/v2/{repo}/manifests/{img.digest}").status_code == 404


@pytest.mark.parametrize("where", ["nowhere", "other-repo"])
@pytest.mark.parametrize("media_type", [OCI_INDEX, DOCKER_LIST])
def test_index_child_unknown(client: Client, repo: str, where: str, media_type: str) -> None:
    docker = media_type == DOCKER_LIST
    present, absent = make_image(1, 64, docker=docker), make_image(1, 64, docker=docker)
    client.push_image(repo, present.digest, present)
    if where == "other-repo":
        client.push_image(f"{repo}-other", absent.digest, absent)
    else:
        for blob in absent.blobs:  # its blobs are here, the manifest itself is not
            client.push_blob(repo, blob)
    body = make_index([present, absent], media_type)
    r = client.put(f"/v2/{repo}/manifests/multi", data=body, headers={"Content-Type": media_type})
    assert r.status_code == 400, (r.status_code, r.text)
    assert "MANIFEST_BLOB_UNKNOWN" in error_codes(r)
    assert client.get(f"/v2/{repo}/manifests/multi").status_code == 404


@pytest.mark.parametrize(
    ("manifest_type", "layer_type"),
    [
        (OCI_MANIFEST, "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"),
        (OCI_MANIFEST, "application/vnd.oci.image.layer.nondistributable.v1.tar"),
        (DOCKER_MANIFEST, "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"),
    ],
)
def test_nondistributable_layers_need_not_be_uploaded(
    client: Client, repo: str, manifest_type: str, layer_type: str
) -> None:
    img = make_image(1, 100, docker=manifest_type == DOCKER_MANIFEST)
    for blob in img.blobs:
        client.push_blob(repo, blob)
    doc = json.loads(img.manifest)
    foreign = random_blob(64)  # never uploaded
    doc["layers"].insert(0, descriptor(layer_type, foreign, urls=["https://example.com/layers/base.tar.gz"]))
    body = json.dumps(doc, indent=2).encode()
    r = client.put(f"/v2/{repo}/manifests/v1", data=body, headers={"Content-Type": manifest_type})
    assert r.status_code == 201, (r.status_code, r.text)
    assert r.headers["Docker-Content-Digest"] == digest_of(body)
    assert client.get(f"/v2/{repo}/manifests/v1").content == body


def padded_manifest(img: Image, size: int) -> bytes:
    """The image's manifest with an annotation padded so the pretty-printed body is exactly `size` bytes."""
    doc = json.loads(img.manifest)
    doc["annotations"] = {"pad": ""}
    base = len(json.dumps(doc, indent=2).encode())
    doc["annotations"]["pad"] = "x" * (size - base)
    body = json.dumps(doc, indent=2).encode()
    assert len(body) == size
    return body


def test_manifest_size_limit(client: Client, repo: str) -> None:
    img = make_image(1, 100)
    for blob in img.blobs:
        client.push_blob(repo, blob)

    at_limit = padded_manifest(img, 4 * MiB)
    r = client.put(f"/v2/{repo}/manifests/big", data=at_limit, headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 201, (r.status_code, r.text[:300])
    assert client.get(f"/v2/{repo}/manifests/big").content == at_limit

    too_big = padded_manifest(img, 4 * MiB + 1)
    r = client.put(f"/v2/{repo}/manifests/bigger", data=too_big, headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 413, (r.status_code, r.text[:300])
    assert error_codes(r)
    assert client.get(f"/v2/{repo}/manifests/bigger").status_code == 404
    assert client.get(f"/v2/{repo}/manifests/{digest_of(too_big)}").status_code == 404


@pytest.mark.parametrize("body", [b"{not json", b"", b"\x00\xff\xfe", b'{"schemaVersion": 2,'])
def test_manifest_invalid_json(client: Client, repo: str, body: bytes) -> None:
    r = client.put(f"/v2/{repo}/manifests/v1", data=body, headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 400, (r.status_code, r.text)
    assert "MANIFEST_INVALID" in error_codes(r)


def test_put_with_tag_parameters(client: Client, repo: str) -> None:
    img = make_image()
    for blob in img.blobs:
        client.push_blob(repo, blob)
    r = client.put(
        f"/v2/{repo}/manifests/{img.digest}",
        params=[("tag", "a"), ("tag", "b")],
        data=img.manifest,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert r.status_code == 201, (r.status_code, r.text)
    assert r.headers["Docker-Content-Digest"] == img.digest
    announced = {t.strip() for v in r.raw.headers.getlist("OCI-Tag") for t in v.split(",")}
    assert announced == {"a", "b"}
    for tag in ("a", "b"):
        g = client.get(f"/v2/{repo}/manifests/{tag}")
        assert g.status_code == 200
        assert g.headers["Docker-Content-Digest"] == img.digest
        assert g.content == img.manifest
    assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["a", "b"]


@pytest.mark.parametrize("subject_exists", [True, False])
def test_subject_header(client: Client, repo: str, subject_exists: bool) -> None:
    subject = make_image(1, 64)
    if subject_exists:
        client.push_image(repo, "v1", subject)
    referrer = make_image(
        1, 64, subject=descriptor(OCI_MANIFEST, subject.manifest), artifact_type="application/vnd.example.sig"
    )
    for blob in referrer.blobs:
        client.push_blob(repo, blob)
    r = client.put(
        f"/v2/{repo}/manifests/{referrer.digest}", data=referrer.manifest, headers={"Content-Type": OCI_MANIFEST}
    )
    assert r.status_code == 201, (r.status_code, r.text)
    assert r.headers["OCI-Subject"] == subject.digest
    assert r.headers["Docker-Content-Digest"] == referrer.digest


def test_no_subject_header_without_subject(client: Client, repo: str) -> None:
    img = make_image(1, 64)
    for blob in img.blobs:
        client.push_blob(repo, blob)
    r = client.push_manifest(repo, "v1", img.manifest)
    assert "OCI-Subject" not in r.headers


def test_artifact_with_empty_config(client: Client, repo: str) -> None:
    payload = random_blob(32)
    client.push_blob(repo, b"{}")
    client.push_blob(repo, payload)
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.sbom.v1",
            "config": descriptor(OCI_EMPTY, b"{}"),
            "layers": [descriptor("text/spdx+json", payload)],
        },
        indent=2,
    ).encode()
    r = client.push_manifest(repo, "sbom", body)
    assert r.headers["Docker-Content-Digest"] == digest_of(body)
    assert client.get(f"/v2/{repo}/manifests/sbom").content == body


def test_retag_moves_tag(client: Client, repo: str) -> None:
    first, second = make_image(1, 64), make_image(1, 64)
    client.push_image(repo, "latest", first)
    assert client.get(f"/v2/{repo}/manifests/latest").content == first.manifest
    client.push_image(repo, "latest", second)
    r = client.get(f"/v2/{repo}/manifests/latest")
    assert r.content == second.manifest
    assert r.headers["Docker-Content-Digest"] == second.digest
    # The old manifest is still there by digest.
    assert client.get(f"/v2/{repo}/manifests/{first.digest}").content == first.manifest
    assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["latest"]


@pytest.mark.parametrize("suffix", ["a", "0", "a__b", "a--b", "a---b", "a.b", "a_b", "a/b/c/d", "x9.y-z_w"])
def test_push_to_valid_repository_names(client: Client, repo: str, suffix: str) -> None:
    name = f"{repo}/{suffix}"
    img = make_image(1, 32)
    client.push_image(name, "v1", img)
    assert client.get(f"/v2/{name}/manifests/v1").content == img.manifest
    assert client.get(f"/v2/{name}/tags/list").json() == {"name": name, "tags": ["v1"]}


@pytest.mark.parametrize("tag", ["a" * 128, "_under", "A.b-C_9", "0", "v1.2.3-rc.1", "UPPER"])
def test_push_valid_tags(client: Client, repo: str, tag: str) -> None:
    img = make_image(1, 32)
    client.push_image(repo, tag, img)
    r = client.get(f"/v2/{repo}/manifests/{tag}")
    assert r.status_code == 200
    assert r.content == img.manifest
