"""Security regressions (issue 11): what a credential or a page of results can reach, over real sockets.

- Download URLs (GetDownloadUrlForLayer) fetch one blob of one repository with a plain GET for an hour, and
  nothing else: not as a registry token, not another blob or repository, not a write.
- Paging never names a repository the caller cannot see: `_catalog` Links, `tags/list` Links, every ECR
  nextToken.
- Upload sessions belong to the principal that started them (on /v2 and on the ECR layer API).
- A signing key rotated while the server runs signs at once on every worker; older tokens keep verifying.
- `/metrics` can require a principal allowed `moorage:GetMetrics`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import requests
from botocore.exceptions import ClientError

from tests.oci import OCI_MANIFEST, descriptor, digest_of, random_blob
from tests.server import (
    ADMIN_KEY,
    ADMIN_SECRET,
    MoorageServer,
    auth_config,
    ecr_client,
    login_password,
    principal_toml,
)

ACCOUNT, REGION = "000000000000", "us-east-1"
ALICE, ALICE_KEY, ALICE_SECRET = "alice", "AKIAMOORAGEALICE0001", "alice-secret-0123456789abcdefXYZ"
BOB, BOB_KEY, BOB_SECRET = "bob", "AKIAMOORAGEBOB000001", "bob-secret-0123456789abcdefXYZ"
SCRAPER, SCRAPER_KEY, SCRAPER_SECRET = "scraper", "AKIAMOORAGESCRAPER01", "scraper-secret-0123456789abcdef"

# The catalog: alice may see four of ten interleaved repositories, and none of the two that sort last.
CATALOG = [f"cat/r{i:02d}" for i in range(10)] + ["zz/tail-0", "zz/tail-1"]
ALICE_CATALOG = {"cat/r01", "cat/r03", "cat/r04", "cat/r07"}


def arn(repo: str) -> str:
    return f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/{repo}"


def user_arn(name: str) -> str:
    return f"arn:aws:iam::{ACCOUNT}:user/{name}"


def policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


TOKEN_STATEMENT = {"Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"}
ALICE_POLICY = policy(
    TOKEN_STATEMENT,
    {
        "Effect": "Allow",
        "Action": "ecr:*",
        "Resource": [arn(r) for r in sorted(ALICE_CATALOG)] + [arn("dl/*"), arn("up/*")],
    },
)
BOB_POLICY = policy(TOKEN_STATEMENT, {"Effect": "Allow", "Action": "ecr:*", "Resource": arn("up/*")})
SCRAPER_POLICY = policy(TOKEN_STATEMENT, {"Effect": "Allow", "Action": "moorage:GetMetrics", "Resource": "*"})


def alice_sees(name: str) -> bool:
    return name in ALICE_CATALOG or name.startswith(("dl/", "up/"))


# -- helpers -----------------------------------------------------------------------------------------


def basic(password: str, user: str = "AWS") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def call(srv: MoorageServer, method: str, path: str, authorization: str | None = None, **kw: Any) -> requests.Response:
    """One request with exactly the Authorization header given (or none, and no ~/.netrc); never a 5xx."""
    headers = dict(kw.pop("headers", None) or {})
    if authorization is not None:
        headers["Authorization"] = authorization
    with requests.Session() as s:
        s.trust_env = False
        r = s.request(method, srv.url + path, headers=headers, timeout=30, allow_redirects=False, **kw)
    assert r.status_code < 500, f"{method} {path} -> {r.status_code}: {r.text[:500]}"
    return r


def oci_codes(r: requests.Response) -> list[str]:
    return [e["code"] for e in r.json()["errors"]]


def jwt_part(token: str, index: int) -> dict[str, Any]:
    seg = token.split(".")[index]
    return json.loads(base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)))


def ecr_code(e: ClientError) -> str:
    return e.response["Error"]["Code"]


def push(srv: MoorageServer, token: str, repo: str, tag: str, blobs: list[bytes]) -> str:
    """Push an OCI manifest whose config is blobs[0] and layers the rest; its digest."""
    for blob in blobs:
        r = call(
            srv,
            "POST",
            f"/v2/{repo}/blobs/uploads/",
            basic(token),
            params={"digest": digest_of(blob)},
            data=blob,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert r.status_code == 201, (r.status_code, r.text)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor("application/vnd.oci.image.config.v1+json", blobs[0]),
            "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", b) for b in blobs[1:]],
        }
    ).encode()
    r = call(
        srv, "PUT", f"/v2/{repo}/manifests/{tag}", basic(token), data=manifest, headers={"Content-Type": OCI_MANIFEST}
    )
    assert r.status_code == 201, (r.status_code, r.text)
    return digest_of(manifest)


def decodings(token: str) -> list[str]:
    """The token and everything it decodes to with the usual encodings (what a curious client would try)."""
    out = [token, unquote(token)]
    for candidate in (token, unquote(token)):
        padded = candidate + "=" * (-len(candidate) % 4)
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            try:
                out.append(decode(padded).decode("utf-8", errors="replace"))
            except (binascii.Error, ValueError):
                pass
        for part in candidate.split("."):  # a JWT-like token: each segment on its own
            try:
                out.append(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode("utf-8", errors="replace"))
            except (binascii.Error, ValueError):
                pass
    return out


def assert_names_nothing_hidden(token: str, hidden: Iterator[str] | list[str] | set[str]) -> None:
    texts = decodings(token)
    for name in hidden:
        assert not any(name in t for t in texts), f"token {token!r} names the hidden {name!r}"


def link_last(r: requests.Response) -> str | None:
    """The `last` of a response's `Link: <...>; rel="next"`, or None without one."""
    link = r.headers.get("Link")
    if link is None:
        return None
    m = re.fullmatch(r'<([^>]+)>;\s*rel="next"', link)
    assert m, link
    (last,) = parse_qs(urlsplit(m.group(1)).query)["last"]
    return last


