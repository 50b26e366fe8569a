"""Anonymous pulls with auth on: the Docker token flow.

A /v2 request without credentials gets `WWW-Authenticate: Bearer realm="<registry>/v2/token",...`; the token
endpoint gives a client without credentials an anonymous token, which names nobody: every request made with it
gets exactly what repository policies grant `Principal: "*"`. `AWS:<token>` credentials (docker login) are
exchanged there too, and still work directly on /v2 (Basic or Bearer).

Real clients, none of them logged in: docker pulling a public repository; a docker daemon using Moorage as its
`registry-mirrors` entry (a ROOT pull-through rule whose upstream is a local Distribution, the daemon's proxy a
closed port so that a fallback to Docker Hub cannot leave the machine); containerd (`ctr`) with a hosts.toml
naming Moorage as the mirror, without credentials; podman and `skopeo --no-creds`. Everything on loopback.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.dockerd import Dockerd
from tests.oci import Client, digest_of, make_image
from tests.podman import isolated_podman
from tests.runnable_image import runnable_image
from tests.server import ADMIN_KEY, ADMIN_SECRET, MoorageServer, auth_config, ecr_client, free_port, login_password
from tests.skopeo import Skopeo
from tests.upstreams import MOORAGE_USER_AGENT, DistributionRegistry, push_image

MakeServer = Callable[..., MoorageServer]
PULL = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"]
FIRST_PULL = [*PULL, "ecr:BatchImportUpstreamImage", "ecr:CreateRepository"]
_counter = iter(range(10**6))


def unique(stem: str) -> str:
    return f"{stem}-{os.getpid()}-{next(_counter)}"


def policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def allow_anyone(actions: list[str], sid: str = "Anyone") -> dict[str, Any]:
    return {"Sid": sid, "Effect": "Allow", "Principal": "*", "Action": actions}


def cache_rules(url: str, *prefixes: str) -> str:
    """[pull_through] rules mapping each prefix to `url`. The upstreams here are on loopback, which
    allowed_upstreams must list."""
    rules = "".join(
        f'[[pull_through.rules]]\necr_repository_prefix = "{p}"\nupstream_registry_url = "{url}"\n' for p in prefixes
    )
    return '[pull_through]\nallowed_upstreams = ["127.0.0.1"]\n' + rules


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(password: str, user: str = "AWS") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def get(srv: MoorageServer, path: str, headers: dict[str, str] | None = None, **kw: Any) -> requests.Response:
    r = requests.get(srv.url + path, headers=headers or {}, timeout=30, allow_redirects=False, **kw)
    assert r.status_code < 500, (path, r.status_code, r.text)
    return r


def anonymous_token(srv: MoorageServer, **params: str) -> str:
    r = get(srv, "/v2/token", params={"service": srv.host, **params})
    assert r.status_code == 200, (r.status_code, r.text)
    return r.json()["token"]


def challenge(srv: MoorageServer, scope: str | None = None) -> str:
    value = f'Bearer realm="http://{srv.host}/v2/token",service="{srv.host}"'
    return value + (f',scope="{scope}"' if scope else "")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    server = MoorageServer(tmp_path_factory.mktemp("anonymous") / "data", auth_config()).start()
    server.credentials = ("AWS", login_password(server))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def admin(srv: MoorageServer) -> Client:
    assert srv.credentials is not None
    return Client(srv.url, srv.credentials)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DistributionRegistry]:
    """A CNCF Distribution registry standing in for Docker Hub (or any upstream), on loopback."""
    reg = DistributionRegistry(tmp_path_factory.mktemp("distribution")).start()
    yield reg
    reg.stop()


def public_repository(srv: MoorageServer, admin: Client, name: str, image: Any, *, actions: list[str] = PULL) -> None:
    """Push `image` as `name:v1` (as the admin) and grant `*` the pull actions with a repository policy."""
    admin.push_image(name, "v1", image)
    ecr_client(srv).set_repository_policy(repositoryName=name, policyText=policy(allow_anyone(actions)))


# -- 1. the challenge and the token endpoint -------------------------------------------------------------


def test_challenge_names_the_token_endpoint_and_the_scope(srv: MoorageServer):
    r = get(srv, "/v2/")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == challenge(srv), dict(r.headers)
    cases = [
        ("GET", "/v2/team/app/manifests/v1", "repository:team/app:pull"),
        ("HEAD", "/v2/team/app/blobs/sha256:" + "0" * 64, "repository:team/app:pull"),
        ("POST", "/v2/team/app/blobs/uploads/", "repository:team/app:pull,push"),
        ("PUT", "/v2/team/app/manifests/v1", "repository:team/app:pull,push"),
        ("DELETE", "/v2/team/app/manifests/v1", "repository:team/app:delete"),
        ("GET", "/v2/_catalog", "registry:catalog:*"),
    ]
    for method, path, scope in cases:
        r = requests.request(method, srv.url + path, timeout=30)
        assert r.status_code == 401, (method, path, r.status_code, r.text)
        assert r.headers["WWW-Authenticate"] == challenge(srv, scope), (method, path, dict(r.headers))


def test_token_endpoint_hands_out_anonymous_tokens(srv: MoorageServer):
    before = time.time()
    r = get(srv, "/v2/token", params={"service": srv.host, "scope": "repository:team/app:pull"})
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json") and r.headers["Cache-Control"] == "no-store"
    body = r.json()
    assert set(body) == {"token", "access_token", "expires_in", "issued_at"}, body
    assert body["token"] == body["access_token"] and body["token"].count(".") == 2
    assert 1700 < body["expires_in"] <= 3600, body
    issued = datetime.strptime(body["issued_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    assert before - 3600 <= issued <= time.time() + 1, body
    claims = json.loads(base64.urlsafe_b64decode(body["token"].split(".")[1] + "=="))
    assert claims["sub"] == "" and claims["aud"] == "moorage:anonymous", claims
    # A valid token, so the ping succeeds (that is how a token-flow client learns it may go on) ...
    assert get(srv, "/v2/", bearer(body["token"])).status_code == 200
    # ... and the same one serves the next client (signing one per request would cost more than it proves).
    assert anonymous_token(srv, scope="repository:other/repo:pull") == body["token"]
    # `Basic :` is "no credentials" (skopeo sends it): an anonymous token too.
    r = get(srv, "/v2/token", {"Authorization": "Basic " + base64.b64encode(b":").decode()})
    assert r.status_code == 200 and r.json()["token"] == body["token"], r.text


def test_anonymous_gets_exactly_what_star_is_granted(srv: MoorageServer, admin: Client):
    public, private, pull_only = unique("anon/public"), unique("anon/private"), unique("anon/manifest-only")
    image, other, third = make_image(), make_image(), make_image()
    public_repository(srv, admin, public, image)
    admin.push_image(private, "v1", other)
    # `*` may read the manifest but a Deny takes the layers away again: explicit Deny wins for anonymous too.
    admin.push_image(pull_only, "v1", third)
    deny_layers = {"Sid": "NoLayers", "Effect": "Deny", "Principal": "*", "Action": "ecr:GetDownloadUrlForLayer"}
    ecr_client(srv).set_repository_policy(repositoryName=pull_only, policyText=policy(allow_anyone(PULL), deny_layers))
    token = anonymous_token(srv)
    layer = digest_of(image.layers[0])
    for headers in (bearer(token), {}):  # an anonymous token and no credentials at all are the same principal
        r = get(srv, f"/v2/{public}/manifests/v1", headers)
        assert r.status_code == 200 and r.content == image.manifest, (r.status_code, r.text)
        r = get(srv, f"/v2/{public}/blobs/{layer}", headers)
        assert r.status_code == 200 and r.content == image.layers[0], (r.status_code, r.text)
        # Not granted: listing tags, pushing, deleting, and anything in the other repositories.
        denied = [
            ("GET", f"/v2/{public}/tags/list", f"repository:{public}:pull"),
            ("POST", f"/v2/{public}/blobs/uploads/", f"repository:{public}:pull,push"),
            ("DELETE", f"/v2/{public}/manifests/v1", f"repository:{public}:delete"),
            ("GET", f"/v2/{private}/manifests/v1", f"repository:{private}:pull"),
            ("GET", f"/v2/{pull_only}/blobs/{digest_of(third.layers[0])}", f"repository:{pull_only}:pull"),
        ]
        for method, path, scope in denied:
            r = requests.request(method, srv.url + path, headers=headers, timeout=30)
            assert r.status_code == 401, (method, path, r.status_code, r.text)
            assert r.headers["WWW-Authenticate"] == challenge(srv, scope), dict(r.headers)
        assert get(srv, f"/v2/{pull_only}/manifests/v1", headers).status_code == 200
    # The principal is logged as nobody.
    entries = srv.access_log_until(
        lambda log: any(e["path"] == f"/v2/{public}/manifests/v1" and e["status"] == 200 for e in log),
        "the anonymous pull's access log line",
    )
    pulls = [e for e in entries if e["path"] == f"/v2/{public}/manifests/v1" and e["status"] == 200]
    assert pulls and all(e["principal"] is None for e in pulls), pulls


def test_anonymous_catalog_lists_what_star_may_describe(srv: MoorageServer, admin: Client):
    described, hidden = unique("anon/described"), unique("anon/hidden")
    public_repository(srv, admin, described, make_image(), actions=[*PULL, "ecr:DescribeRepositories"])
    public_repository(srv, admin, hidden, make_image())
    # Without a token: the challenge (an anonymous client first needs a token, as for /v2/).
    assert get(srv, "/v2/_catalog").status_code == 401
    r = get(srv, "/v2/_catalog", bearer(anonymous_token(srv)), params={"n": 1000})
    assert r.status_code == 200, r.text
    listed = r.json()["repositories"]
    assert described in listed and hidden not in listed, listed


def test_aws_credentials_at_the_token_endpoint(srv: MoorageServer, admin: Client):
    password = login_password(srv)
    # docker login (and every later pull) sends AWS:<token> as Basic, with ?account=AWS&service=...&scope=...
    r = get(srv, "/v2/token", basic(password), params={"account": "AWS", "service": srv.host, "offline_token": "true"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token"] == body["access_token"] == password, "the token handed back is the one presented"
    assert 43000 < body["expires_in"] <= 43200, body  # never longer than the credentials it was given for
    name = unique("anon/by-token")
    pusher = Client(srv.url)
    pusher.s.headers.update(bearer(body["token"]))  # a push with the Bearer token from the endpoint
    pusher.push_image(name, "v1", make_image())
    # Basic AWS:<token> straight on /v2 (no token endpoint) works as on ECR.
    assert get(srv, f"/v2/{name}/manifests/v1", basic(password)).status_code == 200

    # containerd first tries the OAuth2 password grant (POST); the same exchange.
    form = {"grant_type": "password", "username": "AWS", "password": password, "service": srv.host}
    r = requests.post(srv.url + "/v2/token", data=form, timeout=30)
    assert r.status_code == 200 and r.json()["access_token"] == password, r.text
    r = requests.post(srv.url + "/v2/token", data={**form, "grant_type": "refresh_token"}, timeout=30)
    assert r.status_code == 405, r.text  # we issue no refresh tokens; containerd then falls back to GET

    # Refused credentials: the user must be AWS, the token must be one of ours.
    r = get(srv, "/v2/token", basic(password, user="admin"))
    assert r.status_code == 401 and "user name must be AWS" in r.text, r.text
    assert r.headers["WWW-Authenticate"] == f'Basic realm="http://{srv.host}/",service="ecr.amazonaws.com"'
    r = requests.post(srv.url + "/v2/token", data={**form, "username": "root"}, timeout=30)
    assert r.status_code == 401, r.text
    for garbage in ("garbage", password[:-4] + "AAAA"):
        r = get(srv, "/v2/token", basic(garbage))
        assert r.status_code == 401 and r.json()["errors"][0]["code"] == "UNAUTHORIZED", r.text


def test_expired_credentials_get_ecrs_denied_at_the_token_endpoint(make_server: MakeServer):
    s = make_server(auth_config(extra='token_ttl = "2s"\n'))
    password = login_password(s)
    assert get(s, "/v2/token", basic(password)).status_code == 200
    time.sleep(2.5)
    r = get(s, "/v2/token", basic(password))
    assert r.status_code == 403, r.text
    assert r.json()["errors"][0] == {
        "code": "DENIED",
        "message": "Your authorization token has expired. Reauthenticate and try again.",
    }, r.text


def test_basic_challenge_option_answers_as_ecr(make_server: MakeServer):
    s = make_server(auth_config(extra='challenge = "basic"\n'))
    r = get(s, "/v2/team/app/manifests/v1")
    assert r.status_code == 401, r.text
    assert r.headers["WWW-Authenticate"] == f'Basic realm="http://{s.host}/",service="ecr.amazonaws.com"'
    # Credentials work as before; the token endpoint is still there for clients that know it.
    assert get(s, "/v2/", basic(login_password(s))).status_code == 200
    assert get(s, "/v2/", bearer(anonymous_token(s))).status_code == 200


def test_auth_off_needs_no_token(make_server: MakeServer):
    s = make_server()
    assert get(s, "/v2/").status_code == 200
    assert anonymous_token(s)  # harmless: a client that asks anyway gets one


# -- 2. a first pull through the cache, anonymously ------------------------------------------------------


def test_anonymous_first_pull_through_the_cache(
    make_server: MakeServer, upstream: DistributionRegistry, skopeo: Skopeo, tmp_path: Path
):
    """The cache repository does not exist before the first pull: the PULL_THROUGH_CACHE creation template's
    repository policy, the one it will be created with, decides. Granting `*` pull, BatchImportUpstreamImage and
    CreateRepository there lets anonymous clients pull through the cache; without CreateRepository they may pull
    only what is cached already."""
    s = make_server(auth_config() + cache_rules(upstream.url, "hub", "hub2", "hub3"))
    ecr = ecr_client(s)
    ecr.create_repository_creation_template(
        prefix="hub", appliedFor=["PULL_THROUGH_CACHE"], repositoryPolicy=policy(allow_anyone(FIRST_PULL))
    )
    ecr.create_repository_creation_template(
        prefix="hub2", appliedFor=["PULL_THROUGH_CACHE"], repositoryPolicy=policy(allow_anyone(PULL))
    )
    repo = unique("library/cached")
    image = runnable_image("cache")
    push_image(upstream.url, repo, "v1", image.manifest, image.media_type, image.blobs)

    out = tmp_path / "out"
    skopeo("copy", "--src-no-creds", "--src-tls-verify=false", f"docker://{s.host}/hub/{repo}:v1", f"dir:{out}")
    assert (out / "manifest.json").read_bytes() == image.manifest
    created = ecr.describe_repositories(repositoryNames=[f"hub/{repo}"])["repositories"][0]
    assert created["repositoryUri"] == f"{s.host}/hub/{repo}"
    assert json.loads(ecr.get_repository_policy(repositoryName=f"hub/{repo}")["policyText"]) == json.loads(
        policy(allow_anyone(FIRST_PULL))
    )

    # The second template grants pull but not the import: the first pull is refused before any upstream call.
    calls = upstream.count(f"/v2/{repo}/manifests")
    r = get(s, f"/v2/hub2/{repo}/manifests/v1", bearer(anonymous_token(s)))
    assert r.status_code == 401, r.text
    assert upstream.count(f"/v2/{repo}/manifests") == calls
    assert f"hub2/{repo}" not in [x["repositoryName"] for x in ecr.describe_repositories()["repositories"]]
    # A template's policy stands in only for pulls: a push to a cache repository that does not exist yet is
    # evaluated without a repository policy, whatever the template grants.
    ecr.create_repository_creation_template(
        prefix="hub3", appliedFor=["PULL_THROUGH_CACHE"], repositoryPolicy=policy(allow_anyone(["ecr:*"]))
    )
    r = requests.post(f"{s.url}/v2/hub3/{unique('library/pushed')}/blobs/uploads/", timeout=30)
    assert r.status_code == 401, r.text
    # The admin's first pull creates it; from then on `*` may pull what is cached.
    assert get(s, f"/v2/hub2/{repo}/manifests/v1", basic(login_password(s))).status_code == 200
    raw = skopeo("inspect", "--raw", "--no-creds", "--tls-verify=false", f"docker://{s.host}/hub2/{repo}:v1")
    assert raw.stdout.encode() == image.manifest


# -- 3. real clients without credentials -----------------------------------------------------------------


@pytest.mark.slow
def test_skopeo_no_creds(srv: MoorageServer, admin: Client, skopeo: Skopeo, tmp_path: Path):
    public, private = unique("anon/skopeo-public"), unique("anon/skopeo-private")
    image = runnable_image("skopeo")
    public_repository(srv, admin, public, image)
    admin.push_image(private, "v1", image)
    raw = skopeo("inspect", "--no-creds", "--tls-verify=false", "--raw", f"docker://{srv.host}/{public}:v1").stdout
    assert raw.encode() == image.manifest
    skopeo("copy", "--src-no-creds", "--src-tls-verify=false", f"docker://{srv.host}/{public}:v1", f"dir:{tmp_path}/d")
    assert (tmp_path / "d" / "manifest.json").read_bytes() == image.manifest
    denied = skopeo("inspect", "--no-creds", "--tls-verify=false", f"docker://{srv.host}/{private}:v1", check=False)
    assert denied.returncode != 0 and "unauthorized: Not Authorized" in denied.stderr, denied.stderr


@pytest.mark.slow
def test_podman_pull_without_credentials(srv: MoorageServer, admin: Client, tmp_path: Path):
    public, private = unique("anon/podman-public"), unique("anon/podman-private")
    image = runnable_image("podman")
    with isolated_podman(tmp_path) as run:
        public_repository(srv, admin, public, image)
        admin.push_image(private, "v1", image)
        run("pull", "--tls-verify=false", f"{srv.host}/{public}:v1")
        image_id = run("image", "inspect", "--format", "{{.Id}}", f"{srv.host}/{public}:v1").stdout.strip()
        assert "sha256:" + image_id.removeprefix("sha256:") == image.image_id
        denied = run("pull", "--tls-verify=false", f"{srv.host}/{private}:v1", check=False)
        assert denied.returncode != 0 and "unauthorized" in denied.stderr, denied.stderr


@pytest.fixture
def docker(dockerd: Dockerd, srv: MoorageServer) -> Iterator[Dockerd]:
    """The session's dockerd, logged out of the module's server and emptied of images afterwards."""
    dockerd.run("logout", srv.host, check=False)
    yield dockerd
    dockerd.run("image", "prune", "-a", "-f", check=False)


@pytest.mark.docker
@pytest.mark.slow
def test_docker_pull_without_login(docker: Dockerd, srv: MoorageServer, admin: Client):
    public, private = unique("anon/docker-public"), unique("anon/docker-private")
    image = runnable_image("docker")
    public_repository(srv, admin, public, image)
    admin.push_image(private, "v1", image)
    out = docker.run("pull", f"{srv.host}/{public}:v1", timeout=180).stdout
    assert f"Digest: {image.digest}" in out, out
    assert docker.run("image", "inspect", "--format", "{{.Id}}", f"{srv.host}/{public}:v1").stdout.strip() == (
        image.image_id
    )
    denied = docker.run("pull", f"{srv.host}/{private}:v1", check=False, timeout=180)
    assert denied.returncode != 0
    assert "unauthorized: Not Authorized" in denied.stderr, denied.stderr
    # The daemon fetched an anonymous token and pulled with it (HEAD by tag, GET by digest, the blobs): the log
    # names no principal.
    wanted = {"/v2/token", f"/v2/{public}/manifests/{image.digest}", f"/v2/{public}/blobs/{digest_of(image.layer)}"}
    log = [
        e
        for e in srv.access_log_until(
            lambda log: wanted <= {e["path"] for e in log if e["status"] == 200}, "the daemon's pull in the access log"
        )
        if e["user_agent"].startswith("docker/")
    ]
    pulled = [e for e in log if e["path"].startswith(f"/v2/{public}/")]
    assert wanted <= {e["path"] for e in log if e["status"] == 200}, log
    assert all(e["principal"] is None and e["status"] == 200 for e in pulled), pulled


CLOSED_PROXY = "http://127.0.0.1:9"  # discard port, nothing listens: whatever tries to go outside fails at once


@pytest.mark.docker
@pytest.mark.slow
def test_docker_daemon_with_moorage_as_registry_mirror(
    dockerd: Dockerd, make_server: MakeServer, upstream: DistributionRegistry
):
    """`registry-mirrors: [Moorage]`, auth on, a ROOT rule to the (local) upstream and a creation template that
    grants `*` the first pull. The daemon asks the mirror for library/<name> anonymously; if the mirror failed
    it would fall back to Docker Hub, which its proxy (a closed local port) makes fail instead."""
    s = make_server(auth_config() + cache_rules(upstream.url, "ROOT"))
    ecr_client(s).create_repository_creation_template(
        prefix="ROOT", appliedFor=["PULL_THROUGH_CACHE"], repositoryPolicy=policy(allow_anyone(FIRST_PULL))
    )
    name = unique("mirrored")
    image = runnable_image("mirror")
    push_image(upstream.url, f"library/{name}", "v1", image.manifest, image.media_type, image.blobs)

    d = Dockerd(
        dockerd.dockerd_bin,
        dockerd.docker_bin,
        daemon_config={"registry-mirrors": [s.url]},
        daemon_env={"HTTP_PROXY": CLOSED_PROXY, "HTTPS_PROXY": CLOSED_PROXY, "NO_PROXY": ""},
    )
    try:
        d.start()
        info = json.loads(d.run("info", "--format", "{{json .RegistryConfig.Mirrors}}").stdout)
        assert info == [s.url + "/"], info
        out = d.run("pull", f"{name}:v1", timeout=180).stdout  # docker.io/library/<name>:v1
        assert f"Digest: {image.digest}" in out, out
        assert d.run("image", "inspect", "--format", "{{.Id}}", f"{name}:v1").stdout.strip() == image.image_id

        # It came through Moorage, anonymously, as library/<name> (the ROOT rule's name for it) ...
        wanted = {f"/v2/library/{name}/manifests/v1", f"/v2/library/{name}/blobs/{digest_of(image.layer)}"}
        pulled = [
            e
            for e in s.access_log_until(lambda log: wanted <= {e["path"] for e in log}, "the mirrored pull's lines")
            if e["path"].startswith(f"/v2/library/{name}/")
        ]
        assert wanted <= {e["path"] for e in pulled}, pulled
        assert all(e["status"] == 200 and e["principal"] is None for e in pulled), pulled
        # ... and the upstream saw only Moorage.
        seen = upstream.accesses(f"^(GET|HEAD) /v2/library/{name}/")  # (not the test's own push)
        assert seen and all(MOORAGE_USER_AGENT in a.agent for a in seen), seen

        # Where the mirror has nothing, the daemon falls back to Docker Hub: through the dead proxy, so nothing
        # leaves the machine.
        missing = d.run("pull", f"{unique('not-there')}:v1", check=False, timeout=180)
        assert missing.returncode != 0
        assert "proxyconnect" in missing.stderr and "127.0.0.1:9" in missing.stderr, missing.stderr
    finally:
        d.stop()


class Containerd:
    """A private containerd (own root, state and socket) and `ctr` bound to it."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mct-", dir="/tmp"))  # socket paths must stay short
        self.sock = self.root / "c.sock"
        self.log_path = self.root / "containerd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        (self.root / "config.toml").write_text(
            "version = 2\n"
            f'root = "{self.root / "root"}"\nstate = "{self.root / "state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.sock}"\n[ttrpc]\n  address = "{self.sock}.ttrpc"\n'
        )

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["containerd", "--config", str(self.root / "config.toml")],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited with {self.proc.returncode}:\n{self.log()}")
            if self.sock.exists() and self.ctr("version", check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"containerd did not answer within 30s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    def ctr(
        self, *args: str, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd = ["ctr", "--address", str(self.sock), "--namespace", "moorage-test", *args]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False, env=env)
        assert not check or p.returncode == 0, f"$ {' '.join(cmd)}\n{p.stdout}\n{p.stderr}\n{self.log()}"
        return p

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f if line.split()[4].startswith(str(self.root) + "/")]
        for mp in sorted(points, reverse=True):
            subprocess.run(["umount", "-l", mp], capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.mark.slow
def test_containerd_mirror_without_credentials(make_server: MakeServer, upstream: DistributionRegistry, tmp_path: Path):
    """ctr pulls `<upstream>/library/<name>` with a hosts.toml naming Moorage as the mirror and no credentials:
    containerd adds `?ns=<upstream>`, which Moorage routes to the rule for that upstream. The hosts.toml's server
    is a closed port, so the image can only have come through Moorage."""
    if os.geteuid() != 0 or not shutil.which("containerd") or not shutil.which("ctr"):
        pytest.skip("needs root and containerd/ctr (apt-get install containerd)")
    s = make_server(auth_config() + cache_rules(upstream.url, "dist"))
    ecr_client(s).create_repository_creation_template(
        prefix="dist", appliedFor=["PULL_THROUGH_CACHE"], repositoryPolicy=policy(allow_anyone(FIRST_PULL))
    )
    name = unique("library/ctr")
    image = runnable_image("containerd")
    push_image(upstream.url, name, "v1", image.manifest, image.media_type, image.blobs)

    hosts = tmp_path / "certs.d" / upstream.host
    hosts.mkdir(parents=True)
    (hosts / "hosts.toml").write_text(
        f'server = "http://127.0.0.1:{free_port()}"\n[host."{s.url}"]\n  capabilities = ["pull", "resolve"]\n'
    )
    c = Containerd()
    try:
        try:
            c.start()
        except (RuntimeError, OSError) as e:
            pytest.skip(f"a private containerd did not start: {e}")
        env = {**os.environ, "HTTP_PROXY": CLOSED_PROXY, "HTTPS_PROXY": CLOSED_PROXY, "NO_PROXY": ""}
        ref = f"{upstream.host}/{name}:v1"
        c.ctr("images", "pull", "--hosts-dir", str(tmp_path / "certs.d"), ref, env=env)
        listed = c.ctr("images", "list").stdout
        assert ref in listed and image.digest in listed, listed
        layer_path = f"/v2/{name}/blobs/{digest_of(image.layer)}"  # (logged without ?ns=)
        pulled = [
            e
            for e in s.access_log_until(lambda log: layer_path in {e["path"] for e in log}, "containerd's pull's lines")
            if e["path"].startswith(f"/v2/{name}/")
        ]
        assert layer_path in {e["path"] for e in pulled}, pulled
        assert all(
            e["status"] == 200 and e["principal"] is None and e["repository"] == f"dist/{name}" for e in pulled
        ), pulled
        seen = upstream.accesses(f"^(GET|HEAD) /v2/{name}/")  # (not the test's own push)
        assert seen and all(MOORAGE_USER_AGENT in a.agent for a in seen), seen
    finally:
        c.stop()


def test_password_from_get_authorization_token_is_a_token_endpoint_credential(srv: MoorageServer):
    """What docker-credential-ecr-login and `aws ecr get-login-password` hand docker: the token endpoint takes
    it as Basic credentials, exactly as docker sends them."""
    data = ecr_client(srv, ADMIN_KEY, ADMIN_SECRET).get_authorization_token()["authorizationData"][0]
    r = get(srv, "/v2/token", {"Authorization": f"Basic {data['authorizationToken']}"})
    assert r.status_code == 200, r.text
    assert re.fullmatch(r"[\w-]+\.[\w-]+\.[\w-]+", r.json()["token"])
