"""One registry address everywhere: `[registry] hostname` (default: the host and port the request came to) is
what `repositoryUri`, GetAuthorizationToken's `proxyEndpoint`, download URLs and the /v2 challenge's realm
name, so the URI `aws ecr create-repository` prints is one docker can push to.

With an ECR-shaped hostname (<account>.dkr.ecr.<region>.amazonaws.com) and TLS on, answers are shaped as ECR's,
and docker-credential-ecr-login works against Moorage unchanged. That test runs in private mount and network
namespaces (`unshare -m -n`): the only interface is loopback, /etc/hosts is a bind-mounted file mapping the ECR
names (the registry, and api.ecr.<region>.amazonaws.com for the API) to 127.0.0.1, and the CA bundle is the
system's plus a test CA. Nothing can leave the machine, and the machine's own files are untouched.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from tests.dockerd import Dockerd, rootfs_tar
from tests.helpers import http_ok, running, wait_for
from tests.oci import Client, make_image
from tests.pki import Pki, PrivateNetwork
from tests.server import (
    ADMIN_KEY,
    ADMIN_SECRET,
    MoorageServer,
    auth_config,
    ecr_client,
    free_port,
    login_password,
    spawn,
    terminate,
)

MakeServer = Callable[..., MoorageServer]
ACCOUNT, REGION = "123456789012", "us-east-1"
ECR_HOST = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
ECR_API_HOST = f"api.ecr.{REGION}.amazonaws.com"  # where the AWS SDKs send ECR API calls for the region
AWS_CLI = str(Path(sys.executable).with_name("aws"))


def ecr_at(url: str) -> Any:
    return boto3.client(
        "ecr",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=ADMIN_KEY,
        aws_secret_access_key=ADMIN_SECRET,
    )


def proxy_endpoint(client: Any) -> str:
    return client.get_authorization_token()["authorizationData"][0]["proxyEndpoint"]


# -- 1. the address each answer names ---------------------------------------------------------------------


def test_default_is_the_host_the_request_came_to(make_server: MakeServer):
    s = make_server(auth_config())
    for host in (f"127.0.0.1:{s.port}", f"localhost:{s.port}"):
        ecr = ecr_at(f"http://{host}")
        name = f"team/app-{host.split(':')[0].replace('.', '-')}"
        assert ecr.create_repository(repositoryName=name)["repository"]["repositoryUri"] == f"{host}/{name}"
        assert ecr.describe_repositories(repositoryNames=[name])["repositories"][0]["repositoryUri"] == (
            f"{host}/{name}"
        )
        assert proxy_endpoint(ecr) == f"http://{host}"
        r = requests.get(f"http://{host}/v2/", timeout=30)
        assert r.headers["WWW-Authenticate"] == f'Bearer realm="http://{host}/v2/token",service="{host}"'
    assert ecr.describe_registry()["registryId"] == "000000000000"


def test_configured_hostname_is_named_everywhere(tmp_path: Path):
    port = free_port()
    name = f"localhost:{port}"
    config = auth_config() + f'[registry]\nhostname = "{name}"\n'
    s = MoorageServer(tmp_path / "data", config, port=port).start()
    try:
        ecr = ecr_client(s)  # reaches it as 127.0.0.1: the answers still name the configured address
        created = ecr.create_repository(repositoryName="team/app")["repository"]
        assert created["repositoryUri"] == f"{name}/team/app"
        assert ecr.describe_repositories()["repositories"][0]["repositoryUri"] == f"{name}/team/app"
        assert proxy_endpoint(ecr) == f"http://{name}"
        r = requests.get(s.url + "/v2/", timeout=30)
        assert r.headers["WWW-Authenticate"] == f'Bearer realm="http://{name}/v2/token",service="{name}"'
        # A download URL names it too, and works (localhost is this machine).
        image = make_image(1)
        Client(s.url, ("AWS", login_password(s))).push_image("team/app", "v1", image)
        layer = json.loads(image.manifest)["layers"][0]["digest"]
        url = ecr.get_download_url_for_layer(repositoryName="team/app", layerDigest=layer)["downloadUrl"]
        assert url.startswith(f"http://{name}/v2/team/app/blobs/{layer}?"), url
        assert requests.get(url, timeout=30).content == image.layers[0]
        deleted = ecr.delete_repository(repositoryName="team/app", force=True)["repository"]
        assert deleted["repositoryUri"] == f"{name}/team/app"
    finally:
        s.stop()


def test_hostname_with_a_scheme_behind_a_tls_terminating_proxy(make_server: MakeServer):
    s = make_server(auth_config() + '[registry]\nhostname = "https://registry.example.test"\n')
    ecr = ecr_client(s)
    assert ecr.create_repository(repositoryName="app")["repository"]["repositoryUri"] == "registry.example.test/app"
    assert proxy_endpoint(ecr) == "https://registry.example.test"
    r = requests.get(s.url + "/v2/", timeout=30)
    assert r.headers["WWW-Authenticate"] == (
        'Bearer realm="https://registry.example.test/v2/token",service="registry.example.test"'
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ('[registry]\nhostname = "http://example.test/v2"\n', "registry.hostname: must be a host name"),
        ('[registry]\nhostname = "example.test:70000"\n', "registry.hostname: must be a host name"),
        (f'[registry]\nhostname = "{ECR_HOST}"\n', "names account 123456789012 in us-east-1, but [registry] has"),
        (f'[registry]\nhostname = "{ECR_HOST}"\naccount_id = "{ACCOUNT}"\nregion = "eu-west-1"\n', "eu-west-1"),
        ('[server]\ntls_cert_file = "/x.pem"\n', "give both (TLS) or neither"),
        ('[auth]\nchallenge = "digest"\n', 'auth.challenge: must be "bearer"'),
    ],
)
def test_bad_settings_stop_the_start(tmp_path: Path, settings: str, message: str):
    (tmp_path / "c.toml").write_text(settings)
    p = subprocess.run(
        [sys.executable, "-m", "registry", "check-config", str(tmp_path / "c.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and message in p.stderr, (p.returncode, p.stderr)


# -- 2. TLS ---------------------------------------------------------------------------------------------


def tls_config(pki: Pki, extra: str = "") -> str:
    return (
        auth_config()
        + f'[server]\ntls_cert_file = "{pki.cert}"\ntls_key_file = "{pki.key}"\n'
        + f'[registry]\naccount_id = "{ACCOUNT}"\nregion = "{REGION}"\n'
        + extra
    )


def test_tls_with_an_ecr_shaped_hostname(tmp_path: Path):
    pki = Pki(tmp_path / "pki", [ECR_HOST])
    port = free_port()
    host = f"{ECR_HOST}:{port}"
    # Two workers: each serves TLS on the socket the supervisor bound.
    proc = spawn(tls_config(pki, f'hostname = "{host}"\n'), tmp_path / "srv", f"127.0.0.1:{port}", workers=2)
    try:
        url = f"https://127.0.0.1:{port}"
        wait_for(  # workers may still be starting behind the bound socket
            lambda: running(proc, tmp_path / "srv" / "moorage.log") and http_ok(url + "/healthz", verify=str(pki.ca)),
            20,
            "the server to answer",
            interval=0.1,
        )
        log = (tmp_path / "srv" / "moorage.log").read_text()
        assert f"serving on https://127.0.0.1:{port} with 2 workers" in log, log
        # Plain HTTP on the TLS port gets nowhere.
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/v2/", timeout=5)
        ecr = boto3.client(
            "ecr",
            endpoint_url=url,
            region_name=REGION,
            aws_access_key_id=ADMIN_KEY,
            aws_secret_access_key=ADMIN_SECRET,
            verify=str(pki.ca),
        )
        data = ecr.get_authorization_token()["authorizationData"][0]
        assert data["proxyEndpoint"] == f"https://{host}", data  # what the credential helper parses
        repo = ecr.create_repository(repositoryName="team/app")["repository"]
        assert repo["repositoryUri"] == f"{host}/team/app"
        assert repo["repositoryArn"] == f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/team/app"
        assert ecr.describe_registry()["registryId"] == ACCOUNT
        r = requests.get(url + "/v2/", verify=str(pki.ca), timeout=10)
        assert r.headers["WWW-Authenticate"] == f'Bearer realm="https://{host}/v2/token",service="{host}"'
        r = requests.get(
            url + "/v2/", headers={"Authorization": f"Basic {data['authorizationToken']}"}, verify=str(pki.ca)
        )
        assert r.status_code == 200, r.text
    finally:
        terminate(proc)


@pytest.mark.parametrize("problem", ["missing-cert", "missing-key", "not-pem", "wrong-key"])
def test_unusable_tls_files_stop_the_start(tmp_path: Path, problem: str):
    pki = Pki(tmp_path / "pki", ["localhost"])
    other = Pki(tmp_path / "other", ["localhost"])
    cert, key = pki.cert, pki.key
    if problem == "missing-cert":
        cert = tmp_path / "nope.pem"
    elif problem == "missing-key":
        key = tmp_path / "nope-key.pem"
    elif problem == "not-pem":
        cert = tmp_path / "garbage.pem"
        cert.write_text("this is not a certificate\n")
    else:
        key = other.key
    config = f'[auth]\nenabled = false\n[server]\ntls_cert_file = "{cert}"\ntls_key_file = "{key}"\n'
    proc = spawn(config, tmp_path / "srv", f"127.0.0.1:{free_port()}")
    try:
        assert proc.wait(30) == 2
    finally:
        terminate(proc)
    out = (tmp_path / "srv" / "moorage.log").read_text()
    expected = {
        "missing-cert": f"server.tls_cert_file: cannot read {cert}",
        "missing-key": f"server.tls_key_file: cannot read {key}",
        "not-pem": f"server.tls_cert_file: {cert} is not a PEM certificate chain",
        "wrong-key": f"server.tls_key_file: {key} is not the private key of the first certificate in {cert}",
    }[problem]
    assert "moorage: configuration error: " in out and expected in out, out
    assert "serving on" not in out, out


# -- 3. real clients ------------------------------------------------------------------------------------


def aws_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {
        **env,
        "AWS_ACCESS_KEY_ID": ADMIN_KEY,
        "AWS_SECRET_ACCESS_KEY": ADMIN_SECRET,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_MAX_ATTEMPTS": "1",
        **extra,
    }


@pytest.mark.docker
@pytest.mark.slow
def test_docker_push_to_the_uri_create_repository_prints(dockerd: Dockerd, tmp_path: Path):
    """`docker push "$(aws ecr create-repository ... --query repository.repositoryUri --output text):1"`, with
    the API reached at 127.0.0.1 and the registry's address configured as localhost:PORT."""
    port = free_port()
    hostname = f"localhost:{port}"
    s = MoorageServer(tmp_path / "data", auth_config() + f'[registry]\nhostname = "{hostname}"\n', port=port).start()
    docker = dockerd
    try:
        name = f"team/uri-{os.getpid()}"
        cli = subprocess.run(
            [AWS_CLI, "ecr", "create-repository", "--endpoint-url", s.url, "--repository-name", name,
             "--query", "repository.repositoryUri", "--output", "text"],
            env=aws_env(), capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert cli.returncode == 0, cli.stderr
        uri = cli.stdout.strip()
        assert uri == f"{hostname}/{name}", uri
        endpoint = proxy_endpoint(ecr_client(s))
        assert endpoint == f"http://{hostname}"
        password = login_password(s)
        out = docker.run("login", "--username", "AWS", "--password-stdin", endpoint, input=password).stdout
        assert "Login Succeeded" in out, out
        docker.run("import", str(rootfs_tar(tmp_path / "rootfs.tar", f"pushed to {uri}\n")), f"{uri}:1")
        pushed = docker.run("push", f"{uri}:1", timeout=180).stdout
        digest = pushed.strip().rsplit("digest: ", 1)[1].split()[0]
        docker.run("rmi", f"{uri}:1")
        pulled = docker.run("pull", f"{uri}:1", timeout=180).stdout
        assert f"Digest: {digest}" in pulled, pulled
        images = ecr_client(s).describe_images(repositoryName=name)["imageDetails"]
        assert [(i["imageDigest"], i["imageTags"]) for i in images] == [(digest, ["1"])]
    finally:
        docker.run("logout", f"http://{hostname}", check=False)
        docker.run("image", "prune", "-a", "-f", check=False)
        s.stop()


@pytest.fixture
def private_network(tmp_path: Path) -> Iterator[tuple[PrivateNetwork, Pki]]:
    if os.geteuid() != 0:
        pytest.skip("private mount and network namespaces need root")
    for tool in ("unshare", "nsenter", "ip", "curl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    if not PrivateNetwork.SYSTEM_BUNDLE.exists():
        pytest.skip(f"{PrivateNetwork.SYSTEM_BUNDLE} does not exist (apt-get install ca-certificates)")
    pki = Pki(tmp_path / "pki", [ECR_HOST, ECR_API_HOST])
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n127.0.0.1 {ECR_HOST} {ECR_API_HOST}\n::1 localhost\n")
    bundle = tmp_path / "ca-certificates.crt"  # what `update-ca-certificates` makes of the system's CAs and ours
    bundle.write_bytes(PrivateNetwork.SYSTEM_BUNDLE.read_bytes() + b"\n" + pki.ca.read_bytes())
    try:
        ns = PrivateNetwork({Path("/etc/hosts"): hosts, PrivateNetwork.SYSTEM_BUNDLE: bundle})
    except RuntimeError as e:
        pytest.skip(str(e))
    try:
        yield ns, pki
    finally:
        ns.close()


@pytest.mark.docker
@pytest.mark.slow
def test_docker_credential_ecr_login_against_moorage(
    private_network: tuple[PrivateNetwork, Pki], dockerd: Dockerd, tmp_path: Path
):
    """Moorage serves TLS on 443 as <account>.dkr.ecr.<region>.amazonaws.com; the ECR names resolve to it. The
    unmodified AWS CLI creates a repository (at api.ecr.<region>.amazonaws.com, its default endpoint), and
    docker, with `credHelpers` naming ecr-login for the registry, pushes to the URI it printed and pulls back:
    the helper calls GetAuthorizationToken and hands docker AWS:<token>."""
    helper = shutil.which("docker-credential-ecr-login")
    if helper is None:
        pytest.skip("docker-credential-ecr-login is not installed (apt-get install amazon-ecr-credential-helper)")
    ns, pki = private_network
    proc = spawn(tls_config(pki, f'hostname = "{ECR_HOST}"\n'), tmp_path / "srv", "127.0.0.1:443", wrap=ns.wrap)
    log = tmp_path / "srv" / "moorage.log"
    d: Dockerd | None = None
    try:
        wait_for(
            lambda: (
                running(proc, log) and ns.run("curl", "-sf", f"https://{ECR_HOST}/healthz", check=False).returncode == 0
            ),
            20,
            "the server to answer",
            interval=0.2,
        )

        # The AWS CLI with no endpoint override: api.ecr.us-east-1.amazonaws.com is Moorage here.
        env = aws_env(AWS_CA_BUNDLE=str(pki.ca))
        uri = ns.run(
            AWS_CLI, "ecr", "create-repository", "--repository-name", "team/app",
            "--query", "repository.repositoryUri", "--output", "text", env=env,
        ).stdout.strip()  # fmt: skip
        assert uri == f"{ECR_HOST}/team/app", uri

        # The helper on its own, as docker runs it.
        home = tmp_path / "home"
        home.mkdir()
        helper_env = aws_env(HOME=str(home), AWS_ECR_DISABLE_CACHE="true")
        got = json.loads(ns.run(helper, "get", input=ECR_HOST, env=helper_env).stdout)
        assert got["Username"] == "AWS" and got["ServerURL"] == ECR_HOST, got
        basic = base64.b64encode(f"AWS:{got['Secret']}".encode()).decode()
        ns.run("curl", "-sf", "-H", f"Authorization: Basic {basic}", f"https://{ECR_HOST}/v2/")

        # docker: a daemon in the same namespaces (it resolves and trusts the registry as the CLI does).
        d = Dockerd(dockerd.dockerd_bin, dockerd.docker_bin, wrap=ns.wrap)
        d.env.update(helper_env)
        (d.root / "cli" / "config.json").write_text(json.dumps({"credHelpers": {ECR_HOST: "ecr-login"}}))
        d.start()
        d.run("import", str(rootfs_tar(tmp_path / "rootfs.tar", "pushed with the ECR credential helper\n")), f"{uri}:1")
        pushed = d.run("push", f"{uri}:1", timeout=180).stdout
        digest = pushed.strip().rsplit("digest: ", 1)[1].split()[0]
        d.run("rmi", f"{uri}:1")
        pulled = d.run("pull", f"{uri}:1", timeout=180).stdout
        assert f"Digest: {digest}" in pulled, pulled

        entries = [json.loads(x) for x in log.read_text().splitlines() if '"moorage.access"' in x]
        # GetAuthorizationToken from the helper (Go SDK), and docker's pushes as the principal it names.
        helper_calls = [e for e in entries if e["path"] == "/" and e["user_agent"].startswith("aws-sdk-go-v2/")]
        assert helper_calls and all(e["status"] == 200 and e["principal"] == "admin" for e in helper_calls), entries
        put = [e for e in entries if e["method"] == "PUT" and e["path"] == "/v2/team/app/manifests/1"]
        assert put and put[-1]["status"] == 201 and put[-1]["principal"] == "admin", put
    finally:
        if d is not None:
            d.stop()
        terminate(proc)
