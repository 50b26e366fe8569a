"""Garbage collection and pull-through cache eviction acceptance tests.

A real server (and the `moorage gc` command on its live data dir) under real pushes, deletes and pulls over
HTTP. The expected state is computed from what the tests pushed and deleted, and compared with the files
under `<data_dir>/blobs` and with what the registry serves back, byte for byte. No mocks.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.helpers import hold_in_child, wait_for
from tests.oci import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    Client,
    Image,
    assert_pulls,
    canonical,
    descriptor,
    digest_of,
    error_codes,
    random_blob,
)
from tests.server import AUTH_OFF, REPO_ROOT, MoorageServer, ecr_client, moorage_cli
from tests.server import moorage_json as moorage
from tests.upstreams import MOORAGE_USER_AGENT, DistributionRegistry
from tests.upstreams import push_image as upstream_push

MakeServer = Callable[..., MoorageServer]
GRACE_1MS = '[gc]\ngrace_period = "1ms"\n'
MiB = 1024 * 1024


# -- helpers -----------------------------------------------------------------------------------------------


def image_with(layers: list[bytes]) -> Image:
    """An OCI image with exactly these layers and a fresh config (so every image has its own digest)."""
    config = canonical({"architecture": "amd64", "os": "linux", "nonce": os.urandom(8).hex()})
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER, layer) for layer in layers],
    }
    return Image(config, list(layers), json.dumps(doc).encode())


def blobs_of(*images: Image) -> dict[str, bytes]:
    return {digest_of(b): b for img in images for b in img.blobs}


def blob_files(srv: MoorageServer) -> set[str]:
    """The digests of the blob files on disk (<data_dir>/blobs/<alg>/<xx>/<hex>)."""
    root = srv.data_dir / "blobs"
    if not root.exists():
        return set()
    return {f"{p.parent.parent.name}:{p.name}" for p in root.glob("*/*/*") if p.is_file()}


def image_digests(ecr: Any, repo: str) -> set[str]:
    out: set[str] = set()
    for page in ecr.get_paginator("list_images").paginate(repositoryName=repo):
        out |= {i["imageDigest"] for i in page["imageIds"]}
    return out


# == 1. what `moorage gc` removes ============================================================================


def test_gc_removes_exactly_the_unreferenced_blobs(make_server: MakeServer):
    srv = make_server(AUTH_OFF + GRACE_1MS)
    ecr, client = ecr_client(srv), Client(srv.url)
    shared = random_blob(4096)
    a = image_with([shared, random_blob(3000)])  # deleted; its first layer lives on in d
    b = image_with([random_blob(2000), random_blob(2500)])  # deleted
    c = image_with([random_blob(1500)])
    d = image_with([shared, random_blob(1000)])  # another repository
    e = image_with([random_blob(1200)])  # its tag is deleted, the image (untagged) stays
    for repo, tag, img in (("gc/one", "a", a), ("gc/one", "b", b), ("gc/one", "c", c), ("gc/two", "d", d)):
        client.push_image(repo, tag, img)
    client.push_image("gc/one", "e", e)
    everything = blobs_of(a, b, c, d, e)
    assert blob_files(srv) == set(everything)

    deleted = ecr.batch_delete_image(repositoryName="gc/one", imageIds=[{"imageTag": "a"}])
    assert [i["imageDigest"] for i in deleted["imageIds"]] == [a.digest] and deleted["failures"] == []
    assert client.delete(f"/v2/gc/one/manifests/{b.digest}").status_code == 202
    assert client.delete("/v2/gc/one/manifests/e").status_code == 202  # a tag delete leaves the image
    remaining = blobs_of(c, d, e)
    garbage = set(everything) - set(remaining)
    assert len(garbage) == 5  # a's config and own layer, b's config and two layers

    dry = moorage(srv, "gc", "--dry-run")
    assert dry["dryRun"] is True and dry["cacheImagesEvicted"] == 0
    assert dry["blobsRemoved"] == len(garbage), dry
    assert dry["bytesFreed"] == sum(len(everything[g]) for g in garbage), dry
    assert blob_files(srv) == set(everything), "a dry run removed files"

    report = moorage(srv, "gc")
    assert report["dryRun"] is False
    assert report["blobsRemoved"] == len(garbage) and report["bytesFreed"] == dry["bytesFreed"], report
    assert blob_files(srv) == set(remaining), "the blobs on disk are not exactly the referenced ones"
    assert_pulls(client, "gc/one", "c", c)
    assert_pulls(client, "gc/two", "d", d)
    assert_pulls(client, "gc/one", e.digest, e)
    # The server notices the other process: collected blobs are no longer served (within ~2 s).
    for digest in garbage:
        wait_for(lambda d=digest: client.head(f"/v2/gc/one/blobs/{d}").status_code == 404, 2.5, f"{digest} gone")
    again = moorage(srv, "gc")
    assert again["blobsRemoved"] == 0 and again["bytesFreed"] == 0, again

    # Pushing a collected layer again brings it back like any new blob.
    client.push_image("gc/one", "a", a)
    assert_pulls(client, "gc/one", "a", a)
    assert blob_files(srv) == set(blobs_of(a, c, d, e))


def test_grace_period_protects_recent_unreferenced_blobs(make_server: MakeServer, tmp_path: Path):
    srv = make_server()  # the default grace period: 1h
    client = Client(srv.url)
    orphan = random_blob(5000)  # uploaded, no manifest yet (a push in progress)
    digest = client.push_blob("grace/repo", orphan)
    kept = image_with([random_blob(700)])
    client.push_image("grace/repo", "kept", kept)
    dropped = image_with([random_blob(800)])
    client.push_image("grace/repo", "dropped", dropped)
    assert client.delete(f"/v2/grace/repo/manifests/{dropped.digest}").status_code == 202

    report = moorage(srv, "gc")
    assert report["blobsRemoved"] == 0, "a blob younger than the grace period was collected"
    assert blob_files(srv) == {digest, *blobs_of(kept, dropped)}
    r = client.get(f"/v2/grace/repo/blobs/{digest}")
    assert r.status_code == 200 and r.content == orphan

    short = tmp_path / "grace-1ms.toml"
    short.write_text(AUTH_OFF + GRACE_1MS)
    assert moorage(srv, "gc", "--dry-run", config=short)["blobsRemoved"] == 3
    report = moorage(srv, "gc", config=short)
    assert report["blobsRemoved"] == 3 and report["bytesFreed"] == len(orphan) + sum(map(len, dropped.blobs))
    assert blob_files(srv) == set(blobs_of(kept))
    wait_for(lambda: client.head(f"/v2/grace/repo/blobs/{digest}").status_code == 404, 2.5, f"{digest} gone")
    assert_pulls(client, "grace/repo", "kept", kept)


def test_gc_command_leaves_in_flight_uploads_alone(make_server: MakeServer):
    """`moorage gc` on a live data dir must not touch the server's uploads in progress: a monolithic upload
    being streamed, and a chunked upload session between two PATCHes."""
    srv = make_server(AUTH_OFF + GRACE_1MS)
    client = Client(srv.url)
    streamed, chunked = random_blob(256 * 1024), random_blob(200 * 1024)
    half_sent, resume = threading.Event(), threading.Event()
    result: dict[str, Any] = {}

    def body() -> Iterator[bytes]:
        yield streamed[: 128 * 1024]
        half_sent.set()
        resume.wait(30)
        yield streamed[128 * 1024 :]

    def upload() -> None:
        try:
            result["response"] = requests.post(
                f"{srv.url}/v2/inflight/repo/blobs/uploads/",
                params={"digest": digest_of(streamed)},
                data=body(),
                headers={"Content-Type": "application/octet-stream"},
                timeout=60,
            )
        except Exception as e:  # reported by the assertion below
            result["error"] = e

    thread = threading.Thread(target=upload)
    thread.start()
    try:
        assert half_sent.wait(10)
        # The server is streaming the body into a private file under uploads/.
        wait_for(lambda: any((srv.data_dir / "uploads").glob(".ingest-*")), 5, "the upload's spool file")
        r = client.post("/v2/inflight/repo/blobs/uploads/")
        assert r.status_code == 202, (r.status_code, r.text)
        location = r.headers["Location"]
        r = client.patch(
            location,
            data=chunked[:100_000],
            headers={"Content-Type": "application/octet-stream", "Content-Range": "0-99999"},
        )
        assert r.status_code == 202, (r.status_code, r.text)
        location = r.headers["Location"]

        report = moorage(srv, "gc")
        assert report["blobsRemoved"] == 0 and report["uploadsPurged"] == 0, report
    finally:
        resume.set()
        thread.join(30)
    assert "error" not in result, result
    r = result["response"]
    assert r.status_code == 201, f"an upload in flight while `moorage gc` ran: {r.status_code} {r.text}"
    got = client.get(f"/v2/inflight/repo/blobs/{digest_of(streamed)}")
    assert got.status_code == 200 and got.content == streamed

    sep = "&" if "?" in location else "?"
    r = client.put(
        f"{location}{sep}digest={digest_of(chunked)}",
        data=chunked[100_000:],
        headers={"Content-Type": "application/octet-stream", "Content-Range": f"100000-{len(chunked) - 1}"},
    )
    assert r.status_code == 201, f"a chunked session lost its data to `moorage gc`: {r.status_code} {r.text}"
    got = client.get(f"/v2/inflight/repo/blobs/{digest_of(chunked)}")
    assert got.status_code == 200 and got.content == chunked


# == 2. GC racing pushes and deletes ==========================================================================

RETRYABLE = {"MANIFEST_BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID"}


@dataclass
class Pushed:
    repo: str
    tag: str
    image: Image


@dataclass
class Stress:
    """Four pushers and a deleter against one server, with GC running (in the server or as a CLI)."""

    srv: MoorageServer
    pushers: int = 4
    images_each: int = 15
    monolithic: bool = True  # which upload flows the pushers use (at random when both)
    sessions: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)
    pushed: list[Pushed] = field(default_factory=list)  # manifest PUT answered 201
    deleted: set[str] = field(default_factory=set)  # digests
    pool: list[bytes] = field(default_factory=list)  # layers of deleted images, to push again
    codes: Counter[str] = field(default_factory=Counter)  # 4xx codes answered (and retried)
    gave_up: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def push(self, client: Client, repo: str, tag: str, image: Image) -> bool:
        """As a client does: skip blobs the registry says it has, upload the rest, PUT the manifest; on a clean
        4xx (GC took a blob in between) upload every blob again and retry."""
        for attempt in range(25):
            ok = True
            for blob in image.blobs:
                d = digest_of(blob)
                if attempt == 0 and client.head(f"/v2/{repo}/blobs/{d}").status_code == 200:
                    continue
                r = self.upload(client, repo, blob)
                if r.status_code != 201:
                    self._note(r)
                    ok = False
                    break
            if not ok:
                continue
            time.sleep(random.uniform(0, 0.03))  # the client's gap between its last blob and the manifest
            r = client.put(
                f"/v2/{repo}/manifests/{tag}", data=image.manifest, headers={"Content-Type": image.media_type}
            )
            if r.status_code == 201:
                assert r.headers["Docker-Content-Digest"] == image.digest
                return True
            self._note(r)
        return False

    def upload(self, client: Client, repo: str, blob: bytes) -> requests.Response:
        """One blob upload, as clients do it: monolithic (POST with the body), or a session (POST, PATCH, PUT)."""
        d = digest_of(blob)
        octets = {"Content-Type": "application/octet-stream"}
        if self.monolithic and (not self.sessions or random.random() < 0.5):
            return client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": d}, data=blob, headers=octets)
        r = client.post(f"/v2/{repo}/blobs/uploads/")
        if r.status_code != 202:
            return r
        half = len(blob) // 2
        r = client.patch(r.headers["Location"], data=blob[:half], headers={**octets, "Content-Range": f"0-{half - 1}"})
        if r.status_code != 202:
            return r
        location = r.headers["Location"]
        return client.put(
            location + ("&" if "?" in location else "?") + f"digest={d}", data=blob[half:], headers=octets
        )

    def _note(self, r: Any) -> None:
        assert 400 <= r.status_code < 500, (r.status_code, r.text)
        codes = error_codes(r)  # a clean OCI error body
        with self.lock:
            self.codes.update(codes)

    def pusher(self, i: int) -> None:
        client = Client(self.srv.url)
        repo = f"stress/r{i}"
        for n in range(self.images_each):
            layers = [random_blob(random.randint(1000, 6000))]
            with self.lock:
                if self.pushed and n % 3 == 0:
                    layers.append(random.choice(self.pushed).image.layers[0])  # shared with a live image
                elif self.pool:  # layers of deleted images: GC may be collecting them right now
                    layers += random.sample(self.pool, min(2, len(self.pool)))
            image = image_with(layers)
            tag = f"i{n}"
            if self.push(client, repo, tag, image):
                with self.lock:
                    self.pushed.append(Pushed(repo, tag, image))
            else:
                with self.lock:
                    self.gave_up.append(f"{repo}:{tag}")
            time.sleep(0.1)

    def deleter(self) -> None:
        client = Client(self.srv.url)
        while not self.done.is_set():
            time.sleep(0.15)
            with self.lock:
                older = [p for p in self.pushed[:-6] if p.image.digest not in self.deleted]
                victim = random.choice(older) if older else None
                if victim is not None:
                    self.deleted.add(victim.image.digest)
            if victim is None:
                continue
            r = client.delete(f"/v2/{victim.repo}/manifests/{victim.image.digest}")
            assert r.status_code == 202, (r.status_code, r.text)
            with self.lock:
                self.pool.extend(victim.image.layers)

    def run(self, gc: Callable[[], None] | None = None) -> None:
        with ThreadPoolExecutor(self.pushers + 2) as pool:
            deleter = pool.submit(self.deleter)
            collector = pool.submit(gc) if gc else None
            pushers = [pool.submit(self.pusher, i) for i in range(self.pushers)]
            try:
                for f in pushers:
                    f.result(timeout=60)
            finally:
                self.done.set()
            deleter.result(timeout=30)
            if collector is not None:
                collector.result(timeout=60)

    def check(self) -> None:
        """Every pushed, undeleted image pulls back byte-exact; nothing else is listed; after a final GC the
        blob files are exactly the blobs those images reference."""
        total = self.pushers * self.images_each
        assert not self.gave_up, f"pushes that never succeeded: {self.gave_up} (codes {self.codes})"
        assert len(self.pushed) == total
        assert set(self.codes) <= RETRYABLE, f"unexpected 4xx codes: {self.codes}"
        assert self.deleted, "the deleter never ran"
        live = [p for p in self.pushed if p.image.digest not in self.deleted]
        client, ecr = Client(self.srv.url), ecr_client(self.srv)
        for repo in {p.repo for p in self.pushed}:
            assert image_digests(ecr, repo) == {p.image.digest for p in live if p.repo == repo}, repo
        for p in live:
            assert_pulls(client, p.repo, p.tag, p.image)
        moorage(self.srv, "gc")
        assert blob_files(self.srv) == set(blobs_of(*(p.image for p in live)))
        for p in live:
            assert_pulls(client, p.repo, p.tag, p.image)


def test_online_gc_under_concurrent_pushes_and_deletes(make_server: MakeServer):
    srv = make_server(AUTH_OFF + '[gc]\ninterval = "200ms"\ngrace_period = "1ms"\n[log]\nlevel = "info"\n')
    stress = Stress(srv)
    started = time.monotonic()
    stress.run()
    stress.check()
    collected = len(re.findall(r"gc: removed sha256:", srv.log()))
    assert collected > 0, "the online GC never removed anything while the pushes ran"
    assert time.monotonic() - started < 60
    print(f"online GC: {collected} blobs collected, retried codes {dict(stress.codes)}")


def test_gc_command_concurrent_with_pushes(make_server: MakeServer):
    srv = make_server(AUTH_OFF + GRACE_1MS)  # the server's own GC waits an hour; the CLI runs meanwhile
    stress = Stress(srv)
    reports: list[dict[str, Any]] = []

    def gc_loop() -> None:
        while not stress.done.is_set():
            reports.append(moorage(srv, "gc"))

    started = time.monotonic()
    stress.run(gc_loop)
    stress.check()
    assert len(reports) >= 2 and sum(r["blobsRemoved"] for r in reports) > 0, reports
    assert time.monotonic() - started < 60
    print(f"{len(reports)} gc runs, retried codes {dict(stress.codes)}")


# == 3. pull-through cache eviction ==========================================================================


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DistributionRegistry]:
    reg = DistributionRegistry(tmp_path_factory.mktemp("gc-upstream")).start()
    yield reg
    reg.stop()


def test_cache_eviction_removes_the_least_recently_pulled_image(
    make_server: MakeServer, upstream: DistributionRegistry
):
    base = random_blob(64 * 1024)  # shared by all three images
    images = [image_with([base, random_blob(MiB)]) for _ in range(3)]
    per_image = len(images[0].config) + MiB
    bound = len(base) + 2 * per_image + 256 * 1024  # room for about two of them
    rule = f'[[pull_through.rules]]\necr_repository_prefix = "hub"\nupstream_registry_url = "{upstream.url}"\n'
    srv = make_server(
        AUTH_OFF + f'[pull_through]\nmax_cache_bytes = {bound}\nallowed_upstreams = ["127.0.0.1"]\n' + rule + GRACE_1MS
    )
    ecr, client = ecr_client(srv), Client(srv.url)
    up_repo = f"library/evict-{os.urandom(3).hex()}"
    for n, image in enumerate(images, 1):
        upstream_push(upstream.url, up_repo, f"v{n}", image.manifest, image.media_type, image.blobs)
    repo = f"hub/{up_repo}"

    for n, image in enumerate(images, 1):  # v1, v2, v3, then v1 again: v2 is the least recently pulled
        assert_pulls(client, repo, f"v{n}", image)
        time.sleep(0.05)
    assert_pulls(client, repo, "v1", images[0])
    wait_for(lambda: blob_files(srv) == set(blobs_of(*images)), 5, "every blob cached")

    def pull_times() -> dict[str, float]:
        details = ecr.describe_images(repositoryName=repo)["imageDetails"]
        return {d["imageDigest"]: d["lastRecordedPullTime"].timestamp() for d in details if "lastRecordedPullTime" in d}

    # Pull times reach the database every few seconds; `moorage gc` reads them from there.
    wait_for(lambda: len(pull_times()) == 3, 10, "the pull times to be recorded")
    times = pull_times()
    assert times[images[0].digest] > times[images[2].digest] > times[images[1].digest]

    dry = moorage(srv, "gc", "--dry-run")
    assert dry["cacheImagesEvicted"] == 1 and dry["blobsRemoved"] == 0  # says what would go, removes nothing
    assert image_digests(ecr, repo) == {img.digest for img in images}

    upstream_before = upstream.count(re.escape(up_repo), agent=MOORAGE_USER_AGENT)
    report = moorage(srv, "gc")
    assert report["cacheImagesEvicted"] == 1, report
    assert report["blobsRemoved"] == 2 and report["bytesFreed"] == per_image, report
    assert image_digests(ecr, repo) == {images[0].digest, images[2].digest}
    assert blob_files(srv) == set(blobs_of(images[0], images[2])), "a blob a remaining image uses was removed"
    for n in (1, 3):  # served from the cache: the upstream is not asked
        assert_pulls(client, repo, f"v{n}", images[n - 1])
    assert upstream.count(re.escape(up_repo), agent=MOORAGE_USER_AGENT) == upstream_before

    # Within the bound now: another run evicts nothing. The evicted image comes back from upstream on demand.
    assert moorage(srv, "gc")["cacheImagesEvicted"] == 0
    assert_pulls(client, repo, "v2", images[1])
    assert image_digests(ecr, repo) == {img.digest for img in images}


@pytest.mark.parametrize(
    ("command", "lock"), [(["gc"], "job gc"), (["lifecycle", "run"], "job lifecycle")], ids=["gc", "lifecycle"]
)
def test_the_commands_wait_for_a_scheduled_run_in_progress(
    make_server: MakeServer, command: list[str], lock: str
) -> None:
    """`moorage gc` and `moorage lifecycle run` take the lock a server's scheduled run holds (on any replica):
    while one runs, the command says it waits, and runs when the lock is free. A dry run doesn't wait."""
    srv = make_server(AUTH_OFF)
    holder = hold_in_child(srv.data_dir / "moorage.locks", lock)
    try:
        dry = moorage_cli(*command, "--dry-run", "--data-dir", srv.data_dir, timeout=60)
        assert dry.returncode == 0 and "waiting" not in dry.stderr, dry.stderr
        proc = subprocess.Popen(
            [sys.executable, "-m", "registry", *command, "--data-dir", str(srv.data_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
        )
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline()
            assert "waiting for the" in line, line
            time.sleep(0.5)
            assert proc.poll() is None, "the command ran beside the scheduled run"
            holder.kill()
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        json.loads(out)
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
