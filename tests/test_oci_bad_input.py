"""OCI distribution-spec v1.1 conformance, bad input: invalid repository names, tags, digests, upload
ranges and manifests. Every garbage request must get a prompt 4xx with the spec's error JSON (never a 5xx
or a hang), and must leave content already stored in the repository byte-exact."""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from urllib.parse import urlsplit

import pytest

from tests.oci import (
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
from tests.server import MoorageServer

TIMEOUT = 10  # a hang fails the test instead of stalling the suite
OCTET = {"Content-Type": "application/octet-stream"}
HEX64 = "0123456789abcdef" * 4

MALFORMED_DIGESTS = {
    "not-hex": "sha256:xyz",
    "short": "sha256:" + HEX64[:63],
    "long": "sha256:" + HEX64 + "0",
    "upper-hex": "sha256:" + HEX64.upper(),
    "upper-alg": "SHA256:" + HEX64,
    "md5": "md5:" + HEX64[:32],
    "sha512-too-short": "sha512:" + HEX64,
    "no-hex": "sha256:",
    "no-alg": ":" + HEX64,
    "no-colon": "sha256" + HEX64,
}


@dataclass
class Stored:
    repo: str
    image: Image
    blob: bytes  # a standalone blob, not referenced by the image


@pytest.fixture(autouse=True)
def stored(client: Client, repo: str) -> Iterator[Stored]:
    """Content pushed before each test, and checked byte-exact after the garbage has been thrown at it."""
    img, blob = make_image(2, 300), random_blob(1000)
    client.push_image(repo, "stored", img)
    client.push_blob(repo, blob)
    yield Stored(repo, img, blob)
    for ref in ("stored", img.digest):
        r = client.get(f"/v2/{repo}/manifests/{ref}")
        assert r.status_code == 200, (ref, r.status_code, r.text)
        assert r.content == img.manifest
    for b in [*img.blobs, blob]:
        r = client.get(f"/v2/{repo}/blobs/{digest_of(b)}")
        assert r.status_code == 200
        assert r.content == b
    assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["stored"]


@dataclass
class RawResponse:
    status: int
    headers: Message
    body: bytes

    def codes(self) -> list[str]:
        doc = json.loads(self.body)
        assert isinstance(doc.get("errors"), list) and doc["errors"], doc
        for e in doc["errors"]:
            assert isinstance(e.get("code"), str) and isinstance(e.get("message"), str), e
        return [e["code"] for e in doc["errors"]]


def raw_request(
    server: MoorageServer, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> RawResponse:
    """Send `path` exactly as written (requests/urllib3 would normalise `.` and `..` segments away)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    headers = dict(headers or {})
    if server.credentials:
        headers.setdefault("Authorization", "Basic " + base64.b64encode(":".join(server.credentials).encode()).decode())
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        out = RawResponse(resp.status, resp.headers, resp.read())
    finally:
        conn.close()
    assert out.status < 500, f"{method} {path} -> {out.status}: {out.body[:500]!r}"
    return out


def start_upload(client: Client, repo: str, data: bytes = b"") -> str:
    r = client.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202
    url = location(r)
    if data:
        r = client.patch(url, data=data, headers={**OCTET, "Content-Range": f"0-{len(data) - 1}"})
        assert r.status_code == 202
        url = location(r)
    return url


def assert_upload_unchanged(client: Client, url: str, size: int) -> None:
    """After a rejected chunk the session is still there with its old size (the client may retry)."""
    s = client.get(url)
    assert s.status_code == 204, (s.status_code, s.text)
    assert s.headers["Range"] == (f"0-{size - 1}" if size else "0-0")


# -- repository names -----------------------------------------------------------------------------


def invalid_names(repo: str) -> dict[str, str]:
    """Invalid spellings of (or around) an existing repository, so lenient parsing would hit real content."""
    return {
        "uppercase": repo.replace("t", "T", 1),
        "dotdot-component": f"{repo}/x/..",
        "dotdot-middle": f"x/../{repo}",
        "dot-component": f"{repo}/.",
        "double-slash": repo.replace("/", "//"),
        "leading-slash": "/" + repo,
        "trailing-slash": repo + "/",
        "leading-hyphen": "-" + repo,
        "trailing-hyphen": repo + "-",
        "trailing-dot": repo + ".",
        "trailing-underscore": repo + "_",
        "component-starts-with-separator": repo.replace("/", "/_"),
        "double-dot-separator": repo + "..x",
        "triple-underscore": repo + "___x",
        "too-long": repo + "/" + "a" * (256 - len(repo)),  # 257 characters
        "percent-encoded-non-ascii": repo + "%C3%A9",
    }


NAME_CASES = list(invalid_names("t0/x"))
ENDPOINTS = {
    "manifest-get": ("GET", "/v2/{name}/manifests/stored"),
    "manifest-head": ("HEAD", "/v2/{name}/manifests/stored"),
    "manifest-put": ("PUT", "/v2/{name}/manifests/stored"),
    "manifest-delete": ("DELETE", "/v2/{name}/manifests/{digest}"),
    "blob-get": ("GET", "/v2/{name}/blobs/{digest}"),
    "blob-head": ("HEAD", "/v2/{name}/blobs/{digest}"),
    "blob-delete": ("DELETE", "/v2/{name}/blobs/{digest}"),
    "upload-start": ("POST", "/v2/{name}/blobs/uploads/"),
    "upload-monolithic": ("POST", "/v2/{name}/blobs/uploads/?digest={digest}"),
    "tags-list": ("GET", "/v2/{name}/tags/list"),
    "referrers": ("GET", "/v2/{name}/referrers/{digest}"),
}


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
@pytest.mark.parametrize("case", NAME_CASES)
def test_bad_name(server: MoorageServer, stored: Stored, case: str, endpoint: str) -> None:
    name = invalid_names(stored.repo)[case]
    if case == "too-long":
        assert len(name) == 257
    method, template = ENDPOINTS[endpoint]
    body, headers = b"", {}
    if endpoint == "manifest-put":
        body, headers = stored.image.manifest, {"Content-Type": OCI_MANIFEST}
    elif endpoint == "upload-monolithic":
        body, headers = stored.blob, OCTET
    digest = stored.image.digest if endpoint == "manifest-delete" else digest_of(stored.blob)
    path = template.format(name=name, digest=digest)
    r = raw_request(server, method, path, body, headers)
    assert r.status == 400, (path, r.status, r.body[:300])
    if method != "HEAD":
        assert "NAME_INVALID" in r.codes()


# -- tags -----------------------------------------------------------------------------------------

INVALID_TAGS = {
    "leading-hyphen": "-bad",
    "leading-dot": ".bad",
    "too-long": "a" * 129,
    "bang": "bad!tag",
    "space": "bad%20tag",
    "plus": "bad+tag",
    "non-ascii": "caf%C3%A9",
}


@pytest.mark.parametrize("tag", list(INVALID_TAGS.values()), ids=list(INVALID_TAGS))
def test_invalid_tag_on_put(client: Client, stored: Stored, tag: str) -> None:
    r = client.put(
        f"/v2/{stored.repo}/manifests/{tag}", data=stored.image.manifest, headers={"Content-Type": OCI_MANIFEST}
    )
    assert r.status_code == 400, (r.status_code, r.text)
    assert "TAG_INVALID" in error_codes(r)


def test_tag_with_colon_on_put(client: Client, stored: Stored) -> None:
    """A reference containing ':' is read as a digest (of the unknown algorithm `bad`)."""
    r = client.put(
        f"/v2/{stored.repo}/manifests/bad:tag", data=stored.image.manifest, headers={"Content-Type": OCI_MANIFEST}
    )
    assert r.status_code == 400, (r.status_code, r.text)
    assert error_codes(r) == ["DIGEST_INVALID"]


@pytest.mark.parametrize("tag", ["-bad", "a" * 129, "bad tag", "x:y"], ids=["hyphen", "long", "space", "colon"])
def test_invalid_tag_parameter_on_put(client: Client, stored: Stored, tag: str) -> None:
    r = client.put(
        f"/v2/{stored.repo}/manifests/{stored.image.digest}",
        params={"tag": tag},
        data=stored.image.manifest,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert r.status_code == 400, (r.status_code, r.text)
    assert "TAG_INVALID" in error_codes(r)


@pytest.mark.parametrize("tag", ["-bad", "a" * 129, "bad!tag"], ids=["hyphen", "long", "bang"])
@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_invalid_tag_on_get_and_delete(client: Client, stored: Stored, tag: str, method: str) -> None:
    r = client.request(method, f"/v2/{stored.repo}/manifests/{tag}")
    assert r.status_code == 400, (r.status_code, r.text)
    assert error_codes(r) == ["TAG_INVALID"]


# -- digests --------------------------------------------------------------------------------------

DIGEST_IDS = list(MALFORMED_DIGESTS)
DIGESTS = list(MALFORMED_DIGESTS.values())


@pytest.mark.parametrize("digest", DIGESTS, ids=DIGEST_IDS)
@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE"])
def test_malformed_digest_blob_path(client: Client, stored: Stored, digest: str, method: str) -> None:
    r = client.request(method, f"/v2/{stored.repo}/blobs/{digest}")
    assert r.status_code == 400, (r.status_code, r.text)
    if method != "HEAD":
        assert "DIGEST_INVALID" in error_codes(r)


@pytest.mark.parametrize("digest", DIGESTS, ids=DIGEST_IDS)
def test_malformed_digest_upload_put(client: Client, stored: Stored, digest: str) -> None:
    data = random_blob(100)
    url = start_upload(client, stored.repo, data[:50])
    r = client.put(url, params={"digest": digest}, data=data[50:], headers=OCTET)
    assert r.status_code == 400, (r.status_code, r.text)
    assert "DIGEST_INVALID" in error_codes(r)
    assert client.get(f"/v2/{stored.repo}/blobs/{digest_of(data)}").status_code == 404


@pytest.mark.parametrize("digest", DIGESTS, ids=DIGEST_IDS)
def test_malformed_digest_monolithic_post(client: Client, stored: Stored, digest: str) -> None:
    data = random_blob(100)
    r = client.post(f"/v2/{stored.repo}/blobs/uploads/", params={"digest": digest}, data=data, headers=OCTET)
    assert r.status_code == 400, (r.status_code, r.text)
    assert "DIGEST_INVALID" in error_codes(r)
    assert client.get(f"/v2/{stored.repo}/blobs/{digest_of(data)}").status_code == 404


@pytest.mark.parametrize("digest", DIGESTS, ids=DIGEST_IDS)
def test_malformed_digest_mount(client: Client, stored: Stored, digest: str) -> None:
    r = client.post(f"/v2/{stored.repo}-dst/blobs/uploads/", params={"mount": digest, "from": stored.repo})
    assert r.status_code == 400, (r.status_code, r.text)
    assert "DIGEST_INVALID" in error_codes(r)


@pytest.mark.parametrize("digest", DIGESTS, ids=DIGEST_IDS)
def test_malformed_digest_referrers(client: Client, stored: Stored, digest: str) -> None:
    r = client.get(f"/v2/{stored.repo}/referrers/{digest}")
    assert r.status_code == 400, (r.status_code, r.text)
    assert "DIGEST_INVALID" in error_codes(r)


@pytest.mark.parametrize(
    "digest", [d for d in DIGESTS if ":" in d], ids=[i for i, d in MALFORMED_DIGESTS.items() if ":" in d]
)
def test_malformed_digest_manifest_put(client: Client, stored: Stored, digest: str) -> None:
    r = client.put(
        f"/v2/{stored.repo}/manifests/{digest}", data=stored.image.manifest, headers={"Content-Type": OCI_MANIFEST}
    )
    assert r.status_code == 400, (r.status_code, r.text)
    assert error_codes(r) == ["DIGEST_INVALID"]


@pytest.mark.parametrize("digest", DIGESTS, ids=DIGEST_IDS)
def test_malformed_digest_manifest_get(client: Client, stored: Stored, digest: str) -> None:
    r = client.get(f"/v2/{stored.repo}/manifests/{digest}")
    if ":" in digest:
        assert r.status_code == 400, (r.status_code, r.text)
        assert error_codes(r) == ["DIGEST_INVALID"]
    else:  # "sha256<hex>" is a valid tag, and there is no such tag
        assert r.status_code == 404, (r.status_code, r.text)
        assert error_codes(r) == ["MANIFEST_UNKNOWN"]


@pytest.mark.parametrize("params", [{}, {"digest": ""}, {"digest": "latest"}], ids=["missing", "empty", "tag"])
def test_upload_put_without_valid_digest(client: Client, stored: Stored, params: dict) -> None:
    data = random_blob(64)
    url = start_upload(client, stored.repo, data)
    r = client.put(url, params=params)
    assert r.status_code == 400, (r.status_code, r.text)
    assert "DIGEST_INVALID" in error_codes(r)
    assert client.get(f"/v2/{stored.repo}/blobs/{digest_of(data)}").status_code == 404


# -- upload ranges --------------------------------------------------------------------------------

MALFORMED_RANGES = {
    "letters": "abc",
    "reversed": "5-2",
    "http-range-syntax": "bytes=0-1",
    "open-end": "0-",
    "negative": "-1-3",
    "three-parts": "0-1-2",
    "spaces-inside": "0 - 1",
    "huge": "99999999999999999999999999-99999999999999999999999999",
}


@pytest.mark.parametrize("value", list(MALFORMED_RANGES.values()), ids=list(MALFORMED_RANGES))
@pytest.mark.parametrize("prior", [0, 4], ids=["empty-session", "after-4-bytes"])
def test_malformed_content_range(client: Client, stored: Stored, value: str, prior: int) -> None:
    head = random_blob(prior)
    url = start_upload(client, stored.repo, head)
    r = client.patch(url, data=b"xy", headers={**OCTET, "Content-Range": value})
    assert r.status_code == 400, (r.status_code, r.text)
    assert error_codes(r) == ["BLOB_UPLOAD_INVALID"]
    assert_upload_unchanged(client, url, prior)


@pytest.mark.parametrize(
    ("value", "body_size"),
    [("0-9", 5), ("0-1", 5), ("0-0", 0), ("0-99999", 10)],
    ids=["claims-more", "claims-less", "claims-one-sends-none", "claims-far-more"],
)
def test_content_range_disagrees_with_body(client: Client, stored: Stored, value: str, body_size: int) -> None:
    url = start_upload(client, stored.repo)
    r = client.patch(url, data=random_blob(body_size), headers={**OCTET, "Content-Range": value})
    assert r.status_code == 400, (r.status_code, r.text)
    assert error_codes(r) == ["BLOB_UPLOAD_INVALID"]
    assert_upload_unchanged(client, url, 0)


@pytest.mark.parametrize("header", ["items=0-1", "garbage"])
def test_range_header_of_another_unit_is_ignored(client: Client, stored: Stored, header: str) -> None:
    """Not a bytes range: ignored, as HTTP says; the whole blob."""
    r = client.get(f"/v2/{stored.repo}/blobs/{digest_of(stored.blob)}", headers={"Range": header})
    assert r.status_code == 200 and r.content == stored.blob, (r.status_code, r.text[:200])


@pytest.mark.parametrize("header", ["bytes=abc", "bytes=5-2", "bytes=", "bytes=0-1,5-6", "bytes=--1"])
def test_garbage_bytes_range_is_not_satisfiable(client: Client, stored: Stored, header: str) -> None:
    """A bytes range that is malformed, backwards or multiple: 416 with the blob's size, nothing of it sent."""
    r = client.get(f"/v2/{stored.repo}/blobs/{digest_of(stored.blob)}", headers={"Range": header})
    assert r.status_code == 416, (r.status_code, r.text[:200])
    assert error_codes(r) == ["RANGE_INVALID"]
    assert r.headers["Content-Range"] == f"bytes */{len(stored.blob)}"


# -- manifests ------------------------------------------------------------------------------------


def _manifest_variants(img: Image) -> dict[str, tuple[str, bytes]]:
    doc = json.loads(img.manifest)

    def edit(**changes: object) -> bytes:
        d = {**doc, **changes}
        return json.dumps({k: v for k, v in d.items() if v is not None}, indent=2).encode()

    bad_desc = {**doc["config"], "digest": "sha256:xyz"}
    no_digest = {k: v for k, v in doc["config"].items() if k != "digest"}
    return {
        "not-json": (OCI_MANIFEST, b"this is not json"),
        "empty-body": (OCI_MANIFEST, b""),
        "json-array": (OCI_MANIFEST, b"[]"),
        "json-string": (OCI_MANIFEST, b'"manifest"'),
        "json-null": (OCI_MANIFEST, b"null"),
        "json-number": (OCI_MANIFEST, b"42"),
        "empty-object": (OCI_MANIFEST, b"{}"),
        "truncated": (OCI_MANIFEST, img.manifest[: len(img.manifest) // 2]),
        "invalid-utf8": (OCI_MANIFEST, b'{"schemaVersion": 2, "x": "\xff\xfe"}'),
        "schema-version-1": (OCI_MANIFEST, edit(schemaVersion=1)),
        "schema-version-string": (OCI_MANIFEST, edit(schemaVersion="2")),
        "no-config": (OCI_MANIFEST, edit(config=None)),
        "config-not-object": (OCI_MANIFEST, edit(config="sha256:abc")),
        "layers-not-list": (OCI_MANIFEST, edit(layers={"a": 1})),
        "descriptor-without-digest": (OCI_MANIFEST, edit(config=no_digest)),
        "descriptor-bad-digest": (OCI_MANIFEST, edit(config=bad_desc)),
        "index-manifests-not-list": (
            OCI_INDEX,
            b'{"schemaVersion": 2, "mediaType": "%s", "manifests": 5}' % OCI_INDEX.encode(),
        ),
        "index-no-manifests": (OCI_INDEX, b'{"schemaVersion": 2, "mediaType": "%s"}' % OCI_INDEX.encode()),
    }


MANIFEST_CASES = list(_manifest_variants(make_image(1, 1)))


@pytest.mark.parametrize("case", MANIFEST_CASES)
def test_invalid_manifest(client: Client, stored: Stored, case: str) -> None:
    media_type, body = _manifest_variants(stored.image)[case]
    r = client.put(f"/v2/{stored.repo}/manifests/broken", data=body, headers={"Content-Type": media_type})
    assert r.status_code == 400, (r.status_code, r.text)
    assert error_codes(r) == ["MANIFEST_INVALID"]
    assert client.get(f"/v2/{stored.repo}/manifests/broken").status_code == 404
    assert client.get(f"/v2/{stored.repo}/manifests/{digest_of(body)}").status_code == 404


def test_invalid_manifest_does_not_overwrite_tag(client: Client, stored: Stored) -> None:
    r = client.put(f"/v2/{stored.repo}/manifests/stored", data=b"{garbage", headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 400
    assert error_codes(r) == ["MANIFEST_INVALID"]
    # (the autouse fixture verifies "stored" still returns the original bytes)


def test_oversized_manifest_does_not_overwrite_tag(client: Client, stored: Stored) -> None:
    doc = json.loads(stored.image.manifest)
    doc["annotations"] = {"pad": "x" * (5 * 1024 * 1024)}
    r = client.put(
        f"/v2/{stored.repo}/manifests/stored", data=json.dumps(doc).encode(), headers={"Content-Type": OCI_MANIFEST}
    )
    assert r.status_code == 413, (r.status_code, r.text)
    assert error_codes(r) == ["SIZE_INVALID"]


def test_index_with_invalid_child_digest(client: Client, stored: Stored) -> None:
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{**descriptor(OCI_MANIFEST, stored.image.manifest), "digest": "sha256:nothex"}],
        }
    ).encode()
    r = client.put(f"/v2/{stored.repo}/manifests/idx", data=body, headers={"Content-Type": OCI_INDEX})
    assert r.status_code == 400, (r.status_code, r.text)
    assert error_codes(r) == ["MANIFEST_INVALID"]
    assert client.get(f"/v2/{stored.repo}/manifests/idx").status_code == 404


# -- query parameters, unknown routes, odd headers --------------------------------------------------


@pytest.mark.parametrize("n", ["abc", "-1", "1.5", "99999999999999999999999", ""])
@pytest.mark.parametrize("which", ["tags", "catalog"])
def test_garbage_pagination(client: Client, stored: Stored, n: str, which: str) -> None:
    path = f"/v2/{stored.repo}/tags/list" if which == "tags" else "/v2/_catalog"
    r = client.get(path, params={"n": n})
    assert r.status_code == 400, (r.status_code, r.text)
    assert error_codes(r) == ["PAGINATION_NUMBER_INVALID"]


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v2/{repo}/nonsense", 404, "NOT_FOUND"),
        ("GET", "/v2/{repo}/blobs/", 404, "NOT_FOUND"),
        ("GET", "/v2/{repo}/manifests/", 404, "NOT_FOUND"),
        ("POST", "/v2/{repo}/manifests/stored", 405, "UNSUPPORTED"),
        ("PATCH", "/v2/{repo}/blobs/{digest}", 405, "UNSUPPORTED"),
        ("PUT", "/v2/{repo}/blobs/{digest}", 405, "UNSUPPORTED"),
        ("PUT", "/v2/{repo}/blobs/uploads/", 405, "UNSUPPORTED"),
        ("DELETE", "/v2/", 405, "UNSUPPORTED"),
        ("DELETE", "/v2/{repo}/tags/list", 405, "UNSUPPORTED"),
        ("GET", "/v2/{repo}/referrers/", 404, "NOT_FOUND"),
    ],
)
def test_unknown_routes_and_methods(
    client: Client, stored: Stored, method: str, path: str, status: int, code: str
) -> None:
    """No such endpoint: 404; an endpoint that does not take the method: 405."""
    r = client.request(method, path.format(repo=stored.repo, digest=digest_of(stored.blob)), data=b"x")
    assert r.status_code == status, (r.status_code, r.text)
    assert error_codes(r) == [code]


