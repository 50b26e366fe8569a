"""Who may do what in the console, over plain HTTP: every page asks the same IAM evaluation as the APIs (a
principal scoped to some repositories sees only those, a repository policy's Deny holds), every POST route is
CSRF- and origin-checked (found from the console's own routing, so a new form cannot be missed), and a session
ends with the registry token it was signed in with, or when it expires."""

from __future__ import annotations

import json
import re
import time
from types import SimpleNamespace

import requests
from aiohttp import web

from registry.auth.tokens import KeyRing
from registry.web import console as console_web
from registry.web.context import ACCESS, CONFIG, IMAGES, PULL_THROUGH
from tests.console.conftest import (
    READER_KEY,
    READER_SECRET,
    SCOPED_KEY,
    SCOPED_SECRET,
    Fixture,
    sign_in_session,
)
from tests.console.test_http import csrf_of, victim_tags
from tests.server import ecr_client

DENIED_REPO = "denied/app"


def console_posts() -> list[str]:
    """Every POST route of the console, from its own routing (the console added to a bare application)."""
    app = web.Application()
    app[CONFIG] = SimpleNamespace(console=SimpleNamespace(enabled=True))  # type: ignore[assignment]
    for key in (ACCESS, IMAGES, PULL_THROUGH):
        app[key] = object()  # type: ignore[assignment]
    console_web.setup(app)
    return sorted(
        route.resource.canonical
        for resource in app.router.resources()
        for route in resource
        if route.method == "POST" and route.resource is not None
    )


def repositories_listed(session: requests.Session, url: str) -> list[str]:
    page = session.get(f"{url}/console/repositories?n=500", timeout=30)
    assert page.status_code == 200
    return re.findall(r'<tr data-repository="([^"]+)"', page.text)


def test_every_post_route_needs_the_sessions_csrf_token_and_its_origin(console: Fixture) -> None:
    url = console.url
    posts = console_posts()
    assert "/console/actions/restore-image" in posts and "/console/sign-out" in posts and len(posts) >= 14
    admin = sign_in_session(url)
    token = csrf_of(admin, url)
    # Fields every form might want, pointing at things a forged request would change.
    fields = {
        "repository": "victim/app",
        "digest": console.victim,
        "tag": "keep",
        "prefix": "declared",
        "upstream_url": "http://127.0.0.1:9",
        "policy": "{}",
        "do": "save",
        "access_key_id": READER_KEY,
        "secret_access_key": READER_SECRET,
    }
    for path in posts:
        if path == "/console/sign-in":  # no session yet: its origin is what is checked
            cross = requests.post(
                url + path, data=fields, headers={"Origin": "http://evil.example"}, allow_redirects=False, timeout=10
            )
            assert cross.status_code == 403 and "moorage_console" not in cross.headers.get("Set-Cookie", ""), path
            continue
        no_token = admin.post(url + path, data=fields, headers={"Origin": url}, allow_redirects=False, timeout=10)
        assert no_token.status_code == 403, (path, no_token.status_code, no_token.text[:300])
        cross = admin.post(
            url + path,
            data={**fields, "csrf": token},
            headers={"Origin": "http://evil.example"},
            allow_redirects=False,
            timeout=10,
        )
        assert cross.status_code == 403, (path, cross.status_code)
    assert victim_tags(console) == ["keep"]
    still = admin.get(f"{url}/console/repositories", allow_redirects=False, timeout=10)
    assert still.status_code == 200  # the forged sign-out did not sign the admin out


def test_a_scoped_principal_sees_and_opens_only_what_iam_allows(console: Fixture) -> None:
    url = console.url
    scoped = sign_in_session(url, SCOPED_KEY, SCOPED_SECRET)
    assert set(repositories_listed(scoped, url)) == {"web/app", "web/multi"}
    assert scoped.get(f"{url}/console/repositories/web/app", timeout=10).status_code == 200
    image = scoped.get(f"{url}/console/images/web/app@{console.image.digest}", timeout=10)
    assert image.status_code == 200 and 'id="layers"' in image.text
    for path, action in (
        ("/console/repositories/victim/app", "ecr:DescribeImages"),
        (f"/console/images/victim/app@{console.victim}", "ecr:BatchGetImage"),
        ("/console/lifecycle/victim/app", "ecr:GetLifecyclePolicy"),
        ("/console/permissions/victim/app", "ecr:GetRepositoryPolicy"),
        ("/console/storage", "ecr:DescribeRegistry"),
        ("/console/pull-through", "ecr:DescribePullThroughCacheRules"),
        ("/console/pull-through/rules/declared", "ecr:DescribePullThroughCacheRules"),
    ):
        page = scoped.get(url + path, allow_redirects=False, timeout=10)
        assert page.status_code == 403, (path, page.status_code)
        assert f"is not authorized to perform: {action}" in page.text, (path, page.text[:500])
    # Searching for what it may not see finds nothing, and says nothing about it.
    search = scoped.get(f"{url}/console/repositories?q=victim", timeout=10)
    assert search.status_code == 200 and "victim/app" not in search.text


