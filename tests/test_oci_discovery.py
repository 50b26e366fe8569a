"""OCI distribution-spec v1.1 conformance, content discovery: tags/list and the catalog, with `n`/`last`
pagination and RFC 8288 `Link` headers."""

from __future__ import annotations

import re
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tests.oci import Client, error_codes, make_image

# Lexical (byte) order differs from push order, from numeric order and from "natural" order here.
TAGS = ["v10", "v2", "latest", "1.0", "beta_1", "beta-2", "beta.3", "0", "v1"]
LINK_RE = re.compile(r'^<([^>]+)>;\s*rel="?next"?$')


def push_tags(client: Client, repo: str, tags: list[str]) -> None:
    """One small image, tagged with every tag in `tags` (in the order given)."""
    img = make_image(1, 16)
    client.push_image(repo, tags[0], img)
    for tag in tags[1:]:
        client.push_manifest(repo, tag, img.manifest)


def next_link(r: requests.Response) -> str | None:
    link = r.headers.get("Link")
    if link is None:
        return None
    m = LINK_RE.match(link.strip())
    assert m, f"malformed Link header: {link!r}"
    return m.group(1)


def walk(client: Client, first: str, key: str, n: int, max_pages: int = 10_000) -> list[list[str]]:
    """Follow `Link: rel="next"` from `first`; return the pages. Each page holds at most n entries and a
    page shorter than n is the last one (no Link)."""
    pages: list[list[str]] = []
    url: str | None = first
    while url is not None:
        assert len(pages) < max_pages, "pagination does not terminate"
        r = client.get(url)
        assert r.status_code == 200, (url, r.status_code, r.text)
        page = r.json()[key] or []
        assert len(page) <= n, (url, page)
        url = next_link(r)
        if len(page) < n:
            assert url is None, f"short page {page} still has a Link: {url}"
        if url is not None:
            q = parse_qs(urlsplit(url).query)
            assert q["last"] == [page[-1]], (url, page)
            assert q["n"] == [str(n)], url
        pages.append(page)
    return pages


def follow(client: Client, url: str, key: str) -> list[str]:
    """Every entry reachable from `url` by following Links, whatever page size the server picks."""
    out: list[str] = []
    next_url: str | None = url
    while next_url is not None:
        r = client.get(next_url)
        assert r.status_code == 200, (next_url, r.status_code, r.text)
        out += r.json()[key] or []
        next_url = next_link(r)
    return out


# -- tags/list ------------------------------------------------------------------------------------


def test_tags_list_sorted(client: Client, repo: str) -> None:
    push_tags(client, repo, TAGS)
    r = client.get(f"/v2/{repo}/tags/list")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json() == {"name": repo, "tags": sorted(TAGS)}
    assert "Link" not in r.headers


def test_tags_list_first_page_link(client: Client, repo: str) -> None:
    push_tags(client, repo, TAGS)
    expected = sorted(TAGS)
    r = client.get(f"/v2/{repo}/tags/list", params={"n": 2})
    assert r.status_code == 200
    assert r.json() == {"name": repo, "tags": expected[:2]}
    assert r.headers["Link"] == f'</v2/{repo}/tags/list?n=2&last={expected[1]}>; rel="next"'


@pytest.mark.parametrize("n", [1, 2, 3, 4, 9, 10, 1000])
def test_tags_list_pagination(client: Client, repo: str, n: int) -> None:
    push_tags(client, repo, TAGS)
    pages = walk(client, f"/v2/{repo}/tags/list?n={n}", "tags", n)
    assert [t for page in pages for t in page] == sorted(TAGS)
    assert all(pages[:-1])  # only a final page may be empty


def test_tags_list_manual_last(client: Client, repo: str) -> None:
    push_tags(client, repo, TAGS)
    expected = sorted(TAGS)
    r = client.get(f"/v2/{repo}/tags/list", params={"n": 3, "last": expected[2]})
    assert r.status_code == 200
    assert r.json()["tags"] == expected[3:6]


def test_tags_list_last_without_n(client: Client, repo: str) -> None:
    push_tags(client, repo, TAGS)
    expected = sorted(TAGS)
    r = client.get(f"/v2/{repo}/tags/list", params={"last": expected[4]})
    assert r.status_code == 200
    assert r.json()["tags"] == expected[5:]


def test_tags_list_last_not_a_tag(client: Client, repo: str) -> None:
    """`last` need not name an existing tag: the listing resumes after it lexically."""
    push_tags(client, repo, ["a", "c", "e"])
    r = client.get(f"/v2/{repo}/tags/list", params={"last": "b"})
    assert r.status_code == 200
    assert r.json()["tags"] == ["c", "e"]