@pytest.mark.parametrize("accept", [";;;", "application/json;q=abc", "*/*;q=-1", "," * 50])
def test_garbage_accept_header_is_no_restriction(client: Client, stored: Stored, accept: str) -> None:
    """Nothing acceptable to read in it (no type, or only ones refused with q<=0), or application/json with an
    unreadable q (read as 1): the stored manifest, byte-exact."""
    r = client.get(f"/v2/{stored.repo}/manifests/stored", headers={"Accept": accept})
    assert r.status_code == 200, (r.status_code, r.text)
    assert r.content == stored.image.manifest and r.headers["Content-Type"] == OCI_MANIFEST


def test_accept_header_naming_only_another_type(client: Client, stored: Stored) -> None:
    """A client that lists only types other than the manifest's gets a 404 (as Distribution answers), never a
    document it said it cannot read."""
    r = client.get(f"/v2/{stored.repo}/manifests/stored", headers={"Accept": "garbage"})
    assert r.status_code == 404, (r.status_code, r.text)
    assert error_codes(r) == ["MANIFEST_UNKNOWN"]
    assert r.json()["errors"][0]["detail"] == {"mediaType": OCI_MANIFEST}


@pytest.mark.parametrize("source", ["UPPER/case", "a//b"], ids=["upper", "double-slash"])
def test_mount_from_invalid_repository_name(client: Client, stored: Stored, source: str) -> None:
    d = digest_of(stored.blob)
    r = client.post(f"/v2/{stored.repo}-dst/blobs/uploads/", params={"mount": d, "from": source})
    assert r.status_code == 400, (r.status_code, r.text)
    assert error_codes(r) == ["NAME_INVALID"]
    assert client.head(f"/v2/{stored.repo}-dst/blobs/{d}").status_code == 404