def test_a_repository_policy_deny_holds_in_the_console(console: Fixture) -> None:
    """The reader may describe every repository by its identity policy; this repository's policy denies it."""
    ecr = ecr_client(console.server)
    ecr.create_repository(repositoryName=DENIED_REPO)
    account = ecr.describe_registry()["registryId"]
    deny = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "NotTheReader",
                "Effect": "Deny",
                "Principal": {"AWS": f"arn:aws:iam::{account}:user/reader"},
                "Action": ["ecr:DescribeRepositories", "ecr:DescribeImages"],
            }
        ],
    }
    ecr.set_repository_policy(repositoryName=DENIED_REPO, policyText=json.dumps(deny))
    reader, admin = sign_in_session(console.url, READER_KEY, READER_SECRET), sign_in_session(console.url)
    assert DENIED_REPO not in repositories_listed(reader, console.url)
    assert DENIED_REPO in repositories_listed(admin, console.url)
    page = reader.get(f"{console.url}/console/repositories/{DENIED_REPO}", timeout=10)
    assert page.status_code == 403 and "explicit deny in a resource-based policy" in page.text, page.text[:800]
    assert admin.get(f"{console.url}/console/repositories/{DENIED_REPO}", timeout=10).status_code == 200


def _cookie_max_age(response: requests.Response) -> int:
    match = re.search(r"moorage_console=[^;]+;.*?Max-Age=(\d+)", response.headers.get("Set-Cookie", ""), re.I)
    assert match, response.headers.get("Set-Cookie")
    return int(match.group(1))


def test_a_session_ends_with_the_registry_token_it_was_signed_in_with(console: Fixture) -> None:
    ring = KeyRing(console.server.data_dir / "keys")
    ring.load()  # the server's own keys (it created them at its first start)
    now = time.time()
    token, expires_at = ring.issue("reader", now, 90)
    session = requests.Session()
    r = session.post(
        f"{console.url}/console/sign-in",
        data={"token": token},
        headers={"Origin": console.url},
        allow_redirects=False,
        timeout=10,
    )
    assert r.status_code == 303, r.text[:500]
    assert 0 < _cookie_max_age(r) <= 90  # not the 12 hours a signed-in access key gets
    cookie = session.cookies["moorage_console"]
    assert ring.verify_session(cookie, now).expires_at <= expires_at
    # An expired token signs nobody in.
    old, _ = ring.issue("reader", now - 600, 60)
    r = requests.post(
        f"{console.url}/console/sign-in", data={"token": old}, headers={"Origin": console.url}, timeout=10
    )
    assert r.status_code == 401 and "moorage_console" not in r.headers.get("Set-Cookie", "")


def test_an_expired_session_is_no_session(console: Fixture) -> None:
    """The server checks the session's expiry itself: a browser that kept the cookie longer gets nothing."""
    ring = KeyRing(console.server.data_dir / "keys")
    ring.load()
    expired, _ = ring.issue_session("admin", "an-expired-session", time.time() - 3600, 60)
    live, _ = ring.issue_session("admin", "a-live-session", time.time(), 60)
    for value, status in ((expired, 302), (live, 200)):
        r = requests.get(
            f"{console.url}/console/repositories",
            cookies={"moorage_console": value},
            allow_redirects=False,
            timeout=10,
        )
        assert r.status_code == status, (status, r.status_code)
        assert status == 200 or r.headers["Location"].startswith("/console/sign-in")


def test_signing_out_ends_the_session_on_the_server_too(console: Fixture) -> None:
    """A copy of the cookie (another tab's, a stolen one) is refused once its session has signed out; another
    session of the same principal goes on."""
    session, other = sign_in_session(console.url, READER_KEY, READER_SECRET), sign_in_session(console.url)
    copied = session.cookies["moorage_console"]
    out = session.post(
        f"{console.url}/console/sign-out",
        data={"csrf": csrf_of(session, console.url)},
        headers={"Origin": console.url},
        allow_redirects=False,
        timeout=10,
    )
    assert out.status_code == 303 and out.headers["Location"] == "/console/sign-in"
    again = requests.get(
        f"{console.url}/console/repositories",
        cookies={"moorage_console": copied},
        allow_redirects=False,
        timeout=10,
    )
    assert again.status_code == 302 and again.headers["Location"].startswith("/console/sign-in")
    forged = requests.post(
        f"{console.url}/console/actions/delete-tag",
        data={"repository": "victim/app", "tag": "keep", "csrf": "x"},
        cookies={"moorage_console": copied},
        headers={"Origin": console.url},
        allow_redirects=False,
        timeout=10,
    )
    assert forged.status_code == 403
    assert other.get(f"{console.url}/console/repositories", allow_redirects=False, timeout=10).status_code == 200
