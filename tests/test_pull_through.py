"""Pull-through cache acceptance tests: Moorage in front of real upstream registries.

The upstreams are real servers: CNCF Distribution (`docker-registry`), a second Moorage with auth on, and a
small misbehaving aiohttp registry (tests/upstreams.py) for corrupt, truncated and slow answers. Clients are
skopeo, docker (a private dockerd), boto3 and plain HTTP. Upstream traffic is counted from the upstreams'
access logs (Moorage's upstream requests carry the User-Agent `moorage-pull-through`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError

from tests.dockerd import Dockerd
from tests.helpers import wait_for
from tests.layouts import LayoutImage, read_layout, write_multi_platform_image, write_single_image
from tests.oci import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    assert_pulls,
    descriptor,
    digest_of,
    error_codes,
    get_blob,
    get_manifest,
    make_image,
)
from tests.server import (
    ADMIN_KEY,
    ADMIN_SECRET,
    AUTH_OFF,
    MoorageServer,
    auth_config,
    blob_file,
    ecr_client,
    free_port,
    login_password,
    principal_toml,
)
from tests.skopeo import Skopeo, assert_layout_matches, inspect_raw, skopeo_pull, skopeo_push
from tests.upstreams import MOORAGE_USER_AGENT, DistributionRegistry, MisbehavingUpstream, push_image

# skopeo (the `skopeo` fixture) and Distribution (`DistributionRegistry.start`) are required by the tests
# that use them, and only by those.

MakeServer = Callable[..., MoorageServer]
MISSING_SECRET_ARN = "arn:aws:secretsmanager:us-east-1:000000000000:secret:ecr-pullthroughcache/nope"
UP_SECRET_ARN = "arn:aws:secretsmanager:us-east-1:000000000000:secret:ecr-pullthroughcache/up"
_seq = iter(range(10**6))


def unique(stem: str) -> str:
    """An upstream repository name no other test in this module uses."""
    return f"team/{stem}-{next(_seq)}"


# -- configuration -----------------------------------------------------------------------------------------


LOOPBACK_UPSTREAMS = ["127.0.0.1"]
# Timing limits below are stated against these settings: "less than UPSTREAM_TIMEOUT" means the request did
# not wait on the upstream; "at most UPSTREAM_TIMEOUT + SLACK" means it waited once, then gave up.
REFRESH = 1.0  # tag_refresh_interval, seconds, where a test waits for a tag to be due for a re-check
UPSTREAM_TIMEOUT = 2.0  # upstream_timeout, seconds, where a test measures how long a request waited
SLACK = 2.0  # scheduling on a loaded two-core machine


def past_refresh(interval: float = REFRESH) -> None:
    """Let `interval` (the configured tag_refresh_interval) run out: the next pull of a cached tag re-checks."""
    time.sleep(interval + 0.2)


def rule_toml(prefix: str, url: str, upstream_prefix: str | None = None, credential: str | None = None) -> str:
    out = f'[[pull_through.rules]]\necr_repository_prefix = "{prefix}"\nupstream_registry_url = "{url}"\n'
    if upstream_prefix is not None:
        out += f'upstream_repository_prefix = "{upstream_prefix}"\n'
    if credential is not None:
        out += f'credential = "{credential}"\n'
    return out


def cache_config(*rules: str, auth: str = AUTH_OFF, secrets: str = "", **settings: Any) -> str:
    """A Moorage config: `auth`, then [pull_through] with `settings` (durations as strings), rules, secrets.
    The upstreams here are all on loopback, which `allowed_upstreams` must list."""
    settings.setdefault("allowed_upstreams", LOOPBACK_UPSTREAMS)
    lines = "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())
    return auth + "[pull_through]\n" + lines + "".join(rules) + secrets


# -- HTTP helpers ------------------------------------------------------------------------------------------


def manifest_requests(up: Any, repo: str, method: str = "GET|HEAD") -> int:
    """How many times Moorage asked `up` for a manifest of `repo`."""
    return up.count(rf"^(?:{method}) /v2/{re.escape(repo)}/manifests/", agent=MOORAGE_USER_AGENT)


def blob_gets(up: Any, repo: str, digest: str = "") -> int:
    return up.count(rf"^GET /v2/{re.escape(repo)}/blobs/{re.escape(digest)}", agent=MOORAGE_USER_AGENT)


def error_message(r: requests.Response) -> str:
    error_codes(r)  # the OCI error shape
    return " ".join(e["message"] for e in r.json()["errors"])


def uploads_left(srv: MoorageServer) -> list[str]:
    return sorted(p.name for p in (srv.data_dir / "uploads").iterdir())


# -- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DistributionRegistry]:
    """A Distribution registry shared by the module; tests isolate themselves by repository name."""
    reg = DistributionRegistry(tmp_path_factory.mktemp("distribution")).start()
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def bad_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MisbehavingUpstream]:
    up = MisbehavingUpstream(tmp_path_factory.mktemp("misbehaving")).start()
    yield up
    up.stop()


@pytest.fixture
def own_upstream(tmp_path: Path) -> Iterator[Callable[..., DistributionRegistry]]:
    """Private Distribution registries (for tests that stop them); stopped at teardown."""
    made: list[DistributionRegistry] = []

    def make(start: bool = True) -> DistributionRegistry:
        reg = DistributionRegistry(tmp_path / f"upstream{len(made)}")
        made.append(reg)
        return reg.start() if start else reg

    yield make
    for reg in made:
        reg.stop()


# == 1. skopeo through the cache ===========================================================================


def test_skopeo_single_platform_through_cache(
    make_server: MakeServer, upstream: DistributionRegistry, skopeo: Skopeo, tmp_path: Path
):
    repo = unique("single")
    img: LayoutImage = write_single_image(tmp_path / "src", "v1", n_layers=3)
    skopeo_push(skopeo, tmp_path / "src", "v1", f"{upstream.host}/{repo}:v1")
    srv = make_server(cache_config(rule_toml("hub", upstream.url)))

    upstream_raw = inspect_raw(skopeo, f"docker://{upstream.host}/{repo}:v1")
    cached_raw = inspect_raw(skopeo, f"docker://{srv.host}/hub/{repo}:v1")
    assert upstream_raw == img.manifest
    assert cached_raw == upstream_raw, "the cache re-serialised the upstream manifest"
    assert digest_of(cached_raw) == img.digest

    skopeo_pull(skopeo, f"{srv.host}/hub/{repo}:v1", tmp_path / "dst", "v1")
    assert_layout_matches(tmp_path / "dst", "v1", img.digest, img.blobs)

    # The cache repository exists, for the ECR API and for the catalog.
    ecr = ecr_client(srv)
    described = ecr.describe_repositories(repositoryNames=[f"hub/{repo}"])["repositories"]
    assert [r["repositoryName"] for r in described] == [f"hub/{repo}"]
    images = ecr.describe_images(repositoryName=f"hub/{repo}")["imageDetails"]
    assert [(i["imageDigest"], i.get("imageTags")) for i in images] == [(img.digest, ["v1"])]
    catalog = requests.get(f"{srv.url}/v2/_catalog", timeout=30).json()["repositories"]
    assert f"hub/{repo}" in catalog

    # Each blob came from upstream once; a second pull is served from the cache.
    for d in img.blobs:
        if d != img.digest:
            assert blob_gets(upstream, repo, d) == 1, d
    skopeo_pull(skopeo, f"{srv.host}/hub/{repo}:v1", tmp_path / "again", "v1")
    assert_layout_matches(tmp_path / "again", "v1", img.digest, img.blobs)
    assert blob_gets(upstream, repo) == len(img.blobs) - 1


def test_skopeo_multi_platform_through_cache(
    make_server: MakeServer, upstream: DistributionRegistry, skopeo: Skopeo, tmp_path: Path
):
    repo = unique("multi")
    idx = write_multi_platform_image(tmp_path / "src", "m1", arches=("amd64", "arm64"), n_layers=2)
    amd64, arm64 = idx.children
    skopeo_push(skopeo, tmp_path / "src", "m1", f"{upstream.host}/{repo}:m1", all_images=True)
    srv = make_server(cache_config(rule_toml("hub", upstream.url)))

    # One platform only: the index is cached byte-exact, the arm64 image is fetched, amd64 never is.
    skopeo_pull(skopeo, f"{srv.host}/hub/{repo}:m1", tmp_path / "arm", "one", arch="arm64")
    assert_layout_matches(tmp_path / "arm", "one", arm64.digest, arm64.blobs)
    r = get_manifest(srv, f"hub/{repo}", "m1")
    assert r.status_code == 200 and r.content == idx.index, (r.status_code, r.content[:300])
    assert r.headers["Content-Type"].split(";")[0] == OCI_INDEX
    assert inspect_raw(skopeo, f"docker://{srv.host}/hub/{repo}:m1") == inspect_raw(
        skopeo, f"docker://{upstream.host}/{repo}:m1"
    )
    never = set(amd64.blobs)
    asked = {a.path.rsplit("/", 1)[1] for a in upstream.accesses(rf"/v2/{re.escape(repo)}/", agent=MOORAGE_USER_AGENT)}
    assert asked.isdisjoint(never), f"the amd64 image was fetched from upstream: {sorted(asked & set(never))}"
    for d in arm64.blobs:
        if d != arm64.digest:
            assert blob_gets(upstream, repo, d) == 1, d

    # Then everything: byte-exact, and the arm64 blobs are not fetched again.
    skopeo_pull(skopeo, f"{srv.host}/hub/{repo}:m1", tmp_path / "all", "m1", all_images=True)
    assert_layout_matches(tmp_path / "all", "m1", idx.digest, idx.blobs)
    for child in idx.children:
        for d in child.blobs:
            if d != child.digest:
                assert blob_gets(upstream, repo, d) == 1, d
    catalog = requests.get(f"{srv.url}/v2/_catalog", timeout=30).json()["repositories"]
    assert catalog == [f"hub/{repo}"]


# == 2. docker through the cache ===========================================================================


@pytest.mark.docker
@pytest.mark.slow
def test_docker_pull_through_cache(
    dockerd: Dockerd, make_server: MakeServer, upstream: DistributionRegistry, tmp_path: Path
):
    repo = unique("docker")
    src_ref = f"{upstream.host}/{repo}:v1"
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    nonce = os.urandom(8).hex()
    (ctx / "blob.bin").write_bytes(os.urandom(128 * 1024 + 3))
    (ctx / "Dockerfile").write_text(f'FROM scratch\nCOPY blob.bin /data/blob.bin\nLABEL moorage.test.nonce="{nonce}"\n')
    try:
        dockerd.run("build", "--rm", "-t", src_ref, str(ctx), timeout=180)
        image_id = dockerd.run("image", "inspect", "--format", "{{.Id}}", src_ref).stdout.strip()
        pushed = dockerd.run("push", src_ref, timeout=180).stdout
        m = re.search(r"digest: (sha256:[0-9a-f]{64})", pushed)
        assert m, pushed
        digest = m[1]
        _docker_clean(dockerd)
        assert dockerd.run("images", "-aq").stdout.split() == [], "images left before the pull"

        srv = make_server(cache_config(rule_toml("hub", upstream.url)))
        cache_ref = f"{srv.host}/hub/{repo}:v1"
        pulled = dockerd.run("pull", cache_ref, timeout=180).stdout
        assert f"Digest: {digest}" in pulled, pulled
        assert dockerd.run("image", "inspect", "--format", "{{.Id}}", cache_ref).stdout.strip() == image_id
        labels = json.loads(dockerd.run("image", "inspect", "--format", "{{json .Config.Labels}}", cache_ref).stdout)
        assert labels == {"moorage.test.nonce": nonce}
        r = get_manifest(srv, f"hub/{repo}", "v1")
        assert r.headers["Docker-Content-Digest"] == digest and digest_of(r.content) == digest
        blobs = [r.json()["config"]["digest"], *(layer["digest"] for layer in r.json()["layers"])]
        assert all(blob_gets(upstream, repo, d) == 1 for d in blobs), upstream.accesses(repo, agent=MOORAGE_USER_AGENT)
    finally:
        _docker_clean(dockerd)


def _docker_clean(d: Dockerd) -> None:
    containers = d.run("ps", "-aq").stdout.split()
    if containers:
        d.run("rm", "-f", *containers)
    d.run("image", "prune", "-a", "-f")


# == 3. single flight ======================================================================================


@pytest.mark.parametrize("processes", ["one process", "two workers", "two servers on one data dir"])
def test_concurrent_cold_pulls_fetch_each_blob_once(
    make_server: MakeServer, upstream: DistributionRegistry, processes: str
):
    """Six clients pull one cold image at once: the upstream sees one manifest GET and one blob GET, also when
    the clients reach different processes (followers stream the leader's spool as it grows)."""
    repo = unique("big")
    layer = os.urandom(64 << 20)
    config = json.dumps({"architecture": "amd64", "os": "linux", "nonce": os.urandom(8).hex()}).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [descriptor(OCI_LAYER, layer)],
        },
        indent=2,
    ).encode()
    layer_digest = digest_of(layer)
    push_image(upstream.url, repo, "v1", manifest, OCI_MANIFEST, [config, layer])
    cfg = cache_config(rule_toml("hub", upstream.url))
    srv = make_server(cfg, workers=2 if processes == "two workers" else 1)
    urls = [srv.url]
    if processes == "two servers on one data dir":
        urls.append(make_server(cfg, data_dir=srv.data_dir).url)
    n = 6
    at_manifest, at_blob = threading.Barrier(n, timeout=30), threading.Barrier(n, timeout=30)

    def pull(i: int) -> tuple[int, str, int, int, str]:
        url = urls[i % len(urls)]
        with requests.Session() as s:
            at_manifest.wait()
            m = s.get(f"{url}/v2/hub/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST}, timeout=60)
            at_blob.wait()
            h, size = hashlib.sha256(), 0
            with s.get(f"{url}/v2/hub/{repo}/blobs/{layer_digest}", stream=True, timeout=60) as b:
                for chunk in b.iter_content(1 << 20):
                    h.update(chunk)
                    size += len(chunk)
        return m.status_code, m.headers.get("Docker-Content-Digest", ""), b.status_code, size, f"sha256:{h.hexdigest()}"

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(pull, range(n)))
    for manifest_status, manifest_digest, blob_status, size, got in results:
        assert manifest_status == 200 and manifest_digest == digest_of(manifest)
        assert blob_status == 200 and size == len(layer) and got == layer_digest
    assert blob_gets(upstream, repo, layer_digest) == 1, upstream.accesses(repo, agent=MOORAGE_USER_AGENT)
    assert manifest_requests(upstream, repo) == 1, upstream.accesses(repo, agent=MOORAGE_USER_AGENT)
    assert blob_file(srv, layer_digest).stat().st_size == len(layer)