def moorage(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "registry", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )


# -- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    config = auth_config(
        principal_toml(ALICE, ALICE_KEY, ALICE_SECRET, ALICE_POLICY),
        principal_toml(BOB, BOB_KEY, BOB_SECRET, BOB_POLICY),
    )
    server = MoorageServer(tmp_path_factory.mktemp("security") / "data", config).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def admin(srv: MoorageServer) -> str:
    return login_password(srv)


@pytest.fixture(scope="module")
def alice(srv: MoorageServer) -> str:
    return login_password(srv, ALICE_KEY, ALICE_SECRET)


@pytest.fixture(scope="module")
def bob(srv: MoorageServer) -> str:
    return login_password(srv, BOB_KEY, BOB_SECRET)


@pytest.fixture(scope="module")
def catalog(srv: MoorageServer, admin: str) -> list[str]:
    """Every repository of the server once the catalog ones exist (sorted), as the admin sees them."""
    ecr = ecr_client(srv)
    for name in CATALOG:
        ecr.create_repository(repositoryName=name)
    names, last = [], ""
    while True:
        r = call(srv, "GET", "/v2/_catalog", basic(admin), params={"n": 1000, "last": last})
        names += r.json()["repositories"]
        if (last := link_last(r)) is None:
            return names


@pytest.fixture(scope="module")
def layers(srv: MoorageServer, admin: str) -> dict[str, bytes]:
    """dl/one holds layers a and b; dl/two and hid/copy (hidden from alice) hold layer a too."""
    a, b = random_blob(3000), random_blob(2000)
    push(srv, admin, "dl/one", "v1", [random_blob(100), a, b])
    push(srv, admin, "dl/two", "v1", [random_blob(100), a])
    push(srv, admin, "hid/copy", "v1", [random_blob(100), a])
    return {"a": a, "b": b}


# -- 3. download URLs ----------------------------------------------------------------------------------


def download_url(srv: MoorageServer, repo: str, digest: str, key: str = ALICE_KEY, secret: str = ALICE_SECRET) -> str:
    out = ecr_client(srv, key, secret).get_download_url_for_layer(repositoryName=repo, layerDigest=digest)
    assert out["layerDigest"] == digest
    url: str = out["downloadUrl"]
    assert url.startswith(f"{srv.url}/v2/{repo}/blobs/{digest}?"), url
    return url


def credential_of(url: str) -> tuple[str, str]:
    """The URL's one query parameter, as (name, value)."""
    ((name, (value,)),) = parse_qs(urlsplit(url).query).items()
    return name, value


def test_download_url_works_with_a_plain_get(srv: MoorageServer, layers: dict[str, bytes]):
    a = layers["a"]
    url = download_url(srv, "dl/one", digest_of(a))
    with requests.Session() as plain:
        plain.trust_env = False  # the URL itself must be enough: no ~/.netrc, no Authorization header
        r = plain.get(url, timeout=30)
        assert "Authorization" not in r.request.headers
        assert r.status_code == 200, (r.status_code, r.text[:300])
        assert r.content == a and r.headers["Docker-Content-Digest"] == digest_of(a)
        r = plain.get(url, headers={"Range": "bytes=10-19"}, timeout=30)
        assert r.status_code == 206 and r.content == a[10:20]
    # curl, as the ECR documentation downloads a layer
    out = subprocess.run(["curl", "-sf", url], capture_output=True, timeout=30, check=False)
    if out.returncode != 127:
        assert out.returncode == 0 and out.stdout == a


