"""Fuzz and attack the whole HTTP surface in bounded time (issue 11's acceptance).

A seeded generator (MOORAGE_FUZZ_SEED; the default is fixed, so a failure reproduces) throws hostile input at
one server with auth on: repository names, digests, references, Range headers, manifests, ECR request bodies,
IAM and lifecycle policies, and forged credentials. Every answer must come promptly, never be a 5xx, and keep
the protocol's error shape (OCI error JSON on /v2, `__type` on the ECR API). A forged credential never gets in.
At the end, the content stored before the attack is byte-exact and the server is healthy.

The whole module stays well under two minutes on a loaded 2-core machine (each section is a few hundred
requests over keep-alive connections).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import random
import string
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import jwt
import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.oci import OCI_MANIFEST, Client, Image, descriptor, digest_of, make_image, random_blob
from tests.server import ADMIN_KEY, ADMIN_SECRET, MoorageServer, auth_config, login_password, principal_toml

SEED = int(os.environ.get("MOORAGE_FUZZ_SEED", "20261201"))
TIMEOUT = 10  # seconds: an answer slower than this is a hang
TARGET = "AmazonEC2ContainerRegistry_V20150921"
JSON_11 = "application/x-amz-json-1.1"
READER = ("AKIAFUZZREADER000001", "fuzz-reader-secret-0123456789abcdef01234")
READER_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
            {"Effect": "Allow", "Action": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"], "Resource": "*"},
        ],
    }
)
STORED = "fuzz/stored"
TARGET_REPO = "fuzz/target"


class Target:
    def __init__(self, srv: MoorageServer, image: Image, blob: bytes) -> None:
        self.srv = srv
        self.image = image
        self.blob = blob
        self.admin = ("AWS", login_password(srv))
        self.reader = ("AWS", login_password(srv, *READER))
        self.session = requests.Session()
        self.session.auth = self.admin
        self.host, self.port = "127.0.0.1", srv.port

    def raw(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> tuple[int, bytes]:
        """A request with the path sent exactly as given (requests would normalise it)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT)
        try:
            h = {"Authorization": _basic(*self.admin), **(headers or {})}
            path = "".join(c if ord(c) < 128 else quote(c) for c in path)
            conn.request(method, path, body=body, headers=h)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def ecr(self, target: str, body: bytes, key: str = ADMIN_KEY, secret: str = ADMIN_SECRET) -> requests.Response:
        headers = {"Content-Type": JSON_11, "X-Amz-Target": target}
        req = AWSRequest(method="POST", url=self.srv.url + "/", data=body, headers=headers)
        SigV4Auth(Credentials(key, secret), "ecr", "us-east-1").add_auth(req)
        return requests.post(self.srv.url + "/", data=body, headers=dict(req.headers.items()), timeout=TIMEOUT)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    config = auth_config(principal_toml("reader", *READER, READER_POLICY))
    srv = MoorageServer(tmp_path_factory.mktemp("fuzz") / "data", config).start()
    try:
        admin = ("AWS", login_password(srv))
        client = Client(srv.url, admin)
        image, blob = make_image(2, 4096), random_blob(3000)
        client.push_image(STORED, "v1", image)
        client.push_blob(STORED, blob)
        client.push_image(TARGET_REPO, "seed", make_image(1, 100))
        yield Target(srv, image, blob)
    finally:
        srv.stop()


def _check_v2(status: int, body: bytes, what: str, method: str = "GET") -> None:
    assert status < 500, f"{what}: {status} {body[:300]!r}"
    if status >= 400 and method != "HEAD" and body:
        doc = json.loads(body)
        assert isinstance(doc.get("errors"), list) and doc["errors"], f"{what}: {body[:300]!r}"
        assert all(isinstance(e.get("code"), str) for e in doc["errors"]), f"{what}: {body[:300]!r}"


def _check_ecr(r: requests.Response, what: str) -> None:
    assert r.status_code < 500, f"{what}: {r.status_code} {r.text[:300]}"
    if r.status_code >= 400:
        assert isinstance(r.json().get("__type"), str), f"{what}: {r.text[:300]}"