# == 4. upstream down ======================================================================================


def test_upstream_stopped_serves_cached_and_fails_misses_promptly(
    make_server: MakeServer, own_upstream: Callable[..., DistributionRegistry], skopeo: Skopeo, tmp_path: Path
):
    up = own_upstream()
    repo = "team/app"
    img: LayoutImage = write_single_image(tmp_path / "src", "v1", n_layers=2)
    skopeo_push(skopeo, tmp_path / "src", "v1", f"{up.host}/{repo}:v1")
    srv = make_server(
        cache_config(
            rule_toml("hub", up.url), tag_refresh_interval=f"{REFRESH}s", upstream_timeout=f"{UPSTREAM_TIMEOUT}s"
        )
    )
    skopeo_pull(skopeo, f"{srv.host}/hub/{repo}:v1", tmp_path / "first", "v1")
    assert_layout_matches(tmp_path / "first", "v1", img.digest, img.blobs)

    up.stop()
    past_refresh()
    times = []
    for i in range(4):
        started = time.monotonic()
        r = get_manifest(srv, f"hub/{repo}", "v1", timeout=10)
        times.append(time.monotonic() - started)
        assert r.status_code == 200 and r.content == img.manifest, (i, r.status_code, r.text[:300])
        time.sleep(0.3)
    # A refused connection fails at once: no pull of the cached tag waits anything like upstream_timeout.
    assert all(t < UPSTREAM_TIMEOUT for t in times), f"pulls of the cached tag took {times}"
    started = time.monotonic()
    skopeo_pull(skopeo, f"{srv.host}/hub/{repo}:v1", tmp_path / "stale", "v1")
    assert time.monotonic() - started < 10
    assert_layout_matches(tmp_path / "stale", "v1", img.digest, img.blobs)
    wait_for(
        lambda: [line for line in srv.log().splitlines() if "warning" in line.lower() and up.url in line],
        what=f"a warning naming {up.url} in the server log",
        details=lambda: srv.log()[-3000:],
    )

    # Never cached: at once, a 502 whose OCI error names the upstream.
    for name, ref in [(repo, "v2"), ("team/never", "v1")]:
        started = time.monotonic()
        r = get_manifest(srv, f"hub/{name}", ref, timeout=10)
        elapsed = time.monotonic() - started
        assert elapsed < UPSTREAM_TIMEOUT, f"a miss with the upstream down took {elapsed:.1f}s"
        assert r.status_code == 502 and r.headers["Content-Type"].startswith("application/json"), (
            r.status_code,
            r.text,
        )
        assert error_codes(r) == ["UNKNOWN"] and up.url in error_message(r), r.text