def test_download_url_expires_in_an_hour_and_names_one_blob(srv: MoorageServer, layers: dict[str, bytes]):
    digest = digest_of(layers["a"])
    issued = time.time()
    _, value = credential_of(download_url(srv, "dl/one", digest))
    claims = jwt_part(value, 1)
    assert claims["exp"] - claims["iat"] == 3600, claims
    assert abs(claims["exp"] - (issued + 3600)) <= 2, claims
    assert claims["sub"] == ALICE and claims["repo"] == "dl/one" and claims["digest"] == digest, claims


def test_download_url_is_not_a_registry_token(srv: MoorageServer, layers: dict[str, bytes]):
    digest = digest_of(layers["a"])
    _, value = credential_of(download_url(srv, "dl/one", digest))
    for auth in (f"Bearer {value}", basic(value)):
        for path in ("/v2/", f"/v2/dl/one/blobs/{digest}", "/v2/dl/one/manifests/v1", "/v2/dl/one/tags/list"):
            r = call(srv, "GET", path, auth)
            assert r.status_code == 401, (path, r.status_code, r.text)
            assert r.content != layers["a"]


def test_download_url_fetches_no_other_blob_or_repository(srv: MoorageServer, layers: dict[str, bytes]):
    a, b = digest_of(layers["a"]), digest_of(layers["b"])
    query = urlsplit(download_url(srv, "dl/one", a)).query
    for path in (f"/v2/dl/one/blobs/{b}", f"/v2/dl/two/blobs/{a}", f"/v2/hid/copy/blobs/{a}"):
        r = call(srv, "GET", f"{path}?{query}")
        assert r.status_code == 403 and oci_codes(r) == ["DENIED"], (path, r.status_code, r.text[:200])
        assert r.json()["errors"][0]["message"] == "the download URL is for another repository or layer", r.text
    # nor the same blob by HEAD, a manifest, or the upload routes
    for method, path in (
        ("HEAD", f"/v2/dl/one/blobs/{a}"),
        ("GET", "/v2/dl/one/manifests/v1"),
        ("GET", "/v2/dl/one/tags/list"),
    ):
        assert call(srv, method, f"{path}?{query}").status_code == 401, (method, path)


def test_download_url_allows_no_write(srv: MoorageServer, admin: str, layers: dict[str, bytes]):
    a = digest_of(layers["a"])
    url = download_url(srv, "dl/one", a)
    query = urlsplit(url).query
    _, value = credential_of(url)
    blob = random_blob(64)
    writes: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/v2/dl/one/blobs/uploads/", {"params": {"digest": digest_of(blob)}, "data": blob}),
        ("POST", "/v2/dl/one/blobs/uploads/", {}),
        ("POST", "/v2/dl/one/blobs/uploads/", {"params": {"mount": a, "from": "dl/two"}}),
        ("PUT", "/v2/dl/one/manifests/evil", {"data": b"{}", "headers": {"Content-Type": OCI_MANIFEST}}),
        ("DELETE", f"/v2/dl/one/blobs/{a}", {}),
        ("DELETE", "/v2/dl/one/manifests/v1", {}),
    ]
    for method, path, kw in writes:
        sep = "&" if "?" in path else "?"
        for how, auth, target in (
            ("query", None, f"{path}{sep}{query}"),
            ("bearer", f"Bearer {value}", path),
            ("basic", basic(value), path),
        ):
            r = call(srv, method, target, auth, **kw)
            assert r.status_code == 401, (how, method, path, r.status_code, r.text[:200])
    # Nothing changed.
    assert call(srv, "GET", "/v2/dl/one/manifests/v1", basic(admin), headers={"Accept": OCI_MANIFEST}).ok
    assert call(srv, "GET", f"/v2/dl/one/blobs/{a}", basic(admin)).content == layers["a"]


