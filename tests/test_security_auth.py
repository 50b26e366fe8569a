"""Security regressions (issue 11) in authentication, policy evaluation and input parsing, over real sockets.

- Wildcards (IAM globs in actions, resources and conditions, tag-mutability exclusion filters, lifecycle tag
  patterns) match in linear time: a pathological pattern cannot freeze a worker.
- A repository policy that names an account (`"AWS": "<account id>"` or its `:root` ARN) delegates to that
  account's identity policies, as in IAM; it does not let in every principal of the account.
- SigV4 binds the operation: X-Amz-Target, Content-Type and every x-amz-* header must be signed, the scope's
  region must be the registry's, and a session token with long-term keys is refused. boto3 and the AWS CLI
  still work.
- Bad input never gets a 5xx: deeply nested JSON (manifests, ECR bodies, policies, templates) and numbers in
  other scripts' digits (`?n=²`) get the protocol's 400.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.oci import OCI_MANIFEST, Image, digest_of, error_codes, make_image
from tests.server import (
    ADMIN_KEY,
    ADMIN_SECRET,
    MoorageServer,
    auth_config,
    aws_cli,
    ecr_client,
    login_password,
    principal_toml,
)

ACCOUNT, REGION = "000000000000", "us-east-1"
ECR_TARGET = "AmazonEC2ContainerRegistry_V20150921"
JSON_11 = "application/x-amz-json-1.1"
PULL_ACTIONS = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"]

# Allowed to pull by its own identity policy.
PULLER, PULLER_KEY, PULLER_SECRET = "puller", "AKIAMOORAGEPULLER001", "puller-secret-0123456789abcdefXYZ"
# Allowed nothing but a token by its identity policy: only a repository policy can let it pull.
BARE, BARE_KEY, BARE_SECRET = "bare", "AKIAMOORAGEBARE00001", "bare-secret-0123456789abcdefXYZ"


def identity_policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


TOKEN_ONLY = {"Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"}
PULLER_POLICY = identity_policy(TOKEN_ONLY, {"Effect": "Allow", "Action": PULL_ACTIONS, "Resource": "*"})
BARE_POLICY = identity_policy(TOKEN_ONLY)


# -- helpers -----------------------------------------------------------------------------------------


def basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"AWS:{password}".encode()).decode()


def v2(srv: MoorageServer, method: str, path: str, auth: str | None = None, **kw: Any) -> requests.Response:
    """One /v2 request; never a 5xx."""
    headers = dict(kw.pop("headers", {}))
    if auth is not None:
        headers["Authorization"] = auth
    r = requests.request(method, srv.url + path, headers=headers, timeout=kw.pop("timeout", 30), **kw)
    assert r.status_code < 500, f"{method} {path} -> {r.status_code}: {r.text[:300]}"
    return r


def push(srv: MoorageServer, repo: str, ref: str, image: Image, auth: str) -> requests.Response:
    for blob in image.blobs:
        r = v2(srv, "POST", f"/v2/{repo}/blobs/uploads/", auth, params={"digest": digest_of(blob)}, data=blob)
        assert r.status_code == 201, (r.status_code, r.text)
    return v2(
        srv,
        "PUT",
        f"/v2/{repo}/manifests/{ref}",
        auth,
        data=image.manifest,
        headers={"Content-Type": OCI_MANIFEST},
        timeout=10,
    )


def oci_error(r: requests.Response, status: int, code: str) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    assert error_codes(r) == [code], r.text
    return r.json()["errors"][0]["message"]


def signed(
    srv: MoorageServer,
    operation: str | None,
    body: bytes,
    *,
    region: str = REGION,
    unsigned: dict[str, str] | None = None,
    content_type: str | None = JSON_11,
) -> requests.Response:
    """A raw ECR call signed by botocore; `unsigned` headers are added after signing; never a 5xx."""
    headers = {"X-Amz-Target": f"{ECR_TARGET}.{operation}"} if operation else {}
    if content_type:
        headers["Content-Type"] = content_type
    request = AWSRequest(method="POST", url=srv.url + "/", data=body, headers=headers)
    SigV4Auth(Credentials(ADMIN_KEY, ADMIN_SECRET), "ecr", region).add_auth(request)
    sent = {**dict(request.headers.items()), **(unsigned or {})}
    r = requests.post(srv.url + "/", data=body, headers=sent, timeout=30)
    assert r.status_code < 500, (r.status_code, r.text)
    return r


def ecr_error(r: requests.Response, code: str) -> str:
    assert r.status_code == 400, (r.status_code, r.text)
    assert r.json().get("__type") == code, r.text
    return r.json().get("message", "")


def client_error(fn: Callable[..., object], code: str, **kw: object) -> str:
    with pytest.raises(ClientError) as info:
        fn(**kw)
    err = info.value.response
    assert err["Error"]["Code"] == code, err
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 400, err
    return err["Error"]["Message"]


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


def fast_client(srv: MoorageServer, key: str = ADMIN_KEY, secret: str = ADMIN_SECRET) -> Any:
    """A boto3 client that gives up after 10 s instead of waiting on a frozen server."""
    return boto3.client(
        "ecr",
        endpoint_url=srv.url,
        region_name=REGION,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}, read_timeout=10, connect_timeout=5),
    )


# -- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    config = auth_config(
        principal_toml(PULLER, PULLER_KEY, PULLER_SECRET, PULLER_POLICY),
        principal_toml(BARE, BARE_KEY, BARE_SECRET, BARE_POLICY),
    )
    server = MoorageServer(tmp_path_factory.mktemp("security-auth") / "data", config).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ecr(srv: MoorageServer) -> Any:
    return ecr_client(srv)


@pytest.fixture(scope="module")
def admin(srv: MoorageServer) -> str:
    return basic(login_password(srv))


# -- 2. wildcards in linear time -------------------------------------------------------------------

SLOW_GLOB = "*a" * 7 + "*b"  # with a regex matcher: minutes against 53 a's


def test_pathological_resource_glob_in_an_identity_policy_is_answered_at_once(make_server):
    name, key, secret = "globber", "AKIAMOORAGEGLOBBER01", "globber-secret-0123456789abcdef"
    policy = identity_policy(
        TOKEN_ONLY,
        {
            "Effect": "Allow",
            "Action": "ecr:BatchGetImage",
            "Resource": f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/team-a/{SLOW_GLOB}",
        },
    )
    srv = make_server(auth_config(principal_toml(name, key, secret, policy)))
    token = basic(login_password(srv, key, secret))
    repo = "team-a/" + "a" * 53  # 60 characters
    started = time.monotonic()
    r = v2(srv, "GET", f"/v2/{repo}/manifests/latest", token, timeout=10)
    elapsed = time.monotonic() - started
    assert "not authorized to perform: ecr:BatchGetImage" in oci_error(r, 403, "DENIED")
    assert elapsed < 2, f"{elapsed:.2f}s"
    # The server is still answering (no worker was left behind, busy matching).
    assert v2(srv, "GET", "/v2/", token, timeout=5).status_code == 200


def test_pathological_condition_glob_in_a_repository_policy_is_answered_at_once(make_server):
    # A principal whose ARN is long and full of a's, and a StringLike that almost matches it.
    name, key, secret = "a" * 60, "AKIAMOORAGELONGNAME1", "longname-secret-0123456789abcdef"
    srv = make_server(auth_config(principal_toml(name, key, secret, identity_policy({**TOKEN_ONLY, "Action": "*"}))))
    admin_ecr = fast_client(srv)
    admin_ecr.create_repository(repositoryName="team-b/app")
    deny = {
        "Sid": "DenyLookalikes",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "ecr:*",
        "Condition": {"StringLike": {"aws:PrincipalArn": "arn:aws:iam::" + "*a" * 12 + "*b"}},
    }
    admin_ecr.set_repository_policy(
        repositoryName="team-b/app", policyText=json.dumps({"Version": "2012-10-17", "Statement": [deny]})
    )
    started = time.monotonic()
    out = fast_client(srv, key, secret).list_images(repositoryName="team-b/app")
    elapsed = time.monotonic() - started
    assert out["imageIds"] == []
    assert elapsed < 2, f"{elapsed:.2f}s"


def test_pathological_mutability_exclusion_filter_does_not_freeze_a_push(make_server):
    srv = make_server(auth_config())
    ecr = fast_client(srv)
    token = basic(login_password(srv))
    exclusion = "*a" * 20 + "*b"  # 41 characters, valid for ECR; a regex takes hours against 128 a's
    ecr.create_repository(
        repositoryName="team-c/app",
        imageTagMutability="IMMUTABLE_WITH_EXCLUSION",
        imageTagMutabilityExclusionFilters=[{"filterType": "WILDCARD", "filter": exclusion}],
    )
    tag = "a" * 128
    started = time.monotonic()
    r = push(srv, "team-c/app", tag, make_image(1, 256), token)
    assert r.status_code == 201, (r.status_code, r.text)
    # Not excluded, so immutable: the tag cannot move.
    r = push(srv, "team-c/app", tag, make_image(1, 256), token)
    oci_error(r, 400, "TAG_INVALID")
    elapsed = time.monotonic() - started
    assert elapsed < 5, f"{elapsed:.2f}s"
    # A tag the filter does match is excluded, so mutable.
    for _ in range(2):
        assert push(srv, "team-c/app", "a" * 60 + "b", make_image(1, 256), token).status_code == 201


EXCLUSION_LIMITS = [
    ("six-filters", [f"v{i}*" for i in range(6)], "imageTagMutabilityExclusionFilters"),  # at most 5
    ("129-characters", ["x" * 129], "filter"),  # 1..128 characters
    ("question-mark", ["v?.*"], "filter"),  # [0-9a-zA-Z._*-] only
    ("space", ["v 1*"], "filter"),
]


@pytest.mark.parametrize(("case", "filters", "fragment"), EXCLUSION_LIMITS, ids=[c[0] for c in EXCLUSION_LIMITS])
def test_exclusion_filter_limits(ecr: Any, case: str, filters: list[str], fragment: str) -> None:
    shaped = [{"filterType": "WILDCARD", "filter": f} for f in filters]
    message = client_error(
        ecr.create_repository,
        "InvalidParameterException",
        repositoryName=f"limits/create-{case}",
        imageTagMutability="IMMUTABLE_WITH_EXCLUSION",
        imageTagMutabilityExclusionFilters=shaped,
    )
    assert fragment in message
    ecr.create_repository(repositoryName=f"limits/put-{case}")
    client_error(
        ecr.put_image_tag_mutability,
        "InvalidParameterException",
        repositoryName=f"limits/put-{case}",
        imageTagMutability="MUTABLE_WITH_EXCLUSION",
        imageTagMutabilityExclusionFilters=shaped,
    )


def test_lifecycle_tag_pattern_limit(ecr: Any) -> None:
    ecr.create_repository(repositoryName="limits/lifecycle")
    rule = {
        "rulePriority": 1,
        "selection": {
            "tagStatus": "tagged",
            "tagPatternList": ["*a*a*a*a*b"],  # five wildcards; ECR allows four
            "countType": "imageCountMoreThan",
            "countNumber": 1,
        },
        "action": {"type": "expire"},
    }
    message = client_error(
        ecr.put_lifecycle_policy,
        "InvalidParameterException",
        repositoryName="limits/lifecycle",
        lifecyclePolicyText=json.dumps({"rules": [rule]}),
    )
    assert "more than four wildcard characters" in message
    rule["selection"]["tagPatternList"] = ["*a*a*a*b"]
    ecr.put_lifecycle_policy(repositoryName="limits/lifecycle", lifecyclePolicyText=json.dumps({"rules": [rule]}))


# -- 8. an account in a repository policy delegates ------------------------------------------------


@pytest.mark.parametrize("principal", [ACCOUNT, f"arn:aws:iam::{ACCOUNT}:root"])
def test_account_principal_in_a_repository_policy_delegates_to_identity_policies(
    srv: MoorageServer, ecr: Any, admin: str, principal: str
) -> None:
    repo = f"delegate/{'id' if principal == ACCOUNT else 'root'}"
    image = make_image(1, 512)
    assert push(srv, repo, "v1", image, admin).status_code == 201
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "AccountPull", "Effect": "Allow", "Principal": {"AWS": principal}, "Action": PULL_ACTIONS}
        ],
    }
    ecr.set_repository_policy(repositoryName=repo, policyText=json.dumps(policy))
    path = f"/v2/{repo}/manifests/v1"
    accept = {"Accept": OCI_MANIFEST}

    # Its identity policy allows pulls: pulls.
    puller = basic(login_password(srv, PULLER_KEY, PULLER_SECRET))
    r = v2(srv, "GET", path, puller, headers=accept)
    assert r.status_code == 200 and r.content == image.manifest
    assert ecr_client(srv, PULLER_KEY, PULLER_SECRET).batch_get_image(
        repositoryName=repo, imageIds=[{"imageTag": "v1"}]
    )["images"]

    # Its identity policy allows nothing: the account trusts it, but nothing grants the pull.
    bare = basic(login_password(srv, BARE_KEY, BARE_SECRET))
    message = oci_error(v2(srv, "GET", path, bare, headers=accept), 403, "DENIED")
    assert message == (
        f"User: arn:aws:iam::{ACCOUNT}:user/{BARE} is not authorized to perform: ecr:BatchGetImage on resource: "
        f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/{repo} because no identity-based policy allows the "
        "ecr:BatchGetImage action"
    )
    blob = digest_of(image.layers[0])
    oci_error(v2(srv, "GET", f"/v2/{repo}/blobs/{blob}", bare), 403, "DENIED")
    client_error(
        ecr_client(srv, BARE_KEY, BARE_SECRET).batch_get_image,
        "AccessDeniedException",
        repositoryName=repo,
        imageIds=[{"imageTag": "v1"}],
    )


def test_repository_policy_naming_the_principal_still_grants(srv: MoorageServer, ecr: Any, admin: str) -> None:
    repo = "delegate/named"
    image = make_image(1, 512)
    assert push(srv, repo, "v1", image, admin).status_code == 201
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:user/{BARE}"},
                "Action": PULL_ACTIONS,
            }
        ],
    }
    ecr.set_repository_policy(repositoryName=repo, policyText=json.dumps(policy))
    bare = basic(login_password(srv, BARE_KEY, BARE_SECRET))
    r = v2(srv, "GET", f"/v2/{repo}/manifests/v1", bare, headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200 and r.content == image.manifest


# -- 9. SigV4 binds the operation ------------------------------------------------------------------


def test_unsigned_x_amz_target_is_refused(srv: MoorageServer) -> None:
    # Signed as some operation-less request; the operation named afterwards: a replay as another operation.
    r = signed(srv, None, b"{}", unsigned={"X-Amz-Target": f"{ECR_TARGET}.DescribeRepositories"})
    assert ecr_error(r, "IncompleteSignatureException") == (
        "'X-Amz-Target' must be a 'SignedHeader' in the AWS Authorization."
    )


def test_unsigned_content_type_is_refused(srv: MoorageServer) -> None:
    r = signed(srv, "DescribeRepositories", b"{}", content_type=None, unsigned={"Content-Type": JSON_11})
    assert ecr_error(r, "IncompleteSignatureException") == (
        "'Content-Type' must be a 'SignedHeader' in the AWS Authorization."
    )


def test_unsigned_x_amz_header_is_refused(srv: MoorageServer) -> None:
    r = signed(srv, "DescribeRepositories", b"{}", unsigned={"X-Amz-Meta-Anything": "1"})
    assert ecr_error(r, "IncompleteSignatureException") == (
        "'X-Amz-Meta-Anything' must be a 'SignedHeader' in the AWS Authorization."
    )


def test_fully_signed_raw_request_is_accepted(srv: MoorageServer) -> None:
    r = signed(srv, "DescribeRepositories", b"{}", unsigned={"User-Agent": "raw/1.0", "X-Amzn-Trace-Id": "Root=1"})
    assert r.status_code == 200, r.text


def test_credential_scoped_to_another_region_is_refused(srv: MoorageServer) -> None:
    other = ecr_client(srv, region="eu-west-1")
    message = client_error(other.describe_repositories, "InvalidSignatureException")
    assert message == "Credential should be scoped to a valid region, not 'eu-west-1'."
    r = signed(srv, "DescribeRepositories", b"{}", region="eu-west-1")
    assert ecr_error(r, "InvalidSignatureException").startswith("Credential should be scoped to a valid region")


def test_session_token_with_long_term_keys_is_refused(srv: MoorageServer) -> None:
    client = boto3.client(
        "ecr",
        endpoint_url=srv.url,
        region_name=REGION,
        aws_access_key_id=ADMIN_KEY,
        aws_secret_access_key=ADMIN_SECRET,
        aws_session_token="FQoGZXIvYXdzEXAMPLEsessiontoken//+=",
        config=Config(retries={"max_attempts": 1}),
    )
    message = client_error(client.describe_repositories, "UnrecognizedClientException")
    assert message == "The security token included in the request is invalid."


def test_boto3_and_the_aws_cli_still_work(srv: MoorageServer, ecr: Any) -> None:
    ecr.create_repository(repositoryName="sigv4/still-works")
    names = [r["repositoryName"] for r in ecr.describe_repositories()["repositories"]]
    assert "sigv4/still-works" in names
    out = json.loads(aws_cli(srv, "ecr", "describe-repositories", "--repository-names", "sigv4/still-works").stdout)
    assert out["repositories"][0]["repositoryName"] == "sigv4/still-works"
    assert aws_cli(srv, "ecr", "get-login-password").stdout.strip()


# -- 11. bad input never gets a 5xx ----------------------------------------------------------------

DEEP = 5000  # json.loads: RecursionError


@pytest.mark.parametrize("depth", [DEEP, 150])
def test_deeply_nested_manifest_is_manifest_invalid(srv: MoorageServer, admin: str, depth: int) -> None:
    body = ('{"schemaVersion": 2, "mediaType": "' + OCI_MANIFEST + '", "x": ' + nested(depth) + "}").encode()
    r = v2(srv, "PUT", "/v2/deep/manifest/manifests/v1", admin, data=body, headers={"Content-Type": OCI_MANIFEST})
    assert "nested deeper than" in oci_error(r, 400, "MANIFEST_INVALID")


def test_deeply_nested_ecr_body_is_a_client_error(srv: MoorageServer) -> None:
    body = ('{"repositoryNames": ' + nested(DEEP, '"x"') + "}").encode()
    r = signed(srv, "DescribeRepositories", body)
    assert r.status_code == 400, r.text
    assert r.json()["__type"] == "SerializationException", r.text


def test_deeply_nested_put_image_manifest_is_invalid_parameter(srv: MoorageServer, ecr: Any) -> None:
    ecr.create_repository(repositoryName="deep/put-image")
    client_error(
        ecr.put_image,
        "InvalidParameterException",
        repositoryName="deep/put-image",
        imageManifest='{"schemaVersion": 2, "x": ' + nested(DEEP) + "}",
        imageManifestMediaType=OCI_MANIFEST,
        imageTag="v1",
    )


POLICY_STATEMENT = {"Effect": "Allow", "Principal": "*", "Action": "ecr:BatchGetImage"}


@pytest.mark.parametrize(
    "policy_text",
    [
        nested(DEEP),
        '{"Version": "2012-10-17", "Id": ' + nested(DEEP) + ', "Statement": []}',
        # Parses, but json.dumps(indent=...) of it would overflow the stack: refused on depth alone.
        '{"Version": "2012-10-17", "Id": ' + nested(900) + ', "Statement": ' + json.dumps(POLICY_STATEMENT) + "}",
    ],
    ids=["array", "deep-id", "deep-id-that-parses"],
)
def test_deeply_nested_repository_policy_is_invalid_parameter(srv: MoorageServer, ecr: Any, policy_text: str) -> None:
    if "deep/policy" not in [r["repositoryName"] for r in ecr.describe_repositories()["repositories"]]:
        ecr.create_repository(repositoryName="deep/policy")
    message = client_error(
        ecr.set_repository_policy, "InvalidParameterException", repositoryName="deep/policy", policyText=policy_text
    )
    assert "Invalid repository policy provided" in message


def test_deeply_nested_lifecycle_policy_is_invalid_parameter(srv: MoorageServer, ecr: Any) -> None:
    ecr.create_repository(repositoryName="deep/lifecycle")
    client_error(
        ecr.put_lifecycle_policy,
        "InvalidParameterException",
        repositoryName="deep/lifecycle",
        lifecyclePolicyText='{"rules": ' + nested(DEEP) + "}",
    )


@pytest.mark.parametrize("member", ["repositoryPolicy", "lifecyclePolicy"])
def test_deeply_nested_template_policies_are_invalid_parameter(srv: MoorageServer, ecr: Any, member: str) -> None:
    text = nested(DEEP) if member == "repositoryPolicy" else '{"rules": ' + nested(DEEP) + "}"
    client_error(
        ecr.create_repository_creation_template,
        "InvalidParameterException",
        prefix=f"deep-{member.lower()}",
        appliedFor=["CREATE_ON_PUSH"],
        **{member: text},
    )


@pytest.mark.parametrize("token", ["²", "٣", "1" * 5000, "-1"])
def test_non_ascii_or_huge_next_tokens_are_invalid_parameter(srv: MoorageServer, ecr: Any, token: str) -> None:
    client_error(ecr.describe_repository_creation_templates, "InvalidParameterException", nextToken=token)


def test_deeply_nested_describe_repositories_token_is_invalid_parameter(srv: MoorageServer, ecr: Any) -> None:
    token = base64.urlsafe_b64encode(nested(DEEP, '"x"').encode()).decode()
    client_error(ecr.describe_repositories, "InvalidParameterException", nextToken=token)


@pytest.mark.parametrize("n", ["²", "٣", "\uff11", "9" * 5000, "9223372036854775808", "-1", "1.0", " 1"])
def test_non_ascii_or_huge_page_sizes_are_pagination_number_invalid(srv: MoorageServer, admin: str, n: str) -> None:
    assert push(srv, "paging/app", "v1", make_image(1, 128), admin).status_code == 201
    for path in ("/v2/_catalog", "/v2/paging/app/tags/list"):
        oci_error(v2(srv, "GET", path, admin, params={"n": n}), 400, "PAGINATION_NUMBER_INVALID")


def test_ascii_page_sizes_still_work(srv: MoorageServer, admin: str) -> None:
    assert push(srv, "paging/ok", "v1", make_image(1, 128), admin).status_code == 201
    for n in ("1", "0001", "9223372036854775807"):
        r = v2(srv, "GET", "/v2/paging/ok/tags/list", admin, params={"n": n})
        assert r.status_code == 200 and r.json()["tags"] == ["v1"], (n, r.text)


@pytest.mark.parametrize("spec", ["bytes=²-", "bytes=-٣", "bytes=0-" + "9" * 5000, "bytes=" + "9" * 5000 + "-"])
def test_odd_range_numbers_never_fail(srv: MoorageServer, admin: str, spec: str) -> None:
    image = make_image(1, 2048)
    assert push(srv, "ranges/app", "v1", image, admin).status_code == 201
    layer = image.layers[0]
    r = v2(
        srv, "GET", f"/v2/ranges/app/blobs/{digest_of(layer)}", admin, headers={"Range": spec.encode()}
    )  # UTF-8 on the wire
    if spec == "bytes=0-" + "9" * 5000:  # to the end
        assert r.status_code == 206 and r.content == layer, r.status_code
    else:
        assert r.status_code == 416, (r.status_code, r.text[:200])
