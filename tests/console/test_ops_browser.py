"""The console's operations pages in a real browser (headless Chromium): a pull-through rule created in the
browser and pulled through with skopeo from a Distribution upstream, its counters moving; a lifecycle policy
refused with ECR's message, saved, previewed now and "as of" later, applied; a repository policy edited until
"who can pull" flips; the storage page against DescribeImages. Screenshots of each page go to `screenshots`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tests.console.conftest import Fixture
from tests.console.test_browser import click_and_load, click_confirm_and_load, open_page, shot, sign_in
from tests.layouts import write_single_image
from tests.server import ecr_client, login_password
from tests.skopeo import Skopeo, isolated_skopeo, skopeo_pull, skopeo_push
from tests.upstreams import DistributionRegistry

DAY = 86400


@dataclass
class Upstream:
    registry: DistributionRegistry
    skopeo: Skopeo
    creds: str  # for the console's server
    root: Path


@pytest.fixture(scope="module")
def upstream(console: Fixture, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """A Distribution registry holding dist/app:1.0 (three layers), and a skopeo of the module's own."""
    root = tmp_path_factory.mktemp("console-ops")
    skopeo = isolated_skopeo(tmp_path_factory.mktemp("console-ops-skopeo"))
    registry = DistributionRegistry(root / "distribution").start()
    try:
        write_single_image(root / "upstream-image", "1.0", n_layers=3)
        skopeo_push(skopeo, root / "upstream-image", "1.0", f"{registry.host}/team/tool:1.0")
        yield Upstream(registry, skopeo, f"AWS:{login_password(console.server)}", root)
    finally:
        registry.stop()


def set_value(browser: Any, element_id: str, value: str) -> None:
    """Put `value` in a textarea or input (as a paste would; typing 500 characters costs seconds)."""
    field = browser.find_element(By.ID, element_id)
    browser.execute_script("arguments[0].value = arguments[1];", field, value)


def counters(browser: Any) -> dict[str, str]:
    cells = browser.find_elements(By.CSS_SELECTOR, "#counters [data-counter]")
    return {c.get_attribute("data-counter"): c.get_attribute("data-bytes") or c.text for c in cells}


def test_create_a_rule_pull_through_it_and_watch_its_counters(
    browser: Any, console: Fixture, upstream: Upstream, screenshots: Path
) -> None:
    sign_in(browser, console)
    click_and_load(browser, browser.find_element(By.ID, "nav-pull-through"))
    assert "process" in browser.find_element(By.ID, "per-process").text  # the counters are per process
    browser.find_element(By.ID, "prefix").send_keys("dist")
    browser.find_element(By.ID, "upstream_url").send_keys(upstream.registry.url)
    click_and_load(browser, browser.find_element(By.ID, "create-submit"))
    assert browser.find_element(By.ID, "notice").text == "Created the rule dist."
    assert browser.find_element(By.ID, "rule-upstream").text == upstream.registry.url
    assert counters(browser)["hits"] == "0" and counters(browser)["misses"] == "0"
    click_and_load(browser, browser.find_element(By.ID, "validate-rule"))
    assert browser.find_element(By.ID, "validation").get_attribute("data-valid") == "true"

    skopeo_pull(
        upstream.skopeo,
        f"{console.server.host}/dist/team/tool:1.0",
        upstream.root / "pulled",
        "1.0",
        extra=["--src-creds", upstream.creds],
    )
    rule_page = f"{console.url}/console/pull-through/rules/dist"
    open_page(browser, rule_page)
    first = counters(browser)
    # A first pull misses (at least) the config and the three layers, and fetches them upstream.
    assert int(first["misses"]) >= 4 and int(first["upstream-bytes"]) > 0, first
    skopeo_pull(
        upstream.skopeo,
        f"{console.server.host}/dist/team/tool:1.0",
        upstream.root / "pulled-again",
        "1.0",
        extra=["--src-creds", upstream.creds],
    )
    open_page(browser, rule_page)
    second = counters(browser)
    assert int(second["hits"]) >= int(first["hits"]) + 5 and second["misses"] == first["misses"], (first, second)
    assert second["upstream-bytes"] == first["upstream-bytes"]  # served from the cache
    cached = browser.find_elements(By.CSS_SELECTOR, "#cached-repositories tr[data-repository]")
    assert [row.get_attribute("data-repository") for row in cached] == ["dist/team/tool"]
    shot(browser, screenshots, "pull-through-rule")
    click_and_load(browser, browser.find_element(By.ID, "nav-pull-through"))
    row = browser.find_element(By.CSS_SELECTOR, "tr[data-prefix='dist']")
    assert row.find_element(By.CSS_SELECTOR, "[data-counter=hits]").text == second["hits"]
    shot(browser, screenshots, "pull-through")