# -- generators ---------------------------------------------------------------------------------------------

_NASTY = ["..", ".", "%2e%2e", "%2F", "%00", "\u212a", "\u0130", "ß", "\U0001f600", "a" * 300, "", "-", "_", "__"]


def _name(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 5)):
        kind = rng.random()
        if kind < 0.3:
            parts.append(rng.choice(_NASTY))
        elif kind < 0.6:
            parts.append("".join(rng.choice(string.printable) for _ in range(rng.randint(0, 12))))
        else:
            parts.append(
                "".join(rng.choice(string.ascii_lowercase + "0123456789._-") for _ in range(rng.randint(1, 20)))
            )
    return "/".join(parts)


def _digest(rng: random.Random) -> str:
    real = digest_of(os.urandom(8))
    mutations = [
        lambda d: d.upper(),
        lambda d: d[:-1],
        lambda d: d + "0",
        lambda d: "sha512:" + d.split(":")[1],
        lambda d: "sha256:" + "".join(rng.choice("0123456789abcdef\u00b2\u0663") for _ in range(64)),
        lambda d: d.replace(":", "%3A"),
        lambda d: "../" + d,
        lambda d: rng.choice(["sha256", "md5", "x" * 40]) + ":" + "a" * rng.randint(0, 200),
        lambda d: d,
    ]
    return rng.choice(mutations)(real)


def _deep(depth: int) -> str:
    """JSON nested `depth` levels (as text: the json module itself can't write it that deep)."""
    return '{"k":[' * (depth // 2) + "1" + "]}" * (depth // 2)


def _json_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randint(0, 9 if depth < 3 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 2**63, -(2**64), 10**400 if rng.random() < 0.1 else 7, 1.5e308, -0.0])
    if kind == 3:
        return "".join(rng.choice(string.printable + "\u00b2\u0663\U0001f600") for _ in range(rng.randint(0, 40)))
    if kind == 4:
        return "x" * rng.choice([0, 1, 256, 1025, 70000])
    if kind == 5:
        return rng.choice(["*", "?*?*?*?*?*?*?*?*?*b", "*a*a*a*a*a*a*a*a*a*a*b", "arn:aws:ecr:*:*:repository/*"])
    if kind in (6, 7):
        return [_json_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(["a", "repositoryName", "imageIds", "Effect", "rules"]): _json_value(rng, depth + 1)}


ECR_OPERATIONS = [
    "DescribeRepositories",
    "CreateRepository",
    "DeleteRepository",
    "BatchGetImage",
    "BatchDeleteImage",
    "PutImage",
    "ListImages",
    "DescribeImages",
    "BatchCheckLayerAvailability",
    "GetDownloadUrlForLayer",
    "InitiateLayerUpload",
    "UploadLayerPart",
    "CompleteLayerUpload",
    "SetRepositoryPolicy",
    "GetRepositoryPolicy",
    "PutLifecyclePolicy",
    "StartLifecyclePolicyPreview",
    "GetLifecyclePolicyPreview",
    "PutImageTagMutability",
    "TagResource",
    "ListTagsForResource",
    "CreateRepositoryCreationTemplate",
    "DescribeImageReplicationStatus",
    "GetAuthorizationToken",
]


