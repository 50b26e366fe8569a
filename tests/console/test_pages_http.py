"""The console's lists and their columns over plain HTTP, checked against what the ECR API answers: the repository
list walked page by page (with and without a search), its columns, a repository's image columns, and deleting an
image (and an image an index lists, which is refused as BatchDeleteImage refuses it)."""

from __future__ import annotations

import html
import json
import os
import re
import time

import requests

from registry.console.views import human_size, timestamp
from tests.console.conftest import SEARCH_NAMES, Fixture, sign_in_session
from tests.console.test_http import csrf_of
from tests.helpers import wait_for
from tests.oci import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, Client, Image, digest_of, get_manifest, make_image
from tests.server import ecr_client, login_password


def cells(page: str, row_attribute: str) -> list[str]:
    """The text of each cell of the table row marked `row_attribute` (tags dropped, entities decoded)."""
    match = re.search(rf"<tr {re.escape(row_attribute)}[^>]*>(.*?)</tr>", page, re.S)
    assert match, (row_attribute, page[:2000])
    return [
        " ".join(html.unescape(re.sub(r"<[^>]+>", " ", cell)).split())
        for cell in re.findall(r"<td[^>]*>(.*?)</td>", match.group(1), re.S)
    ]


def walk(session: requests.Session, url: str, first: str) -> tuple[list[list[str]], list[str]]:
    """Every page of the repository list from `first` by its "Next page" links: the names on each page, and
    whether each page after the first leads back to the first."""
    pages, backs, path = [], [], first
    for _ in range(200):
        page = session.get(url + path, timeout=30)
        assert page.status_code == 200, (path, page.text[:500])
        pages.append(re.findall(r'<tr data-repository="([^"]+)"', page.text))
        back = re.search(r'<a href="([^"]*)" rel="first"', page.text)
        backs.append(html.unescape(back.group(1)) if back else "")
        following = re.search(r'<a href="([^"]+)" rel="next" id="next-page"', page.text)
        if not following:
            return pages, backs
        path = "/console/repositories" + html.unescape(following.group(1))
    raise AssertionError("the list has no end")


def test_the_repository_list_is_walked_page_by_page_each_name_once(console: Fixture) -> None:
    admin = sign_in_session(console.url)
    ecr = ecr_client(console.server)
    every = sorted(
        r["repositoryName"]
        for page in ecr.get_paginator("describe_repositories").paginate()
        for r in page["repositories"]
    )
    pages, backs = walk(admin, console.url, "/console/repositories?n=2")
    assert [name for page in pages for name in page] == every
    assert all(len(page) == 2 for page in pages[:-1]) and 1 <= len(pages[-1]) <= 2 and len(pages) > 2
    assert backs[0] == "" and all(back == "?n=2" for back in backs[1:])  # "First page" on every later page
    # A search keeps its term from page to page.
    pages, backs = walk(admin, console.url, "/console/repositories?q=search%2F&n=1")
    assert pages == [[name] for name in sorted(SEARCH_NAMES)]
    assert all(back == "?q=search%2F&n=1" for back in backs[1:])


def test_the_repository_list_shows_each_ones_numbers(console: Fixture) -> None:
    ecr = ecr_client(console.server)
    ecr.create_repository(repositoryName="declared/cached", imageTagMutability="IMMUTABLE")
    admin = sign_in_session(console.url)
    page = admin.get(f"{console.url}/console/repositories?n=500", timeout=30).text
    for name in ("web/app", "web/multi", "declared/cached"):
        (repo,) = ecr.describe_repositories(repositoryNames=[name])["repositories"]
        details = ecr.describe_images(repositoryName=name)["imageDetails"]
        shown = cells(page, f'data-repository="{name}"')
        assert shown[:5] == [
            name,
            str(len(details)),
            human_size(sum(d["imageSizeInBytes"] for d in details)),
            timestamp(repo["createdAt"].timestamp()),
            repo["imageTagMutability"],
        ], (name, shown)
        expected_rule = "cache of rule declared" if name.startswith("declared/") else "\N{EN DASH}"
        assert shown[5] == expected_rule, (name, shown)


