"""A pull-through cache rule's life as the console shows it, on a server of its own (auth off, a rule made by
the API to a Distribution upstream, `max_cache_bytes` set, tags re-checked after a second): pulled by skopeo,
its counters and hit ratio; the upstream stopped, its stale serves and last failure; the cache's size against
its bound on the storage page, with the hits per minute since the server started; and the rule deleted from
the console."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import requests

from registry.console.views import human_size
from tests.helpers import wait_for
from tests.layouts import write_single_image
from tests.server import AUTH_OFF, MoorageServer, ecr_client
from tests.skopeo import Skopeo, skopeo_pull, skopeo_push
from tests.upstreams import DistributionRegistry

MAX_CACHE = 1024**3
REPOSITORY = "hub/team/tool"


def counters(page: str) -> dict[str, str]:
    """The rule page's counters by name (bytes as numbers)."""
    out = {}
    for match in re.finditer(r'data-counter="([^"]+)"(?: data-bytes="(\d+)")?>(.*?)</', page, re.S):
        out[match.group(1)] = match.group(2) or match.group(3).strip()
    return out


def test_a_rule_pulled_through_then_cut_off_then_deleted(
    make_server: Callable[..., MoorageServer], skopeo: Skopeo, tmp_path: Path
) -> None:
    upstream = DistributionRegistry(tmp_path / "upstream").start()
    try:
        image = write_single_image(tmp_path / "image", "1.0", n_layers=2)
        skopeo_push(skopeo, tmp_path / "image", "1.0", f"{upstream.host}/team/tool:1.0")
        config = (
            AUTH_OFF
            + '[pull_through]\nallowed_upstreams = ["127.0.0.1"]\n'
            + f'tag_refresh_interval = "1s"\nmax_cache_bytes = {MAX_CACHE}\n'
        )
        srv = make_server(config)
        ecr_client(srv).create_pull_through_cache_rule(ecrRepositoryPrefix="hub", upstreamRegistryUrl=upstream.url)
        session = requests.Session()
        rule_page = f"{srv.url}/console/pull-through/rules/hub"
        skopeo_pull(skopeo, f"{srv.host}/{REPOSITORY}:1.0", tmp_path / "first", "1.0")
        skopeo_pull(skopeo, f"{srv.host}/{REPOSITORY}:1.0", tmp_path / "second", "1.0")
        again = requests.get(f"{srv.url}/v2/{REPOSITORY}/manifests/{image.digest}", timeout=30)  # one hit more
        assert again.status_code == 200 and again.content == image.manifest
        page = session.get(rule_page, timeout=30).text
        seen = counters(page)
        hits, misses = int(seen["hits"]), int(seen["misses"])
        assert misses >= 4 and hits > misses and int(seen["upstream-bytes"]) > 0, seen  # config, layers, manifest
        assert seen["ratio"] == f"{hits / (hits + misses) * 100:.1f} %", seen
        assert seen["stale"] == "0" and 'id="last-failure-message"' not in page

        # The cached repository, with its size as DescribeImages counts it.
        details = ecr_client(srv).describe_images(repositoryName=REPOSITORY)["imageDetails"]
        listed = re.search(rf'<tr data-repository="{REPOSITORY}">.*?data-bytes="(\d+)"', page, re.S)
        assert listed and int(listed.group(1)) == sum(d["imageSizeInBytes"] for d in details), page[-3000:]

        # The storage page: the cache's bytes (each blob its images reference, once) against the bound, and
        # every hit and miss since the server started in the per-minute chart.
        storage = session.get(f"{srv.url}/console/storage", timeout=30).text
        cached = int(re.search(r'data-bytes="(\d+)" id="cache-bytes"', storage).group(1))
        assert cached == len(image.config) + sum(len(layer) for layer in image.layers), storage
        assert f"of {human_size(MAX_CACHE)}" in storage
        assert f'<meter id="cache-meter" min="0" max="{MAX_CACHE}" value="{cached}"' in storage
        chart = re.search(r'id="hits-chart"[^>]*data-hits="(\d+)" data-misses="(\d+)"', storage)
        assert chart and (int(chart.group(1)), int(chart.group(2))) == (hits, misses), chart

        # Cut off: the tag is due for its re-check, the check fails, and later pulls are served stale.
        upstream.stop()
        time.sleep(1.2)

        def served_stale() -> dict[str, str] | None:
            pulled = requests.get(
                f"{srv.url}/v2/{REPOSITORY}/manifests/1.0",
                headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
                timeout=30,
            )
            assert pulled.status_code == 200 and pulled.content == image.manifest, pulled.status_code
            now = counters(session.get(rule_page, timeout=30).text)
            return now if int(now["stale"]) > 0 else None

        wait_for(served_stale, what="a stale serve counted on the rule page")
        page = session.get(rule_page, timeout=30).text
        message = re.search(r'id="last-failure-message">([^<]*)<', page)
        assert message and upstream.host in message.group(1), page[-3000:]
        listing = session.get(f"{srv.url}/console/pull-through", timeout=30).text
        row = re.search(r'<tr data-prefix="hub">.*?</tr>', listing, re.S)
        assert row and re.search(r'data-counter="stale">[1-9]', row.group(0)) and "badge bad" in row.group(0)

        # Deleted from the console: the rule goes, the repository it cached stays.
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        deleted = session.post(
            f"{srv.url}/console/actions/pull-through/delete",
            data={"csrf": csrf, "prefix": "hub"},
            headers={"Origin": srv.url},
            allow_redirects=False,
            timeout=30,
        )
        assert deleted.status_code == 303 and "notice=deleted" in deleted.headers["Location"], deleted.text[:500]
        ecr = ecr_client(srv)
        assert ecr.describe_pull_through_cache_rules()["pullThroughCacheRules"] == []
        assert [r["repositoryName"] for r in ecr.describe_repositories()["repositories"]] == [REPOSITORY]
        after = session.get(srv.url + deleted.headers["Location"], timeout=30).text
        assert "Deleted the rule hub; the repositories it cached stay." in after and 'data-prefix="hub"' not in after
    finally:
        upstream.stop()