def _ecr_body(rng: random.Random, operation: str) -> bytes:
    roll = rng.random()
    if roll < 0.1:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
    if roll < 0.2:
        return _deep(rng.choice([200, 2000, 50000])).encode()
    body: dict[str, Any] = {}
    fields = [
        "repositoryName",
        "imageIds",
        "imageTag",
        "imageManifest",
        "policyText",
        "lifecyclePolicyText",
        "layerDigests",
        "uploadId",
        "partFirstByte",
        "partLastByte",
        "layerPartBlob",
        "nextToken",
        "maxResults",
        "filter",
        "tags",
        "registryId",
        "imageTagMutability",
        "prefix",
        "resourceArn",
    ]
    for f in rng.sample(fields, rng.randint(0, 6)):
        body[f] = _json_value(rng)
    if rng.random() < 0.5:
        # Keep a valid repository name sometimes, so the operation reaches its deeper checks.
        body["repositoryName"] = rng.choice([TARGET_REPO, STORED + "-not", "fuzz/new-" + str(rng.randint(0, 9))])
    if operation in ("SetRepositoryPolicy", "PutLifecyclePolicy", "CreateRepositoryCreationTemplate"):
        body["policyText" if operation == "SetRepositoryPolicy" else "lifecyclePolicyText"] = _policy(rng)
    return json.dumps(body).encode()


def _policy(rng: random.Random) -> str:
    glob = rng.choice(["*a*a*a*a*a*a*a*a*a*a*a*a*b", "?" * 64 + "*", "*" * 100, "fuzz/*", "**?**?**"])
    roll = rng.random()
    if roll < 0.3:
        return json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": rng.choice(["Allow", "Deny", "Maybe", 1]),
                        "Principal": rng.choice(["*", {"AWS": "*"}, {"AWS": ["000000000000", glob]}, []]),
                        "Action": rng.choice([glob, ["ecr:" + glob], "ecr:BatchGetImage"]),
                        "Condition": {"StringLike": {"aws:username": [glob] * rng.randint(1, 20)}},
                    }
                ]
                * rng.randint(1, 30),
            }
        )
    if roll < 0.6:
        return json.dumps(
            {
                "rules": [
                    {
                        "rulePriority": rng.choice([1, 0, -5, 10**12, "1"]),
                        "selection": {
                            "tagStatus": rng.choice(["tagged", "any", "untagged", "bogus"]),
                            "tagPatternList": [glob] * rng.randint(0, 200),
                            "countType": rng.choice(["imageCountMoreThan", "sinceImagePushed"]),
                            "countNumber": rng.choice([1, 0, -1, 2**70]),
                        },
                        "action": {"type": rng.choice(["expire", "transition"])},
                    }
                ]
                * rng.randint(1, 5)
            }
        )
    return '{"Version": "2012-10-17", "Statement": ' + _deep(rng.choice([50, 3000, 50000])) + "}"


def _manifest(rng: random.Random) -> bytes:
    config = b'{"architecture":"amd64","os":"linux"}'
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", config),
        "layers": [],
    }
    roll = rng.random()
    if roll < 0.15:
        return _deep(rng.choice([500, 5000, 100000])).encode()
    if roll < 0.3:
        doc[rng.choice(["schemaVersion", "mediaType", "config", "layers", "subject", "annotations"])] = _json_value(rng)
    elif roll < 0.45:
        doc["layers"] = [{"mediaType": "x", "digest": _digest(rng), "size": rng.choice([-1, 2**64, "3", None])}]
    elif roll < 0.55:
        doc["subject"] = {"mediaType": OCI_MANIFEST, "digest": _digest(rng), "size": 1}
    body = bytearray(json.dumps(doc).encode())
    for _ in range(rng.randint(0, 3)):
        if body:
            body[rng.randrange(len(body))] = rng.randrange(256)
    if rng.random() < 0.1:
        body = body[: rng.randrange(len(body) + 1)]
    return bytes(body)


# -- the attack ---------------------------------------------------------------------------------------------