def test_tags_list_last_beyond_end(client: Client, repo: str) -> None:
    push_tags(client, repo, ["a", "b"])
    r = client.get(f"/v2/{repo}/tags/list", params={"n": 5, "last": "zzz"})
    assert r.status_code == 200
    assert (r.json()["tags"] or []) == []
    assert "Link" not in r.headers


def test_tags_list_n_zero(client: Client, repo: str) -> None:
    push_tags(client, repo, ["a", "b"])
    r = client.get(f"/v2/{repo}/tags/list", params={"n": 0})
    assert r.status_code == 200
    body = r.json()
    assert body["name"] == repo
    assert (body["tags"] or []) == []


def test_tags_list_unknown_repository(client: Client, repo: str) -> None:
    r = client.get(f"/v2/{repo}/tags/list")
    assert r.status_code == 404
    assert "NAME_UNKNOWN" in error_codes(r)


def test_tags_list_is_per_repository(client: Client, repo: str) -> None:
    push_tags(client, repo, ["mine"])
    push_tags(client, f"{repo}-other", ["theirs"])
    assert client.get(f"/v2/{repo}/tags/list").json() == {"name": repo, "tags": ["mine"]}
    assert client.get(f"/v2/{repo}-other/tags/list").json() == {"name": f"{repo}-other", "tags": ["theirs"]}


def test_tags_list_excludes_untagged_manifests(client: Client, repo: str) -> None:
    push_tags(client, repo, ["only"])
    img = make_image(1, 16)
    client.push_image(repo, img.digest, img)  # pushed by digest: no tag
    assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == ["only"]


# -- catalog --------------------------------------------------------------------------------------


@pytest.fixture
def catalog_repos(client: Client) -> list[str]:
    """Five repositories under a prefix no other test uses, pushed out of order."""
    prefix = f"catalog{uuid.uuid4().hex[:12]}"
    names = [f"{prefix}/{s}" for s in ("d", "a", "c/x", "b", "c")]
    for name in names:
        push_tags(client, name, ["v1"])
    return sorted(names)


def test_catalog_lists_repositories_sorted(client: Client, catalog_repos: list[str]) -> None:
    repos = follow(client, "/v2/_catalog", "repositories")
    assert repos == sorted(repos)
    assert len(repos) == len(set(repos))
    assert [x for x in repos if x in catalog_repos] == catalog_repos


def test_catalog_page_after_prefix(client: Client, catalog_repos: list[str]) -> None:
    prefix = catalog_repos[0].split("/")[0]
    r = client.get("/v2/_catalog", params={"n": 2, "last": prefix})
    assert r.status_code == 200
    assert r.json() == {"repositories": catalog_repos[:2]}
    url = next_link(r)
    assert url is not None
    parts = urlsplit(url)
    assert parts.path == "/v2/_catalog"
    assert parse_qs(parts.query) == {"n": ["2"], "last": [catalog_repos[1]]}

    r = client.get(url)
    assert r.status_code == 200
    assert r.json()["repositories"] == catalog_repos[2:4]

    r = client.get("/v2/_catalog", params={"n": 2, "last": catalog_repos[3]})
    assert r.json()["repositories"][0] == catalog_repos[4]


@pytest.mark.parametrize("n", [1, 7, 100])
def test_catalog_pagination_walk(client: Client, catalog_repos: list[str], n: int) -> None:
    # Start just before our prefix so the walk stays short on a busy shared server.
    prefix = catalog_repos[0].split("/")[0]
    pages = walk(client, f"/v2/_catalog?n={n}&last={prefix}", "repositories", n)
    seen = [x for page in pages for x in page]
    assert seen == sorted(seen)
    assert len(seen) == len(set(seen))
    assert seen[: len(catalog_repos)] == catalog_repos


def test_catalog_full_walk(client: Client, catalog_repos: list[str]) -> None:
    full = follow(client, "/v2/_catalog", "repositories")
    pages = walk(client, "/v2/_catalog?n=50", "repositories", 50)
    seen = [x for page in pages for x in page]
    assert seen == sorted(seen)
    assert set(catalog_repos) <= set(seen)
    assert seen == full  # paging neither loses nor duplicates anything


def test_catalog_n_zero(client: Client, catalog_repos: list[str]) -> None:
    r = client.get("/v2/_catalog", params={"n": 0})
    assert r.status_code == 200
    assert (r.json()["repositories"] or []) == []