def test_registry_token_in_the_query_string_is_not_accepted(srv: MoorageServer, alice: str, layers: dict[str, bytes]):
    """The old download URL shape: a general 12-hour token in `?token=` must not work (it would push too)."""
    a = digest_of(layers["a"])
    assert call(srv, "GET", f"/v2/dl/one/blobs/{a}", basic(alice)).status_code == 200
    for path in (f"/v2/dl/one/blobs/{a}", "/v2/dl/one/blobs/uploads/00000000-0000-4000-8000-000000000000"):
        r = call(srv, "GET", path, params={"token": alice})
        assert r.status_code == 401, (path, r.status_code, r.text[:200])


def test_download_url_is_checked_against_current_permissions(srv: MoorageServer, layers: dict[str, bytes]):
    """A repository policy that now denies alice the pull makes her earlier URL stop working."""
    repo = "dl/deny"
    ecr = ecr_client(srv)
    admin = login_password(srv)
    blob = random_blob(500)
    push(srv, admin, repo, "v1", [random_blob(50), blob])
    url = download_url(srv, repo, digest_of(blob))
    assert call(srv, "GET", url.removeprefix(srv.url)).content == blob
    deny = policy({"Effect": "Deny", "Principal": {"AWS": user_arn(ALICE)}, "Action": "ecr:GetDownloadUrlForLayer"})
    ecr.set_repository_policy(repositoryName=repo, policyText=deny)
    r = call(srv, "GET", url.removeprefix(srv.url))
    assert r.status_code == 403 and oci_codes(r) == ["DENIED"], r.text
    ecr.delete_repository_policy(repositoryName=repo)
    assert call(srv, "GET", url.removeprefix(srv.url)).content == blob


