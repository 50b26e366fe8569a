"""The console over plain HTTP (no browser): routing next to /v2 and the ECR API, the session cookie, forged
and cross-site requests refused with nothing changed, sign-in with a registry token, the sign-in limiter, error
pages, auth off and `[console] enabled = false`."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable

import requests

from tests.console.conftest import READER_KEY, READER_SECRET, Fixture, console_config, sign_in_session
from tests.oci import Client, make_image
from tests.server import AUTH_OFF, MoorageServer, ecr_client, login_password

DELETE_IMAGE = "/console/actions/delete-image"
DELETE_TAG = "/console/actions/delete-tag"


def csrf_of(session: requests.Session, url: str) -> str:
    """The CSRF token the console hands this session (in its sign-out form, on every page)."""
    page = session.get(f"{url}/console/repositories", timeout=10)
    assert page.status_code == 200
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match, page.text[:1000]
    return match.group(1)


def victim_tags(console: Fixture) -> list[str]:
    details = ecr_client(console.server).describe_images(repositoryName="victim/app")["imageDetails"]
    return sorted(tag for d in details for tag in d.get("imageTags", []))


def test_routes_next_to_the_apis(console: Fixture) -> None:
    home = requests.get(f"{console.url}/", allow_redirects=False, timeout=10)
    assert home.status_code == 302 and home.headers["Location"] == "/console/repositories"
    # POST / with X-Amz-Target is still the ECR API, /v2/ still the registry's challenge.
    assert "victim/app" in {
        r["repositoryName"] for r in ecr_client(console.server).describe_repositories()["repositories"]
    }
    bare = requests.post(f"{console.url}/", headers={"X-Amz-Target": "AmazonEC2ContainerRegistry_V20150921.X"})
    assert bare.status_code == 400 and bare.headers["Content-Type"].startswith("application/x-amz-json-1.1")
    v2 = requests.get(f"{console.url}/v2/", timeout=10)
    assert v2.status_code == 401 and v2.headers["WWW-Authenticate"].startswith("Bearer realm=")
    assert v2.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    css = requests.get(f"{console.url}/console/static/console.css", timeout=10)
    assert css.status_code == 200 and css.headers["Content-Type"].startswith("text/css")


def test_session_cookie_flags_and_contents(console: Fixture) -> None:
    r = requests.post(
        f"{console.url}/console/sign-in",
        data={"access_key_id": READER_KEY, "secret_access_key": READER_SECRET, "next": "/console/repositories"},
        headers={"Origin": console.url},
        allow_redirects=False,
        timeout=10,
    )
    assert r.status_code == 303 and r.headers["Location"] == "/console/repositories"
    header = r.headers["Set-Cookie"]
    attributes = {part.strip().split("=", 1)[0].lower(): part.strip() for part in header.split(";")}
    assert "httponly" in attributes and attributes["samesite"] == "SameSite=Strict" and attributes["path"] == "Path=/"
    assert "secure" not in attributes  # plain HTTP here; with TLS it is Secure
    assert 0 < int(attributes["max-age"].split("=")[1]) <= 12 * 3600
    value = header.split(";", 1)[0].split("=", 1)[1]
    payload = json.loads(base64.urlsafe_b64decode(value.split(".")[1] + "=="))
    assert set(payload) == {"iss", "sub", "aud", "sid", "iat", "exp"} and payload["sub"] == "reader"
    assert READER_SECRET not in json.dumps(payload)
    # The session is no registry token.
    v2 = requests.get(f"{console.url}/v2/web/app/tags/list", headers={"Authorization": f"Bearer {value}"}, timeout=10)
    assert v2.status_code == 401


def test_forged_posts_are_refused_and_change_nothing(console: Fixture) -> None:
    url = console.url
    before = victim_tags(console)
    assert before == ["keep"]
    reader, admin = sign_in_session(url, READER_KEY, READER_SECRET), sign_in_session(url)
    reader_csrf, admin_csrf = csrf_of(reader, url), csrf_of(admin, url)
    assert reader_csrf != admin_csrf
    form = {"repository": "victim/app", "digest": console.victim, "tag": "keep"}
    attempts: list[tuple[requests.Session, str, dict[str, str], dict[str, str]]] = [
        (reader, DELETE_IMAGE, form, {"Origin": url}),  # no CSRF token
        (reader, DELETE_IMAGE, {**form, "csrf": admin_csrf}, {"Origin": url}),  # another session's token
        (reader, DELETE_IMAGE, {**form, "csrf": reader_csrf}, {"Origin": url}),  # its own, but not allowed
        (reader, DELETE_TAG, {**form, "csrf": reader_csrf}, {"Origin": url}),
        (admin, DELETE_TAG, form, {"Origin": url}),  # allowed, but no token
        (admin, DELETE_TAG, {**form, "csrf": reader_csrf}, {"Origin": url}),  # allowed, someone else's token
        (admin, DELETE_TAG, {**form, "csrf": admin_csrf}, {"Origin": "http://evil.example"}),  # cross-site
        (admin, DELETE_TAG, {**form, "csrf": admin_csrf}, {}),  # no Origin, no Referer
        (requests.Session(), DELETE_TAG, {**form, "csrf": admin_csrf}, {"Origin": url}),  # no session at all
    ]
    for session, path, data, headers in attempts:
        r = session.post(url + path, data=data, headers=headers, allow_redirects=False, timeout=10)
        assert r.status_code == 403, (path, data, headers, r.status_code)
        assert r.headers["Content-Type"].startswith("text/html") and "Traceback" not in r.text
    assert victim_tags(console) == before
    # The reader's denial is IAM's, in IAM's words.
    r = reader.post(url + DELETE_TAG, data={**form, "csrf": reader_csrf}, headers={"Origin": url}, timeout=10)
    assert "is not authorized to perform: ecr:BatchDeleteImage" in r.text


def test_sign_in_with_a_registry_token_ends_with_the_token(console: Fixture) -> None:
    token = login_password(console.server, READER_KEY, READER_SECRET)
    session = requests.Session()
    r = session.post(
        f"{console.url}/console/sign-in",
        data={"token": token, "next": "/console/repositories/web/app"},
        headers={"Origin": console.url},
        allow_redirects=False,
        timeout=10,
    )
    assert r.status_code == 303 and r.headers["Location"] == "/console/repositories/web/app"
    page = session.get(f"{console.url}/console/repositories/web/app", timeout=10)
    assert page.status_code == 200 and 'data-testid="principal">reader<' in page.text
    # An anonymous token (what /v2/token hands anyone) names nobody: no session.
    anonymous = requests.get(f"{console.url}/v2/token", timeout=10).json()["token"]
    r = requests.post(
        f"{console.url}/console/sign-in", data={"token": anonymous}, headers={"Origin": console.url}, timeout=10
    )
    assert r.status_code == 401 and "moorage_console" not in r.headers.get("Set-Cookie", "")


def test_bad_parameters_and_missing_things_are_pages(console: Fixture) -> None:
    session = sign_in_session(console.url)
    for path, status in (
        ("/console/repositories?n=abc", 400),
        ("/console/repositories?n=0", 400),
        (f"/console/repositories?q={'x' * 300}", 400),
        ("/console/repositories?q=%00%3Cscript%3E", 200),
        ("/console/repositories/no/such/repository", 404),
        ("/console/repositories/Not_A..Name", 404),
        ("/console/repositories/web/app?page=99", 400),
        ("/console/images/web/app@sha256:" + "0" * 64, 404),
        ("/console/images/web/app@not-a-digest", 404),
        ("/console/no-such-page", 404),
    ):
        r = session.get(console.url + path, allow_redirects=False, timeout=10)
        assert r.status_code == status, (path, r.status_code, r.text[:300])
        assert r.headers["Content-Type"].startswith("text/html"), path
        assert "Traceback" not in r.text and "<script>" not in r.text, path
        assert (
            r.headers["X-Frame-Options"] == "DENY" and "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
        )


def test_failed_sign_ins_are_limited_per_address(make_server: Callable[..., MoorageServer]) -> None:
    srv = make_server(console_config())
    statuses = []
    for _ in range(11):
        r = requests.post(
            f"{srv.url}/console/sign-in",
            data={"access_key_id": READER_KEY, "secret_access_key": "guess"},
            headers={"Origin": srv.url},
            timeout=10,
        )
        statuses.append(r.status_code)
    assert statuses == [401] * 10 + [429]
    assert int(r.headers["Retry-After"]) > 0
    # Even the right secret waits now (the limiter does not tell a right guess from a wrong one).
    r = requests.post(
        f"{srv.url}/console/sign-in",
        data={"access_key_id": READER_KEY, "secret_access_key": READER_SECRET},
        headers={"Origin": srv.url},
        allow_redirects=False,
        timeout=10,
    )
    assert r.status_code == 429


def test_auth_off_has_no_sign_in_and_console_off_has_no_console(make_server: Callable[..., MoorageServer]) -> None:
    open_server = make_server(AUTH_OFF)
    session = requests.Session()
    r = session.get(f"{open_server.url}/console/sign-in", timeout=10)
    assert r.status_code == 200 and r.url.endswith("/console/repositories")
    assert "auth off" in r.text and "sign-out" not in r.text
    assert "HttpOnly" in r.history[-1].headers.get("Set-Cookie", "") or "moorage_console" in session.cookies
    off = make_server("[console]\nenabled = false\n" + AUTH_OFF)
    assert requests.get(f"{off.url}/", allow_redirects=False, timeout=10).status_code == 405
    r = requests.get(f"{off.url}/console/repositories", allow_redirects=False, timeout=10)
    assert r.status_code == 405 and r.headers["Content-Type"].startswith("application/json")  # as any unknown path


def test_archived_image_is_marked_and_restored(console: Fixture) -> None:
    pushed = make_image(1, 256)
    Client(console.url, ("AWS", login_password(console.server))).push_image("archive/app", "old", pushed)
    ecr = ecr_client(console.server)
    image_id = {"imageDigest": pushed.digest}
    ecr.update_image_storage_class(repositoryName="archive/app", imageId=image_id, targetStorageClass="ARCHIVE")
    reader = sign_in_session(console.url, READER_KEY, READER_SECRET)
    page = reader.get(f"{console.url}/console/repositories/archive/app", timeout=10).text
    assert "storage-archive" in page and "restore-image" not in page  # marked; no restore for the reader
    admin = sign_in_session(console.url)
    page = admin.get(f"{console.url}/console/repositories/archive/app", timeout=10).text
    assert 'class="restore"' in page
    r = admin.post(
        f"{console.url}/console/actions/restore-image",
        data={"repository": "archive/app", "digest": pushed.digest, "csrf": csrf_of(admin, console.url)},
        headers={"Origin": console.url},
        allow_redirects=False,
        timeout=10,
    )
    assert r.status_code == 303 and "notice=restored" in r.headers["Location"]
    (detail,) = ecr.describe_images(repositoryName="archive/app", imageIds=[image_id])["imageDetails"]
    assert detail["imageStatus"] == "ACTIVE"