def test_slow_upstream_times_out_and_serves_cached(make_server: MakeServer, bad_upstream: MisbehavingUpstream):
    repo = unique("slow")
    img = make_image(1)
    for blob in img.blobs:
        bad_upstream.put_blob(blob)
    bad_upstream.put_manifest(repo, "v1", img.manifest, OCI_MANIFEST)
    srv = make_server(
        cache_config(
            rule_toml("bad", bad_upstream.url),
            tag_refresh_interval=f"{REFRESH}s",
            upstream_timeout=f"{UPSTREAM_TIMEOUT}s",
        )
    )
    assert_pulls(srv, f"bad/{repo}", "v1", img)

    hang = 10 * UPSTREAM_TIMEOUT
    bad_upstream.put_manifest(repo, "v1", img.manifest, OCI_MANIFEST, delay=hang)  # now it hangs
    bad_upstream.put_manifest(repo, "v2", img.manifest, OCI_MANIFEST, delay=hang)
    past_refresh()
    times = []
    for _ in range(3):
        started = time.monotonic()
        r = get_manifest(srv, f"bad/{repo}", "v1", timeout=hang)
        times.append(time.monotonic() - started)
        assert r.status_code == 200 and r.content == img.manifest, (r.status_code, r.text[:300])
    assert times[0] < UPSTREAM_TIMEOUT + SLACK, (
        f"the first stale serve waited {times[0]:.1f}s (timeout {UPSTREAM_TIMEOUT}s)"
    )
    assert all(t < UPSTREAM_TIMEOUT for t in times[1:]), f"later pulls still waited on the slow upstream: {times}"

    started = time.monotonic()
    r = get_manifest(srv, f"bad/{repo}", "v2", timeout=hang)
    elapsed = time.monotonic() - started
    assert elapsed < UPSTREAM_TIMEOUT + SLACK, f"an uncached tag with a hanging upstream took {elapsed:.1f}s"
    assert r.status_code == 504, (r.status_code, r.text)  # Gateway Timeout: what docker shows says so
    assert bad_upstream.url in error_message(r) and "timed out" in error_message(r), r.text


