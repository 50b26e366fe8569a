"""The web console's fixtures: headless Chromium from Debian (`chromium`, `chromium-driver`) driven by Selenium,
and a server with auth on, a read-only principal and images pushed by skopeo (a single image with two tags and
two referrers, a two-platform index) plus repositories to search among.

Selenium never downloads anything: the driver and the browser are named explicitly (/usr/bin/chromedriver,
/usr/bin/chromium) and SE_OFFLINE keeps Selenium Manager off the network. Waits are explicit (WebDriverWait on a
condition), never fixed sleeps. Screenshots go to $CONSOLE_SCREENSHOTS, or to the session's temporary directory.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.helpers import require
from tests.layouts import LayoutImage, LayoutIndex, write_multi_platform_image, write_single_image
from tests.oci import OCI_MANIFEST, Client, make_image
from tests.server import ADMIN_KEY, ADMIN_SECRET, MoorageServer, auth_config, ecr_client, login_password, principal_toml
from tests.skopeo import isolated_skopeo, skopeo_push

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 20.0  # seconds an explicit wait may take on a loaded machine
READER_KEY = "AKIAMOORAGECONSOLERO1"
READER_SECRET = "moorage-console-reader-secret-0123456789"
READ_ONLY = (
    '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": '
    '["ecr:Describe*", "ecr:BatchGetImage", "ecr:ListImages", "ecr:GetAuthorizationToken"], "Resource": "*"}]}'
)
SIGNATURE_TYPE = "application/vnd.dev.cosign.artifact.sig.v1+json"
SBOM_TYPE = "application/spdx+json"
SEARCH_NAMES = ("search/alpha", "search/beta", "search/gamma-tools")


@dataclass
class Fixture:
    """What the console server holds."""

    server: MoorageServer
    image: LayoutImage  # web/app:1.0 and :stable
    index: LayoutIndex  # web/multi:latest (linux/amd64, linux/arm64)
    signature: str  # referrers of web/app:1.0
    sbom: str
    victim: str  # victim/app:keep (for the forged requests)

    @property
    def url(self) -> str:
        return self.server.url


# Looks at everything and changes nothing: reads policies (ecr:Get*), but may not preview, save or apply.
AUDITOR_KEY = "AKIAMOORAGECONSOLEAUD"
AUDITOR_SECRET = "moorage-console-auditor-secret-012345678"
AUDITOR = (
    '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": '
    '["ecr:Describe*", "ecr:Get*", "ecr:List*", "ecr:BatchGetImage"], "Resource": "*"}]}'
)
# Reads everything under web/ and nothing else (no registry-wide page either): what a page of another repository
# must refuse.
SCOPED_KEY = "AKIAMOORAGECONSOLESCP"
SCOPED_SECRET = "moorage-console-scoped-secret-0123456789"
SCOPED = (
    '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": '
    '["ecr:Describe*", "ecr:Get*", "ecr:List*", "ecr:BatchGetImage"], '
    '"Resource": "arn:aws:ecr:*:*:repository/web/*"}]}'
)
SECRET_PASSWORD = "console-test-upstream-password-never-shown"
# Loopback upstreams (the operations pages' Distribution), a rule from the configuration file (read-only in the
# console; its upstream is a closed port) and a credential a rule may name.
PULL_THROUGH = (
    '[pull_through]\nallowed_upstreams = ["127.0.0.1"]\n'
    '[[pull_through.rules]]\necr_repository_prefix = "declared"\nupstream_registry_url = "http://127.0.0.1:9"\n'
    f'[secrets.console-test]\nusername = "console"\npassword = "{SECRET_PASSWORD}"\n'
)


def console_config(extra: str = "") -> str:
    return auth_config(
        principal_toml("reader", READER_KEY, READER_SECRET, READ_ONLY),
        principal_toml("auditor", AUDITOR_KEY, AUDITOR_SECRET, AUDITOR),
        principal_toml("scoped", SCOPED_KEY, SCOPED_SECRET, SCOPED),
        extra=extra,
    )


@pytest.fixture(scope="package")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fixture]:
    """One server for the package's modules (each test names the repository it changes)."""
    root = tmp_path_factory.mktemp("console")
    skopeo = isolated_skopeo(tmp_path_factory.mktemp("console-skopeo"))
    srv = MoorageServer(root / "data", console_config(PULL_THROUGH)).start()
    try:
        creds = f"AWS:{login_password(srv)}"
        image = write_single_image(root / "single", "1.0", n_layers=3)
        index = write_multi_platform_image(root / "multi", "latest")
        skopeo_push(skopeo, root / "single", "1.0", f"{srv.host}/web/app:1.0", creds=creds)
        skopeo_push(skopeo, root / "single", "1.0", f"{srv.host}/web/app:stable", creds=creds)
        skopeo_push(skopeo, root / "multi", "latest", f"{srv.host}/web/multi:latest", all_images=True, creds=creds)
        skopeo_push(skopeo, root / "single", "1.0", f"{srv.host}/victim/app:keep", creds=creds)
        client = Client(srv.url, ("AWS", creds.removeprefix("AWS:")))
        subject = {"mediaType": OCI_MANIFEST, "digest": image.digest, "size": len(image.manifest)}
        signature, sbom = (make_image(1, 64, subject=subject, artifact_type=t) for t in (SIGNATURE_TYPE, SBOM_TYPE))
        client.push_image("web/app", signature.digest, signature)
        client.push_image("web/app", sbom.digest, sbom)
        ecr = ecr_client(srv)
        for name in SEARCH_NAMES:
            ecr.create_repository(repositoryName=name)
        yield Fixture(srv, image, index, signature.digest, sbom.digest, image.digest)
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("CONSOLE_SCREENSHOTS")
    path = Path(configured) if configured else tmp_path_factory.mktemp("console-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless Chromium for the session (a fresh profile; cookies are cleared by each sign-in)."""
    require(CHROMIUM, "apt-get install chromium")
    require(CHROMEDRIVER, "apt-get install chromium-driver")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never reach the network
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium-profile")
    for arg in (
        "--headless=new",
        "--no-sandbox",  # running as root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--disable-extensions",
        "--no-first-run",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    log = tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"
    service = Service(CHROMEDRIVER, log_output=str(log))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(WAIT * 2)
    try:
        yield driver
    finally:
        try:
            driver.quit()
        finally:
            process = service.process
            if process is not None and process.poll() is None:  # quit failed: end chromedriver (and so chromium)
                process.kill()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    pass


def sign_in_session(url: str, key: str = ADMIN_KEY, secret: str = ADMIN_SECRET) -> requests.Session:
    """A requests session signed in to the console, as a browser form post would sign in."""
    session = requests.Session()
    r = session.post(
        f"{url}/console/sign-in",
        data={"access_key_id": key, "secret_access_key": secret, "next": "/console/repositories"},
        headers={"Origin": url},
        allow_redirects=False,
        timeout=10,
    )
    assert r.status_code == 303, r.text
    return session
