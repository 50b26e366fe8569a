"""The ECR control-plane API (AWS JSON 1.1) driven by real boto3, the real AWS CLI and raw signed requests.

Every successful response is checked against botocore's ECR output shapes (`tests.ecr_shapes`), and the
values against ECR's documented behaviour (see the ECR reference, sections 1-3). One module-scoped server
with auth on serves all tests; each test works in repositories of its own.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from botocore import xform_name
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.ecr_shapes import assert_error_matches, assert_matches_output, assert_raw_matches
from tests.helpers import wait_for
from tests.oci import (
    DOCKER_CONFIG,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    Client,
    Image,
    descriptor,
    digest_of,
    error_codes,
    make_image,
)
from tests.server import ADMIN_KEY, ADMIN_SECRET, MoorageServer, auth_config, aws_cli, ecr_client, login_password

ACCOUNT = "000000000000"
REGION = "us-east-1"
TARGET_PREFIX = "AmazonEC2ContainerRegistry_V20150921"
JSON_11 = "application/x-amz-json-1.1"
PART_SIZE = 10 * 1024 * 1024
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

_seq = itertools.count()


def unique(stem: str) -> str:
    """A repository name no other test in this module uses."""
    return f"ecr-api/{stem}-{next(_seq)}"


# -- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    server = MoorageServer(tmp_path_factory.mktemp("ecr-api") / "data", auth_config()).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ecr(srv: MoorageServer) -> Any:
    return ecr_client(srv)


@pytest.fixture(scope="module")
def ecr_unchecked(srv: MoorageServer) -> Any:
    """A client that skips botocore's own parameter validation, to reach the server's."""
    return boto3.client(
        "ecr",
        endpoint_url=srv.url,
        region_name=REGION,
        aws_access_key_id=ADMIN_KEY,
        aws_secret_access_key=ADMIN_SECRET,
        config=Config(retries={"max_attempts": 1}, parameter_validation=False),
    )


@pytest.fixture(scope="module")
def v2(srv: MoorageServer) -> Client:
    """A /v2 client logged in the way docker is: `AWS:<GetAuthorizationToken password>`."""
    return Client(srv.url, ("AWS", login_password(srv)))


# -- helpers -----------------------------------------------------------------------------------------


def api(client: Any, operation: str, **params: Any) -> dict[str, Any]:
    """Call an operation that must succeed; the response is checked against the output shape."""
    resp = getattr(client, xform_name(operation))(**params)
    meta = resp["ResponseMetadata"]
    assert meta["HTTPStatusCode"] == 200, resp
    assert meta.get("RequestId"), f"{operation}: no x-amzn-RequestId"
    return assert_matches_output(operation, resp)


def api_error(client: Any, operation: str, code: str, **params: Any) -> dict[str, Any]:
    """Call an operation that must fail with `code` (HTTP 400); returns botocore's error response."""
    with pytest.raises(ClientError) as excinfo:
        getattr(client, xform_name(operation))(**params)
    resp = excinfo.value.response
    assert resp["Error"]["Code"] == code, resp
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 400, resp
    assert resp["Error"]["Message"], f"{code} without a message"
    assert_error_matches(code, {k: v for k, v in resp.items() if k not in ("Error", "ResponseMetadata")}, raw=False)
    return resp