def test_a_repository_shows_each_images_numbers(console: Fixture) -> None:
    client = Client(console.url, ("AWS", login_password(console.server)))
    image = make_image(2, 3000)
    client.push_image("pages/app", "v1", image)
    ecr = ecr_client(console.server)
    time.sleep(1.1)  # pulled a second after it was pushed: the page shows the two to the second
    assert get_manifest(console.server, "pages/app", "v1", auth=("AWS", login_password(console.server))).ok

    def pulled() -> dict | None:
        (detail,) = ecr.describe_images(repositoryName="pages/app")["imageDetails"]
        return detail if detail.get("lastRecordedPullTime") else None

    detail = wait_for(pulled, timeout=20, what="the pull time recorded (written every 5 seconds)")
    admin = sign_in_session(console.url)
    page = admin.get(f"{console.url}/console/repositories/pages/app", timeout=30).text
    shown = cells(page, f'class="depth-0" data-digest="{image.digest}"')
    assert shown[0].startswith("v1") and shown[1].startswith(image.digest[:19]), shown
    assert shown[3:7] == [
        human_size(detail["imageSizeInBytes"]),
        timestamp(detail["imagePushedAt"].timestamp()),
        timestamp(detail["lastRecordedPullTime"].timestamp()),
        "standard",
    ], shown
    assert shown[4] != shown[5]
    assert f"docker pull {console.server.host}/pages/app:v1" in page


def test_deleting_an_image_and_one_an_index_lists(console: Fixture) -> None:
    client = Client(console.url, ("AWS", login_password(console.server)))
    doomed = make_image(1, 256)
    client.push_image("pages/doomed", "old", doomed)
    admin = sign_in_session(console.url)
    token = csrf_of(admin, console.url)

    def delete(repository: str, digest: str) -> requests.Response:
        return admin.post(
            f"{console.url}/console/actions/delete-image",
            data={"csrf": token, "repository": repository, "digest": digest},
            headers={"Origin": console.url},
            timeout=30,
        )

    done = delete("pages/doomed", doomed.digest)
    assert done.status_code == 200 and f"Deleted image {doomed.digest}." in done.text
    ecr = ecr_client(console.server)
    assert ecr.describe_images(repositoryName="pages/doomed")["imageDetails"] == []
    child = console.index.children[0].digest
    refused = delete("web/multi", child)
    assert refused.status_code == 200 and "is listed by an index: delete the index first" in refused.text
    digests = {d["imageDigest"] for d in ecr.describe_images(repositoryName="web/multi")["imageDetails"]}
    assert child in digests


def test_an_image_page_shows_its_config_and_the_digest_of_its_exact_bytes(console: Fixture) -> None:
    """The manifest is stored minified, keys in an unusual order: the page shows it indented, with the digest of
    the bytes as pushed (not of what it shows), verified; and the config's every part."""
    config = json.dumps(
        {
            "architecture": "arm64",
            "variant": "v8",
            "os": "linux",
            "config": {
                "Entrypoint": ["/app", "--serve"],
                "Cmd": ["--port", "8080"],
                "Env": ["PATH=/bin", "MODE=console-test"],
                "Labels": {"org.opencontainers.image.title": "pages <test>"},
                "User": "10001",
                "WorkingDir": "/srv",
                "ExposedPorts": {"8080/tcp": {}},
            },
            "rootfs": {"type": "layers", "diff_ids": []},
            "history": [{"created_by": "COPY app /app"}, {"created_by": "ENV MODE=console-test", "empty_layer": True}],
        }
    ).encode()
    layer = os.urandom(1500)
    body = json.dumps(
        {
            "layers": [{"digest": digest_of(layer), "size": len(layer), "mediaType": OCI_LAYER}],
            "config": {"size": len(config), "digest": digest_of(config), "mediaType": OCI_CONFIG},
            "mediaType": OCI_MANIFEST,
            "schemaVersion": 2,
        },
        separators=(",", ":"),
    ).encode()
    image = Image(config, [layer], body)
    Client(console.url, ("AWS", login_password(console.server))).push_image("pages/config", "v1", image)
    admin = sign_in_session(console.url)
    page = admin.get(f"{console.url}/console/images/pages/config@{image.digest}", timeout=30).text
    assert f'<code id="manifest-digest" class="full">{image.digest}</code>' in page
    assert 'id="digest-verified"' in page and f"As stored ({len(body)} bytes" in page
    shown = html.unescape(re.search(r'<pre class="json" id="manifest-json">(.*?)</pre>', page, re.S).group(1))
    assert shown.encode() != body and json.loads(shown) == json.loads(body) and "\n  " in shown
    text = html.unescape(page)
    assert re.search(r'id="config-platform">linux/arm64/v8<', text)
    assert '<code id="config-entrypoint">["/app", "--serve"]</code>' in text
    assert '<code id="config-cmd">["--port", "8080"]</code>' in text
    assert "<code>PATH=/bin</code>" in text and "<code>MODE=console-test</code>" in text
    assert "<td><code>org.opencontainers.image.title</code></td><td>pages <test></td>" in text
    assert "<code>10001</code>" in text and "<code>/srv</code>" in text and "8080/tcp" in text
    history = re.search(r'id="config-history">(.*?)</table>', text, re.S).group(1)
    assert history.index("COPY app /app") < history.index("ENV MODE=console-test")
    assert f'data-bytes="{len(layer)}"' in page
