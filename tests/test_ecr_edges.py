"""Rough edges of the ECR API and the registry around it (issue 12, item 10), with boto3, the AWS CLI and raw HTTP:

- DescribeRepositories answers ECR's AccessDeniedException to a caller that may not describe what it asks for:
  named repositories are each authorized on their ARN; a listing is ECR's `repository/*` question, and a caller
  allowed on no repository at all is refused, never answered with an empty list. Pages list only what the caller
  may describe (every repository not denied to it when it is allowed on `repository/*`).
- Every operation of ECR's model answers (with an empty body: never a 5xx, never an unknown or unsupported
  operation; an operation a newer model adds would be a `ValidationException`, 400, which nothing retries); a
  name outside the model is an `UnknownOperationException`, as AWS's JSON services answer.
- `/v1/search` (docker search) is a 404, not a 405.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import botocore.session
import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.server import ADMIN_KEY, ADMIN_SECRET, MoorageServer, auth_config, aws_cli, ecr_client, principal_toml

ACCOUNT, REGION = "111122223333", "us-east-1"
TARGET = "AmazonEC2ContainerRegistry_V20150921"
JSON_11 = "application/x-amz-json-1.1"
REPOSITORIES = ["other/z", "secret/x", "shared/app", "team/a", "team/b"]


def arn(repo: str) -> str:
    return f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/{repo}"


def user(name: str) -> str:
    return f"arn:aws:iam::{ACCOUNT}:user/{name}"


def policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


TOKEN = {"Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"}
DESCRIBE = "ecr:DescribeRepositories"
# name -> (access key, identity policy)
PRINCIPALS = {
    "nobody": ("AKIAMOORAGENOBODY001", policy(TOKEN)),
    "teamer": (
        "AKIAMOORAGETEAMER001",
        policy(TOKEN, {"Effect": "Allow", "Action": DESCRIBE, "Resource": arn("team/*")}),
    ),
    "wide": (
        "AKIAMOORAGEWIDE00001",
        policy(
            {"Effect": "Allow", "Action": "ecr:*", "Resource": "*"},
            {"Effect": "Deny", "Action": DESCRIBE, "Resource": arn("secret/*")},
        ),
    ),
    "denier": (
        "AKIAMOORAGEDENIER001",
        policy(
            {"Effect": "Allow", "Action": "ecr:*", "Resource": "*"},
            {"Effect": "Deny", "Action": DESCRIBE, "Resource": "*"},
        ),
    ),
    "shared": ("AKIAMOORAGESHARED001", policy(TOKEN)),  # allowed by shared/app's repository policy alone
}
SECRET = "secret-0123456789abcdefXYZ"


def config() -> str:
    blocks = [principal_toml(name, key, SECRET, text) for name, (key, text) in PRINCIPALS.items()]
    return auth_config(*blocks, extra=f'[registry]\naccount_id = "{ACCOUNT}"\nregion = "{REGION}"\n')


def client(srv: MoorageServer, name: str) -> Any:
    return ecr_client(srv, PRINCIPALS[name][0], SECRET) if name != "admin" else ecr_client(srv)


IMPLICIT = f"because no identity-based policy allows the {DESCRIBE} action"
EXPLICIT = "with an explicit deny in an identity-based policy"


def denied_message(who: str, resource: str, reason: str = IMPLICIT) -> str:
    """AWS's AccessDeniedException text."""
    return f"User: {user(who)} is not authorized to perform: {DESCRIBE} on resource: {resource} {reason}"


def error(call: Any, **kw: Any) -> ClientError:
    with pytest.raises(ClientError) as info:
        call(**kw)
    return info.value


def signed_post(srv: MoorageServer, operation: str, body: dict[str, Any], key: str, secret: str) -> requests.Response:
    """A raw SigV4-signed ECR API request, as botocore sends it."""
    data = json.dumps(body).encode()
    headers = {"Content-Type": JSON_11, "X-Amz-Target": f"{TARGET}.{operation}"}
    req = AWSRequest(method="POST", url=srv.url + "/", data=data, headers=headers)
    SigV4Auth(Credentials(key, secret), "ecr", REGION).add_auth(req)
    return requests.post(srv.url + "/", data=data, headers=dict(req.headers.items()), timeout=30)