def signed_post(
    srv: MoorageServer, operation: str, body: bytes | str | dict, *, target: str | None = None
) -> requests.Response:
    """A raw, SigV4-signed ECR API request, as botocore would send it."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    data = data.encode() if isinstance(data, str) else data
    headers = {"Content-Type": JSON_11, "X-Amz-Target": target or f"{TARGET_PREFIX}.{operation}"}
    req = AWSRequest(method="POST", url=srv.url + "/", data=data, headers=headers)
    SigV4Auth(Credentials(ADMIN_KEY, ADMIN_SECRET), "ecr", REGION).add_auth(req)
    return requests.post(srv.url + "/", data=data, headers=dict(req.headers.items()), timeout=30)


def raw_ok(r: requests.Response, operation: str) -> dict[str, Any]:
    assert r.status_code == 200, (r.status_code, r.text)
    assert r.headers["Content-Type"].split(";")[0].strip() == JSON_11, r.headers
    assert r.headers.get("x-amzn-RequestId"), r.headers
    return assert_raw_matches(operation, r.json())


def raw_error(r: requests.Response, code: str) -> dict[str, Any]:
    """A JSON 1.1 error: 400, `__type` in the body and the same name in X-Amzn-ErrorType."""
    assert r.status_code == 400, (r.status_code, r.text)
    assert r.headers["Content-Type"].split(";")[0].strip() == JSON_11, r.headers
    body = r.json()
    assert body.get("__type") == code, body
    assert r.headers.get("X-Amzn-ErrorType") == code, r.headers
    assert isinstance(body.get("message"), str) and body["message"], body
    assert_error_matches(code, {k: v for k, v in body.items() if k != "__type"}, raw=True)
    return body


def make_repo(ecr: Any, stem: str, **params: Any) -> str:
    name = unique(stem)
    api(ecr, "CreateRepository", repositoryName=name, **params)
    return name


def push_blobs(v2: Client, repo: str, image: Image) -> None:
    for blob in image.blobs:
        v2.push_blob(repo, blob)


def put_image(ecr: Any, repo: str, image: Image, tag: str | None = None, **params: Any) -> dict[str, Any]:
    """PutImage of an image whose blobs are already in the repository; returns the `image` member."""
    if tag is not None:
        params["imageTag"] = tag
    out = api(ecr, "PutImage", repositoryName=repo, imageManifest=image.manifest.decode(), **params)["image"]
    assert out["imageId"]["imageDigest"] == image.digest
    assert out.get("imageId", {}).get("imageTag") == tag
    return out


def put_error(ecr: Any, repo: str, code: str, manifest: str | bytes, **params: Any) -> dict[str, Any]:
    """PutImage that must fail with `code`."""
    text = manifest.decode() if isinstance(manifest, bytes) else manifest
    return api_error(ecr, "PutImage", code, repositoryName=repo, imageManifest=text, **params)


def pushed_image(ecr: Any, v2: Client, repo: str, *tags: str, **kw: Any) -> Image:
    """A fresh image, blobs pushed via /v2, manifest put via PutImage under each tag (or untagged)."""
    image = make_image(**kw)
    push_blobs(v2, repo, image)
    for tag in tags or (None,):
        put_image(ecr, repo, image, tag)
    return image


def index_of(*children: bytes) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            descriptor(OCI_MANIFEST, body, platform={"architecture": f"arch{i}", "os": "linux"})
            for i, body in enumerate(children)
        ],
    }
    return json.dumps(doc, indent=2).encode()


def image_ids(resp: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [(i["imageDigest"], i.get("imageTag")) for i in resp["imageIds"]]


def describe(ecr: Any, repo: str, **params: Any) -> dict[str, dict[str, Any]]:
    """DescribeImages as {digest: detail}."""
    details = api(ecr, "DescribeImages", repositoryName=repo, **params)["imageDetails"]
    out = {d["imageDigest"]: d for d in details}
    assert len(out) == len(details), f"a digest appears twice: {details}"
    return out


def assert_near_now(when: Any, slack: float = 30.0) -> None:
    assert abs(when.timestamp() - time.time()) < slack, when


# -- CreateRepository --------------------------------------------------------------------------------


def test_create_repository_defaults(ecr: Any, srv: MoorageServer) -> None:
    name = unique("defaults")
    repo = api(ecr, "CreateRepository", repositoryName=name)["repository"]
    assert repo["repositoryName"] == name
    assert repo["registryId"] == ACCOUNT
    assert repo["repositoryArn"] == f"arn:aws:ecr:us-east-1:000000000000:repository/{name}"
    assert repo["repositoryUri"] == f"{srv.host}/{name}"  # the registry's address: `docker push` reaches it
    assert repo["imageTagMutability"] == "MUTABLE"
    assert repo["imageScanningConfiguration"] == {"scanOnPush": False}
    assert repo["encryptionConfiguration"] == {"encryptionType": "AES256"}
    assert "imageTagMutabilityExclusionFilters" not in repo
    assert_near_now(repo["createdAt"])
    # DescribeRepositories reports the same repository.
    (described,) = api(ecr, "DescribeRepositories", repositoryNames=[name])["repositories"]
    assert described == repo


def test_create_repository_with_settings_and_tags(ecr: Any) -> None:
    name = unique("settings")
    tags = [{"Key": "team", "Value": "storage"}, {"Key": "cost-center", "Value": ""}]
    repo = api(
        ecr,
        "CreateRepository",
        repositoryName=name,
        imageTagMutability="IMMUTABLE",
        imageScanningConfiguration={"scanOnPush": True},
        tags=tags,
    )["repository"]
    assert repo["imageTagMutability"] == "IMMUTABLE"
    assert repo["imageScanningConfiguration"] == {"scanOnPush": True}
    assert repo["encryptionConfiguration"] == {"encryptionType": "AES256"}
    (described,) = api(ecr, "DescribeRepositories", repositoryNames=[name])["repositories"]
    assert described["imageTagMutability"] == "IMMUTABLE"
    assert described["imageScanningConfiguration"] == {"scanOnPush": True}
    listed = api(ecr, "ListTagsForResource", resourceArn=repo["repositoryArn"])["tags"]
    assert sorted(listed, key=lambda t: t["Key"]) == sorted(tags, key=lambda t: t["Key"])


def test_create_repository_twice(ecr: Any) -> None:
    name = make_repo(ecr, "twice")
    err = api_error(ecr, "CreateRepository", "RepositoryAlreadyExistsException", repositoryName=name)
    assert err["Error"]["Message"] == (
        f"The repository with name '{name}' already exists in the registry with id '{ACCOUNT}'"
    )


@pytest.mark.parametrize(
    "bad_name",
    ["Upper/Case", "a" * 257, "a", "trailing-", "double//slash", "-leading"],
    ids=["upper-case", "too-long-257", "one-char", "trailing-dash", "empty-component", "leading-dash"],
)
def test_create_repository_bad_name(ecr_unchecked: Any, bad_name: str) -> None:
    # botocore checks only min length client-side; `ecr_unchecked` lets even the 1-char name reach the server.
    err = api_error(ecr_unchecked, "CreateRepository", "InvalidParameterException", repositoryName=bad_name)
    assert "'repositoryName'" in err["Error"]["Message"], err["Error"]["Message"]


def test_create_repository_bad_enum(ecr: Any) -> None:
    name = unique("bad-enum")
    err = api_error(
        ecr, "CreateRepository", "InvalidParameterException", repositoryName=name, imageTagMutability="SOMETIMES"
    )
    assert "imageTagMutability" in err["Error"]["Message"]
    err = api_error(
        ecr,
        "CreateRepository",
        "InvalidParameterException",
        repositoryName=name,
        encryptionConfiguration={"encryptionType": "ROT13"},
    )
    assert "encryptionType" in err["Error"]["Message"]
    # Nothing was created by the failed calls.
    api_error(ecr, "DescribeRepositories", "RepositoryNotFoundException", repositoryNames=[name])


def test_create_repository_mutability_exclusion_filters(ecr: Any) -> None:
    name = unique("exclusions")
    api_error(
        ecr,
        "CreateRepository",
        "InvalidParameterException",
        repositoryName=name,
        imageTagMutability="IMMUTABLE_WITH_EXCLUSION",
    )
    # Filters without a *_WITH_EXCLUSION mode make no sense either.
    api_error(
        ecr,
        "CreateRepository",
        "InvalidParameterException",
        repositoryName=name,
        imageTagMutability="IMMUTABLE",
        imageTagMutabilityExclusionFilters=[{"filterType": "WILDCARD", "filter": "latest*"}],
    )
    filters = [{"filterType": "WILDCARD", "filter": "latest*"}, {"filterType": "WILDCARD", "filter": "dev-*"}]
    repo = api(
        ecr,
        "CreateRepository",
        repositoryName=name,
        imageTagMutability="IMMUTABLE_WITH_EXCLUSION",
        imageTagMutabilityExclusionFilters=filters,
    )["repository"]
    assert repo["imageTagMutability"] == "IMMUTABLE_WITH_EXCLUSION"
    assert repo["imageTagMutabilityExclusionFilters"] == filters
    (described,) = api(ecr, "DescribeRepositories", repositoryNames=[name])["repositories"]
    assert described["imageTagMutabilityExclusionFilters"] == filters


# -- DescribeRepositories ----------------------------------------------------------------------------


def test_describe_repositories_paginated(ecr: Any) -> None:
    mine = [make_repo(ecr, f"page{i}") for i in range(5)]
    seen: list[str] = []
    pages = 0
    for page in ecr.get_paginator("describe_repositories").paginate(PaginationConfig={"PageSize": 2}):
        assert_matches_output("DescribeRepositories", page)
        assert len(page["repositories"]) <= 2, page
        seen += [r["repositoryName"] for r in page["repositories"]]
        pages += 1
    counts = Counter(seen)
    assert [n for n, c in counts.items() if c > 1] == [], "repositories listed more than once"
    for name in mine:
        assert counts[name] == 1, f"{name} missing from the paginated listing"
    assert pages >= 3
    # One page of two, with a token for the rest; the whole listing unpaginated is the same set.
    first = api(ecr, "DescribeRepositories", maxResults=2)
    assert len(first["repositories"]) == 2 and first.get("nextToken")
    everything = api(ecr, "DescribeRepositories", maxResults=1000)
    assert "nextToken" not in everything
    assert sorted(r["repositoryName"] for r in everything["repositories"]) == sorted(seen)


def test_describe_repositories_by_name(ecr: Any) -> None:
    a, b = make_repo(ecr, "by-name-a"), make_repo(ecr, "by-name-b")
    repos = api(ecr, "DescribeRepositories", repositoryNames=[b, a])["repositories"]
    assert [r["repositoryName"] for r in repos] == [b, a]
    assert "nextToken" not in api(ecr, "DescribeRepositories", repositoryNames=[a])
    missing = unique("missing")
    for names in ([missing], [a, missing]):
        err = api_error(ecr, "DescribeRepositories", "RepositoryNotFoundException", repositoryNames=names)
        assert err["Error"]["Message"] == (
            f"The repository with name '{missing}' does not exist in the registry with id '000000000000'"
        )


def test_describe_repositories_bad_parameters(ecr: Any, ecr_unchecked: Any) -> None:
    name = make_repo(ecr, "bad-params")
    api_error(ecr, "DescribeRepositories", "InvalidParameterException", repositoryNames=[name], maxResults=5)
    for n in (0, 1001):  # botocore rejects 0 itself; 1001 is over the model's max, which only the server checks
        err = api_error(ecr_unchecked, "DescribeRepositories", "InvalidParameterException", maxResults=n)
        assert "maxResults" in err["Error"]["Message"]
    api_error(ecr, "DescribeRepositories", "InvalidParameterException", nextToken="not a token")


# -- DeleteRepository --------------------------------------------------------------------------------


def test_delete_repository(ecr: Any, v2: Client) -> None:
    name = make_repo(ecr, "delete")
    image = pushed_image(ecr, v2, name, "v1")
    err = api_error(ecr, "DeleteRepository", "RepositoryNotEmptyException", repositoryName=name)
    assert name in err["Error"]["Message"]
    assert v2.get(f"/v2/{name}/manifests/v1", headers={"Accept": OCI_MANIFEST}).status_code == 200

    deleted = api(ecr, "DeleteRepository", repositoryName=name, force=True)["repository"]
    assert deleted["repositoryName"] == name
    assert deleted["repositoryArn"] == f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/{name}"
    assert deleted["registryId"] == ACCOUNT
    api_error(ecr, "DescribeRepositories", "RepositoryNotFoundException", repositoryNames=[name])
    api_error(ecr, "ListImages", "RepositoryNotFoundException", repositoryName=name)
    assert v2.get(f"/v2/{name}/manifests/v1", headers={"Accept": OCI_MANIFEST}).status_code == 404
    assert v2.get(f"/v2/{name}/manifests/{image.digest}", headers={"Accept": OCI_MANIFEST}).status_code == 404
    api_error(ecr, "DeleteRepository", "RepositoryNotFoundException", repositoryName=name)

    empty = make_repo(ecr, "delete-empty")
    assert api(ecr, "DeleteRepository", repositoryName=empty)["repository"]["repositoryName"] == empty


def test_recreated_repository_is_fresh(ecr: Any, v2: Client) -> None:
    """Deleting a repository deletes everything in it: a new one of the same name starts empty."""
    name = make_repo(ecr, "recreate", tags=[{"Key": "k", "Value": "v"}])
    image = pushed_image(ecr, v2, name, "v1")
    api(ecr, "SetRepositoryPolicy", repositoryName=name, policyText=json.dumps(POLICY))
    api(ecr, "DeleteRepository", repositoryName=name, force=True)
    repo = api(ecr, "CreateRepository", repositoryName=name)["repository"]
    assert api(ecr, "ListImages", repositoryName=name)["imageIds"] == []
    assert api(ecr, "ListTagsForResource", resourceArn=repo["repositoryArn"])["tags"] == []
    api_error(ecr, "GetRepositoryPolicy", "RepositoryPolicyNotFoundException", repositoryName=name)
    layers = api(ecr, "BatchCheckLayerAvailability", repositoryName=name, layerDigests=[digest_of(image.layers[0])])
    assert layers["layers"][0]["layerAvailability"] == "UNAVAILABLE"
    assert v2.get(f"/v2/{name}/blobs/{digest_of(image.layers[0])}").status_code == 404


def test_put_image_scanning_configuration(ecr: Any) -> None:
    name = make_repo(ecr, "scanning")
    out = api(
        ecr, "PutImageScanningConfiguration", repositoryName=name, imageScanningConfiguration={"scanOnPush": True}
    )
    assert {k: v for k, v in out.items() if k != "ResponseMetadata"} == {
        "registryId": ACCOUNT,
        "repositoryName": name,
        "imageScanningConfiguration": {"scanOnPush": True},
    }
    (repo,) = api(ecr, "DescribeRepositories", repositoryNames=[name])["repositories"]
    assert repo["imageScanningConfiguration"] == {"scanOnPush": True}
    api_error(
        ecr,
        "PutImageScanningConfiguration",
        "RepositoryNotFoundException",
        repositoryName=unique("nope"),
        imageScanningConfiguration={"scanOnPush": True},
    )


# -- PutImage ----------------------------------------------------------------------------------------


def test_put_image(ecr: Any, v2: Client) -> None:
    name = make_repo(ecr, "put")
    image = make_image()
    push_blobs(v2, name, image)
    out = put_image(ecr, name, image, "v1")
    assert out["imageId"] == {"imageDigest": digest_of(image.manifest), "imageTag": "v1"}
    assert out["imageManifest"] == image.manifest.decode()
    assert out["imageManifestMediaType"] == OCI_MANIFEST
    assert out["registryId"] == ACCOUNT and out["repositoryName"] == name

    err = put_error(ecr, name, "ImageAlreadyExistsException", image.manifest, imageTag="v1")
    assert image.digest in err["Error"]["Message"]
    put_error(ecr, name, "ImageAlreadyExistsException", image.manifest)  # untagged: nothing new either
    put_image(ecr, name, image, "v2")  # a new tag for the same manifest is a change

    # Both tags serve the exact bytes on /v2.
    for ref in ("v1", "v2", image.digest):
        r = v2.get(f"/v2/{name}/manifests/{ref}", headers={"Accept": OCI_MANIFEST})
        assert r.status_code == 200 and r.content == image.manifest
        assert r.headers["Docker-Content-Digest"] == image.digest
    assert sorted(image_ids(api(ecr, "ListImages", repositoryName=name))) == [
        (image.digest, "v1"),
        (image.digest, "v2"),
    ]


def test_put_image_non_ascii_manifest_is_byte_exact(ecr: Any, v2: Client) -> None:
    name = make_repo(ecr, "utf8")
    image = make_image(n_layers=1)
    doc = json.loads(image.manifest)
    doc["annotations"] = {"org.opencontainers.image.description": "café ☕ naïve ü"}
    text = json.dumps(doc, indent=3, ensure_ascii=False)
    push_blobs(v2, name, image)
    out = api(ecr, "PutImage", repositoryName=name, imageManifest=text, imageTag="u")["image"]
    assert out["imageId"]["imageDigest"] == digest_of(text.encode("utf-8"))
    r = v2.get(f"/v2/{name}/manifests/u", headers={"Accept": OCI_MANIFEST})
    assert r.content == text.encode("utf-8")
    (got,) = api(ecr, "BatchGetImage", repositoryName=name, imageIds=[{"imageTag": "u"}])["images"]
    assert got["imageManifest"] == text


def test_put_image_missing_layers(ecr: Any, v2: Client) -> None:
    name = make_repo(ecr, "missing-layers")
    image = make_image()
    v2.push_blob(name, image.config)  # the config but not the layers
    err = put_error(ecr, name, "LayersNotFoundException", image.manifest, imageTag="v1")
    assert digest_of(image.layers[0]) in err["Error"]["Message"]
    assert api(ecr, "ListImages", repositoryName=name)["imageIds"] == []


def test_put_image_index(ecr: Any, v2: Client) -> None:
    name = make_repo(ecr, "index")
    child_a = pushed_image(ecr, v2, name, layer_size=1000)
    child_b = pushed_image(ecr, v2, name, layer_size=3000)
    never_pushed = make_image()
    bad_index = index_of(child_a.manifest, never_pushed.manifest)
    err = put_error(ecr, name, "ReferencedImagesNotFoundException", bad_index, imageTag="multi")
    assert err["Error"]["Message"]
    good_index = index_of(child_a.manifest, child_b.manifest)
    out = api(ecr, "PutImage", repositoryName=name, imageManifest=good_index.decode(), imageTag="multi")["image"]
    assert out["imageId"] == {"imageDigest": digest_of(good_index), "imageTag": "multi"}
    assert out["imageManifestMediaType"] == OCI_INDEX
    detail = describe(ecr, name)[digest_of(good_index)]
    assert detail["imageManifestMediaType"] == OCI_INDEX
    assert detail["imageTags"] == ["multi"]
    # ECR: the size of a manifest list is the largest of its images.
    assert detail["imageSizeInBytes"] == 2 * 3000


def test_put_image_digest_check(ecr: Any, v2: Client) -> None:
    name = make_repo(ecr, "digest-check")
    image = make_image()
    push_blobs(v2, name, image)
    err = put_error(
        ecr,
        name,
        "ImageDigestDoesNotMatchException",
        image.manifest,
        imageTag="v1",
        imageDigest=digest_of(b"something else"),
    )
    assert err["Error"]["Message"]
    assert api(ecr, "ListImages", repositoryName=name)["imageIds"] == []
    out = put_image(ecr, name, image, "v1", imageDigest=image.digest)
    assert out["imageId"]["imageDigest"] == image.digest


def test_put_image_media_type(ecr: Any, v2: Client) -> None:
    name = make_repo(ecr, "media-type")
    image = make_image()
    doc = json.loads(image.manifest)
    del doc["mediaType"]  # optional in an OCI manifest
    body = json.dumps(doc).encode()
    push_blobs(v2, name, image)
    err = put_error(ecr, name, "InvalidParameterException", body, imageTag="v1")
    assert err["Error"]["Message"] == (
        "Invalid parameter at 'imageManifestMediaType' failed to satisfy constraint: "
        "'Member must not be null when the manifest has no mediaType'"
    )
    out = api(
        ecr,
        "PutImage",
        repositoryName=name,
        imageManifest=body.decode(),
        imageTag="v1",
        imageManifestMediaType=OCI_MANIFEST,
    )["image"]
    assert out["imageId"]["imageDigest"] == digest_of(body)
    assert out["imageManifestMediaType"] == OCI_MANIFEST
    put_error(ecr, name, "InvalidParameterException", "{not json", imageTag="v2")


def test_put_image_bad_tag(ecr: Any, v2: Client) -> None:
    """An invalid tag is an InvalidParameterException in ECR's wording, which names the member."""
    name = make_repo(ecr, "bad-tag")
    image = make_image()
    push_blobs(v2, name, image)
    err = put_error(ecr, name, "InvalidParameterException", image.manifest, imageTag="bad tag!")
    assert err["Error"]["Message"].startswith("Invalid parameter at 'imageTag'"), err["Error"]["Message"]
    assert api(ecr, "ListImages", repositoryName=name)["imageIds"] == []