# == 5. tags moving upstream ================================================================================


def test_moved_tag_is_picked_up_after_the_refresh_interval(
    make_server: MakeServer, upstream: DistributionRegistry, skopeo: Skopeo, tmp_path: Path
):
    repo = unique("moving")
    a, b = make_image(2), make_image(2)
    push_image(upstream.url, repo, "v1", a.manifest, OCI_MANIFEST, a.blobs)
    interval = 3.0
    srv = make_server(cache_config(rule_toml("hub", upstream.url), tag_refresh_interval=f"{interval}s"))
    assert_pulls(srv, f"hub/{repo}", "v1", a)

    push_image(upstream.url, repo, "v1", b.manifest, OCI_MANIFEST, b.blobs)
    r = get_manifest(srv, f"hub/{repo}", "v1")
    assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == a.digest, "re-checked before the interval"
    assert manifest_requests(upstream, repo) == 1

    past_refresh(interval)
    # Due for its re-check: the cached manifest is served at once and checked in the background; the next
    # pulls get what the check found.
    r = get_manifest(srv, f"hub/{repo}", "v1")
    assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == a.digest, (r.status_code, r.text)

    def moved() -> requests.Response | None:
        r = get_manifest(srv, f"hub/{repo}", "v1")
        return r if r.headers.get("Docker-Content-Digest") == b.digest else None

    r = wait_for(moved, 10, "the background check to pick up the moved tag", interval=0.1)
    assert r.status_code == 200 and r.content == b.manifest
    skopeo_pull(skopeo, f"{srv.host}/hub/{repo}:v1", tmp_path / "b", "v1")
    got = read_layout(tmp_path / "b", "v1")
    assert got.top_digest == b.digest
    assert {d: got.blobs[d] for d in got.blobs if d != b.digest} == {digest_of(x): x for x in b.blobs}
    # The old image stays addressable by digest.
    assert_pulls(srv, f"hub/{repo}", a.digest, a)


def test_last_check_time_survives_restart(make_server: MakeServer, upstream: DistributionRegistry):
    repo = unique("persist")
    img = make_image(1)
    push_image(upstream.url, repo, "v1", img.manifest, OCI_MANIFEST, img.blobs)
    srv = make_server(cache_config(rule_toml("hub", upstream.url), tag_refresh_interval="1h"))
    assert_pulls(srv, f"hub/{repo}", "v1", img)
    before = manifest_requests(upstream, repo)
    assert before == 1

    srv.restart()
    for _ in range(2):
        assert_pulls(srv, f"hub/{repo}", "v1", img)
    assert manifest_requests(upstream, repo) == before, upstream.accesses(repo, agent=MOORAGE_USER_AGENT)
    assert blob_gets(upstream, repo) == len(img.blobs)


# == 6. digest references ===================================================================================


def test_digest_references_never_go_upstream_once_cached(make_server: MakeServer, upstream: DistributionRegistry):
    repo = unique("bydigest")
    img = make_image(2)
    push_image(upstream.url, repo, "v1", img.manifest, OCI_MANIFEST, img.blobs)
    srv = make_server(cache_config(rule_toml("hub", upstream.url), tag_refresh_interval=f"{REFRESH}s"))
    assert_pulls(srv, f"hub/{repo}", img.digest, img)
    assert manifest_requests(upstream, repo) == 1
    total = len(upstream.accesses(repo, agent=MOORAGE_USER_AGENT))

    past_refresh()
    for _ in range(3):
        assert_pulls(srv, f"hub/{repo}", img.digest, img)
        h = requests.head(f"{srv.url}/v2/hub/{repo}/manifests/{img.digest}", timeout=30)
        assert h.status_code == 200 and h.headers["Docker-Content-Digest"] == img.digest
    assert len(upstream.accesses(repo, agent=MOORAGE_USER_AGENT)) == total, "a digest reference went upstream"

    # Control: a tag past its interval is re-checked (so the counting above can see upstream requests).
    assert_pulls(srv, f"hub/{repo}", "v1", img)
    past_refresh()
    assert_pulls(srv, f"hub/{repo}", "v1", img)
    assert manifest_requests(upstream, repo, "HEAD") == 1


# == 7. misbehaving upstream ================================================================================