def raw_error(r: requests.Response, code: str) -> str:
    assert r.status_code == 400, (r.status_code, r.text)
    assert r.headers["Content-Type"].split(";")[0] == JSON_11 and r.headers["X-Amzn-ErrorType"] == code, r.headers
    body = r.json()
    assert set(body) == {"__type", "message"} and body["__type"] == code, body
    return body["message"]


def names(out: dict[str, Any]) -> list[str]:
    return [r["repositoryName"] for r in out["repositories"]]


def listed(ecr: Any, page_size: int) -> list[str]:
    """Every page of a listing, following nextToken (each page at most `page_size`, never an empty page)."""
    got: list[str] = []
    kw: dict[str, Any] = {}
    while True:
        out = ecr.describe_repositories(maxResults=page_size, **kw)
        assert 0 < len(out["repositories"]) <= page_size, out
        got += names(out)
        if "nextToken" not in out:
            return got
        kw = {"nextToken": out["nextToken"]}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    s = MoorageServer(tmp_path_factory.mktemp("ecr-edges") / "data", config()).start()
    admin = ecr_client(s)
    for name in REPOSITORIES:
        admin.create_repository(repositoryName=name)
    admin.set_repository_policy(
        repositoryName="shared/app",
        policyText=policy({"Effect": "Allow", "Principal": {"AWS": user("shared")}, "Action": DESCRIBE}),
    )
    yield s
    s.stop()


# -- DescribeRepositories -----------------------------------------------------------------------------------


def test_describe_repositories_without_permission_is_access_denied(srv: MoorageServer):
    nobody = client(srv, "nobody")
    everything = arn("*")
    # Listing all: ECR's question is ecr:DescribeRepositories on repository/*, and the answer is an error.
    e = error(nobody.describe_repositories)
    assert e.response["Error"]["Code"] == "AccessDeniedException"
    assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert e.response["Error"]["Message"] == denied_message("nobody", everything)
    with pytest.raises(ClientError, match="AccessDeniedException"):
        list(nobody.get_paginator("describe_repositories").paginate())
    # Named repositories: each on its own ARN, whether it exists or not (a refusal says nothing about existence).
    for name in ("team/a", "no/such-repo"):
        e = error(nobody.describe_repositories, repositoryNames=[name])
        assert e.response["Error"]["Code"] == "AccessDeniedException"
        assert e.response["Error"]["Message"] == denied_message("nobody", arn(name))
    # Raw HTTP: 400, __type and X-Amzn-ErrorType.
    key = PRINCIPALS["nobody"][0]
    assert raw_error(signed_post(srv, "DescribeRepositories", {}, key, SECRET), "AccessDeniedException") == (
        denied_message("nobody", everything)
    )
    message = raw_error(
        signed_post(srv, "DescribeRepositories", {"repositoryNames": ["team/b"]}, key, SECRET), "AccessDeniedException"
    )
    assert message == denied_message("nobody", arn("team/b"))


def test_aws_cli_describe_repositories_denied(srv: MoorageServer):
    p = aws_cli(srv, "ecr", "describe-repositories", key=PRINCIPALS["nobody"][0], secret=SECRET, check=False)
    assert p.returncode != 0 and p.stdout == "", (p.returncode, p.stdout)
    assert (
        "An error occurred (AccessDeniedException) when calling the DescribeRepositories operation: "
        + denied_message("nobody", arn("*"))
    ) in p.stderr, p.stderr
    wide, teamer = PRINCIPALS["wide"][0], PRINCIPALS["teamer"][0]
    p = aws_cli(
        srv, "ecr", "describe-repositories", "--repository-names", "secret/x", key=wide, secret=SECRET, check=False
    )
    assert p.returncode != 0 and denied_message("wide", arn("secret/x"), EXPLICIT) in p.stderr, p.stderr
    # Allowed: the CLI's own pagination walks pages that hold only what the caller may describe.
    p = aws_cli(srv, "ecr", "describe-repositories", "--page-size", "1", "--output", "json", key=teamer, secret=SECRET)
    assert names(json.loads(p.stdout)) == ["team/a", "team/b"]


@pytest.mark.parametrize("page_size", [1, 2, 100])
def test_listing_shows_what_the_caller_may_describe(srv: MoorageServer, page_size: int):
    # The admin (ecr:* on *) and a caller denied one prefix: allowed on repository/*, everything not denied.
    assert listed(client(srv, "admin"), page_size) == REPOSITORIES
    assert listed(client(srv, "wide"), page_size) == [r for r in REPOSITORIES if not r.startswith("secret/")]
    # Allowed on some repositories only (ECR would refuse the listing): those, and tokens name nothing else.
    assert listed(client(srv, "teamer"), page_size) == ["team/a", "team/b"]
    assert listed(client(srv, "shared"), page_size) == ["shared/app"]  # a repository policy's grant