def test_immutable_tags(ecr: Any, v2: Client) -> None:
    name = make_repo(ecr, "immutable", imageTagMutability="IMMUTABLE")
    first = pushed_image(ecr, v2, name, "v1")
    second = make_image()
    push_blobs(v2, name, second)
    err = put_error(ecr, name, "ImageTagAlreadyExistsException", second.manifest, imageTag="v1")
    assert "'v1'" in err["Error"]["Message"] and name in err["Error"]["Message"]
    # The same push over /v2 (what docker does) is refused with TAG_INVALID.
    r = v2.put(f"/v2/{name}/manifests/v1", data=second.manifest, headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 400, (r.status_code, r.text)
    assert error_codes(r) == ["TAG_INVALID"]
    assert r.json()["errors"][0]["message"] == (
        f"The image tag 'v1' already exists in the '{name}' repository and cannot be overwritten because the "
        "tag is immutable."
    )
    # Re-putting the same thing is "already exists", a new tag on anything is fine.
    put_error(ecr, name, "ImageAlreadyExistsException", first.manifest, imageTag="v1")
    put_image(ecr, name, second, "v2")
    (got,) = api(ecr, "BatchGetImage", repositoryName=name, imageIds=[{"imageTag": "v1"}])["images"]
    assert got["imageId"]["imageDigest"] == first.digest

    echo = api(ecr, "PutImageTagMutability", repositoryName=name, imageTagMutability="MUTABLE")
    assert {k: v for k, v in echo.items() if k != "ResponseMetadata"} == {
        "registryId": ACCOUNT,
        "repositoryName": name,
        "imageTagMutability": "MUTABLE",
    }
    put_image(ecr, name, second, "v1")
    (got,) = api(ecr, "BatchGetImage", repositoryName=name, imageIds=[{"imageTag": "v1"}])["images"]
    assert got["imageId"]["imageDigest"] == second.digest
    (described,) = api(ecr, "DescribeRepositories", repositoryNames=[name])["repositories"]
    assert described["imageTagMutability"] == "MUTABLE"


def test_immutable_with_exclusion(ecr: Any, v2: Client) -> None:
    name = make_repo(
        ecr,
        "excl",
        imageTagMutability="IMMUTABLE_WITH_EXCLUSION",
        imageTagMutabilityExclusionFilters=[{"filterType": "WILDCARD", "filter": "latest*"}],
    )
    first = pushed_image(ecr, v2, name, "latest", "latest-x", "v1")
    second = make_image()
    push_blobs(v2, name, second)
    put_image(ecr, name, second, "latest")
    put_image(ecr, name, second, "latest-x")
    put_error(ecr, name, "ImageTagAlreadyExistsException", second.manifest, imageTag="v1")
    tags = describe(ecr, name)
    assert sorted(tags[second.digest]["imageTags"]) == ["latest", "latest-x"]
    assert tags[first.digest]["imageTags"] == ["v1"]

    # Flip the filter: now v* tags move and latest* tags are fixed.
    filters = [{"filterType": "WILDCARD", "filter": "v*"}]
    echo = api(
        ecr,
        "PutImageTagMutability",
        repositoryName=name,
        imageTagMutability="IMMUTABLE_WITH_EXCLUSION",
        imageTagMutabilityExclusionFilters=filters,
    )
    assert echo["imageTagMutability"] == "IMMUTABLE_WITH_EXCLUSION"
    assert echo["imageTagMutabilityExclusionFilters"] == filters
    assert echo["repositoryName"] == name and echo["registryId"] == ACCOUNT
    put_image(ecr, name, second, "v1")
    put_error(ecr, name, "ImageTagAlreadyExistsException", first.manifest, imageTag="latest")
    api_error(
        ecr,
        "PutImageTagMutability",
        "InvalidParameterException",
        repositoryName=name,
        imageTagMutability="MUTABLE_WITH_EXCLUSION",
    )


# -- ListImages --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def listing(ecr: Any, v2: Client) -> tuple[str, Image, Image, Image]:
    """A repository with A tagged a1,a2,a3, B tagged b1, and C untagged."""
    name = make_repo(ecr, "listing")
    a = pushed_image(ecr, v2, name, "a1", "a2", "a3")
    b = pushed_image(ecr, v2, name, "b1")
    c = pushed_image(ecr, v2, name)
    return name, a, b, c


def test_list_images(ecr: Any, listing: tuple[str, Image, Image, Image]) -> None:
    name, a, b, c = listing
    everything = api(ecr, "ListImages", repositoryName=name)
    assert "nextToken" not in everything
    assert sorted(image_ids(everything)) == sorted(
        [(a.digest, "a1"), (a.digest, "a2"), (a.digest, "a3"), (b.digest, "b1"), (c.digest, None)]
    )
    assert {"imageDigest": c.digest} in everything["imageIds"]  # untagged: the digest alone, once
    tagged = api(ecr, "ListImages", repositoryName=name, filter={"tagStatus": "TAGGED"})
    assert sorted(image_ids(tagged)) == sorted([(a.digest, "a1"), (a.digest, "a2"), (a.digest, "a3"), (b.digest, "b1")])
    untagged = api(ecr, "ListImages", repositoryName=name, filter={"tagStatus": "UNTAGGED"})
    assert untagged["imageIds"] == [{"imageDigest": c.digest}]
    anything = api(ecr, "ListImages", repositoryName=name, filter={"tagStatus": "ANY"})
    assert sorted(image_ids(anything)) == sorted(image_ids(everything))

    empty = make_repo(ecr, "listing-empty")
    assert api(ecr, "ListImages", repositoryName=empty)["imageIds"] == []
    api_error(ecr, "ListImages", "RepositoryNotFoundException", repositoryName=unique("nope"))
    api_error(ecr, "ListImages", "InvalidParameterException", repositoryName=name, nextToken="garbage")


@pytest.mark.parametrize("page_size", [1, 2])
def test_list_images_paginated(ecr: Any, listing: tuple[str, Image, Image, Image], page_size: int) -> None:
    name, *_ = listing
    full = sorted(image_ids(api(ecr, "ListImages", repositoryName=name)))
    collected: list[tuple[str, str | None]] = []
    sizes = []
    paginator = ecr.get_paginator("list_images")
    for page in paginator.paginate(repositoryName=name, PaginationConfig={"PageSize": page_size}):
        assert_matches_output("ListImages", page)
        sizes.append(len(page["imageIds"]))
        collected += image_ids(page)
    assert sorted(collected) == full  # every pair exactly once, including across a page boundary inside A's tags
    assert len(collected) == len(set(collected))
    assert all(s == page_size for s in sizes[:-1]) and 1 <= sizes[-1] <= page_size, sizes

    # The same walk by hand with nextToken, and a filter that must hold across pages.
    token, tagged = None, []
    for _ in range(10):
        kw = {"nextToken": token} if token else {}
        page = api(ecr, "ListImages", repositoryName=name, maxResults=page_size, filter={"tagStatus": "TAGGED"}, **kw)
        tagged += image_ids(page)
        token = page.get("nextToken")
        if not token:
            break
    assert not token, "ListImages never stopped handing out nextTokens"
    assert sorted(tagged) == [i for i in full if i[1] is not None]


# -- DescribeImages ----------------------------------------------------------------------------------


def test_describe_images(ecr: Any, v2: Client) -> None:
    name = make_repo(ecr, "describe")
    tagged = pushed_image(ecr, v2, name, "t1", "t2", n_layers=3, layer_size=1500)
    untagged = pushed_image(ecr, v2, name, n_layers=1, layer_size=700)
    docker = pushed_image(ecr, v2, name, "d", docker=True)
    details = describe(ecr, name)
    assert set(details) == {tagged.digest, untagged.digest, docker.digest}

    t = details[tagged.digest]
    assert sorted(t["imageTags"]) == ["t1", "t2"]
    assert t["imageSizeInBytes"] == sum(len(layer) for layer in tagged.layers) == 4500
    assert t["imageManifestMediaType"] == OCI_MANIFEST
    assert t["artifactMediaType"] == OCI_CONFIG
    assert t["registryId"] == ACCOUNT and t["repositoryName"] == name
    assert_near_now(t["imagePushedAt"])
    assert "lastRecordedPullTime" not in t

    u = details[untagged.digest]
    assert "imageTags" not in u
    assert u["imageSizeInBytes"] == 700

    d = details[docker.digest]
    assert d["imageManifestMediaType"] == DOCKER_MANIFEST
    assert d["artifactMediaType"] == DOCKER_CONFIG

    by_tag = describe(ecr, name, imageIds=[{"imageTag": "t2"}])
    assert list(by_tag) == [tagged.digest] and by_tag[tagged.digest] == t
    by_digest = describe(ecr, name, imageIds=[{"imageDigest": untagged.digest}, {"imageTag": "d"}])
    assert list(by_digest) == [untagged.digest, docker.digest]
    assert set(describe(ecr, name, filter={"tagStatus": "TAGGED"})) == {tagged.digest, docker.digest}
    assert set(describe(ecr, name, filter={"tagStatus": "UNTAGGED"})) == {untagged.digest}

    seen = []
    for page in ecr.get_paginator("describe_images").paginate(repositoryName=name, PaginationConfig={"PageSize": 1}):
        assert_matches_output("DescribeImages", page)
        assert len(page["imageDetails"]) == 1
        seen.append(page["imageDetails"][0]["imageDigest"])
    assert sorted(seen) == sorted(details)

    err = api_error(
        ecr, "DescribeImages", "ImageNotFoundException", repositoryName=name, imageIds=[{"imageTag": "nope"}]
    )
    assert "nope" in err["Error"]["Message"]
    api_error(
        ecr,
        "DescribeImages",
        "ImageNotFoundException",
        repositoryName=name,
        imageIds=[{"imageTag": "t1"}, {"imageDigest": digest_of(b"unknown")}],
    )
    api_error(
        ecr,
        "DescribeImages",
        "InvalidParameterException",
        repositoryName=name,
        imageIds=[{"imageTag": "t1"}],
        maxResults=5,
    )


@pytest.mark.slow
def test_last_recorded_pull_time(ecr: Any, v2: Client) -> None:
    name = make_repo(ecr, "pulls")
    via_v2 = pushed_image(ecr, v2, name, "x")
    via_api = pushed_image(ecr, v2, name, "y")
    never = pushed_image(ecr, v2, name, "z")
    assert all("lastRecordedPullTime" not in d for d in describe(ecr, name).values())
    start = time.time()
    r = v2.get(f"/v2/{name}/manifests/x", headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200 and r.content == via_v2.manifest
    api(ecr, "BatchGetImage", repositoryName=name, imageIds=[{"imageTag": "y"}])

    details = wait_for_pull_time(ecr, name, via_v2.digest, via_api.digest)
    for image in (via_v2, via_api):
        detail = details[image.digest]
        assert start - 2 <= detail["lastRecordedPullTime"].timestamp() <= time.time() + 2
        assert detail["lastRecordedPullTime"] >= detail["imagePushedAt"]
    assert "lastRecordedPullTime" not in details[never.digest]


def wait_for_pull_time(ecr: Any, repo: str, *digests: str) -> dict[str, dict[str, Any]]:
    """DescribeImages once all `digests` show lastRecordedPullTime (pulls are flushed every ~5 s)."""

    def recorded() -> dict[str, dict[str, Any]] | None:
        details = describe(ecr, repo)
        return details if all("lastRecordedPullTime" in details[d] for d in digests) else None

    return wait_for(recorded, 15, f"lastRecordedPullTime of {', '.join(digests)}", interval=0.5)


@pytest.mark.slow
def test_pull_time_does_not_outlive_the_image(ecr: Any, v2: Client) -> None:
    """A pull of an image that is then deleted and pushed again must not be recorded on the new image:
    that would claim a pull before the push (lastRecordedPullTime < imagePushedAt)."""
    name = make_repo(ecr, "pull-then-delete")
    image = pushed_image(ecr, v2, name, "v1")
    marker = pushed_image(ecr, v2, name, "marker")
    assert v2.get(f"/v2/{name}/manifests/v1", headers={"Accept": OCI_MANIFEST}).status_code == 200
    api(ecr, "BatchDeleteImage", repositoryName=name, imageIds=[{"imageDigest": image.digest}])
    time.sleep(0.05)  # the clock moves on: the new push is later than the pull, even to the millisecond
    put_image(ecr, name, image, "v1")
    # The marker, pulled now, shows when the pending pulls have been written.
    assert v2.get(f"/v2/{name}/manifests/marker", headers={"Accept": OCI_MANIFEST}).status_code == 200
    detail = wait_for_pull_time(ecr, name, marker.digest)[image.digest]
    assert "lastRecordedPullTime" not in detail, detail  # never pulled since it was pushed again


# -- BatchGetImage -----------------------------------------------------------------------------------


def test_batch_get_image(ecr: Any, v2: Client) -> None:
    name = make_repo(ecr, "batch-get")
    image = pushed_image(ecr, v2, name, "v1")
    other = pushed_image(ecr, v2, name, "other", docker=True)
    text = image.manifest.decode("utf-8")

    def get(*ids: dict[str, str], **kw: Any) -> dict[str, Any]:
        return api(ecr, "BatchGetImage", repositoryName=name, imageIds=list(ids), **kw)

    for image_id in (
        {"imageTag": "v1"},
        {"imageDigest": image.digest},
        {"imageTag": "v1", "imageDigest": image.digest},
    ):
        out = get(image_id)
        assert out["failures"] == []
        (got,) = out["images"]
        assert got["imageManifest"] == text
        assert got["imageManifestMediaType"] == OCI_MANIFEST
        assert got["imageId"]["imageDigest"] == image.digest
        assert got["imageId"].get("imageTag", "v1") == "v1"
        assert got["registryId"] == ACCOUNT and got["repositoryName"] == name

    (got,) = get({"imageTag": "other"})["images"]
    assert got["imageManifest"] == other.manifest.decode() and got["imageManifestMediaType"] == DOCKER_MANIFEST

    def failure(image_id: dict[str, str], code: str, **kw: Any) -> dict[str, Any]:
        out = get(image_id, **kw)
        assert out["images"] == [], out
        (f,) = out["failures"]
        assert f["failureCode"] == code, f
        assert f["imageId"] == image_id, f
        assert f["failureReason"], f
        return f

    failure({"imageTag": "v1", "imageDigest": other.digest}, "ImageTagDoesNotMatchDigest")
    assert failure({"imageTag": "nope"}, "ImageNotFound")["failureReason"] == "Requested image not found"
    assert failure({"imageDigest": digest_of(b"nope")}, "ImageNotFound")["failureReason"] == "Requested image not found"
    failure({"imageDigest": "sha256:xyz"}, "InvalidImageDigest")
    # Only a manifest in an accepted type is returned (by digest ECR never converts between types).
    out = get({"imageDigest": image.digest}, acceptedMediaTypes=[DOCKER_MANIFEST])
    assert out["images"] == [] and [f["imageId"] for f in out["failures"]] == [{"imageDigest": image.digest}]

    out = get({"imageTag": "v1"}, acceptedMediaTypes=[DOCKER_MANIFEST, OCI_MANIFEST])
    assert [i["imageManifest"] for i in out["images"]] == [text] and out["failures"] == []

    # Several ids at once: images and failures side by side.
    out = get({"imageTag": "v1"}, {"imageTag": "nope"}, {"imageTag": "other"})
    assert [i["imageId"]["imageDigest"] for i in out["images"]] == [image.digest, other.digest]
    assert [f["imageId"] for f in out["failures"]] == [{"imageTag": "nope"}]


def test_batch_get_image_accepted_media_type_failure_code(ecr: Any, v2: Client) -> None:
    """A manifest stored in a type the caller does not accept is a failure with a modeled code."""
    name = make_repo(ecr, "accepted")
    pushed_image(ecr, v2, name, "v1")
    out = api(ecr, "BatchGetImage", repositoryName=name, imageIds=[{"imageTag": "v1"}], acceptedMediaTypes=[OCI_INDEX])
    assert out["images"] == []
    (f,) = out["failures"]
    assert f["imageId"] == {"imageTag": "v1"}
    assert f["failureCode"] in {"ImageNotFound", "UnsupportedImageType", "ImageInaccessible"}, f


# -- BatchDeleteImage --------------------------------------------------------------------------------


def test_batch_delete_image_by_tag(ecr: Any, v2: Client) -> None:
    name = make_repo(ecr, "delete-tag")
    image = pushed_image(ecr, v2, name, "t1", "t2")
    out = api(ecr, "BatchDeleteImage", repositoryName=name, imageIds=[{"imageTag": "t1"}])
    assert out == {**out, "imageIds": [{"imageDigest": image.digest, "imageTag": "t1"}], "failures": []}
    assert describe(ecr, name)[image.digest]["imageTags"] == ["t2"]
    assert v2.get(f"/v2/{name}/manifests/t1", headers={"Accept": OCI_MANIFEST}).status_code == 404

    out = api(ecr, "BatchDeleteImage", repositoryName=name, imageIds=[{"imageTag": "t2"}])
    assert out["imageIds"] == [{"imageDigest": image.digest, "imageTag": "t2"}] and out["failures"] == []
    # The last tag gone: the image went with it.
    assert api(ecr, "ListImages", repositoryName=name)["imageIds"] == []
    api_error(
        ecr, "DescribeImages", "ImageNotFoundException", repositoryName=name, imageIds=[{"imageDigest": image.digest}]
    )


def test_batch_delete_image_by_digest(ecr: Any, v2: Client) -> None:
    name = make_repo(ecr, "delete-digest")
    image = pushed_image(ecr, v2, name, "t1", "t2")
    keep = pushed_image(ecr, v2, name, "keep")
    out = api(ecr, "BatchDeleteImage", repositoryName=name, imageIds=[{"imageDigest": image.digest}])
    assert out["imageIds"] == [{"imageDigest": image.digest}] and out["failures"] == []
    assert image_ids(api(ecr, "ListImages", repositoryName=name)) == [(keep.digest, "keep")]
    got = api(ecr, "BatchGetImage", repositoryName=name, imageIds=[{"imageTag": "t1"}, {"imageTag": "t2"}])
    assert got["images"] == [] and [f["failureCode"] for f in got["failures"]] == ["ImageNotFound"] * 2
    assert v2.get(f"/v2/{name}/manifests/{image.digest}", headers={"Accept": OCI_MANIFEST}).status_code == 404


def test_batch_delete_image_failures(ecr: Any, v2: Client) -> None:
    name = make_repo(ecr, "delete-fail")
    image = pushed_image(ecr, v2, name, "v1")
    out = api(
        ecr,
        "BatchDeleteImage",
        repositoryName=name,
        imageIds=[{"imageTag": "nope"}, {"imageDigest": digest_of(b"nope")}, {"imageDigest": "sha256:xyz"}],
    )
    assert out["imageIds"] == []
    assert [(f["imageId"], f["failureCode"]) for f in out["failures"]] == [
        ({"imageTag": "nope"}, "ImageNotFound"),
        ({"imageDigest": digest_of(b"nope")}, "ImageNotFound"),
        ({"imageDigest": "sha256:xyz"}, "InvalidImageDigest"),
    ]
    assert out["failures"][0]["failureReason"] == "Requested image not found"
    assert image_ids(api(ecr, "ListImages", repositoryName=name)) == [(image.digest, "v1")]
    api_error(
        ecr,
        "BatchDeleteImage",
        "RepositoryNotFoundException",
        repositoryName=unique("nope"),
        imageIds=[{"imageTag": "v1"}],
    )


def test_batch_delete_image_referenced_by_index(ecr: Any, v2: Client) -> None:
    name = make_repo(ecr, "delete-child")
    child_a, child_b = pushed_image(ecr, v2, name), pushed_image(ecr, v2, name)
    index = index_of(child_a.manifest, child_b.manifest)
    api(ecr, "PutImage", repositoryName=name, imageManifest=index.decode(), imageTag="multi")
    out = api(ecr, "BatchDeleteImage", repositoryName=name, imageIds=[{"imageDigest": child_a.digest}])
    assert out["imageIds"] == []
    (f,) = out["failures"]
    assert f["failureCode"] == "ImageReferencedByManifestList" and f["imageId"] == {"imageDigest": child_a.digest}
    assert child_a.digest in describe(ecr, name)
    # Once the index is gone its children can go.
    api(ecr, "BatchDeleteImage", repositoryName=name, imageIds=[{"imageTag": "multi"}])
    out = api(ecr, "BatchDeleteImage", repositoryName=name, imageIds=[{"imageDigest": child_a.digest}])
    assert out["imageIds"] == [{"imageDigest": child_a.digest}] and out["failures"] == []


# -- layer upload API --------------------------------------------------------------------------------


def upload_layer(ecr: Any, repo: str, data: bytes) -> str:
    upload_id = api(ecr, "InitiateLayerUpload", repositoryName=repo)["uploadId"]
    api(
        ecr,
        "UploadLayerPart",
        repositoryName=repo,
        uploadId=upload_id,
        partFirstByte=0,
        partLastByte=len(data) - 1,
        layerPartBlob=data,
    )
    out = api(ecr, "CompleteLayerUpload", repositoryName=repo, uploadId=upload_id, layerDigests=[digest_of(data)])
    assert out["layerDigest"] == digest_of(data)
    return out["layerDigest"]


def test_layer_upload_and_download(srv: MoorageServer, ecr: Any) -> None:
    name = make_repo(ecr, "layers")
    layer = os.urandom(5000)
    digest = digest_of(layer)

    init = api(ecr, "InitiateLayerUpload", repositoryName=name)
    upload_id = init["uploadId"]
    assert UUID_RE.fullmatch(upload_id), upload_id
    assert init["partSize"] == PART_SIZE

    def part(first: int, data: bytes) -> dict[str, Any]:
        return dict(
            repositoryName=name,
            uploadId=upload_id,
            partFirstByte=first,
            partLastByte=first + len(data) - 1,
            layerPartBlob=data,
        )

    out = api(ecr, "UploadLayerPart", **part(0, layer[:3000]))
    assert out == {
        **out,
        "registryId": ACCOUNT,
        "repositoryName": name,
        "uploadId": upload_id,
        "lastByteReceived": 2999,
    }

    # A part that does not start where the upload ends: InvalidLayerPartException with lastValidByteReceived.
    err = api_error(ecr, "UploadLayerPart", "InvalidLayerPartException", **part(4000, layer[4000:]))
    assert err["lastValidByteReceived"] == 2999, err
    assert err["uploadId"] == upload_id and err["repositoryName"] == name and err["registryId"] == ACCOUNT
    raw = signed_post(
        srv,
        "UploadLayerPart",
        {**part(4000, b""), "partLastByte": 4999, "layerPartBlob": base64.b64encode(layer[4000:]).decode()},
    )
    assert raw_error(raw, "InvalidLayerPartException")["lastValidByteReceived"] == 2999
    # partLastByte that disagrees with the blob's length is also an invalid part.
    api_error(ecr, "UploadLayerPart", "InvalidLayerPartException", **{**part(3000, layer[3000:]), "partLastByte": 3500})

    layers = api(ecr, "BatchCheckLayerAvailability", repositoryName=name, layerDigests=[digest])["layers"]
    assert layers == [{"layerDigest": digest, "layerAvailability": "UNAVAILABLE"}]

    out = api(ecr, "UploadLayerPart", **part(3000, layer[3000:]))
    assert out["lastByteReceived"] == 4999
    done = api(ecr, "CompleteLayerUpload", repositoryName=name, uploadId=upload_id, layerDigests=[digest])
    assert done == {**done, "registryId": ACCOUNT, "repositoryName": name, "uploadId": upload_id, "layerDigest": digest}

    unknown = digest_of(b"never uploaded")
    check = api(ecr, "BatchCheckLayerAvailability", repositoryName=name, layerDigests=[digest, unknown, "bad"])
    assert check["layers"] == [
        {"layerDigest": digest, "layerAvailability": "AVAILABLE", "layerSize": 5000},
        {"layerDigest": unknown, "layerAvailability": "UNAVAILABLE"},
    ]
    (failure,) = check["failures"]
    assert failure["layerDigest"] == "bad" and failure["failureCode"] == "InvalidLayerDigest"
    assert failure["failureReason"]

    # Unreferenced layer: the API will not hand out a download URL for it yet.
    err = api_error(
        ecr, "GetDownloadUrlForLayer", "LayerInaccessibleException", repositoryName=name, layerDigest=digest
    )
    assert digest in err["Error"]["Message"]

    # An image made only of API-uploaded blobs.
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
    config_digest = upload_layer(ecr, name, config.encode())
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config.encode()),
            "layers": [descriptor(OCI_LAYER, layer)],
        }
    )
    assert config_digest == digest_of(config.encode())
    image = api(ecr, "PutImage", repositoryName=name, imageManifest=manifest, imageTag="api")["image"]
    assert image["imageId"]["imageDigest"] == digest_of(manifest.encode())

    url = api(ecr, "GetDownloadUrlForLayer", repositoryName=name, layerDigest=digest)
    assert url["layerDigest"] == digest
    assert url["downloadUrl"].startswith(srv.url + "/"), url
    with requests.Session() as plain:
        plain.trust_env = False  # no ~/.netrc or proxy credentials: the URL itself must be enough
        r = plain.get(url["downloadUrl"], timeout=30)
        assert "Authorization" not in r.request.headers
        assert r.status_code == 200, (r.status_code, r.text[:300])
        assert r.content == layer
        # The same blob without the URL's credentials is refused (auth is on).
        assert plain.get(f"{srv.url}/v2/{name}/blobs/{digest}", timeout=30).status_code == 401