def test_names_digests_and_references(target: Target) -> None:
    rng = random.Random(SEED)
    for i in range(500):
        name = quote(_name(rng), safe="/%")
        ref = rng.choice(["latest", _digest(rng), quote(_name(rng), safe=""), "a" * 200])
        method, path = rng.choice(
            [
                ("GET", f"/v2/{name}/tags/list"),
                ("GET", f"/v2/{name}/manifests/{ref}"),
                ("HEAD", f"/v2/{name}/manifests/{ref}"),
                ("DELETE", f"/v2/{name}/manifests/{ref}"),
                ("GET", f"/v2/{name}/blobs/{_digest(rng)}"),
                ("HEAD", f"/v2/{STORED}/blobs/{_digest(rng)}"),
                ("POST", f"/v2/{name}/blobs/uploads/?mount={quote(_digest(rng))}&from={name}"),
                ("GET", f"/v2/{STORED}/referrers/{_digest(rng)}"),
                ("GET", f"/v2/_catalog?n={quote(rng.choice(['-1', '²', '٣', '1e9', '99999999999999999999', '']))}"),
                ("GET", f"/v2/{STORED}/tags/list?n={quote(rng.choice(['²', '0', 'x']))}&last={quote(name)}"),
            ]
        )
        status, body = target.raw(method, path)
        _check_v2(status, body, f"#{i} {method} {path}", method)


def test_ranges(target: Target) -> None:
    rng = random.Random(SEED + 1)
    digest = digest_of(target.blob)
    specs = [
        "bytes=abc",
        "bytes=-0",
        "bytes=5-1",
        "bytes=0-99999999999999999999999",
        "bytes=0-1,3-4",
        "bytes=²-³",
        "bytes=",
        "items=0-1",
        "bytes=2999-",
        "bytes=3000-",
        "bytes=-99999999",
        "bytes=0-0",
    ]
    for i in range(60):
        spec = rng.choice(specs) if i >= len(specs) else specs[i]
        status, body = target.raw("GET", f"/v2/{STORED}/blobs/{digest}", {"Range": spec})
        _check_v2(status, body, f"Range {spec!r}")
        if status in (200, 206):
            assert body and body in target.blob, f"Range {spec!r} returned bytes that are not the blob's"


def test_manifests(target: Target) -> None:
    rng = random.Random(SEED + 2)
    content_types = [OCI_MANIFEST, "application/vnd.oci.image.index.v1+json", "application/json", "text/plain", ""]
    for i in range(400):
        body = _manifest(rng)
        ref = rng.choice(["fuzz", "sha256:" + "0" * 64, digest_of(body)])
        status, out = target.raw(
            "PUT", f"/v2/{TARGET_REPO}/manifests/{ref}", {"Content-Type": rng.choice(content_types)}, body
        )
        _check_v2(status, out, f"#{i} PUT manifest {body[:80]!r}")


def test_ecr_bodies(target: Target) -> None:
    rng = random.Random(SEED + 3)
    for i in range(600):
        operation = rng.choice(ECR_OPERATIONS)
        body = _ecr_body(rng, operation)
        started = time.monotonic()
        r = target.ecr(f"{TARGET}.{operation}", body)
        _check_ecr(r, f"#{i} {operation} {body[:120]!r}")
        assert time.monotonic() - started < TIMEOUT
    for bogus in [f"{TARGET}.NoSuchOperation", "", "x" * 5000, f"{TARGET}.", "Other_V1.DescribeRepositories"]:
        _check_ecr(target.ecr(bogus, b"{}"), f"target {bogus[:40]!r}")


def test_policies_are_evaluated_promptly(target: Target) -> None:
    """Hostile policies that are accepted must still be evaluated in bounded time on every later request."""
    rng = random.Random(SEED + 4)
    for i in range(40):
        policy = _policy(rng)
        r = target.ecr(
            f"{TARGET}.SetRepositoryPolicy",
            json.dumps({"repositoryName": TARGET_REPO, "policyText": policy}).encode(),
        )
        _check_ecr(r, f"#{i} SetRepositoryPolicy {policy[:120]}")
        started = time.monotonic()
        resp = requests.get(f"{target.srv.url}/v2/{TARGET_REPO}/manifests/seed", auth=target.reader, timeout=TIMEOUT)
        assert resp.status_code in (200, 403), (resp.status_code, resp.text[:200])
        assert time.monotonic() - started < 2, f"a pull under policy #{i} took {time.monotonic() - started:.1f}s"
    target.ecr(f"{TARGET}.DeleteRepositoryPolicy", json.dumps({"repositoryName": TARGET_REPO}).encode())