# -- 4. paging never names what the caller cannot see ----------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_catalog_links_name_only_visible_repositories(srv: MoorageServer, alice: str, catalog: list[str], n: int):
    visible = [name for name in catalog if alice_sees(name)]
    hidden = [name for name in catalog if not alice_sees(name)]
    assert hidden[-2:] == ["zz/tail-0", "zz/tail-1"], catalog  # the last names are hidden ones
    seen, last, pages = [], "", 0
    while True:
        r = call(srv, "GET", "/v2/_catalog", basic(alice), params={"n": n, "last": last})
        assert r.status_code == 200, r.text
        page = r.json()["repositories"]
        assert len(page) <= n and all(alice_sees(x) for x in page), page
        seen += page
        pages += 1
        last = link_last(r)
        if last is None:
            break
        assert alice_sees(last), f"Link names the hidden repository {last!r}"
        assert page and last == page[-1], (page, last)
        assert pages < 100
    assert seen == visible
    assert pages == max(1, -(-len(visible) // n)), "a page past the last visible repository"


def test_describe_repositories_tokens_name_only_visible_repositories(srv: MoorageServer, catalog: list[str]):
    ecr = ecr_client(srv, ALICE_KEY, ALICE_SECRET)
    visible = [name for name in catalog if alice_sees(name)]
    hidden = [name for name in catalog if not alice_sees(name)]
    for size in (1, 2, 3):
        seen, kw, pages = [], {}, 0
        while True:
            out = ecr.describe_repositories(maxResults=size, **kw)
            names = [r["repositoryName"] for r in out["repositories"]]
            assert len(names) <= size and all(alice_sees(x) for x in names), names
            seen += names
            pages += 1
            token = out.get("nextToken")
            if token is None:
                break
            assert_names_nothing_hidden(token, hidden)
            kw = {"nextToken": token}
            assert pages < 100
        assert seen == visible, size
        assert pages == -(-len(visible) // size), f"maxResults={size}: a page past the last visible repository"


def test_tags_list_and_image_paging_name_only_that_repository(srv: MoorageServer, admin: str, alice: str):
    """tags/list Links and ListImages/DescribeImages tokens of a visible repository name nothing of the
    repositories (and their tags) alice cannot see."""
    hidden_tags = [f"secret-tag-{i}" for i in range(3)]
    for tag in hidden_tags:
        push(srv, admin, "hid/tags", tag, [random_blob(64), random_blob(64)])
    tags = [f"v{i}" for i in range(5)]
    for tag in tags:
        push(srv, admin, "dl/tags", tag, [random_blob(64), random_blob(64)])
    seen, last = [], ""
    while True:
        r = call(srv, "GET", "/v2/dl/tags/tags/list", basic(alice), params={"n": 2, "last": last})
        assert r.status_code == 200, r.text
        seen += r.json()["tags"]
        if (last := link_last(r)) is None:
            break
        assert last in tags and last == r.json()["tags"][-1]
    assert seen == tags
    assert call(srv, "GET", "/v2/hid/tags/tags/list", basic(alice)).status_code == 403

    ecr = ecr_client(srv, ALICE_KEY, ALICE_SECRET)
    hidden = ["hid/tags", "hid/copy", *hidden_tags]
    for op, key in (("list_images", "imageIds"), ("describe_images", "imageDetails")):
        kw: dict[str, Any] = {}
        count = 0
        while True:
            out = getattr(ecr, op)(repositoryName="dl/tags", maxResults=2, **kw)
            count += len(out[key])
            if (token := out.get("nextToken")) is None:
                break
            assert_names_nothing_hidden(token, hidden)
            kw = {"nextToken": token}
        assert count == 5, op


# -- 10. upload sessions belong to their principal -------------------------------------------------------


def start_upload(srv: MoorageServer, token: str, repo: str) -> str:
    r = call(srv, "POST", f"/v2/{repo}/blobs/uploads/", basic(token))
    assert r.status_code == 202, r.text
    return r.headers["Location"]


def test_v2_upload_session_belongs_to_its_principal(srv: MoorageServer, admin: str, alice: str, bob: str):
    data = random_blob(4000)
    digest = digest_of(data)
    location = start_upload(srv, alice, "up/shared")
    r = call(srv, "PATCH", location, basic(alice), data=data[:1000], headers={"Content-Range": "0-999"})
    assert r.status_code == 202, r.text

    # Bob may push to up/shared, and the admin anywhere: neither may touch alice's session.
    for other in (bob, admin):
        for method, kw in (
            ("GET", {}),
            ("HEAD", {}),
            ("PATCH", {"data": data[1000:2000], "headers": {"Content-Range": "1000-1999"}}),
            ("PUT", {"params": {"digest": digest}, "data": data[1000:]}),
            ("DELETE", {}),
        ):
            r = call(srv, method, location, basic(other), **kw)
            assert r.status_code == 404, (method, r.status_code, r.text)
            if method != "HEAD":
                assert oci_codes(r) == ["BLOB_UPLOAD_UNKNOWN"], (method, r.text)

    # Alice's session is untouched: at 1000 bytes, and she finishes it.
    r = call(srv, "GET", location, basic(alice))
    assert r.status_code == 204 and r.headers["Range"] == "0-999", (r.status_code, dict(r.headers))
    r = call(srv, "PUT", location, basic(alice), params={"digest": digest}, data=data[1000:])
    assert r.status_code == 201, r.text
    assert call(srv, "GET", f"/v2/up/shared/blobs/{digest}", basic(bob)).content == data


def test_ecr_upload_belongs_to_its_principal(srv: MoorageServer, alice: str):
    repo = "up/ecr"
    ecr_client(srv).create_repository(repositoryName=repo)
    as_alice, as_bob = ecr_client(srv, ALICE_KEY, ALICE_SECRET), ecr_client(srv, BOB_KEY, BOB_SECRET)
    data = random_blob(3000)
    upload_id = as_alice.initiate_layer_upload(repositoryName=repo)["uploadId"]
    as_alice.upload_layer_part(
        repositoryName=repo, uploadId=upload_id, partFirstByte=0, partLastByte=999, layerPartBlob=data[:1000]
    )
    with pytest.raises(ClientError) as e:
        as_bob.upload_layer_part(
            repositoryName=repo, uploadId=upload_id, partFirstByte=1000, partLastByte=2999, layerPartBlob=data[1000:]
        )
    assert ecr_code(e.value) == "UploadNotFoundException", e.value.response
    with pytest.raises(ClientError) as e:
        as_bob.complete_layer_upload(repositoryName=repo, uploadId=upload_id, layerDigests=[digest_of(data[:1000])])
    assert ecr_code(e.value) == "UploadNotFoundException", e.value.response

    # The owner goes on, on the ECR API or on /v2 (the same principal either way).
    as_alice.upload_layer_part(
        repositoryName=repo, uploadId=upload_id, partFirstByte=1000, partLastByte=1999, layerPartBlob=data[1000:2000]
    )
    location = f"/v2/{repo}/blobs/uploads/{upload_id}"
    r = call(srv, "PATCH", location, basic(alice), data=data[2000:], headers={"Content-Range": "2000-2999"})
    assert r.status_code == 202, r.text
    out = as_alice.complete_layer_upload(repositoryName=repo, uploadId=upload_id, layerDigests=[digest_of(data)])
    assert out["layerDigest"] == digest_of(data)


def test_upload_without_a_recorded_owner_is_anyones(srv: MoorageServer, alice: str, bob: str):
    """Sessions started before owners were recorded (owner NULL) can be continued by any principal allowed to
    push there, as before."""
    data = random_blob(2000)
    location = start_upload(srv, alice, "up/legacy")
    upload_id = location.rsplit("/", 1)[1]
    db = sqlite3.connect(srv.data_dir / "moorage.db", timeout=10)
    try:
        with db:
            db.execute("UPDATE uploads SET owner = NULL WHERE id = ?", (upload_id,))
    finally:
        db.close()
    r = call(srv, "PATCH", location, basic(bob), data=data, headers={"Content-Range": f"0-{len(data) - 1}"})
    assert r.status_code == 202, r.text
    r = call(srv, "PUT", location, basic(alice), params={"digest": digest_of(data)})
    assert r.status_code == 201, r.text


# -- 14. signing keys rotate on a running server; /metrics can require a principal -------------------------


def workers_seen(srv: MoorageServer, route: str) -> set[int]:
    seen = set()
    for line in srv.log().splitlines():
        if '"moorage.access"' in line:
            entry = json.loads(line)
            if entry.get("route") == route:
                seen.add(entry["worker"])
    return seen


def until_both_workers(srv: MoorageServer, route: str, step: Callable[[], None]) -> None:
    for i in range(300):
        step()
        if i >= 5 and workers_seen(srv, route) == {0, 1}:
            return
        time.sleep(0.01)
    pytest.fail(f"only workers {workers_seen(srv, route)} answered {route}")


def test_rotated_key_signs_at_once_on_every_worker(make_server: Callable[..., MoorageServer]):
    s = make_server(auth_config(), workers=2)
    keys = s.data_dir / "keys"
    old = login_password(s)
    old_kid = jwt_part(old, 0)["kid"]
    assert (keys / "current").read_text().strip() == old_kid

    p = moorage("rotate-signing-key", "--data-dir", str(s.data_dir))
    assert p.returncode == 0, (p.stdout, p.stderr)
    new_kid = (keys / "current").read_text().strip()
    assert new_kid != old_kid

    kids: list[str] = []
    until_both_workers(s, "ecr:GetAuthorizationToken", lambda: kids.append(jwt_part(login_password(s), 0)["kid"]))
    assert set(kids) == {new_kid}, kids
    new = login_password(s)

    # Tokens signed with either key verify on every worker.
    def both() -> None:
        for token in (old, new):
            r = call(s, "GET", "/v2/_catalog", basic(token), headers={"Connection": "close"})
            assert r.status_code == 200, r.text

    until_both_workers(s, "/v2/_catalog", both)


def test_metrics_open_by_default(srv: MoorageServer):
    r = call(srv, "GET", "/metrics")
    assert r.status_code == 200 and "moorage_http_requests" in r.text


def test_metrics_can_require_a_principal(make_server: Callable[..., MoorageServer]):
    config = auth_config(
        principal_toml(SCRAPER, SCRAPER_KEY, SCRAPER_SECRET, SCRAPER_POLICY),
        principal_toml(ALICE, ALICE_KEY, ALICE_SECRET, ALICE_POLICY),
    )
    s = make_server(config + "\n[metrics]\nrequire_auth = true\n")
    r = call(s, "GET", "/metrics")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic "), (r.status_code, r.text)
    assert "moorage_" not in r.text
    r = call(s, "GET", "/metrics", basic(login_password(s, ALICE_KEY, ALICE_SECRET)))
    assert r.status_code == 403 and oci_codes(r) == ["DENIED"] and "moorage:GetMetrics" in r.text, r.text
    scraper = login_password(s, SCRAPER_KEY, SCRAPER_SECRET)
    for auth in (f"Bearer {scraper}", basic(scraper), basic(login_password(s, ADMIN_KEY, ADMIN_SECRET))):
        r = call(s, "GET", "/metrics", auth)
        assert r.status_code == 200 and "moorage_http_requests" in r.text, r.text[:300]
    assert call(s, "GET", "/healthz").status_code == 200
    assert call(s, "GET", "/readyz").status_code == 200


def test_metrics_config_is_checked():
    from registry.config import ConfigError, from_dict

    assert from_dict({}).metrics.require_auth is False
    assert from_dict({"metrics": {"require_auth": True}}).metrics.require_auth is True
    with pytest.raises(ConfigError, match=r"metrics\.require_auth"):
        from_dict({"metrics": {"require_auth": "yes"}})