def test_layer_part_must_start_at_zero(ecr: Any) -> None:
    """The first part must start at byte 0. Nothing valid has been received yet, so lastValidByteReceived
    (modeled as PartSize, min 0) must not be a negative position; `api_error` checks the exception's shape."""
    name = make_repo(ecr, "first-part")
    fresh = api(ecr, "InitiateLayerUpload", repositoryName=name)["uploadId"]
    api_error(
        ecr,
        "UploadLayerPart",
        "InvalidLayerPartException",
        repositoryName=name,
        uploadId=fresh,
        partFirstByte=5,
        partLastByte=7,
        layerPartBlob=b"abc",
    )


def test_layer_upload_errors(ecr: Any, v2: Client) -> None:
    name = make_repo(ecr, "layer-errors")
    data = os.urandom(1000)

    upload_id = api(ecr, "InitiateLayerUpload", repositoryName=name)["uploadId"]
    api(
        ecr,
        "UploadLayerPart",
        repositoryName=name,
        uploadId=upload_id,
        partFirstByte=0,
        partLastByte=999,
        layerPartBlob=data,
    )
    api_error(
        ecr,
        "CompleteLayerUpload",
        "InvalidLayerException",
        repositoryName=name,
        uploadId=upload_id,
        layerDigests=[digest_of(b"not the data")],
    )
    check = api(ecr, "BatchCheckLayerAvailability", repositoryName=name, layerDigests=[digest_of(b"not the data")])
    assert check["layers"][0]["layerAvailability"] == "UNAVAILABLE"

    empty_id = api(ecr, "InitiateLayerUpload", repositoryName=name)["uploadId"]
    api_error(
        ecr,
        "CompleteLayerUpload",
        "EmptyUploadException",
        repositoryName=name,
        uploadId=empty_id,
        layerDigests=[digest_of(b"")],
    )

    unknown = str(uuid.uuid4())
    err = api_error(
        ecr,
        "UploadLayerPart",
        "UploadNotFoundException",
        repositoryName=name,
        uploadId=unknown,
        partFirstByte=0,
        partLastByte=999,
        layerPartBlob=data,
    )
    assert unknown in err["Error"]["Message"]
    api_error(
        ecr,
        "CompleteLayerUpload",
        "UploadNotFoundException",
        repositoryName=name,
        uploadId=unknown,
        layerDigests=[digest_of(data)],
    )
    api_error(ecr, "InitiateLayerUpload", "RepositoryNotFoundException", repositoryName=unique("nope"))

    # Completing an upload of a layer the repository already has.
    upload_layer(ecr, name, data)
    again = api(ecr, "InitiateLayerUpload", repositoryName=name)["uploadId"]
    api(
        ecr,
        "UploadLayerPart",
        repositoryName=name,
        uploadId=again,
        partFirstByte=0,
        partLastByte=999,
        layerPartBlob=data,
    )
    api_error(
        ecr,
        "CompleteLayerUpload",
        "LayerAlreadyExistsException",
        repositoryName=name,
        uploadId=again,
        layerDigests=[digest_of(data)],
    )

    # GetDownloadUrlForLayer: pushed over /v2 but in no image, and unknown.
    loose = os.urandom(300)
    v2.push_blob(name, loose)
    api_error(
        ecr,
        "GetDownloadUrlForLayer",
        "LayerInaccessibleException",
        repositoryName=name,
        layerDigest=digest_of(loose),
    )
    api_error(
        ecr,
        "GetDownloadUrlForLayer",
        "LayersNotFoundException",
        repositoryName=name,
        layerDigest=digest_of(b"unknown layer"),
    )