def test_named_repositories_are_each_authorized(srv: MoorageServer):
    teamer, wide = client(srv, "teamer"), client(srv, "wide")
    assert names(teamer.describe_repositories(repositoryNames=["team/b", "team/a"])) == ["team/b", "team/a"]
    e = error(teamer.describe_repositories, repositoryNames=["team/a", "other/z"])  # one refused: the call is
    assert e.response["Error"]["Message"] == denied_message("teamer", arn("other/z"))
    e = error(teamer.describe_repositories, repositoryNames=["team/missing"])  # allowed, missing: not found
    assert e.response["Error"]["Code"] == "RepositoryNotFoundException"
    e = error(wide.describe_repositories, repositoryNames=["secret/x"])
    assert e.response["Error"]["Message"] == denied_message("wide", arn("secret/x"), EXPLICIT)
    assert names(client(srv, "shared").describe_repositories(repositoryNames=["shared/app"])) == ["shared/app"]


def test_explicit_deny_on_everything_and_an_empty_registry(srv: MoorageServer, make_server: Any):
    e = error(client(srv, "denier").describe_repositories)
    assert e.response["Error"]["Message"] == denied_message("denier", arn("*"), EXPLICIT)
    empty = make_server(config())
    assert client(empty, "admin").describe_repositories()["repositories"] == []  # allowed on repository/*: []
    e = error(client(empty, "teamer").describe_repositories)  # allowed on team/* only, and there is none
    assert e.response["Error"]["Message"] == denied_message("teamer", arn("*"))


# -- every operation of the model --------------------------------------------------------------------------


def model_operations() -> list[str]:
    return sorted(botocore.session.get_session().get_service_model("ecr").operation_names)


def test_every_operation_answers_and_unknown_names_are_unknown(srv: MoorageServer):
    """An empty body for every operation of the model: an answer or a modeled client error, never a 5xx, never
    an unknown or unsupported operation (tests/test_ecr_all_operations.py calls each with valid input)."""
    for operation in model_operations():
        r = signed_post(srv, operation, {}, ADMIN_KEY, ADMIN_SECRET)
        assert r.status_code < 500, (operation, r.status_code, r.text)
        assert r.headers.get("X-Amzn-ErrorType") not in (
            "UnknownOperationException",
            "UnsupportedOperationException",
        ), (operation, r.text)
        if r.status_code == 400:
            assert "does not implement" not in r.json()["message"], (operation, r.text)

    # A name outside the model: UnknownOperationException.
    message = raw_error(signed_post(srv, "NoSuchOperation", {}, ADMIN_KEY, ADMIN_SECRET), "UnknownOperationException")
    assert "NoSuchOperation" in message


def test_aws_cli_registry_policy_not_found(srv: MoorageServer):
    p = aws_cli(srv, "ecr", "get-registry-policy", check=False)
    assert p.returncode != 0
    assert (
        "An error occurred (RegistryPolicyNotFoundException) when calling the GetRegistryPolicy operation: "
        f"Registry policy does not exist in the registry with id '{ACCOUNT}'"
    ) in p.stderr, p.stderr


# -- /v1/search -----------------------------------------------------------------------------------------------


def test_v1_search_is_not_found(srv: MoorageServer):
    for method in ("GET", "HEAD"):
        for path in ("/v1/search?q=team&n=25", "/v1/_ping", "/v1/"):
            r = requests.request(method, srv.url + path, timeout=10)  # no credentials: nothing to authorize
            assert r.status_code == 404, (method, path, r.status_code, r.text)
            assert "Docker-Distribution-Api-Version" not in r.headers  # not the v2 API
            if method == "GET":
                assert [e["code"] for e in r.json()["errors"]] == ["NOT_FOUND"], r.text
                assert re.search(r"no such endpoint: /v1/\S*", r.json()["errors"][0]["message"])


@pytest.mark.docker
@pytest.mark.slow
def test_docker_search_gets_a_404(srv: MoorageServer, dockerd: Any):
    p = dockerd.run("search", f"{srv.host}/team", check=False)
    assert p.returncode != 0 and "404" in p.stderr and "405" not in p.stderr, (p.stdout, p.stderr)
