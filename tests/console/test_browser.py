"""The web console in a real browser (headless Chromium): sign in, search, a repository with its referrers and
an index's platforms, an image's layers and config, deleting a tag, what a read-only principal sees, signing
out. Screenshots of the main pages go to the `screenshots` directory."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from selenium.common.exceptions import NoAlertPresentException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.console.conftest import READER_KEY, READER_SECRET, WAIT, Fixture
from tests.server import ADMIN_KEY, ADMIN_SECRET, AUTH_OFF, MoorageServer, ecr_client

FAILED = "Sign-in failed: those credentials are not valid."


def wait(browser: Any) -> WebDriverWait:
    return WebDriverWait(browser, WAIT, poll_frequency=0.1)


def open_page(browser: Any, url: str) -> None:
    """Load `url` and wait until the document (and its deferred script) is in."""
    browser.get(url)
    wait(browser).until(lambda b: b.execute_script("return document.readyState") == "complete")


def _new_page_loaded(browser: Any) -> bool:
    """Whether the document that replaced the marked one is fully in. While Chromium swaps documents, asking
    can fail in several ways (a stale node, a node of no document, a script with no context): not yet."""
    try:
        return bool(browser.execute_script("return !window.__moorageOld && document.readyState === 'complete'"))
    except WebDriverException:
        return False


def navigate(browser: Any, act: Callable[[], object]) -> None:
    """Do `act` (a click, a confirmation) and wait until a new document has replaced this one and loaded. The
    old document is marked with a script variable, not held as an element: no stale-element races."""
    browser.execute_script("window.__moorageOld = true")
    act()
    wait(browser).until(_new_page_loaded)


def click_and_load(browser: Any, element: Any) -> None:
    """Click a link or submit button and wait for the next page to replace this one."""
    navigate(browser, element.click)


def click_confirm_and_load(browser: Any, element: Any) -> None:
    """Click a button whose form asks for confirmation, accept it, and wait for the next page."""

    def act() -> None:
        element.click()
        wait(browser).until(ec.alert_is_present()).accept()

    navigate(browser, act)


def fill_sign_in(browser: Any, key: str, secret: str) -> None:
    browser.find_element(By.ID, "access_key_id").clear()
    browser.find_element(By.ID, "access_key_id").send_keys(key)
    browser.find_element(By.ID, "secret_access_key").send_keys(secret)
    click_and_load(browser, browser.find_element(By.ID, "sign-in-submit"))


def sign_in(browser: Any, console: Fixture, key: str = ADMIN_KEY, secret: str = ADMIN_SECRET) -> None:
    open_page(browser, f"{console.url}/console/sign-in")
    browser.delete_all_cookies()
    open_page(browser, f"{console.url}/console/sign-in")
    fill_sign_in(browser, key, secret)
    assert browser.current_url.endswith("/console/repositories"), browser.page_source[:2000]


def shot(browser: Any, screenshots: Path, name: str) -> None:
    browser.set_window_size(1280, max(900, browser.execute_script("return document.body.scrollHeight") + 40))
    assert browser.save_screenshot(str(screenshots / f"{name}.png"))
    browser.set_window_size(1280, 900)


def repository_names(browser: Any) -> list[str]:
    """The listed repositories, read in one script: search-as-you-type replaces the rows while we read."""
    script = "return Array.from(document.querySelectorAll('tr[data-repository]'), r => r.dataset.repository)"
    try:
        return list(browser.execute_script(script))
    except WebDriverException:  # the document itself is being replaced
        return []


def test_sign_in_refuses_wrong_credentials_without_saying_which_half(
    browser: Any, console: Fixture, screenshots: Path
) -> None:
    open_page(browser, f"{console.url}/")
    browser.delete_all_cookies()
    open_page(browser, f"{console.url}/")
    assert "/console/sign-in" in browser.current_url  # / -> /console/repositories -> sign-in
    shot(browser, screenshots, "sign-in")
    fill_sign_in(browser, ADMIN_KEY, "not-the-secret")
    assert browser.find_element(By.ID, "sign-in-error").text == FAILED
    fill_sign_in(browser, "AKIANOSUCHKEY0000000", ADMIN_SECRET)
    assert browser.find_element(By.ID, "sign-in-error").text == FAILED
    assert browser.get_cookie("moorage_console") is None


def test_search_finds_a_repository(browser: Any, console: Fixture, screenshots: Path) -> None:
    sign_in(browser, console)
    assert browser.find_element(By.CSS_SELECTOR, "[data-testid=principal]").text == "admin"
    names = repository_names(browser)
    assert {"web/app", "web/multi", "victim/app", "search/alpha", "search/gamma-tools"} <= set(names)
    shot(browser, screenshots, "repositories")
    browser.find_element(By.ID, "q").send_keys("gamma")  # search as you type: no submit
    wait(browser).until(lambda b: repository_names(b) == ["search/gamma-tools"])
    assert browser.current_url.endswith("?q=gamma")
    click_and_load(browser, browser.find_element(By.LINK_TEXT, "search/gamma-tools"))
    assert browser.find_element(By.TAG_NAME, "h1").text == "search/gamma-tools"
    assert "No images." in browser.page_source


def test_repository_shows_referrers_under_their_subject(browser: Any, console: Fixture, screenshots: Path) -> None:
    sign_in(browser, console)
    open_page(browser, f"{console.url}/console/repositories?q=web%2Fapp")
    click_and_load(browser, browser.find_element(By.LINK_TEXT, "web/app"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#images tbody tr[data-digest]")
    order = [row.get_attribute("data-digest") for row in rows]
    assert order.index(console.image.digest) < order.index(console.signature)
    assert order.index(console.image.digest) < order.index(console.sbom)
    subject = rows[order.index(console.image.digest)]
    assert {t.get_attribute("data-tag") for t in subject.find_elements(By.CSS_SELECTOR, ".tag")} >= {"1.0"}
    for digest, kind in ((console.signature, "signature"), (console.sbom, "SBOM")):
        row = rows[order.index(digest)]
        assert row.get_attribute("data-kind") == kind
        assert "depth-1" in row.get_attribute("class")  # drawn under the subject
    pull = browser.find_element(By.ID, "pull-command").get_attribute("value")
    assert pull.startswith(f"docker pull {console.server.host}/web/app:")
    copy = browser.find_element(By.ID, "copy-pull")
    copy.click()
    wait(browser).until(lambda b: copy.text == "Copied")
    shot(browser, screenshots, "repository")


def test_an_index_shows_its_platforms(browser: Any, console: Fixture) -> None:
    sign_in(browser, console)
    open_page(browser, f"{console.url}/console/repositories/web/multi")
    platforms = browser.find_elements(By.CSS_SELECTOR, "ul.platform-list li[data-platform]")
    assert sorted(p.get_attribute("data-platform") for p in platforms) == ["linux/amd64", "linux/arm64"]
    top = [r.get_attribute("data-digest") for r in browser.find_elements(By.CSS_SELECTOR, "tr[data-digest]")]
    assert top == [console.index.digest]  # the platform manifests are under the index, not rows of their own
    click_and_load(browser, browser.find_element(By.CSS_SELECTOR, f"tr[data-digest='{console.index.digest}'] td a"))
    table = browser.find_elements(By.CSS_SELECTOR, "#platforms tbody tr")
    assert sorted(r.get_attribute("data-platform") for r in table) == ["linux/amd64", "linux/arm64"]


def test_image_page_shows_manifest_layers_and_config(browser: Any, console: Fixture, screenshots: Path) -> None:
    sign_in(browser, console)
    open_page(browser, f"{console.url}/console/repositories/web/app")
    link = browser.find_element(By.CSS_SELECTOR, f"tr[data-digest='{console.image.digest}'] td:nth-child(2) a")
    click_and_load(browser, link)
    assert browser.find_element(By.ID, "manifest-digest").text == console.image.digest
    assert browser.find_element(By.ID, "digest-verified").text == "verified"
    sizes = [
        int(c.get_attribute("data-bytes")) for c in browser.find_elements(By.CSS_SELECTOR, "tr.layer td[data-bytes]")
    ]
    assert sizes == [len(layer) for layer in console.image.layers]
    assert browser.find_element(By.ID, "config-platform").text == "linux/amd64"
    assert "PATH=/usr/bin:/bin" in browser.find_element(By.ID, "config-env").text
    assert "layer 0" in browser.find_element(By.ID, "config-history").text
    assert "moorage.test.nonce" in browser.find_element(By.ID, "config-labels").text
    shown = browser.find_element(By.ID, "manifest-json").text
    assert json.loads(shown) == json.loads(console.image.manifest)
    shot(browser, screenshots, "image")


def test_admin_deletes_a_tag(browser: Any, console: Fixture) -> None:
    sign_in(browser, console)
    open_page(browser, f"{console.url}/console/repositories/web/app")
    button = browser.find_element(By.CSS_SELECTOR, "span.tag[data-tag='stable'] button.delete-tag")
    click_confirm_and_load(browser, button)
    assert wait(browser).until(ec.visibility_of_element_located((By.ID, "notice"))).text == "Deleted tag stable."
    details = ecr_client(console.server).describe_images(
        repositoryName="web/app", imageIds=[{"imageDigest": console.image.digest}]
    )["imageDetails"]
    assert details[0]["imageTags"] == ["1.0"]  # the tag went, the image stayed
    try:
        browser.switch_to.alert.dismiss()
        raise AssertionError("a second confirmation appeared")
    except NoAlertPresentException:
        pass


def test_read_only_principal_sees_no_delete_controls_then_signs_out(browser: Any, console: Fixture) -> None:
    sign_in(browser, console, READER_KEY, READER_SECRET)
    assert browser.find_element(By.CSS_SELECTOR, "[data-testid=principal]").text == "reader"
    open_page(browser, f"{console.url}/console/repositories/web/app")
    assert browser.find_elements(By.CSS_SELECTOR, f"tr[data-digest='{console.image.digest}']")
    assert not browser.find_elements(By.CSS_SELECTOR, "button.delete-image, button.delete-tag, button.restore")
    assert not browser.find_elements(By.CSS_SELECTOR, "form[action^='/console/actions/']")
    open_page(browser, f"{console.url}/console/images/web/app@{console.image.digest}")
    assert len(browser.find_elements(By.CSS_SELECTOR, "tr.layer")) == len(console.image.layers)

    click_and_load(browser, browser.find_element(By.ID, "sign-out"))
    assert "/console/sign-in" in browser.current_url
    assert browser.get_cookie("moorage_console") is None
    open_page(browser, f"{console.url}/console/repositories/web/app")
    assert "/console/sign-in" in browser.current_url


def test_auth_off_needs_no_sign_in(browser: Any, make_server: Callable[..., MoorageServer]) -> None:
    srv = make_server(AUTH_OFF)
    ecr_client(srv).create_repository(repositoryName="open/app")
    open_page(browser, f"{srv.url}/console/sign-in")
    assert browser.current_url.endswith("/console/repositories")
    assert repository_names(browser) == ["open/app"]
    assert "auth off" in browser.find_element(By.CSS_SELECTOR, "header .who").text
    assert not browser.find_elements(By.ID, "sign-out")