@pytest.mark.parametrize("mode", ["corrupt", "truncate", "short"])
def test_bad_upstream_blob_never_becomes_a_cached_blob(
    mode: str, make_server: MakeServer, bad_upstream: MisbehavingUpstream
):
    repo = unique(f"bad-{mode}")
    img = make_image(1, layer_size=2 * 1024 * 1024 + 11)
    for blob in img.blobs:
        bad_upstream.put_blob(blob)
    bad_upstream.put_manifest(repo, "v1", img.manifest, OCI_MANIFEST)
    srv = make_server(cache_config(rule_toml("bad", bad_upstream.url)))
    r = get_manifest(srv, f"bad/{repo}", "v1")
    assert r.status_code == 200 and r.content == img.manifest

    layer = img.layers[0]
    digest = digest_of(layer)
    bad_upstream.set_blob_mode(digest, mode)
    started = time.monotonic()
    got = _fetch(srv, f"bad/{repo}", digest)
    elapsed = time.monotonic() - started
    assert blob_gets(bad_upstream, repo, digest) == 1
    # What the client may see: an error status, a dropped connection, or a body shorter than the blob; promptly;
    # and never bytes the upstream did not send. (Collected, so that the cache checks below run either way.)
    problems = []
    if got.status == 200 and got.complete and len(got.body) == len(layer):
        problems.append(
            f"the client got a complete 200 response of {len(got.body)} bytes whose digest is "
            f"{digest_of(got.body)}, not {digest}, with no sign of an error"
        )
    if elapsed >= 5:
        problems.append(f"the client waited {elapsed:.1f}s for the failed download to end ({got.error})")
    if got.status == 200 and mode != "corrupt" and not layer.startswith(got.body):
        problems.append(
            f"{len(got.body)} body bytes reached the client but the upstream sent only {len(layer) // 2}; "
            f"after those: {got.body[len(layer) // 2 :][:160]!r}"
        )
    if got.after:
        problems.append(f"{len(got.after)} bytes followed the end of the response: {got.after[:160]!r}")
    # Nothing cached, nothing left behind; the next request tries the upstream again.
    no_spool = {"what": "no spool file left", "details": lambda: str(uploads_left(srv))}
    wait_for(lambda: uploads_left(srv) == [], 5, **no_spool)
    assert not blob_file(srv, digest).exists()
    # A HEAD starts a new download from the upstream (a cache warms on HEAD too) and answers with the size the
    # manifest declares, or a 502 when the upstream's Content-Length disagrees with it (the short blob); the
    # download fails its checks again, and again nothing is cached.
    h = requests.head(f"{srv.url}/v2/bad/{repo}/blobs/{digest}", timeout=10)
    assert blob_gets(bad_upstream, repo, digest) == 2, [a.line for a in bad_upstream.accesses(repo)]
    if mode == "short":
        assert h.status_code == 502, (h.status_code, dict(h.headers))
    else:
        assert h.status_code == 200 and h.headers["Content-Length"] == str(len(layer)), (h.status_code, h.headers)
    wait_for(lambda: uploads_left(srv) == [], 5, **no_spool)
    assert not blob_file(srv, digest).exists()

    # Once the upstream behaves, the blob is fetched, verified and cached.
    bad_upstream.set_blob_mode(digest, "ok")
    b = get_blob(srv, f"bad/{repo}", digest)
    assert b.status_code == 200 and b.content == layer
    wait_for(lambda: blob_file(srv, digest).exists(), 5, "the blob to be cached")
    assert blob_file(srv, digest).read_bytes() == layer
    assert uploads_left(srv) == []
    assert not problems, f"{mode}: " + "; ".join(problems)


@dataclass
class Fetched:
    status: int
    length: int  # Content-Length
    body: bytes  # the body bytes that arrived, at most `length`
    after: bytes  # bytes that arrived after the end of the response on the kept-alive connection
    error: str  # why the body did not complete ("" if it did)

    @property
    def complete(self) -> bool:
        return not self.error and len(self.body) == self.length


def _fetch(srv: MoorageServer, repo: str, digest: str, read_timeout: float = 6) -> Fetched:
    """GET a blob as a keep-alive HTTP/1.1 client does, over a raw socket so that every byte is seen: read the
    headers and Content-Length body bytes (until EOF or `read_timeout` of silence), then whatever else arrives
    on the connection in the next half second."""
    data = bytearray()
    error = ""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
        sock.sendall(f"GET /v2/{repo}/blobs/{digest} HTTP/1.1\r\nHost: {srv.host}\r\n\r\n".encode())
        sock.settimeout(read_timeout)
        length, end = -1, -1
        try:
            while end < 0 or len(data) < end:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    error = "the connection was closed"
                    break
                data += chunk
                if end < 0 and b"\r\n\r\n" in data:
                    head = bytes(data).split(b"\r\n\r\n", 1)[0].decode(errors="replace")
                    m = re.search(r"(?im)^content-length:\s*(\d+)", head)
                    length = int(m[1]) if m else -1
                    end = len(head) + 4 + length if m else 1 << 62
            if not error:  # anything more on this connection is not part of the response
                sock.settimeout(0.5)
                with contextlib.suppress(TimeoutError, OSError):
                    while chunk := sock.recv(1 << 16):
                        data += chunk
        except TimeoutError:
            error = f"no more bytes and no end of the response within {read_timeout}s"
        except OSError as e:
            error = repr(e)
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
    status = int(status_line.split()[1]) if status_line.startswith("HTTP/") else 0
    body, after = (rest[:length], rest[length:]) if length >= 0 else (rest, b"")
    if not error and len(body) < length:
        error = f"the connection was closed after {len(body)} of {length} body bytes"
    return Fetched(status, length, body, after, error)


def test_upstream_manifest_with_wrong_digest_is_refused(make_server: MakeServer, bad_upstream: MisbehavingUpstream):
    repo = unique("lying")
    img, other = make_image(1), make_image(1)
    bad_upstream.put_manifest(repo, img.digest, other.manifest, OCI_MANIFEST)  # serves `other` as img.digest
    srv = make_server(cache_config(rule_toml("bad", bad_upstream.url)))
    for attempt in (1, 2):
        r = get_manifest(srv, f"bad/{repo}", img.digest)
        assert r.status_code == 502, (r.status_code, r.text)
        message = error_message(r)
        assert bad_upstream.url in message and img.digest in message, message
        assert manifest_requests(bad_upstream, repo) == attempt, "the bad manifest was cached"
    # The body it sent was not kept under its own digest either: asking for that digest goes upstream.
    r = get_manifest(srv, f"bad/{repo}", other.digest)
    assert r.status_code == 200 and r.content == other.manifest, (r.status_code, r.text)
    assert manifest_requests(bad_upstream, repo) == 3


# == 8. an upstream that needs credentials ==================================================================