# -- repository policies -----------------------------------------------------------------------------

POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Sid": "AllowPull",
            "Effect": "Allow",
            "Principal": {"AWS": ["arn:aws:iam::000000000000:root"]},
            "Action": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"],
        }
    ],
}


def test_repository_policy_round_trip(ecr: Any) -> None:
    name = make_repo(ecr, "policy")
    err = api_error(ecr, "GetRepositoryPolicy", "RepositoryPolicyNotFoundException", repositoryName=name)
    assert name in err["Error"]["Message"]
    api_error(ecr, "DeleteRepositoryPolicy", "RepositoryPolicyNotFoundException", repositoryName=name)

    out = api(ecr, "SetRepositoryPolicy", repositoryName=name, policyText=json.dumps(POLICY))
    assert out["registryId"] == ACCOUNT and out["repositoryName"] == name
    assert json.loads(out["policyText"]) == POLICY
    got = api(ecr, "GetRepositoryPolicy", repositoryName=name)
    assert got["repositoryName"] == name and json.loads(got["policyText"]) == POLICY
    deleted = api(ecr, "DeleteRepositoryPolicy", repositoryName=name)
    assert json.loads(deleted["policyText"]) == POLICY
    api_error(ecr, "GetRepositoryPolicy", "RepositoryPolicyNotFoundException", repositoryName=name)
    api_error(
        ecr,
        "SetRepositoryPolicy",
        "RepositoryNotFoundException",
        repositoryName=unique("nope"),
        policyText=json.dumps(POLICY),
    )