def test_forged_credentials_never_get_in(target: Target) -> None:
    rng = random.Random(SEED + 5)
    real = target.admin[1]
    header, payload, signature = real.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged = [
        jwt.encode({**claims, "sub": "admin"}, key="k" * 32, algorithm="HS256"),
        jwt.encode({**claims, "sub": "admin"}, key=ADMIN_SECRET, algorithm="HS256"),
        base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode() + f".{payload}.",
        f"{header}.{payload}.{signature[::-1]}",
        f"{header}.{payload[:-2]}.{signature}",
        real[:-1] + ("A" if real[-1] != "A" else "B"),
        "",
        "x" * 9000,
    ]
    header_chars = string.ascii_letters + string.digits + string.punctuation + " "  # legal in a header value
    for _ in range(30):
        forged.append("".join(rng.choice(header_chars) for _ in range(rng.randint(1, 200))))
    for i, token in enumerate(forged):
        for auth in (_basic("AWS", token), f"Bearer {token}", _basic("admin", token)):
            for method, path in (("GET", f"/v2/{STORED}/manifests/v1"), ("GET", "/v2/_catalog")):
                status, body = target.raw(method, path, {"Authorization": auth})
                assert status in (400, 401, 403), f"forged #{i} {auth[:60]!r} -> {status} {body[:200]!r}"
                if len(auth) < 8000:  # longer header lines are refused by the HTTP parser, before any route
                    _check_v2(status, body, f"forged #{i}")
    # SigV4: garbage Authorization headers, and a real signature replayed on another body.
    for i in range(30):
        junk = "".join(rng.choice(header_chars) for _ in range(rng.randint(0, 300))).strip()
        r = requests.post(
            target.srv.url + "/",
            data=b"{}",
            headers={"Content-Type": JSON_11, "X-Amz-Target": f"{TARGET}.DescribeRepositories", "Authorization": junk},
            timeout=TIMEOUT,
        )
        assert r.status_code in (400, 403), (i, r.status_code, r.text[:200])
        _check_ecr(r, f"sigv4 junk #{i}")
    req = AWSRequest(
        method="POST",
        url=target.srv.url + "/",
        data=b"{}",
        headers={"Content-Type": JSON_11, "X-Amz-Target": f"{TARGET}.DescribeRepositories"},
    )
    SigV4Auth(Credentials(ADMIN_KEY, ADMIN_SECRET), "ecr", "us-east-1").add_auth(req)
    replay = dict(req.headers.items())
    r = requests.post(
        target.srv.url + "/", data=json.dumps({"repositoryName": STORED}).encode(), headers=replay, timeout=TIMEOUT
    )
    assert r.status_code in (400, 403) and r.json()["__type"], (r.status_code, r.text)
    replay["X-Amz-Target"] = f"{TARGET}.DeleteRepository"
    r = requests.post(target.srv.url + "/", data=b"{}", headers=replay, timeout=TIMEOUT)
    assert r.status_code in (400, 403) and r.json()["__type"], (r.status_code, r.text)


def test_stored_content_is_unharmed(target: Target) -> None:
    """Runs last in this module: everything stored before the attack reads back byte-exact."""
    client = Client(target.srv.url, target.admin)
    r = client.s.get(client.url(f"/v2/{STORED}/manifests/v1"), headers={"Accept": OCI_MANIFEST}, timeout=TIMEOUT)
    assert r.status_code == 200 and r.content == target.image.manifest
    for blob in [*target.image.blobs, target.blob]:
        r = client.s.get(client.url(f"/v2/{STORED}/blobs/{digest_of(blob)}"), timeout=TIMEOUT)
        assert r.status_code == 200 and r.content == blob
    assert requests.get(f"{target.srv.url}/healthz", timeout=TIMEOUT).status_code == 200
    catalog = client.s.get(client.url("/v2/_catalog"), timeout=TIMEOUT).json()["repositories"]
    assert STORED in catalog and TARGET_REPO in catalog