def test_authenticated_moorage_upstream(make_server: MakeServer, skopeo: Skopeo, tmp_path: Path):
    up = make_server(auth_config())
    token = login_password(up)
    repo = "team/secure"
    img: LayoutImage = write_single_image(tmp_path / "src", "v1", n_layers=2)
    skopeo_push(skopeo, tmp_path / "src", "v1", f"{up.host}/{repo}:v1", creds=f"AWS:{token}")
    secrets = (
        f'[secrets.up]\naccess_key_id = "{ADMIN_KEY}"\nsecret_access_key = "{ADMIN_SECRET}"\n'
        f'[secrets.wrong]\naccess_key_id = "{ADMIN_KEY}"\nsecret_access_key = "not-the-secret"\n'
    )
    srv = make_server(
        cache_config(
            rule_toml("authed", up.url, credential="up"),
            rule_toml("anon", up.url),
            rule_toml("wrongkey", up.url, credential="wrong"),
            secrets=secrets,
        )
    )
    assert inspect_raw(skopeo, f"docker://{srv.host}/authed/{repo}:v1") == img.manifest
    skopeo_pull(skopeo, f"{srv.host}/authed/{repo}:v1", tmp_path / "dst", "v1")
    assert_layout_matches(tmp_path / "dst", "v1", img.digest, img.blobs)

    for prefix in ("anon", "wrongkey"):
        r = get_manifest(srv, f"{prefix}/{repo}", "v1")
        assert r.status_code == 403, (prefix, r.status_code, r.text)
        assert error_codes(r) == ["DENIED"], r.text
        assert "authentication to the upstream registry failed" in error_message(r).lower(), r.text
        assert up.url in error_message(r), r.text
        pulled = skopeo(
            "copy", "--src-tls-verify=false", f"docker://{srv.host}/{prefix}/{repo}:v1", f"oci:{tmp_path / prefix}:v1",
            check=False,
        )  # fmt: skip
        assert pulled.returncode != 0
        assert "denied" in pulled.stderr.lower() and "upstream" in pulled.stderr.lower(), pulled.stderr


# == 9. the rules API =======================================================================================


def _code(e: pytest.ExceptionInfo[ClientError]) -> str:
    return e.value.response["Error"]["Code"]


def test_rules_api(make_server: MakeServer, upstream: DistributionRegistry):
    secrets = '[secrets.up]\nusername = "someone"\npassword = "pw"\n'
    srv = make_server(auth_config() + '[pull_through]\nallowed_upstreams = ["127.0.0.1"]\n' + secrets)
    ecr = ecr_client(srv)

    created = ecr.create_pull_through_cache_rule(ecrRepositoryPrefix="api", upstreamRegistryUrl=upstream.url)
    assert created["ecrRepositoryPrefix"] == "api" and created["upstreamRegistryUrl"] == upstream.url
    assert created["registryId"] == "000000000000" and created["upstreamRepositoryPrefix"] == "ROOT"
    assert "credentialArn" not in created
    rules = ecr.describe_pull_through_cache_rules()["pullThroughCacheRules"]
    assert [(r["ecrRepositoryPrefix"], r["upstreamRegistryUrl"]) for r in rules] == [("api", upstream.url)]
    assert (
        ecr.describe_pull_through_cache_rules(ecrRepositoryPrefixes=["api"])["pullThroughCacheRules"][0][
            "upstreamRegistryUrl"
        ]
        == upstream.url
    )

    with pytest.raises(ClientError) as e:
        ecr.create_pull_through_cache_rule(ecrRepositoryPrefix="api", upstreamRegistryUrl=upstream.url)
    assert _code(e) == "PullThroughCacheRuleAlreadyExistsException"
    with pytest.raises(ClientError) as e:
        ecr.create_pull_through_cache_rule(
            ecrRepositoryPrefix="ROOT", upstreamRegistryUrl=upstream.url, upstreamRepositoryPrefix="team"
        )
    assert _code(e) == "InvalidParameterException"
    with pytest.raises(ClientError) as e:
        ecr.create_pull_through_cache_rule(
            ecrRepositoryPrefix="withsecret", upstreamRegistryUrl=upstream.url, credentialArn=MISSING_SECRET_ARN
        )
    assert _code(e) == "SecretNotFoundException"
    with pytest.raises(ClientError) as e:
        ecr.update_pull_through_cache_rule(ecrRepositoryPrefix="api", credentialArn=MISSING_SECRET_ARN)
    assert _code(e) == "SecretNotFoundException"

    # Update changes the credential only.
    updated = ecr.update_pull_through_cache_rule(ecrRepositoryPrefix="api", credentialArn=UP_SECRET_ARN)
    assert updated["ecrRepositoryPrefix"] == "api" and updated["credentialArn"] == UP_SECRET_ARN
    (rule,) = ecr.describe_pull_through_cache_rules(ecrRepositoryPrefixes=["api"])["pullThroughCacheRules"]
    assert rule["credentialArn"] == UP_SECRET_ARN and rule["upstreamRegistryUrl"] == upstream.url
    assert rule["upstreamRepositoryPrefix"] == "ROOT" and rule["createdAt"] == created["createdAt"]

    # Validate: a live upstream, and a port nobody listens on.
    valid = ecr.validate_pull_through_cache_rule(ecrRepositoryPrefix="api")
    assert valid["isValid"] is True and valid["upstreamRegistryUrl"] == upstream.url, valid
    dead_url = f"http://127.0.0.1:{free_port()}"
    ecr.create_pull_through_cache_rule(ecrRepositoryPrefix="dead", upstreamRegistryUrl=dead_url)
    invalid = ecr.validate_pull_through_cache_rule(ecrRepositoryPrefix="dead")
    assert invalid["isValid"] is False and invalid.get("failure"), invalid

    # At most max_rules (10).
    for i in range(8):
        ecr.create_pull_through_cache_rule(ecrRepositoryPrefix=f"filler{i}", upstreamRegistryUrl=dead_url)
    assert len(ecr.describe_pull_through_cache_rules()["pullThroughCacheRules"]) == 10
    with pytest.raises(ClientError) as e:
        ecr.create_pull_through_cache_rule(ecrRepositoryPrefix="eleventh", upstreamRegistryUrl=upstream.url)
    assert _code(e) == "LimitExceededException"
    for i in range(8):
        ecr.delete_pull_through_cache_rule(ecrRepositoryPrefix=f"filler{i}")

    # Deleting a rule keeps the cache repositories it created, and their cached images.
    repo = unique("kept")
    img = make_image(2)
    push_image(upstream.url, repo, "v1", img.manifest, OCI_MANIFEST, img.blobs)
    never = make_image(1)
    push_image(upstream.url, repo, "v2", never.manifest, OCI_MANIFEST, never.blobs)  # never pulled through
    auth = ("AWS", login_password(srv))
    assert_pulls(srv, f"api/{repo}", "v1", img, auth=auth)
    deleted = ecr.delete_pull_through_cache_rule(ecrRepositoryPrefix="api")
    assert deleted["ecrRepositoryPrefix"] == "api" and deleted["upstreamRegistryUrl"] == upstream.url
    assert [r["ecrRepositoryPrefix"] for r in ecr.describe_pull_through_cache_rules()["pullThroughCacheRules"]] == [
        "dead"
    ]
    with pytest.raises(ClientError) as e:
        ecr.describe_pull_through_cache_rules(ecrRepositoryPrefixes=["api"])
    assert _code(e) == "PullThroughCacheRuleNotFoundException"
    names = [r["repositoryName"] for r in ecr.describe_repositories()["repositories"]]
    assert f"api/{repo}" in names
    requests_before = len(upstream.accesses(repo, agent=MOORAGE_USER_AGENT))
    assert_pulls(srv, f"api/{repo}", "v1", img, auth=auth)
    r = get_manifest(srv, f"api/{repo}", "v2", auth=auth)
    assert r.status_code == 404, "a repository of a deleted rule still pulls through"
    assert len(upstream.accesses(repo, agent=MOORAGE_USER_AGENT)) == requests_before