def _statement(**changes: Any) -> str:
    statement = {**POLICY["Statement"][0], **changes}
    return json.dumps({**POLICY, "Statement": [{k: v for k, v in statement.items() if v is not None}]})


# A valid policy, but longer than the model's PolicyText maximum of 10240 characters.
LONG_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": f"Statement{i:04d}", "Effect": "Allow", "Principal": "*", "Action": "ecr:BatchGetImage"}
            for i in range(150)
        ],
    }
)


@pytest.mark.parametrize(
    "text",
    ["not json", _statement(Effect="Maybe"), _statement(Principal=None), LONG_POLICY],
    ids=["not-json", "effect-maybe", "no-principal", "over-10240-chars"],
)
def test_repository_policy_invalid(ecr: Any, text: str) -> None:
    name = make_repo(ecr, "bad-policy")
    if text is LONG_POLICY:
        assert len(text) > 10240
    api_error(ecr, "SetRepositoryPolicy", "InvalidParameterException", repositoryName=name, policyText=text)
    api_error(ecr, "GetRepositoryPolicy", "RepositoryPolicyNotFoundException", repositoryName=name)


# -- resource tags -----------------------------------------------------------------------------------


def test_resource_tags(ecr: Any) -> None:
    name = make_repo(ecr, "tags", tags=[{"Key": "a", "Value": "1"}])
    arn = f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/{name}"

    def tags() -> dict[str, str]:
        return {t["Key"]: t["Value"] for t in api(ecr, "ListTagsForResource", resourceArn=arn)["tags"]}

    assert tags() == {"a": "1"}
    out = api(ecr, "TagResource", resourceArn=arn, tags=[{"Key": "a", "Value": "10"}, {"Key": "b", "Value": "2"}])
    assert {k: v for k, v in out.items() if k != "ResponseMetadata"} == {}
    assert tags() == {"a": "10", "b": "2"}
    out = api(ecr, "UntagResource", resourceArn=arn, tagKeys=["a", "not-there"])
    assert {k: v for k, v in out.items() if k != "ResponseMetadata"} == {}
    assert tags() == {"b": "2"}

    for bad in (
        "not-an-arn",
        f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/",
        f"arn:aws:ecr:{REGION}:111111111111:repository/{name}",
        f"arn:aws:ecr:eu-west-1:{ACCOUNT}:repository/{name}",
        f"arn:aws:s3:::{name}",
    ):
        err = api_error(ecr, "ListTagsForResource", "InvalidParameterException", resourceArn=bad)
        assert "resourceArn" in err["Error"]["Message"]
        api_error(ecr, "TagResource", "InvalidParameterException", resourceArn=bad, tags=[{"Key": "k", "Value": "v"}])
    api_error(
        ecr,
        "ListTagsForResource",
        "RepositoryNotFoundException",
        resourceArn=f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/{unique('nope')}",
    )

    many = [{"Key": f"k{i}", "Value": str(i)} for i in range(51)]
    api_error(ecr, "TagResource", "TooManyTagsException", resourceArn=arn, tags=many)
    assert tags() == {"b": "2"}
    api(ecr, "TagResource", resourceArn=arn, tags=many[:49])  # 49 + b = 50, the limit
    assert len(tags()) == 50
    api_error(ecr, "TagResource", "TooManyTagsException", resourceArn=arn, tags=[{"Key": "one-more", "Value": "x"}])
    api_error(ecr, "CreateRepository", "TooManyTagsException", repositoryName=unique("many-tags"), tags=many)

    err = api_error(
        ecr, "TagResource", "InvalidTagParameterException", resourceArn=arn, tags=[{"Key": "aws:owner", "Value": "x"}]
    )
    assert err["Error"]["Message"]
    api_error(
        ecr,
        "CreateRepository",
        "InvalidTagParameterException",
        repositoryName=unique("aws-tag"),
        tags=[{"Key": "aws:owner", "Value": "x"}],
    )
    assert "aws:owner" not in tags()