LIFECYCLE_REPO = "life/app"
INVALID = json.dumps(
    {
        "rules": [
            {
                "rulePriority": 1,
                "description": "keep the newest release",
                "selection": {
                    "tagStatus": "tagged",
                    "tagPrefixList": ["v"],
                    "countType": "imageCountMoreThan",
                    "countNumber": 0,
                },
                "action": {"type": "expire"},
            }
        ]
    },
    indent=2,
)
VALID = json.dumps(
    {
        "rules": [
            {
                "rulePriority": 1,
                "description": "keep the newest release",
                "selection": {
                    "tagStatus": "tagged",
                    "tagPrefixList": ["v"],
                    "countType": "imageCountMoreThan",
                    "countNumber": 1,
                },
                "action": {"type": "expire"},
            },
            {
                "rulePriority": 2,
                "description": "the rest go after two days",
                "selection": {
                    "tagStatus": "any",
                    "countType": "sinceImagePushed",
                    "countUnit": "days",
                    "countNumber": 2,
                },
                "action": {"type": "expire"},
            },
        ]
    },
    indent=2,
)


def plan(browser: Any) -> dict[str, tuple[str, str | None]]:
    rows = browser.find_elements(By.CSS_SELECTOR, "#preview tbody tr[data-digest]")
    return {
        r.get_attribute("data-digest"): (r.get_attribute("data-action"), r.get_attribute("data-rule")) for r in rows
    }


def test_lifecycle_policy_refused_saved_previewed_and_applied(
    browser: Any, console: Fixture, upstream: Upstream, screenshots: Path
) -> None:
    digests = {}
    for tag in ("v1", "v2", "v3", "dev"):
        write_single_image(upstream.root / f"life-{tag}", tag, n_layers=1)
        skopeo_push(
            upstream.skopeo,
            upstream.root / f"life-{tag}",
            tag,
            f"{console.server.host}/{LIFECYCLE_REPO}:{tag}",
            creds=upstream.creds,
        )
    ecr = ecr_client(console.server)
    for detail in ecr.describe_images(repositoryName=LIFECYCLE_REPO)["imageDetails"]:
        digests[detail["imageTags"][0]] = detail["imageDigest"]

    sign_in(browser, console)
    open_page(browser, f"{console.url}/console/repositories/{LIFECYCLE_REPO}")
    click_and_load(browser, browser.find_element(By.ID, "tab-lifecycle"))
    set_value(browser, "policy", INVALID)
    click_and_load(browser, browser.find_element(By.ID, "save-policy"))
    error = browser.find_element(By.ID, "policy-error").text
    assert error.startswith("Invalid parameter at 'LifecyclePolicyText' failed to satisfy constraint: 'Lifecycle")
    assert "numeric instance is lower than the required minimum (minimum: 1, found: 0)" in error
    assert json.loads(browser.find_element(By.ID, "policy").get_attribute("value")) == json.loads(INVALID)  # kept

    set_value(browser, "policy", VALID)
    click_and_load(browser, browser.find_element(By.ID, "save-policy"))
    assert browser.find_element(By.ID, "notice").text == "Saved the lifecycle policy."
    now = plan(browser)
    assert now[digests["v1"]] == ("expire", "1") and now[digests["v2"]] == ("expire", "1")
    assert now[digests["v3"]] == ("keep", None) and now[digests["dev"]] == ("keep", None)
    marked = browser.find_element(By.CSS_SELECTOR, f"tr[data-digest='{digests['v1']}'] td.plan").text
    assert "by rule 1" in marked and "keep the newest release" in marked

    later = browser.execute_script("return new Date(Date.now() + 3 * 86400000).toISOString().slice(0, 16);")
    set_value(browser, "as-of", later)
    click_and_load(browser, browser.find_element(By.ID, "as-of-submit"))
    ahead = plan(browser)
    assert ahead[digests["dev"]] == ("expire", "2") and ahead[digests["v3"]] == ("keep", None)
    assert browser.find_element(By.ID, "preview-summary").get_attribute("data-expiring") == "3"
    shot(browser, screenshots, "lifecycle")

    click_confirm_and_load(browser, browser.find_element(By.ID, "apply-now"))
    assert browser.find_element(By.ID, "notice").text.startswith("Applied the policy now: 2 images expired")
    left = {d["imageTags"][0] for d in ecr.describe_images(repositoryName=LIFECYCLE_REPO)["imageDetails"]}
    assert left == {"v3", "dev"}