def test_mount_from_unknown_repository_starts_an_upload(client: Client, stored: Stored) -> None:
    """The blob is not in `from` (there is no such repository): no mount, but an upload session, as the spec
    says, which takes the blob the usual way."""
    d = digest_of(stored.blob)
    r = client.post(f"/v2/{stored.repo}-dst/blobs/uploads/", params={"mount": d, "from": "nosuch/repo"})
    assert r.status_code == 202, (r.status_code, r.text)
    assert client.head(f"/v2/{stored.repo}-dst/blobs/{d}").status_code == 404
    r = client.put(location(r), params={"digest": d}, data=stored.blob, headers=OCTET)
    assert r.status_code == 201, (r.status_code, r.text)
    assert client.get(f"/v2/{stored.repo}-dst/blobs/{d}").content == stored.blob


def test_patch_on_completed_upload(client: Client, stored: Stored) -> None:
    data = random_blob(32)
    url = start_upload(client, stored.repo, data)
    r = client.put(url, params={"digest": digest_of(data)})
    assert r.status_code == 201
    r = client.patch(url, data=b"more", headers={**OCTET, "Content-Range": f"{len(data)}-{len(data) + 3}"})
    assert r.status_code == 404
    assert "BLOB_UPLOAD_UNKNOWN" in error_codes(r)
    assert client.get(f"/v2/{stored.repo}/blobs/{digest_of(data)}").content == data


def test_upload_urls_are_opaque_but_safe(client: Client, stored: Stored) -> None:
    """Tampering with the upload URL's path must not reach another session or the filesystem."""
    url = start_upload(client, stored.repo, b"abcd")
    parts = urlsplit(url)
    for evil in ("../../../../etc/passwd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "..%2F..%2Fdata"):
        tampered = parts._replace(path=parts.path.rsplit("/", 1)[0] + "/" + evil).geturl()
        r = client.get(tampered)
        assert r.status_code == 404 and error_codes(r) == ["NOT_FOUND"], (tampered, r.status_code, r.text)
    assert_upload_unchanged(client, url, 4)