# -- registry and auth -------------------------------------------------------------------------------


def test_describe_registry(ecr: Any) -> None:
    out = api(ecr, "DescribeRegistry")
    assert out["registryId"] == ACCOUNT
    assert out["replicationConfiguration"] == {"rules": []}


def test_get_authorization_token(srv: MoorageServer, ecr: Any) -> None:
    out = api(ecr, "GetAuthorizationToken")
    (data,) = out["authorizationData"]
    user, sep, token = base64.b64decode(data["authorizationToken"], validate=True).decode().partition(":")
    assert (user, sep) == ("AWS", ":") and token and ":" not in token
    assert abs(data["expiresAt"].timestamp() - (time.time() + 12 * 3600)) < 60
    assert data["proxyEndpoint"] == srv.url
    # The password works on /v2, and nothing works without one.
    assert Client(srv.url, ("AWS", token)).get("/v2/").status_code == 200
    assert Client(srv.url).get("/v2/").status_code == 401
    (one,) = api(ecr, "GetAuthorizationToken", registryIds=[ACCOUNT])["authorizationData"]
    assert one["proxyEndpoint"] == srv.url


# -- the wire protocol -------------------------------------------------------------------------------


def test_raw_wire_format(srv: MoorageServer, v2: Client) -> None:
    name = unique("raw")
    created = raw_ok(signed_post(srv, "CreateRepository", {"repositoryName": name}), "CreateRepository")
    assert isinstance(created["repository"]["createdAt"], int | float)
    assert abs(created["repository"]["createdAt"] - time.time()) < 30

    image = make_image()
    v2.push_image(name, "v1", image)
    details = raw_ok(signed_post(srv, "DescribeImages", {"repositoryName": name}), "DescribeImages")
    (detail,) = details["imageDetails"]
    assert abs(detail["imagePushedAt"] - time.time()) < 30 and detail["imageTags"] == ["v1"]

    auth = raw_ok(signed_post(srv, "GetAuthorizationToken", {}), "GetAuthorizationToken")
    assert abs(auth["authorizationData"][0]["expiresAt"] - (time.time() + 43200)) < 60
    # No input members: botocore sends `{}`; an empty body is equally acceptable.
    raw_ok(signed_post(srv, "DescribeRegistry", b""), "DescribeRegistry")
    repos = raw_ok(signed_post(srv, "DescribeRepositories", {"repositoryNames": [name]}), "DescribeRepositories")
    assert repos["repositories"][0]["repositoryName"] == name
    got = raw_ok(
        signed_post(srv, "BatchGetImage", {"repositoryName": name, "imageIds": [{"imageTag": "v1"}]}), "BatchGetImage"
    )
    assert got["images"][0]["imageManifest"] == image.manifest.decode()

    body = raw_error(
        signed_post(srv, "DescribeRepositories", {"repositoryNames": [f"{name}-missing"]}),
        "RepositoryNotFoundException",
    )
    assert body["message"] == (
        f"The repository with name '{name}-missing' does not exist in the registry with id '{ACCOUNT}'"
    )