PERMISSION_REPO = "perm/app"


def verdict(browser: Any) -> tuple[str, str]:
    found = browser.find_element(By.ID, "who-verdict")
    return found.get_attribute("data-pull"), found.get_attribute("data-push")


def ask_about(browser: Any, principal: str) -> None:
    Select(browser.find_element(By.ID, "principal")).select_by_value(principal)
    click_and_load(browser, browser.find_element(By.ID, "who-submit"))


def test_editing_the_repository_policy_flips_who_can_pull(
    browser: Any, console: Fixture, upstream: Upstream, screenshots: Path
) -> None:
    ecr = ecr_client(console.server)
    ecr.create_repository(repositoryName=PERMISSION_REPO)
    account = ecr.describe_registry()["registryId"]
    sign_in(browser, console)
    open_page(browser, f"{console.url}/console/repositories/{PERMISSION_REPO}")
    click_and_load(browser, browser.find_element(By.ID, "tab-permissions"))
    assert verdict(browser) == ("yes", "yes")  # the admin, by its identity policy
    ask_about(browser, "reader")
    assert verdict(browser) == ("no", "no")  # BatchGetImage, but no GetDownloadUrlForLayer
    get_layer = browser.find_element(By.CSS_SELECTOR, "#who-pull tr[data-action='ecr:GetDownloadUrlForLayer']")
    assert get_layer.get_attribute("data-allowed") == "false"

    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReaderPulls",
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{account}:user/reader"},
                "Action": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
            },
            {"Sid": "NobodyPushes", "Effect": "Deny", "Principal": "*", "Action": "ecr:PutImage"},
        ],
    }
    set_value(browser, "policy", json.dumps(policy, indent=2))
    click_and_load(browser, browser.find_element(By.ID, "save-policy"))
    assert browser.find_element(By.ID, "notice").text == "Saved the repository policy."
    assert json.loads(ecr.get_repository_policy(repositoryName=PERMISSION_REPO)["policyText"]) == policy
    ask_about(browser, "reader")
    assert verdict(browser) == ("yes", "no")
    get_layer = browser.find_element(By.CSS_SELECTOR, "#who-pull tr[data-action='ecr:GetDownloadUrlForLayer']")
    assert get_layer.get_attribute("data-allowed") == "true"
    decided = get_layer.find_element(By.CSS_SELECTOR, ".decided-by").text
    assert "repository policy" in decided and "ReaderPulls" in decided
    ask_about(browser, "admin")
    put_image = browser.find_element(By.CSS_SELECTOR, "#who-push tr[data-action='ecr:PutImage']")
    assert put_image.get_attribute("data-decision") == "explicit deny"  # a Deny beats the admin's Allow
    assert "NobodyPushes" in put_image.find_element(By.CSS_SELECTOR, ".decided-by").text
    shot(browser, screenshots, "permissions")


def test_storage_page_agrees_with_describe_images(browser: Any, console: Fixture, screenshots: Path) -> None:
    ecr = ecr_client(console.server)
    names = [r["repositoryName"] for r in ecr.describe_repositories(maxResults=1000)["repositories"]]
    sizes = {}
    images = 0
    for name in names:
        details = [
            d
            for page in ecr.get_paginator("describe_images").paginate(repositoryName=name)
            for d in page["imageDetails"]
        ]
        images += len(details)
        sizes[name] = sum(d["imageSizeInBytes"] for d in details)
    sign_in(browser, console)
    click_and_load(browser, browser.find_element(By.ID, "nav-storage"))
    assert browser.find_element(By.ID, "repositories-count").text == str(len(names))
    assert browser.find_element(By.ID, "images-count").text == str(images)
    assert int(browser.find_element(By.ID, "image-bytes").get_attribute("data-bytes")) == sum(sizes.values())
    stored = int(browser.find_element(By.ID, "stored-bytes").get_attribute("data-bytes"))
    assert 0 < stored <= sum(sizes.values())  # shared layers count once
    bars = browser.find_elements(By.CSS_SELECTOR, "#storage-chart g.bar")
    expected = sorted(((-size, name) for name, size in sizes.items() if size), key=lambda item: item)[:10]
    assert [(b.get_attribute("data-repository"), int(b.get_attribute("data-bytes"))) for b in bars] == [
        (name, -size) for size, name in expected
    ]
    assert browser.find_element(By.ID, "hits-chart").get_attribute("data-hits") is not None
    assert "this process" in browser.find_element(By.ID, "hits-per-process").text
    shot(browser, screenshots, "storage")