def test_most_specific_prefix_and_upstream_prefix(
    make_server: MakeServer, upstream: DistributionRegistry, own_upstream: Callable[..., DistributionRegistry]
):
    other = own_upstream()
    shallow, deep, mapped = make_image(1), make_image(1), make_image(1)
    push_image(upstream.url, "deep/app", "v1", shallow.manifest, OCI_MANIFEST, shallow.blobs)
    push_image(other.url, "app", "v1", deep.manifest, OCI_MANIFEST, deep.blobs)
    push_image(upstream.url, "team/x", "v1", mapped.manifest, OCI_MANIFEST, mapped.blobs)
    # `nest` from the configuration, `nest/deep` and `my-app` through the API.
    srv = make_server(cache_config(rule_toml("nest", upstream.url)))
    ecr = ecr_client(srv)
    ecr.create_pull_through_cache_rule(ecrRepositoryPrefix="nest/deep", upstreamRegistryUrl=other.url)
    ecr.create_pull_through_cache_rule(
        ecrRepositoryPrefix="my-app", upstreamRegistryUrl=upstream.url, upstreamRepositoryPrefix="team"
    )
    prefixes = {r["ecrRepositoryPrefix"] for r in ecr.describe_pull_through_cache_rules()["pullThroughCacheRules"]}
    assert prefixes == {"nest", "nest/deep", "my-app"}

    assert_pulls(srv, "nest/deep/app", "v1", deep)  # `nest/deep` wins over `nest`: other's `app`
    assert manifest_requests(other, "app") == 1
    assert manifest_requests(upstream, "deep/app") == 0
    assert_pulls(srv, "my-app/x", "v1", mapped)  # `my-app/x` is upstream `team/x`
    assert manifest_requests(upstream, "team/x") == 1
    assert upstream.count(r"^GET /v2/x/", agent=MOORAGE_USER_AGENT) == 0


# == 10. pushing into a cache repository; everything else ===================================================


def test_push_into_cache_repository_with_upstream_stopped(
    make_server: MakeServer, own_upstream: Callable[..., DistributionRegistry], skopeo: Skopeo, tmp_path: Path
):
    up = own_upstream(start=False)  # down for the whole test
    srv = make_server(cache_config(rule_toml("seedp", up.url)))

    # Outside every prefix: a normal registry that never needs the upstream.
    plain: LayoutImage = write_single_image(tmp_path / "plain", "v1", n_layers=1)
    skopeo_push(skopeo, tmp_path / "plain", "v1", f"{srv.host}/plain/app:v1")
    skopeo_pull(skopeo, f"{srv.host}/plain/app:v1", tmp_path / "plain-back", "v1")
    assert_layout_matches(tmp_path / "plain-back", "v1", plain.digest, plain.blobs)
    r = get_manifest(srv, "plain/app", "nope")
    assert r.status_code == 404 and error_codes(r) == ["MANIFEST_UNKNOWN"], (r.status_code, r.text)
    r = get_manifest(srv, "plain/never", "v1")
    assert r.status_code == 404 and up.url not in r.text, (r.status_code, r.text)

    # A push into a cache repository works without its upstream (the blob existence checks answer 404).
    seeded: LayoutImage = write_single_image(tmp_path / "seed", "v1", n_layers=2)
    layer = next(d for d in seeded.blobs if d != seeded.digest)
    h = requests.head(f"{srv.url}/v2/seedp/team/seed/blobs/{layer}", timeout=10)
    assert h.status_code == 404, f"HEAD of a blob not yet pushed, upstream down: {h.status_code} (expected 404)"
    skopeo_push(skopeo, tmp_path / "seed", "v1", f"{srv.host}/seedp/team/seed:v1")
    skopeo_pull(skopeo, f"{srv.host}/seedp/team/seed:v1", tmp_path / "back", "v1")
    assert_layout_matches(tmp_path / "back", "v1", seeded.digest, seeded.blobs)


def test_pushed_seed_is_replaced_by_upstream_after_interval(
    make_server: MakeServer, upstream: DistributionRegistry, skopeo: Skopeo, tmp_path: Path
):
    repo = unique("seed")
    interval = 2.0
    srv = make_server(
        cache_config(rule_toml("seedp", upstream.url), tag_refresh_interval=f"{interval}s", failure_retry_interval="1s")
    )
    seeded: LayoutImage = write_single_image(tmp_path / "seed", "v1", n_layers=2)
    skopeo_push(skopeo, tmp_path / "seed", "v1", f"{srv.host}/seedp/{repo}:v1")
    skopeo_pull(skopeo, f"{srv.host}/seedp/{repo}:v1", tmp_path / "back", "v1")
    assert_layout_matches(tmp_path / "back", "v1", seeded.digest, seeded.blobs)
    r = get_manifest(srv, f"seedp/{repo}", "v1")
    assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == seeded.digest

    pushed_upstream: LayoutImage = write_single_image(tmp_path / "upstream", "v1", n_layers=2)
    skopeo_push(skopeo, tmp_path / "upstream", "v1", f"{upstream.host}/{repo}:v1")
    past_refresh(interval)
    # The seed is due for its re-check: served once more while the check runs in the background, then replaced.

    def replaced() -> requests.Response | None:
        r = get_manifest(srv, f"seedp/{repo}", "v1")
        assert r.status_code == 200, (r.status_code, r.text)
        return r if r.headers.get("Docker-Content-Digest") == pushed_upstream.digest else None

    wait_for(replaced, 10, f"the upstream's image to replace the seeded {seeded.digest}", interval=0.1)
    skopeo_pull(skopeo, f"{srv.host}/seedp/{repo}:v1", tmp_path / "taken-over", "v1")
    assert_layout_matches(tmp_path / "taken-over", "v1", pushed_upstream.digest, pushed_upstream.blobs)
    by_digest = get_manifest(srv, f"seedp/{repo}", seeded.digest)  # the seeded image stays by digest
    assert by_digest.status_code == 200 and by_digest.content == seeded.manifest