def test_unknown_operation(srv: MoorageServer) -> None:
    body = raw_error(signed_post(srv, "NoSuchThing", {}), "UnknownOperationException")
    assert "NoSuchThing" in body["message"]
    raw_error(signed_post(srv, "X", {}, target="SomethingElse_20200101.CreateRepository"), "UnknownOperationException")


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[1, 2]", b'"a string"', b'{"repositoryNames": "not-a-list"}', b'{"maxResults": "ten"}'],
    ids=["not-json", "array", "string", "list-member-not-list", "int-member-not-int"],
)
def test_malformed_body(srv: MoorageServer, body: bytes) -> None:
    raw_error(signed_post(srv, "DescribeRepositories", body), "SerializationException")


# -- the AWS CLI -------------------------------------------------------------------------------------


def cli_json(srv: MoorageServer, *args: str) -> dict[str, Any]:
    out = json.loads(aws_cli(srv, "ecr", *args, "--output", "json").stdout or "{}")
    assert isinstance(out, dict)
    return out


@pytest.mark.slow
def test_aws_cli(srv: MoorageServer, v2: Client, tmp_path: Path) -> None:
    name = unique("cli")
    # CLI v1 prints wire values as they are, so its output is checked as raw JSON (timestamps numeric).
    created = assert_raw_matches("CreateRepository", cli_json(srv, "create-repository", "--repository-name", name))
    assert created["repository"]["repositoryName"] == name
    assert created["repository"]["repositoryUri"] == f"{srv.host}/{name}"
    described = assert_raw_matches(
        "DescribeRepositories", cli_json(srv, "describe-repositories", "--repository-names", name)
    )
    assert described["repositories"] == [created["repository"]]

    image = make_image()
    push_blobs(v2, name, image)
    manifest_file = tmp_path / "manifest.json"
    manifest_file.write_bytes(image.manifest)
    put = assert_raw_matches(
        "PutImage",
        cli_json(
            srv,
            "put-image",
            "--repository-name",
            name,
            "--image-tag",
            "v1",
            "--image-manifest",
            f"file://{manifest_file}",
        ),
    )
    assert put["image"]["imageId"] == {"imageDigest": image.digest, "imageTag": "v1"}

    listed = assert_raw_matches("ListImages", cli_json(srv, "list-images", "--repository-name", name))
    assert listed["imageIds"] == [{"imageDigest": image.digest, "imageTag": "v1"}]
    got = assert_raw_matches(
        "BatchGetImage", cli_json(srv, "batch-get-image", "--repository-name", name, "--image-ids", "imageTag=v1")
    )
    assert [i["imageManifest"] for i in got["images"]] == [image.manifest.decode()] and got["failures"] == []
    details = assert_raw_matches("DescribeImages", cli_json(srv, "describe-images", "--repository-name", name))
    (detail,) = details["imageDetails"]
    assert detail["imageDigest"] == image.digest and detail["imageTags"] == ["v1"]
    assert isinstance(detail["imagePushedAt"], int | float)
    deleted = assert_raw_matches(
        "BatchDeleteImage",
        cli_json(srv, "batch-delete-image", "--repository-name", name, "--image-ids", "imageTag=v1"),
    )
    assert deleted["imageIds"] == [{"imageDigest": image.digest, "imageTag": "v1"}] and deleted["failures"] == []
    assert cli_json(srv, "list-images", "--repository-name", name)["imageIds"] == []

    password = aws_cli(srv, "ecr", "get-login-password").stdout.strip()
    assert password and ":" not in password
    assert Client(srv.url, ("AWS", password)).get("/v2/").status_code == 200

    missing = f"{name}-missing"
    p = aws_cli(srv, "ecr", "describe-repositories", "--repository-names", missing, check=False)
    assert p.returncode != 0
    assert "RepositoryNotFoundException" in p.stderr and missing in p.stderr, p.stderr
    assert "max retries" not in p.stderr, "a 4xx must not be retried"


# -- the shape checker itself ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "response"),
    [
        ("CreateRepository", {"repository": {"repositoryName": "a"}}),  # under min length 2
        ("CreateRepository", {"repository": {"repositoryName": "Upper"}}),  # pattern
        ("CreateRepository", {"repository": {"imageTagMutability": "SOMETIMES"}}),  # enum
        ("CreateRepository", {"repository": {"createdAt": 1700000000}}),  # parsed timestamps are datetimes
        ("CreateRepository", {"repository": {"imageScanningConfiguration": {"scanOnPush": "false"}}}),
        ("CreateRepository", {"repository": {"encryptionConfiguration": {}}}),  # required encryptionType
        ("CreateRepository", {"repository": {"surprise": 1}}),  # unmodeled member
        ("CreateRepository", {"surprise": 1}),
        ("DescribeImages", {"imageDetails": [{"imageSizeInBytes": "12"}]}),
        ("CreateRepository", {"repository": {"imageTagMutabilityExclusionFilters": []}}),  # nested, under min 1
        ("DescribeImages", {"imageDetails": [{"imagePushedAt": None}]}),  # nulls are not omitted members
        ("ListImages", {"imageIds": [{"imageDigest": "sha256:" + "a" * 64}] * 101}),  # over max 100
        ("GetAuthorizationToken", {"authorizationData": [{"authorizationToken": "has space"}]}),
    ],
)
def test_shape_checker_rejects(operation: str, response: dict[str, Any]) -> None:
    """The checker is not vacuous: each of these breaks the model in one way."""
    with pytest.raises(AssertionError):
        assert_matches_output(operation, response)


def test_shape_checker_accepts_and_raw_timestamps() -> None:
    assert_raw_matches("CreateRepository", {"repository": {"repositoryName": "ab", "createdAt": 1700000000.25}})
    assert_raw_matches("ListImages", {"imageIds": []})  # ECR's empty listing, despite ImageIdentifierList's min 1
    assert_raw_matches("DescribeImages", {"imageDetails": [{"imageTags": []}]})  # ImageTagList has no min
    for bad in ("2023-11-14T22:13:20Z", "1700000000", True, None):
        with pytest.raises(AssertionError):
            assert_raw_matches("CreateRepository", {"repository": {"createdAt": bad}})
    with pytest.raises(AssertionError):
        assert_error_matches("InvalidLayerPartException", {"lastValidByteReceived": -1}, raw=True)
    assert_error_matches("InvalidLayerPartException", {"lastValidByteReceived": 0, "message": "m"}, raw=True)
