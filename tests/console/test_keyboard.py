"""The console from the keyboard alone, in headless Chromium: sign in, skip to the content, search, open a
repository, reach a delete button and get its confirmation; and every page loads what it needs from the console
itself (nothing from another origin: no CDN)."""

from __future__ import annotations

from typing import Any

from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec

from tests.console.conftest import Fixture
from tests.console.test_browser import navigate, open_page, repository_names, sign_in, wait
from tests.server import ADMIN_KEY, ADMIN_SECRET


def press(browser: Any, *keys: str) -> None:
    ActionChains(browser).send_keys(*keys).perform()


def focused(browser: Any) -> dict[str, str]:
    return dict(
        browser.execute_script(
            "const e = document.activeElement;"
            "return {tag: e.tagName.toLowerCase(), id: e.id || '', text: (e.textContent || '').trim(),"
            " cls: e.className || '', href: e.getAttribute('href') || ''};"
        )
    )


def tab_until(browser: Any, wanted: Any, limit: int = 60) -> dict[str, str]:
    """Press Tab until the focused element satisfies `wanted` (at most `limit` times)."""
    for _ in range(limit):
        press(browser, Keys.TAB)
        now = focused(browser)
        if wanted(now):
            return now
    raise AssertionError(f"Tab never reached the element wanted; last focused: {focused(browser)}")


def test_the_console_from_the_keyboard_alone(browser: Any, console: Fixture) -> None:
    open_page(browser, f"{console.url}/console/sign-in")
    browser.delete_all_cookies()
    open_page(browser, f"{console.url}/console/sign-in")
    assert focused(browser)["id"] == "access_key_id"  # the form has the focus from the start
    navigate(browser, lambda: press(browser, ADMIN_KEY, Keys.TAB, ADMIN_SECRET, Keys.ENTER))
    assert browser.current_url.endswith("/console/repositories"), browser.page_source[:1000]

    press(browser, Keys.TAB)
    skip = focused(browser)
    assert skip["text"] == "Skip to content" and skip["href"] == "#main"
    assert browser.find_element(By.CSS_SELECTOR, "a.skip").location["x"] >= 0  # shown when focused
    press(browser, Keys.ENTER, Keys.TAB)  # past the top bar's links and forms, to the page's first field
    assert focused(browser)["id"] == "q"
    press(browser, "gamma")
    wait(browser).until(lambda b: repository_names(b) == ["search/gamma-tools"])
    link = tab_until(browser, lambda e: e["text"] == "search/gamma-tools")
    assert link["tag"] == "a"
    navigate(browser, lambda: press(browser, Keys.ENTER))
    assert browser.find_element(By.TAG_NAME, "h1").text == "search/gamma-tools"

    open_page(browser, f"{console.url}/console/repositories/victim/app")
    button = tab_until(browser, lambda e: "delete-tag" in e["cls"])
    assert button["tag"] == "button"
    press(browser, Keys.ENTER)
    alert = wait(browser).until(ec.alert_is_present())
    assert "Delete tag keep?" in alert.text
    alert.dismiss()  # nothing deleted


def test_every_page_loads_only_from_the_console(browser: Any, console: Fixture) -> None:
    sign_in(browser, console, ADMIN_KEY, ADMIN_SECRET)
    for path in (
        "/console/repositories",
        "/console/repositories/web/app",
        f"/console/images/web/app@{console.image.digest}",
        "/console/pull-through",
        "/console/lifecycle/web/app",
        "/console/permissions/web/app",
        "/console/storage",
    ):
        open_page(browser, console.url + path)
        loaded = browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
            ".concat(Array.from(document.querySelectorAll('script[src], link[href][rel=stylesheet], img[src]'),"
            " e => e.src || e.href))"
        )
        assert loaded, path  # the stylesheet and the script at least
        strangers = [url for url in loaded if not url.startswith(console.url + "/")]
        assert strangers == [], (path, strangers)