# == 11. permissions ========================================================================================

PULL_ONLY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": [
                    "ecr:BatchGetImage",
                    "ecr:GetDownloadUrlForLayer",
                    "ecr:BatchCheckLayerAvailability",
                    "ecr:GetAuthorizationToken",
                ],
                "Resource": "*",
            }
        ],
    }
)


def test_first_pull_needs_import_permission(make_server: MakeServer, upstream: DistributionRegistry):
    repo = unique("perm")
    img, later = make_image(2), make_image(1)
    push_image(upstream.url, repo, "v1", img.manifest, OCI_MANIFEST, img.blobs)
    push_image(upstream.url, repo, "v2", later.manifest, OCI_MANIFEST, later.blobs)
    key, secret = "AKIAPULLONLYPRINCIPAL", "pull-only-secret-0123456789abcdef0123"
    srv = make_server(
        cache_config(rule_toml("hub", upstream.url), auth=auth_config(principal_toml("puller", key, secret, PULL_ONLY)))
    )
    puller = ("AWS", login_password(srv, key, secret))
    admin = ("AWS", login_password(srv))

    r = get_manifest(srv, f"hub/{repo}", "v1", auth=puller)
    assert r.status_code == 403 and error_codes(r) == ["DENIED"], (r.status_code, r.text)
    message = error_message(r)
    assert "ecr:BatchImportUpstreamImage" in message, message  # checked first, before ecr:CreateRepository
    assert manifest_requests(upstream, repo) == 0, "a denied pull reached the upstream"
    catalog = requests.get(f"{srv.url}/v2/_catalog", auth=admin, timeout=30).json()["repositories"]
    assert f"hub/{repo}" not in catalog

    assert_pulls(srv, f"hub/{repo}", "v1", img, auth=admin)  # the admin may import
    assert_pulls(srv, f"hub/{repo}", "v1", img, auth=puller)  # cached now: pull is enough

    # The repository exists now, but importing another tag still needs ecr:BatchImportUpstreamImage.
    r = get_manifest(srv, f"hub/{repo}", "v2", auth=puller)
    assert r.status_code == 403 and "ecr:BatchImportUpstreamImage" in error_message(r), (r.status_code, r.text)
    assert manifest_requests(upstream, repo) == 1


# == 12. containerd mirrors (?ns=) ==========================================================================


def test_containerd_namespace_parameter(make_server: MakeServer, upstream: DistributionRegistry):
    repo = unique("ns")
    img = make_image(2)
    push_image(upstream.url, repo, "v1", img.manifest, OCI_MANIFEST, img.blobs)
    srv = make_server(cache_config(rule_toml("nsp", upstream.url)))
    ns = {"ns": upstream.host}

    r = get_manifest(srv, repo, "v1", params=ns)
    assert r.status_code == 200, (r.status_code, r.text)
    assert r.content == img.manifest and r.headers["Docker-Content-Digest"] == img.digest
    for blob in img.blobs:
        b = get_blob(srv, repo, digest_of(blob), params=ns)
        assert b.status_code == 200 and b.content == blob
    catalog = requests.get(f"{srv.url}/v2/_catalog", timeout=30).json()["repositories"]
    assert catalog == [f"nsp/{repo}"]
    assert_pulls(srv, f"nsp/{repo}", "v1", img)  # the same cache repository, without ?ns=
    assert manifest_requests(upstream, repo) == 1


# == 13. offline ============================================================================================


def test_offline_serves_cache_and_refuses_misses(make_server: MakeServer, upstream: DistributionRegistry):
    repo = unique("offline")
    img, uncached = make_image(2), make_image(1)
    push_image(upstream.url, repo, "v1", img.manifest, OCI_MANIFEST, img.blobs)
    push_image(upstream.url, repo, "v2", uncached.manifest, OCI_MANIFEST, uncached.blobs)
    srv = make_server(cache_config(rule_toml("hub", upstream.url), tag_refresh_interval=f"{REFRESH}s"))
    assert_pulls(srv, f"hub/{repo}", "v1", img)
    srv.stop()
    offline = cache_config(
        rule_toml("hub", upstream.url),
        tag_refresh_interval=f"{REFRESH}s",
        upstream_timeout=f"{UPSTREAM_TIMEOUT}s",
        offline=True,
    )
    srv.config_path.write_text(offline)
    srv.start()
    total = len(upstream.accesses(repo, agent=MOORAGE_USER_AGENT))

    past_refresh()  # the tag is due for a re-check, which offline mode must skip
    assert_pulls(srv, f"hub/{repo}", "v1", img)
    assert_pulls(srv, f"hub/{repo}", img.digest, img)
    for ref in ("v2", uncached.digest):
        started = time.monotonic()
        r = get_manifest(srv, f"hub/{repo}", ref, timeout=10)
        assert time.monotonic() - started < UPSTREAM_TIMEOUT  # refused without asking the upstream
        assert r.status_code == 404 and error_codes(r) == ["MANIFEST_UNKNOWN"], (r.status_code, r.text)
        assert "offline" in error_message(r), r.text
    b = get_blob(srv, f"hub/{repo}", digest_of(uncached.layers[0]), timeout=10)
    assert b.status_code == 404 and "offline" in error_message(b), (b.status_code, b.text)
    assert len(upstream.accesses(repo, agent=MOORAGE_USER_AGENT)) == total, "offline mode contacted the upstream"
