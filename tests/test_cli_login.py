"""`moorage get-login-password` signs for the registry's own region, whatever AWS_REGION the shell has (the
registry checks the credential scope's region); with --endpoint (another registry) the environment's region
applies, as with the AWS CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import requests

from tests.server import ADMIN_KEY, ADMIN_SECRET, MoorageServer, auth_config


def _login(srv: MoorageServer, *args: str, region: str) -> subprocess.CompletedProcess[str]:
    config = srv.config_path.with_name("cli.toml")
    config.write_text(f'[server]\nlisten = "127.0.0.1:{srv.port}"\n' + auth_config())
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": ADMIN_KEY,
        "AWS_SECRET_ACCESS_KEY": ADMIN_SECRET,
        "AWS_REGION": region,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    return subprocess.run(
        [sys.executable, "-m", "registry", "get-login-password", "--config", str(config), *args],
        cwd=Path(__file__).resolve().parent.parent,  # this checkout's code
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_get_login_password_ignores_a_shell_region_for_its_own_registry(make_server) -> None:
    srv: MoorageServer = make_server(auth_config())
    p = _login(srv, region="eu-west-1")
    assert p.returncode == 0, p.stderr
    token = p.stdout.strip()
    r = requests.get(f"{srv.url}/v2/_catalog", auth=("AWS", token), timeout=30)
    assert r.status_code == 200, r.text

    p = _login(srv, "--endpoint", srv.url, region="eu-west-1")  # another registry's region: refused here
    assert p.returncode == 1 and "region" in p.stderr, p.stderr
