"""Authentication and authorization end to end: real servers, real boto3 / AWS CLI / skopeo / docker.

Covers the /v2 challenge and token schemes, GetAuthorizationToken and `docker login`, identity and repository
policies (pull-only principals, anonymous pull, explicit deny), SigV4 failures and clock skew, token expiry,
tampering, signing-key rotation, policies evaluated at request time, the generated admin, and auth off.
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.dockerd import Dockerd
from tests.oci import ALL_MANIFEST_TYPES, OCI_MANIFEST, Image, digest_of, error_codes, make_image, random_blob
from tests.server import (
    ADMIN_KEY,
    ADMIN_SECRET,
    ALLOW_ALL,
    AUTH_OFF,
    MoorageServer,
    auth_config,
    aws_cli,
    ecr_client,
    login_password,
    moorage_cli,
    principal_toml,
)
from tests.skopeo import Skopeo

ACCOUNT = "000000000000"
REGION = "us-east-1"
NOT_AUTHORIZED = "Not Authorized"
EXPIRED = "Your authorization token has expired. Reauthenticate and try again."
ECR_TARGET = "AmazonEC2ContainerRegistry_V20150921"

PULLER, PULLER_KEY, PULLER_SECRET = "puller", "AKIAMOORAGEPULLER001", "puller-secret-0123456789abcdefXYZ"
PULL_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": [
                    "ecr:GetAuthorizationToken",
                    "ecr:BatchGetImage",
                    "ecr:GetDownloadUrlForLayer",
                    "ecr:BatchCheckLayerAvailability",
                ],
                "Resource": "*",
            }
        ],
    }
)
# Allowed to pull, but not to get a token.
NOTOKEN, NOTOKEN_KEY, NOTOKEN_SECRET = "notoken", "AKIAMOORAGENOTOKEN01", "notoken-secret-0123456789abcdef"
NOTOKEN_POLICY = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ecr:BatchGetImage", "Resource": "*"}]}
)
ANON_PULL_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "AnonPull",
                "Effect": "Allow",
                "Principal": "*",
                "Action": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
            }
        ],
    }
)

# -- helpers -----------------------------------------------------------------------------------------


def user_arn(name: str) -> str:
    return f"arn:aws:iam::{ACCOUNT}:user/{name}"


def repo_arn(repo: str) -> str:
    return f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/{repo}"


def implicit_deny(user: str, action: str, repo: str) -> str:
    return (
        f"User: {user_arn(user)} is not authorized to perform: {action} on resource: {repo_arn(repo)} "
        f"because no identity-based policy allows the {action} action"
    )


def challenge_value(srv: MoorageServer) -> str:
    """The challenge of a /v2 401: the Docker token flow's, naming Moorage's token endpoint (so that clients
    without credentials can get an anonymous token; `docker login` sends AWS:<token> there)."""
    return f'Bearer realm="http://{srv.host}/v2/token",service="{srv.host}"'


def basic(password: str, user: str = "AWS") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def call(
    srv: MoorageServer,
    method: str,
    path: str,
    authorization: str | bytes | None = None,
    *,
    headers: dict[str, str] | None = None,
    **kw: Any,
) -> requests.Response:
    """One /v2 request with exactly the Authorization header given (or none); never a 5xx."""
    headers = dict(headers or {})
    if authorization is not None:
        headers["Authorization"] = authorization
    r = requests.request(method, srv.url + path, headers=headers, timeout=30, allow_redirects=False, **kw)
    assert r.status_code < 500, f"{method} {path} -> {r.status_code}: {r.text[:500]}"
    return r


def get_manifest(
    srv: MoorageServer, repo: str, ref: str, authorization: str | bytes | None = None
) -> requests.Response:
    return call(srv, "GET", f"/v2/{repo}/manifests/{ref}", authorization, headers={"Accept": ALL_MANIFEST_TYPES})


def push_image(srv: MoorageServer, repo: str, ref: str, image: Image, authorization: str) -> None:
    for blob in image.blobs:
        r = call(
            srv,
            "POST",
            f"/v2/{repo}/blobs/uploads/",
            authorization,
            params={"digest": digest_of(blob)},
            data=blob,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert r.status_code == 201, (r.status_code, r.text)
    r = call(
        srv,
        "PUT",
        f"/v2/{repo}/manifests/{ref}",
        authorization,
        data=image.manifest,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert r.status_code == 201, (r.status_code, r.text)


def assert_challenge(srv: MoorageServer, r: requests.Response) -> None:
    """The answer to a /v2 request without credentials: 401, a challenge, and the OCI error JSON (UNAUTHORIZED)
    with ECR's message `Not Authorized`."""
    assert r.status_code == 401, (r.status_code, r.headers, r.text)
    # A request on a repository also names the scope it needed.
    value = r.headers.get("WWW-Authenticate", "")
    scoped = re.escape(challenge_value(srv)) + r',scope="repository:[a-z0-9/_.-]+:(pull|pull,push|delete)"'
    assert value == challenge_value(srv) or re.fullmatch(scoped, value), dict(r.headers)
    assert oci_error(r, 401, "UNAUTHORIZED") == NOT_AUTHORIZED, r.text
    assert r.headers.get("Docker-Distribution-API-Version") == "registry/2.0", dict(r.headers)


def oci_error(r: requests.Response, status: int, code: str) -> str:
    """Assert the status and the single OCI error code; return its message."""
    assert r.status_code == status, (r.status_code, r.headers, r.text)
    assert error_codes(r) == [code], r.text
    return r.json()["errors"][0]["message"]


def assert_denied(r: requests.Response, message: str) -> None:
    assert oci_error(r, 403, "DENIED") == message


def ecr_error(fn: Callable[..., object], **kw: object) -> ClientError:
    with pytest.raises(ClientError) as info:
        fn(**kw)
    return info.value


def error_code(e: ClientError) -> str:
    return e.response["Error"]["Code"]


def jwt_part(token: str, index: int) -> dict:
    seg = token.split(".")[index]
    return json.loads(base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class _SigV4At(SigV4Auth):
    """botocore's SigV4 signer with the signing time fixed (add_auth always stamps the current time)."""

    def __init__(self, credentials: Credentials, when: datetime) -> None:
        super().__init__(credentials, "ecr", REGION)
        self.when = when

    def add_auth(self, request: AWSRequest) -> None:
        request.context["timestamp"] = self.when.strftime(SIGV4_TIMESTAMP)
        self._modify_request_before_signing(request)
        string_to_sign = self.string_to_sign(request, self.canonical_request(request))
        self._inject_signature_to_request(request, self.signature(string_to_sign, request))


def ecr_raw(
    srv: MoorageServer,
    operation: str,
    body: dict | None = None,
    *,
    signed_at: datetime | None = None,
    key: str = ADMIN_KEY,
    secret: str = ADMIN_SECRET,
    sign: bool = True,
) -> requests.Response:
    """A raw ECR JSON call, SigV4-signed by botocore at `signed_at` (default now), or unsigned."""
    data = json.dumps(body or {}).encode()
    request = AWSRequest(
        method="POST",
        url=srv.url + "/",
        data=data,
        headers={"X-Amz-Target": f"{ECR_TARGET}.{operation}", "Content-Type": "application/x-amz-json-1.1"},
    )
    if sign:
        _SigV4At(Credentials(key, secret), signed_at or datetime.now(UTC)).add_auth(request)
    r = requests.post(srv.url + "/", data=data, headers=dict(request.headers.items()), timeout=30)
    assert r.status_code < 500, (r.status_code, r.text)
    return r


def ecr_raw_error(r: requests.Response, code: str) -> str:
    """ECR API errors: HTTP 400 with `__type` in the JSON body; returns the message."""
    assert r.status_code == 400, (r.status_code, r.text)
    body = r.json()
    assert body.get("__type") == code, body
    assert r.headers.get("X-Amzn-ErrorType") == code, dict(r.headers)
    return body.get("message") or body.get("Message") or ""


def cli_env(**extra: str) -> dict[str, str]:
    """The environment minus any AWS settings of the machine, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull, **extra)
    return env


def moorage(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The `moorage` CLI without the machine's AWS settings."""
    return moorage_cli(*args, env=env or cli_env(), timeout=60)


# -- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    """A registry shared by the module: the test admin, a pull-only principal and a principal without tokens."""
    config = auth_config(
        principal_toml(PULLER, PULLER_KEY, PULLER_SECRET, PULL_POLICY),
        principal_toml(NOTOKEN, NOTOKEN_KEY, NOTOKEN_SECRET, NOTOKEN_POLICY),
    )
    server = MoorageServer(tmp_path_factory.mktemp("auth") / "data", config).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def admin_token(srv: MoorageServer) -> str:
    return login_password(srv)


@pytest.fixture(scope="module")
def puller_token(srv: MoorageServer) -> str:
    return login_password(srv, PULLER_KEY, PULLER_SECRET)


@pytest.fixture(scope="module")
def pushed(srv: MoorageServer, admin_token: str) -> tuple[str, Image]:
    """An image the admin pushed, as (repository, image) under tag v1."""
    repo, image = "auth/pushed", make_image(2, 1024)
    push_image(srv, repo, "v1", image, basic(admin_token))
    return repo, image


def layout_top_digest(layout: Path, tag: str) -> str:
    index = json.loads((layout / "index.json").read_text())
    (entry,) = [
        m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    ]
    return entry["digest"]


def assert_layout_has(layout: Path, tag: str, image: Image) -> None:
    assert layout_top_digest(layout, tag) == image.digest
    for blob in image.blobs:
        alg, hexd = digest_of(blob).split(":")
        assert (layout / "blobs" / alg / hexd).read_bytes() == blob


# -- 1. the /v2 challenge and the token schemes ------------------------------------------------------


@pytest.mark.parametrize("path", ["/v2/", "/v2", "/v2/auth/nothing/manifests/x", "/v2/auth/pushed/blobs/uploads/"])
def test_unauthenticated_requests_get_the_ecr_challenge(srv: MoorageServer, path: str):
    method = "POST" if path.endswith("uploads/") else "GET"
    assert_challenge(srv, call(srv, method, path))


def test_basic_and_bearer_token_schemes(srv: MoorageServer, admin_token: str, pushed: tuple[str, Image]):
    repo, image = pushed
    ok = call(srv, "GET", "/v2/", basic(admin_token))
    assert ok.status_code == 200, (ok.status_code, ok.text)
    assert ok.headers.get("Docker-Distribution-API-Version") == "registry/2.0"

    # The authorizationToken from GetAuthorizationToken is byte for byte the Basic credentials (ECR's curl recipe).
    data = ecr_client(srv).get_authorization_token()["authorizationData"][0]
    assert base64.b64decode(data["authorizationToken"]).decode().startswith("AWS:")
    assert data["proxyEndpoint"] == srv.url
    for auth in (f"Basic {data['authorizationToken']}", basic(admin_token), f"Bearer {admin_token}"):
        assert call(srv, "GET", "/v2/", auth).status_code == 200, auth
        r = get_manifest(srv, repo, "v1", auth)
        assert r.status_code == 200 and r.content == image.manifest, (auth, r.status_code, r.text)


def test_basic_user_other_than_aws_is_401(srv: MoorageServer, admin_token: str):
    for user in ("admin", "aws", "", "AWS "):
        r = call(srv, "GET", "/v2/", basic(admin_token, user=user))
        assert r.status_code == 401, (user, r.status_code, r.text)
        assert r.headers.get("WWW-Authenticate") == challenge_value(srv), dict(r.headers)
    r = call(srv, "GET", "/v2/auth/pushed/manifests/v1", basic(admin_token, user="admin"))
    assert r.status_code == 401, (r.status_code, r.text)


@pytest.mark.parametrize("credentials", ["!!!not-base64!!!", "QVdTOnRva2V", "/w==", "%%%", "QVdT OnRva2Vu"])
def test_basic_garbage_base64_is_400(srv: MoorageServer, credentials: str):
    # /w== is valid base64 of a byte that is not UTF-8.
    r = call(srv, "GET", "/v2/", f"Basic {credentials}")
    assert oci_error(r, 400, "UNAUTHORIZED"), r.text


def test_basic_without_colon_is_401(srv: MoorageServer):
    r = call(srv, "GET", "/v2/", "Basic " + base64.b64encode(b"AWS").decode())
    assert r.status_code == 401, (r.status_code, r.text)
    assert r.headers.get("WWW-Authenticate") == challenge_value(srv), dict(r.headers)


# -- 2. the docker flow: aws ecr get-login-password | docker login ------------------------------------


def build_scratch_image(d: Dockerd, ctx: Path, ref: str) -> str:
    """`docker build` of FROM scratch + one random file; returns the image id."""
    ctx.mkdir(parents=True)
    nonce = os.urandom(8).hex()
    (ctx / "blob.bin").write_bytes(os.urandom(64 * 1024))
    (ctx / "Dockerfile").write_text(f'FROM scratch\nCOPY blob.bin /blob.bin\nLABEL moorage.auth.nonce="{nonce}"\n')
    d.run("build", "--rm", "-t", ref, str(ctx), timeout=180)
    return d.run("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()


def docker_login(d: Dockerd, srv: MoorageServer, password: str) -> None:
    out = d.run("login", "--username", "AWS", "--password-stdin", srv.host, input=password)
    assert "Login Succeeded" in out.stdout, out


def wipe_images(d: Dockerd) -> None:
    """Remove every container and image, so a following pull must really fetch from the registry."""
    containers = d.run("ps", "-aq").stdout.split()
    if containers:
        d.run("rm", "-f", *containers)
    d.run("image", "prune", "-a", "-f")
    assert not d.run("images", "-aq").stdout.split()


@pytest.fixture
def docker(dockerd: Dockerd, srv: MoorageServer) -> Iterator[Dockerd]:
    """The module's dockerd, logged out of the shared registry and emptied of images afterwards."""
    yield dockerd
    dockerd.run("logout", srv.host, check=False)
    wipe_images(dockerd)


@pytest.mark.docker
@pytest.mark.slow
def test_docker_login_with_aws_cli_push_rmi_pull(docker: Dockerd, srv: MoorageServer, tmp_path: Path):
    ref = f"{srv.host}/auth/docker-flow:v1"
    image_id = build_scratch_image(docker, tmp_path / "ctx", ref)

    # Without a login, docker gets an anonymous token, which may push nothing.
    denied = docker.run("push", ref, check=False, timeout=120)
    assert denied.returncode != 0, denied.stdout
    assert "unauthorized:" in denied.stderr + denied.stdout, denied.stderr

    password = aws_cli(srv, "ecr", "get-login-password").stdout.strip()
    assert password and ":" not in password
    docker_login(docker, srv, password)

    out = docker.run("push", ref, timeout=180).stdout
    m = re.search(r"^v1: digest: (sha256:[0-9a-f]{64}) size: \d+$", out, re.M)
    assert m, out
    docker.run("rmi", ref)
    assert docker.run("image", "inspect", ref, check=False).returncode != 0

    pulled = docker.run("pull", ref, timeout=180).stdout
    assert f"Digest: {m[1]}" in pulled, pulled
    assert docker.run("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip() == image_id


# -- 3. a pull-only principal --------------------------------------------------------------------------


def test_pull_only_principal_pulls_with_requests(srv: MoorageServer, puller_token: str, pushed: tuple[str, Image]):
    repo, image = pushed
    auth = basic(puller_token)
    r = get_manifest(srv, repo, "v1", auth)
    assert r.status_code == 200 and r.content == image.manifest, (r.status_code, r.text)
    for blob in image.blobs:
        d = digest_of(blob)
        g = call(srv, "GET", f"/v2/{repo}/blobs/{d}", auth)
        assert g.status_code == 200 and g.content == blob, (g.status_code, g.text[:200])
        h = call(srv, "HEAD", f"/v2/{repo}/blobs/{d}", auth)
        assert h.status_code == 200 and h.headers["Docker-Content-Digest"] == d


def test_pull_only_principal_cannot_push_with_requests(
    srv: MoorageServer, puller_token: str, pushed: tuple[str, Image]
):
    repo, image = pushed
    auth = basic(puller_token)
    blob = random_blob(512)
    for target in (repo, "auth/puller-new"):
        r = call(srv, "POST", f"/v2/{target}/blobs/uploads/", auth)
        assert_denied(r, implicit_deny(PULLER, "ecr:InitiateLayerUpload", target))
        r = call(
            srv,
            "POST",
            f"/v2/{target}/blobs/uploads/",
            auth,
            params={"digest": digest_of(blob)},
            data=blob,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert_denied(r, implicit_deny(PULLER, "ecr:InitiateLayerUpload", target))
    r = call(srv, "PUT", f"/v2/{repo}/manifests/v2", auth, data=image.manifest, headers={"Content-Type": OCI_MANIFEST})
    assert_denied(r, implicit_deny(PULLER, "ecr:PutImage", repo))
    r = call(srv, "DELETE", f"/v2/{repo}/manifests/{image.digest}", auth)
    assert_denied(r, implicit_deny(PULLER, "ecr:BatchDeleteImage", repo))
    # Nothing changed: the admin still sees just v1, and the blob was never stored.
    admin = basic(login_password(srv))
    tags = call(srv, "GET", f"/v2/{repo}/tags/list", admin)
    assert tags.status_code == 200 and tags.json()["tags"] == ["v1"], tags.text
    assert call(srv, "HEAD", f"/v2/{repo}/blobs/{digest_of(blob)}", admin).status_code == 404
    assert get_manifest(srv, repo, "v2", admin).status_code == 404


def test_pull_only_principal_tags_list_is_403(srv: MoorageServer, puller_token: str, pushed: tuple[str, Image]):
    repo, _ = pushed
    r = call(srv, "GET", f"/v2/{repo}/tags/list", basic(puller_token))
    assert_denied(r, implicit_deny(PULLER, "ecr:ListImages", repo))


def test_pull_only_principal_ecr_api_denials(srv: MoorageServer, pushed: tuple[str, Image]):
    repo, _ = pushed
    ecr = ecr_client(srv, PULLER_KEY, PULLER_SECRET)

    e = ecr_error(ecr.delete_repository, repositoryName=repo, force=True)
    assert error_code(e) == "AccessDeniedException", e.response
    assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert e.response["Error"]["Message"] == implicit_deny(PULLER, "ecr:DeleteRepository", repo)

    e = ecr_error(ecr.list_images, repositoryName=repo)
    assert error_code(e) == "AccessDeniedException", e.response
    assert e.response["Error"]["Message"] == implicit_deny(PULLER, "ecr:ListImages", repo)

    p = aws_cli(
        srv, "ecr", "delete-repository", "--repository-name", repo, "--force",
        key=PULLER_KEY, secret=PULLER_SECRET, check=False,
    )  # fmt: skip
    assert p.returncode != 0, p.stdout
    assert "AccessDeniedException" in p.stderr, p.stderr

    # What the policy does allow still works, and the repository survived.
    got = ecr.batch_get_image(repositoryName=repo, imageIds=[{"imageTag": "v1"}])
    assert [i["imageId"]["imageTag"] for i in got["images"]] == ["v1"]
    assert ecr_client(srv).describe_repositories(repositoryNames=[repo])["repositories"][0]["repositoryName"] == repo


def test_principal_without_get_authorization_token_gets_no_token(srv: MoorageServer):
    e = ecr_error(ecr_client(srv, NOTOKEN_KEY, NOTOKEN_SECRET).get_authorization_token)
    assert error_code(e) == "AccessDeniedException", e.response
    assert "ecr:GetAuthorizationToken" in e.response["Error"]["Message"]
    p = aws_cli(srv, "ecr", "get-login-password", key=NOTOKEN_KEY, secret=NOTOKEN_SECRET, check=False)
    assert p.returncode != 0 and "AccessDeniedException" in p.stderr, (p.stdout, p.stderr)


def test_pull_only_principal_skopeo_copy(
    srv: MoorageServer, puller_token: str, pushed: tuple[str, Image], skopeo: Skopeo, tmp_path: Path
):
    repo, image = pushed
    skopeo(
        "copy", "--src-tls-verify=false", "--preserve-digests", "--src-creds", f"AWS:{puller_token}",
        f"docker://{srv.host}/{repo}:v1", f"oci:{tmp_path / 'out'}:v1",
    )  # fmt: skip
    assert_layout_has(tmp_path / "out", "v1", image)

    # The same principal cannot push with skopeo either.
    p = skopeo(
        "copy", "--dest-tls-verify=false", "--dest-creds", f"AWS:{puller_token}",
        f"oci:{tmp_path / 'out'}:v1", f"docker://{srv.host}/auth/skopeo-denied:v1",
        check=False,
    )  # fmt: skip
    assert p.returncode != 0, p.stdout
    assert "denied" in p.stderr.lower() and "is not authorized to perform: ecr:" in p.stderr, p.stderr


@pytest.mark.docker
@pytest.mark.slow
def test_pull_only_principal_with_docker(docker: Dockerd, srv: MoorageServer, admin_token: str, tmp_path: Path):
    repo = "auth/docker-puller"
    ref = f"{srv.host}/{repo}:v1"
    image_id = build_scratch_image(docker, tmp_path / "ctx", ref)
    docker_login(docker, srv, admin_token)
    docker.run("push", ref, timeout=180)
    wipe_images(docker)

    docker_login(docker, srv, login_password(srv, PULLER_KEY, PULLER_SECRET))
    docker.run("pull", ref, timeout=180)
    assert docker.run("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip() == image_id

    # A new image (layers the registry has not seen) cannot be pushed by the puller.
    ref2 = f"{srv.host}/{repo}:v2"
    build_scratch_image(docker, tmp_path / "ctx2", ref2)
    p = docker.run("push", ref2, check=False, timeout=180)
    assert p.returncode != 0, p.stdout
    out = p.stdout + p.stderr
    assert f"denied: {implicit_deny(PULLER, 'ecr:InitiateLayerUpload', repo)}" in out, out
    assert get_manifest(srv, repo, "v2", basic(admin_token)).status_code == 404


# -- 4. a repository policy granting anonymous pull ---------------------------------------------------


@pytest.fixture(scope="module")
def anon_repos(srv: MoorageServer, admin_token: str) -> dict[str, Image]:
    """auth/anon-a (anonymous pull allowed by its repository policy) and auth/anon-b (no policy)."""
    images = {"auth/anon-a": make_image(2, 512), "auth/anon-b": make_image(1, 512)}
    for repo, image in images.items():
        push_image(srv, repo, "v1", image, basic(admin_token))
    ecr_client(srv).set_repository_policy(repositoryName="auth/anon-a", policyText=ANON_PULL_POLICY)
    return images


def test_anonymous_pull_allowed_by_repository_policy(srv: MoorageServer, anon_repos: dict[str, Image]):
    image = anon_repos["auth/anon-a"]
    r = get_manifest(srv, "auth/anon-a", "v1")
    assert r.status_code == 200 and r.content == image.manifest, (r.status_code, r.text)
    for blob in image.blobs:
        g = call(srv, "GET", f"/v2/auth/anon-a/blobs/{digest_of(blob)}")
        assert g.status_code == 200 and g.content == blob, (g.status_code, g.text[:200])
        assert call(srv, "HEAD", f"/v2/auth/anon-a/blobs/{digest_of(blob)}").status_code == 200

    # Only pull: the base endpoint, tags/list and pushes still ask for credentials.
    assert_challenge(srv, call(srv, "GET", "/v2/"))
    assert_challenge(srv, call(srv, "GET", "/v2/auth/anon-a/tags/list"))
    assert_challenge(srv, call(srv, "POST", "/v2/auth/anon-a/blobs/uploads/"))
    blob = random_blob(256)
    r = call(
        srv,
        "POST",
        "/v2/auth/anon-a/blobs/uploads/",
        params={"digest": digest_of(blob)},
        data=blob,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert_challenge(srv, r)
    r = call(srv, "PUT", "/v2/auth/anon-a/manifests/v2", data=image.manifest, headers={"Content-Type": OCI_MANIFEST})
    assert_challenge(srv, r)
    assert_challenge(srv, call(srv, "DELETE", f"/v2/auth/anon-a/manifests/{image.digest}"))

    # The repository without a policy is not public.
    other = anon_repos["auth/anon-b"]
    assert_challenge(srv, get_manifest(srv, "auth/anon-b", "v1"))
    assert_challenge(srv, call(srv, "GET", f"/v2/auth/anon-b/blobs/{digest_of(other.layers[0])}"))
    # A blob of A is not reachable anonymously through B's name.
    assert_challenge(srv, call(srv, "GET", f"/v2/auth/anon-b/blobs/{digest_of(image.layers[0])}"))


def test_empty_basic_credentials_count_as_anonymous(srv: MoorageServer, anon_repos: dict[str, Image]):
    """containers/image (skopeo, podman, buildah) without credentials answers a Basic challenge with empty
    ones, `Authorization: Basic Og==` (base64 of ":"): that is an anonymous request, not a wrong user name."""
    empty = "Basic " + base64.b64encode(b":").decode()
    r = get_manifest(srv, "auth/anon-a", "v1", empty)
    assert r.status_code == 200 and r.content == anon_repos["auth/anon-a"].manifest, (r.status_code, r.text)
    assert_challenge(srv, get_manifest(srv, "auth/anon-b", "v1", empty))


def test_anonymous_pull_with_skopeo(srv: MoorageServer, anon_repos: dict[str, Image], skopeo: Skopeo, tmp_path: Path):
    image = anon_repos["auth/anon-a"]
    # skopeo without credentials answers the Basic challenge with empty ones (`Authorization: Basic Og==`).
    p = skopeo(
        "copy", "--src-tls-verify=false", "--preserve-digests",
        f"docker://{srv.host}/auth/anon-a:v1", f"oci:{tmp_path / 'a'}:v1",
        check=False,
    )  # fmt: skip
    assert p.returncode == 0, f"anonymous skopeo copy from the public repository failed:\n{p.stderr}"
    assert_layout_has(tmp_path / "a", "v1", image)

    p = skopeo(
        "copy", "--src-tls-verify=false", f"docker://{srv.host}/auth/anon-b:v1", f"oci:{tmp_path / 'b'}:v1", check=False
    )
    assert p.returncode != 0, p.stdout
    assert "unauthorized" in p.stderr.lower() or "authentication required" in p.stderr.lower(), p.stderr


def test_deleting_the_repository_policy_ends_anonymous_pull(srv: MoorageServer, admin_token: str):
    repo, image = "auth/anon-c", make_image(1, 256)
    push_image(srv, repo, "v1", image, basic(admin_token))
    ecr = ecr_client(srv)
    assert_challenge(srv, get_manifest(srv, repo, "v1"))
    ecr.set_repository_policy(repositoryName=repo, policyText=ANON_PULL_POLICY)
    assert get_manifest(srv, repo, "v1").status_code == 200
    assert call(srv, "GET", f"/v2/{repo}/blobs/{digest_of(image.layers[0])}").status_code == 200

    ecr.delete_repository_policy(repositoryName=repo)
    assert_challenge(srv, get_manifest(srv, repo, "v1"))
    assert_challenge(srv, call(srv, "GET", f"/v2/{repo}/blobs/{digest_of(image.layers[0])}"))
    # Set again with the same text: public again (no stale cache either way).
    ecr.set_repository_policy(repositoryName=repo, policyText=ANON_PULL_POLICY)
    assert get_manifest(srv, repo, "v1").status_code == 200
    ecr.delete_repository_policy(repositoryName=repo)
    assert_challenge(srv, get_manifest(srv, repo, "v1"))
    # The admin is unaffected throughout.
    assert get_manifest(srv, repo, "v1", basic(admin_token)).status_code == 200


# -- 5. an explicit Deny in a repository policy beats the identity Allow ------------------------------


def test_repository_policy_deny_beats_identity_allow(srv: MoorageServer, admin_token: str, puller_token: str):
    denied_repo, open_repo = "auth/deny-c", "auth/deny-d"
    images = {denied_repo: make_image(1, 256), open_repo: make_image(1, 256)}
    for repo, image in images.items():
        push_image(srv, repo, "v1", image, basic(admin_token))
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "NoPuller", "Effect": "Deny", "Principal": {"AWS": user_arn(PULLER)}, "Action": "ecr:*"},
        ],
    }
    ecr_client(srv).set_repository_policy(repositoryName=denied_repo, policyText=json.dumps(policy))

    auth = basic(puller_token)
    r = get_manifest(srv, denied_repo, "v1", auth)
    assert_denied(
        r,
        f"User: {user_arn(PULLER)} is not authorized to perform: ecr:BatchGetImage on resource: "
        f"{repo_arn(denied_repo)} with an explicit deny in a resource-based policy",
    )
    layer = digest_of(images[denied_repo].layers[0])
    assert oci_error(call(srv, "GET", f"/v2/{denied_repo}/blobs/{layer}", auth), 403, "DENIED")
    e = ecr_error(
        ecr_client(srv, PULLER_KEY, PULLER_SECRET).batch_get_image,
        repositoryName=denied_repo,
        imageIds=[{"imageTag": "v1"}],
    )
    assert error_code(e) == "AccessDeniedException" and "explicit deny" in e.response["Error"]["Message"]

    # Other repositories still pull; the admin (not named in the Deny) still pulls the denied one.
    r = get_manifest(srv, open_repo, "v1", auth)
    assert r.status_code == 200 and r.content == images[open_repo].manifest
    r = get_manifest(srv, denied_repo, "v1", basic(admin_token))
    assert r.status_code == 200 and r.content == images[denied_repo].manifest


# -- 6. SigV4 failures on the ECR API -------------------------------------------------------------------


def test_wrong_secret_is_invalid_signature(srv: MoorageServer):
    e = ecr_error(ecr_client(srv, ADMIN_KEY, ADMIN_SECRET + "x").get_authorization_token)
    assert error_code(e) == "InvalidSignatureException", e.response
    assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    e = ecr_error(ecr_client(srv, PULLER_KEY, ADMIN_SECRET).describe_repositories)
    assert error_code(e) == "InvalidSignatureException", e.response


def test_unknown_access_key_is_unrecognized_client(srv: MoorageServer):
    e = ecr_error(ecr_client(srv, "AKIAMOORAGEUNKNOWN99", ADMIN_SECRET).get_authorization_token)
    assert error_code(e) == "UnrecognizedClientException", e.response
    assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert e.response["Error"]["Message"] == "The security token included in the request is invalid."


def test_aws_cli_get_login_password_with_wrong_secret(srv: MoorageServer):
    p = aws_cli(srv, "ecr", "get-login-password", secret="definitely-the-wrong-secret-123", check=False)
    assert p.returncode != 0, p.stdout
    assert "InvalidSignatureException" in p.stderr, p.stderr
    assert not p.stdout.strip(), p.stdout


def test_signature_clock_skew(srv: MoorageServer):
    now = datetime.now(UTC)
    msg = ecr_raw_error(
        ecr_raw(srv, "DescribeRepositories", signed_at=now - timedelta(minutes=20)), "InvalidSignatureException"
    )
    assert msg.startswith("Signature expired:"), msg
    msg = ecr_raw_error(
        ecr_raw(srv, "DescribeRepositories", signed_at=now + timedelta(minutes=20)), "InvalidSignatureException"
    )
    assert msg.startswith("Signature not yet current:"), msg

    for minutes in (-14, 0, 14):
        r = ecr_raw(srv, "DescribeRepositories", signed_at=now + timedelta(minutes=minutes))
        assert r.status_code == 200, (minutes, r.status_code, r.text)
        assert "repositories" in r.json()
    r = ecr_raw(srv, "GetAuthorizationToken", signed_at=now - timedelta(minutes=14))
    assert r.status_code == 200 and r.json()["authorizationData"], r.text


def test_unsigned_and_badly_signed_raw_requests(srv: MoorageServer):
    msg = ecr_raw_error(ecr_raw(srv, "GetAuthorizationToken", sign=False), "MissingAuthenticationTokenException")
    assert msg, "the error carries a message"
    ecr_raw_error(ecr_raw(srv, "GetAuthorizationToken", secret="nope-nope-nope-nope"), "InvalidSignatureException")
    ecr_raw_error(ecr_raw(srv, "GetAuthorizationToken", key="AKIAMOORAGEUNKNOWN98"), "UnrecognizedClientException")


# -- 7. token expiry --------------------------------------------------------------------------------------


def test_expired_token_is_403_denied(make_server):
    ttl = 2.0
    s: MoorageServer = make_server(auth_config(extra=f'token_ttl = "{ttl}s"\n'))
    ecr = ecr_client(s)
    push_image(s, "auth/ttl", "v1", make_image(1, 128), basic(login_password(s)))

    issued = time.time()
    data = ecr.get_authorization_token()["authorizationData"][0]
    assert abs(data["expiresAt"].timestamp() - (issued + ttl)) <= 2, (data["expiresAt"], issued)
    token = base64.b64decode(data["authorizationToken"]).decode().removeprefix("AWS:")
    assert get_manifest(s, "auth/ttl", "v1", basic(token)).status_code == 200

    time.sleep(max(0.0, data["expiresAt"].timestamp() - time.time()) + 1.1)  # past the token's expiry
    for r in (get_manifest(s, "auth/ttl", "v1", basic(token)), get_manifest(s, "auth/ttl", "v1", f"Bearer {token}")):
        assert oci_error(r, 403, "DENIED") == EXPIRED
    assert oci_error(call(s, "GET", "/v2/", basic(token)), 403, "DENIED") == EXPIRED
    assert oci_error(call(s, "POST", "/v2/auth/ttl/blobs/uploads/", basic(token)), 403, "DENIED") == EXPIRED

    # Reauthenticating fixes it.
    assert get_manifest(s, "auth/ttl", "v1", basic(login_password(s))).status_code == 200


def test_default_token_lifetime_is_12_hours(srv: MoorageServer):
    issued = time.time()
    data = ecr_client(srv).get_authorization_token()["authorizationData"][0]
    assert abs(data["expiresAt"].timestamp() - (issued + 12 * 3600)) <= 2, data["expiresAt"]
    claims = jwt_part(base64.b64decode(data["authorizationToken"]).decode().removeprefix("AWS:"), 1)
    assert claims["sub"] == "admin" and claims["exp"] - claims["iat"] in (43199, 43200, 43201), claims


# -- 8. tampered, foreign and garbage tokens; key rotation ---------------------------------------------


def test_tampered_token_is_401_signature_invalid(srv: MoorageServer, admin_token: str):
    header, payload, signature = admin_token.split(".")
    i = len(payload) // 2
    flipped = payload[:i] + ("A" if payload[i] != "A" else "B") + payload[i + 1 :]
    tampered = f"{header}.{flipped}.{signature}"
    for auth in (basic(tampered), f"Bearer {tampered}"):
        r = call(srv, "GET", "/v2/", auth)
        msg = oci_error(r, 401, "UNAUTHORIZED")
        assert "signature is invalid" in msg and "altered" in msg, msg
        assert r.headers.get("WWW-Authenticate") == challenge_value(srv), dict(r.headers)
        assert oci_error(get_manifest(srv, "auth/pushed", "v1", auth), 401, "UNAUTHORIZED") == msg

    # A signature moved onto a forged payload (another principal) is just as invalid.
    forged = b64url(json.dumps({**jwt_part(admin_token, 1), "sub": PULLER}).encode())
    msg = oci_error(call(srv, "GET", "/v2/", basic(f"{header}.{forged}.{signature}")), 401, "UNAUTHORIZED")
    assert "signature is invalid" in msg, msg
    # The genuine token is unaffected.
    assert call(srv, "GET", "/v2/", basic(admin_token)).status_code == 200


def test_token_from_another_server_is_401_unknown_key(srv: MoorageServer, make_server):
    other = make_server(auth_config())
    foreign = login_password(other)
    assert jwt_part(foreign, 0)["kid"] != jwt_part(login_password(srv), 0)["kid"]
    assert call(other, "GET", "/v2/", basic(foreign)).status_code == 200
    r = call(srv, "GET", "/v2/", basic(foreign))
    msg = oci_error(r, 401, "UNAUTHORIZED")
    assert "unknown key" in msg, msg
    assert r.headers.get("WWW-Authenticate") == challenge_value(srv)


# Passwords that are not this server's tokens, built from a genuine token's kid (header) and claims (payload).
GARBAGE_TOKENS: dict[str, Callable[[str, str, str], str]] = {
    "word": lambda tok, kid, claims: "garbage",
    "three-junk-parts": lambda tok, kid, claims: "a.b.c",
    "dots": lambda tok, kid, claims: "...",
    "truncated-json": lambda tok, kid, claims: "eyJ.eyJ.sig",
    "huge": lambda tok, kid, claims: "x" * 6000,
    "non-ascii": lambda tok, kid, claims: "ünïcödé-tökén",
    "header-not-object": lambda tok, kid, claims: f"{b64url(b'[]')}.{claims}.c2ln",
    "header-no-kid": lambda tok, kid, claims: f"{b64url(b'{}')}.{claims}.c2ln",
    "kid-not-string": lambda tok, kid, claims: (
        f"{b64url(json.dumps({'alg': 'ES256', 'kid': 123}).encode())}.{claims}.c2ln"
    ),
    # alg=none with the real kid and no signature must not be accepted, nor an HMAC "signature".
    "alg-none": lambda tok, kid, claims: f"{b64url(json.dumps({'alg': 'none', 'kid': kid}).encode())}.{claims}.",
    "alg-hs256": lambda tok, kid, claims: (
        f"{b64url(json.dumps({'alg': 'HS256', 'kid': kid, 'typ': 'JWT'}).encode())}.{claims}.c2lnbmF0dXJl"
    ),
    "extra-signature-char": lambda tok, kid, claims: tok + "x",
    "no-signature": lambda tok, kid, claims: tok.rsplit(".", 1)[0],
}


@pytest.mark.parametrize("kind", GARBAGE_TOKENS)
def test_garbage_tokens_are_401(srv: MoorageServer, admin_token: str, kind: str):
    kid = jwt_part(admin_token, 0)["kid"]
    claims = b64url(json.dumps(jwt_part(admin_token, 1)).encode())
    token = GARBAGE_TOKENS[kind](admin_token, kid, claims)
    for auth in (basic(token), f"Bearer {token}".encode()):
        r = call(srv, "GET", "/v2/", auth)
        assert oci_error(r, 401, "UNAUTHORIZED"), r.text
        assert r.headers.get("WWW-Authenticate") == challenge_value(srv), dict(r.headers)
        r = get_manifest(srv, "auth/pushed", "v1", auth)
        assert oci_error(r, 401, "UNAUTHORIZED"), r.text


def test_signing_key_rotation_keeps_old_tokens(make_server):
    s: MoorageServer = make_server(auth_config())
    old = login_password(s)
    old_kid = jwt_part(old, 0)["kid"]
    keys = s.data_dir / "keys"
    assert (keys / "current").read_text().strip() == old_kid
    image = make_image(1, 128)
    push_image(s, "auth/rotate", "v1", image, basic(old))

    s.stop()
    p = moorage("rotate-signing-key", "--data-dir", str(s.data_dir))
    assert p.returncode == 0, (p.stdout, p.stderr)
    new_kid = (keys / "current").read_text().strip()
    assert new_kid != old_kid and new_kid in p.stdout, p.stdout
    assert sorted(f.name for f in keys.glob("*.pem")) == sorted([f"{old_kid}.pem", f"{new_kid}.pem"])
    for f in keys.glob("*.pem"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    s.start()

    assert call(s, "GET", "/v2/", basic(old)).status_code == 200
    r = get_manifest(s, "auth/rotate", "v1", basic(old))
    assert r.status_code == 200 and r.content == image.manifest
    new = login_password(s)
    assert jwt_part(new, 0)["kid"] == new_kid and jwt_part(new, 0)["alg"] == "ES256"
    assert get_manifest(s, "auth/rotate", "v1", basic(new)).status_code == 200

    # And the new key is kept across a plain restart.
    s.restart()
    assert jwt_part(login_password(s), 0)["kid"] == new_kid
    assert call(s, "GET", "/v2/", basic(old)).status_code == 200


# -- 9. permissions are evaluated at request time -----------------------------------------------------


def test_policy_changes_apply_to_existing_tokens(make_server):
    dev, key, secret = "dev", "AKIAMOORAGEDEVELOP01", "dev-secret-0123456789abcdefghij"
    s: MoorageServer = make_server(auth_config(principal_toml(dev, key, secret, ALLOW_ALL)))
    token = login_password(s, key, secret)
    push_image(s, "auth/live", "v1", make_image(1, 128), basic(token))

    s.stop()
    s.config_path.write_text(auth_config(principal_toml(dev, key, secret, PULL_POLICY)))
    s.start()
    image = make_image(1, 128)
    r = call(s, "POST", "/v2/auth/live/blobs/uploads/", basic(token))
    assert_denied(r, implicit_deny(dev, "ecr:InitiateLayerUpload", "auth/live"))
    r = call(
        s,
        "PUT",
        "/v2/auth/live/manifests/v2",
        basic(token),
        data=image.manifest,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert_denied(r, implicit_deny(dev, "ecr:PutImage", "auth/live"))
    assert get_manifest(s, "auth/live", "v1", basic(token)).status_code == 200  # pulling is still allowed
    e = ecr_error(ecr_client(s, key, secret).create_repository, repositoryName="auth/live-2")
    assert error_code(e) == "AccessDeniedException"

    s.stop()
    s.config_path.write_text(auth_config())
    s.start()
    for r in (call(s, "GET", "/v2/", basic(token)), get_manifest(s, "auth/live", "v1", basic(token))):
        msg = oci_error(r, 401, "UNAUTHORIZED")
        assert dev in msg, msg
        assert r.headers.get("WWW-Authenticate") == challenge_value(s)
    e = ecr_error(ecr_client(s, key, secret).get_authorization_token)
    assert error_code(e) == "UnrecognizedClientException"
    assert get_manifest(s, "auth/live", "v1", basic(login_password(s))).status_code == 200


# -- 10. the generated admin ------------------------------------------------------------------------


def test_admin_bootstrap(make_server):
    s: MoorageServer = make_server("[auth]\nenabled = true\n")
    creds_file = s.data_dir / "admin-credentials.json"
    assert creds_file.exists(), s.log()
    assert stat.S_IMODE(creds_file.stat().st_mode) == 0o600
    creds = json.loads(creds_file.read_text())
    key, secret = creds["access_key_id"], creds["secret_access_key"]
    assert re.fullmatch(r"[A-Z0-9]{16,}", key) and len(secret) >= 16, creds

    log = s.log_containing(key, "get-login-password", "credentials", str(creds_file), "docker login")
    assert secret not in log, "the admin's secret key leaked into the server log"

    p = moorage("credentials", "--data-dir", str(s.data_dir))
    assert p.returncode == 0, p.stderr
    exports = dict(re.findall(r"^export (AWS_[A-Z_]+)=(\S+)$", p.stdout, re.M))
    assert exports["AWS_ACCESS_KEY_ID"] == key and exports["AWS_SECRET_ACCESS_KEY"] == secret, p.stdout

    p = moorage("get-login-password", "--endpoint", s.url, env=cli_env(**exports))
    assert p.returncode == 0, p.stderr
    token = p.stdout.strip()
    assert token and ":" not in token and "\n" not in token
    assert call(s, "GET", "/v2/", basic(token)).status_code == 200
    assert jwt_part(token, 1)["sub"] == creds["name"]

    # The documented shell recipe: eval the exports (stopping if that fails), then get-login-password.
    script = (
        f'creds=$({sys.executable} -m registry credentials --data-dir {s.data_dir}) && eval "$creds" && '
        f"{sys.executable} -m registry get-login-password --endpoint {s.url}"
    )
    sh = subprocess.run(
        ["bash", "-c", script], env=cli_env(), capture_output=True, text=True, timeout=60, check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    assert sh.returncode == 0, sh.stderr
    assert call(s, "GET", "/v2/", basic(sh.stdout.strip())).status_code == 200

    # Without credentials the CLI says how to get them.
    p = moorage("get-login-password", "--endpoint", s.url)
    assert p.returncode != 0 and "AWS_ACCESS_KEY_ID" in p.stderr, (p.stdout, p.stderr)

    # A restart reuses the same keys and does not announce a new admin.
    s.restart()
    assert json.loads(creds_file.read_text()) == creds
    assert s.log().count(key) == log.count(key), s.log()
    assert secret not in s.log()
    assert call(s, "GET", "/v2/", basic(login_password(s, key, secret))).status_code == 200
    assert call(s, "GET", "/v2/", basic(token)).status_code == 200


def test_credentials_without_generated_admin_fails(tmp_path: Path):
    p = moorage("credentials", "--data-dir", str(tmp_path / "empty"))
    assert p.returncode != 0 and "admin-credentials.json" in p.stderr, (p.stdout, p.stderr)


# -- 11. auth disabled ---------------------------------------------------------------------------------


def test_auth_disabled_accepts_anonymous_push_pull_and_issues_tokens(make_server):
    s: MoorageServer = make_server(AUTH_OFF)
    assert call(s, "GET", "/v2/").status_code == 200
    image = make_image(2, 256)
    for blob in image.blobs:
        r = call(
            s,
            "POST",
            "/v2/open/repo/blobs/uploads/",
            params={"digest": digest_of(blob)},
            data=blob,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert r.status_code == 201, (r.status_code, r.text)
    r = call(s, "PUT", "/v2/open/repo/manifests/v1", data=image.manifest, headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 201, (r.status_code, r.text)
    r = get_manifest(s, "open/repo", "v1")
    assert r.status_code == 200 and r.content == image.manifest
    for blob in image.blobs:
        g = call(s, "GET", f"/v2/open/repo/blobs/{digest_of(blob)}")
        assert g.status_code == 200 and g.content == blob
    tags = call(s, "GET", "/v2/open/repo/tags/list")
    assert tags.status_code == 200 and tags.json()["tags"] == ["v1"]

    # GetAuthorizationToken: unsigned, and signed by any keys, both answer with a usable token.
    r = ecr_raw(s, "GetAuthorizationToken", sign=False)
    assert r.status_code == 200, r.text
    data = r.json()["authorizationData"][0]
    user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    assert user == "AWS" and password, data
    assert data["expiresAt"] > time.time()
    assert call(s, "GET", "/v2/", basic(password)).status_code == 200
    assert get_manifest(s, "open/repo", "v1", basic(password)).status_code == 200
    got = ecr_client(s, "AKIAANYBODYATALL0001", "any-secret-at-all-000").get_authorization_token()
    assert got["authorizationData"][0]["authorizationToken"]
    p = aws_cli(s, "ecr", "get-login-password", key="AKIAANYBODYATALL0001", secret="whatever-secret-0000")
    assert p.stdout.strip()
    r = ecr_raw(s, "DescribeRepositories", sign=False)
    assert r.status_code == 200 and "open/repo" in [x["repositoryName"] for x in r.json()["repositories"]]
