"""A full disk, for real: the data dir is a tmpfs of a few MiB, filled up while the server runs.

Writes fail in the protocol's own shape (OCI error JSON with 507, ECR's ServerException) saying the storage is
full; nothing of a failed write is kept (no spool file, no half chunk, no row, no database growth); `/readyz`
says not ready below `[storage] min_free_space`; what was stored before reads back byte-exact; SIGTERM still
stops the server cleanly (before, the failed last flush of pull times left the database open and the process
hung); and once space is freed everything works again, the interrupted upload resuming where it was.
Mounting needs root: without it the test skips (and fails when CI=true, so CI can't skip it silently).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import botocore.exceptions
import pytest
import requests

from tests.oci import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, canonical, descriptor, digest_of, random_blob
from tests.server import AUTH_OFF, ecr_client

DISK_MIB = 8
CONFIG = AUTH_OFF + '[storage]\nmin_free_space = "1MiB"\n[server]\ndrain_timeout = "5s"\n'


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A DISK_MIB tmpfs mounted for the test (unmounted after it, once its servers are stopped)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    why = None
    if os.geteuid() != 0:
        why = "mounting a tmpfs needs root"
    else:
        try:
            p = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={DISK_MIB}m,mode=0700", "tmpfs", str(mount)],
                capture_output=True,
                text=True,
                check=False,
            )
            if p.returncode:
                why = f"cannot mount a tmpfs: {p.stderr.strip() or p.returncode}"
        except OSError as e:  # no mount(8) at all
            why = f"cannot run mount: {e}"
    if why is not None:
        pytest.skip(why)  # a failure under CI=true, as every skip (conftest.py)
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


def _fill(disk: Path) -> Path:
    """Write a file until the filesystem refuses another byte."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 1 << 12, 1):
            block = b"\0" * size
            while True:
                try:
                    if os.write(fd, block) < size:
                        break
                except OSError as e:
                    assert e.errno == 28, e  # ENOSPC
                    break
    finally:
        os.close(fd)
    assert os.statvfs(disk).f_bavail == 0
    return filler


def _db_state(db: Path) -> tuple[int, dict[str, int], str]:
    """The database file's size, its row counts, and SQLite's integrity check (read-only, beside the server)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        counts = {
            t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("repositories", "manifests", "tags", "blobs", "repository_blobs", "uploads")
        }
        (check,) = conn.execute("PRAGMA integrity_check").fetchone()
    finally:
        conn.close()
    return db.stat().st_size, counts, check


def _big_manifest(config: bytes, layer: bytes, size: int) -> bytes:
    """A valid image manifest made large (`size` bytes of annotations): too big for the WAL's spare room."""
    return canonical(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [descriptor(OCI_LAYER, layer)],
            "annotations": {"filler": "x" * size},
        }
    )


def _storage_full(r: requests.Response) -> None:
    assert r.status_code == 507, (r.status_code, r.text)
    (error,) = r.json()["errors"]
    assert error["code"] == "UNAVAILABLE" and "storage is full" in error["message"], error
    assert str(Path("/")) + "tmp" not in r.text  # the client is not told server paths


def test_a_full_disk_fails_writes_cleanly_keeps_data_and_still_shuts_down(small_disk: Path, make_server) -> None:
    srv = make_server(CONFIG, data_dir=small_disk, workers=1)
    s = requests.Session()
    repo = "team/app"
    assert s.get(f"{srv.url}/readyz", timeout=5).status_code == 200

    # Before the disk fills: an image with a 1 MiB layer, a chunked upload and an ECR layer upload started.
    config, layer = canonical({"architecture": "amd64", "os": "linux"}), random_blob(1 << 20)
    for blob in (config, layer):
        r = s.post(f"{srv.url}/v2/{repo}/blobs/uploads/", params={"digest": digest_of(blob)}, data=blob, timeout=10)
        assert r.status_code == 201, r.text
    manifest = _big_manifest(config, layer, 10)
    r = s.put(f"{srv.url}/v2/{repo}/manifests/1.0", data=manifest, headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 201, r.text
    r = s.post(f"{srv.url}/v2/{repo}/blobs/uploads/", timeout=10)
    assert r.status_code == 202, r.text
    chunked = srv.url + r.headers["Location"]
    ecr = ecr_client(srv)
    ecr_upload = ecr.initiate_layer_upload(repositoryName=repo)["uploadId"]

    filler = _fill(small_disk)
    db = small_disk / "moorage.db"
    size_before, counts_before, check = _db_state(db)
    assert check == "ok"

    # Not ready below min_free_space; still alive.
    r = s.get(f"{srv.url}/readyz", timeout=5)
    assert r.status_code == 503 and any("min_free_space" in p for p in r.json()["problems"]), r.text
    assert s.get(f"{srv.url}/healthz", timeout=5).status_code == 200

    # A monolithic blob upload: 507, nothing left behind.
    blob = random_blob(256 << 10)
    r = s.post(f"{srv.url}/v2/{repo}/blobs/uploads/", params={"digest": digest_of(blob)}, data=blob, timeout=10)
    _storage_full(r)
    assert not list((small_disk / "uploads").glob(".ingest-*"))
    assert s.head(f"{srv.url}/v2/{repo}/blobs/{digest_of(blob)}", timeout=5).status_code == 404

    # A chunk of an upload session: 507, and the session stays where it was (at 0).
    big_layer = random_blob(512 << 10)
    r = s.patch(
        chunked,
        data=big_layer,
        headers={"Content-Type": "application/octet-stream", "Content-Range": f"0-{len(big_layer) - 1}"},
        timeout=10,
    )
    _storage_full(r)
    upload_id = chunked.rsplit("/", 1)[1]
    assert (small_disk / "uploads" / upload_id).stat().st_size == 0

    # A manifest (a database write too big for the WAL's spare room): 507, and no trace of it.
    big = _big_manifest(config, layer, 1 << 20)
    r = s.put(f"{srv.url}/v2/{repo}/manifests/2.0", data=big, headers={"Content-Type": OCI_MANIFEST}, timeout=10)
    _storage_full(r)
    assert s.get(f"{srv.url}/v2/{repo}/manifests/2.0", timeout=5).status_code == 404

    # The ECR API: ServerException saying so.
    for call in (
        lambda: ecr.upload_layer_part(
            repositoryName=repo, uploadId=ecr_upload, partFirstByte=0, partLastByte=len(blob) - 1, layerPartBlob=blob
        ),
        lambda: ecr.put_image(repositoryName=repo, imageManifest=big.decode(), imageTag="3.0"),
    ):
        with pytest.raises(botocore.exceptions.ClientError) as exc:
            call()
        err = exc.value.response["Error"]
        assert err["Code"] == "ServerException" and "storage is full" in err["Message"], err

    # Failed transactions left the database as it was: same file, same rows, intact.
    assert _db_state(db) == (size_before, counts_before, "ok")

    # Nothing is wedged: with space back, the same process takes the write it refused; then the disk fills again.
    filler.unlink()
    r = s.put(f"{srv.url}/v2/{repo}/manifests/1.1", data=manifest, headers={"Content-Type": OCI_MANIFEST}, timeout=10)
    assert r.status_code == 201, r.text
    filler = _fill(small_disk)

    # What was stored before reads back byte-exact (and is pulled, so shutdown has pull times to write).
    assert s.get(f"{srv.url}/v2/{repo}/blobs/{digest_of(layer)}", timeout=10).content == layer
    r = s.get(f"{srv.url}/v2/{repo}/manifests/1.0", headers={"Accept": OCI_MANIFEST}, timeout=5)
    assert r.status_code == 200 and r.content == manifest

    log = srv.log()
    assert "unhandled error" not in log and "internal error" not in log, log[-3000:]

    # SIGTERM while the disk is still full: a clean stop.
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.wait(20) == 0, srv.log()[-3000:]
    assert '"msg": "stopped"' in srv.log()
    assert _db_state(db)[1:] == ({**counts_before, "tags": counts_before["tags"] + 1}, "ok")

    # Space freed: the same data dir serves again, and the interrupted upload resumes from where it was.
    filler.unlink()
    srv.start()
    assert s.get(f"{srv.url}/readyz", timeout=5).status_code == 200
    assert s.get(f"{srv.url}/v2/{repo}/blobs/{digest_of(layer)}", timeout=10).content == layer
    r = s.patch(
        chunked,
        data=big_layer,
        headers={"Content-Type": "application/octet-stream", "Content-Range": f"0-{len(big_layer) - 1}"},
        timeout=10,
    )
    assert r.status_code == 202, r.text
    r = s.put(srv.url + r.headers["Location"], params={"digest": digest_of(big_layer)}, timeout=10)
    assert r.status_code == 201, r.text
    assert s.get(f"{srv.url}/v2/{repo}/blobs/{digest_of(big_layer)}", timeout=10).content == big_layer
    r = s.put(f"{srv.url}/v2/{repo}/manifests/2.0", data=big, headers={"Content-Type": OCI_MANIFEST}, timeout=10)
    assert r.status_code == 201, r.text
    assert json.loads(s.get(f"{srv.url}/v2/{repo}/tags/list", timeout=5).content)["tags"] == ["1.0", "1.1", "2.0"]


def test_min_free_space_takes_sizes_and_percentages() -> None:
    from registry.config import ConfigError, StorageConfig, load

    gib = 2**30
    assert StorageConfig().free_space_floor(100 * gib) == gib  # the default, 1GiB
    for value, floor in (("500MB", 500 * 10**6), ("2 GiB", 2 * gib), ("4096", 4096), ("5%", 5 * gib), ("0", 0)):
        assert load(None, {"storage": {"min_free_space": value}}).storage.free_space_floor(100 * gib) == floor, value
    for bad in ("lots", "100%", "-1GiB", "1 parsec"):
        with pytest.raises(ConfigError, match=r"storage\.min_free_space"):
            load(None, {"storage": {"min_free_space": bad}})


def test_a_pull_through_blob_that_cannot_fit_is_refused_before_its_answer_starts(small_disk: Path, make_server) -> None:
    """A cache on a disk without room for a layer answers that layer's GET 507 at once (the blob's size is known
    before a byte is taken: never a 200 cut part way after the upstream sent what could not be kept), says so in
    its log without a traceback, keeps no scratch file, and serves the layer byte-exact once there is room."""
    from tests.test_pull_through import cache_config, rule_toml

    upstream = make_server(workers=1)
    layer, config = random_blob(3 << 20), canonical({"architecture": "amd64", "os": "linux"})
    for blob in (config, layer):
        r = requests.post(
            f"{upstream.url}/v2/lib/app/blobs/uploads/", params={"digest": digest_of(blob)}, data=blob, timeout=10
        )
        assert r.status_code == 201, r.text
    manifest = _big_manifest(config, layer, 10)
    r = requests.put(
        f"{upstream.url}/v2/lib/app/manifests/v1", data=manifest, headers={"Content-Type": OCI_MANIFEST}, timeout=10
    )
    assert r.status_code == 201, r.text
    cache = make_server(
        cache_config(rule_toml("hub", upstream.url)) + '[storage]\nmin_free_space = "0"\n',
        data_dir=small_disk,
        workers=1,
    )
    filler = _fill(small_disk)
    os.truncate(filler, filler.stat().st_size - (1 << 20))  # 1 MiB free: room for the manifest, not the layer
    r = requests.get(f"{cache.url}/v2/hub/lib/app/manifests/v1", headers={"Accept": OCI_MANIFEST}, timeout=30)
    assert r.status_code == 200 and r.content == manifest, (r.status_code, r.text[:300])

    layer_url = f"{cache.url}/v2/hub/lib/app/blobs/{digest_of(layer)}"
    r = requests.get(layer_url, timeout=30)
    _storage_full(r)
    assert not [p.name for p in (small_disk / "uploads").iterdir()], "a scratch file was left"
    log = cache.log_containing("pull-through download of " + digest_of(layer) + " failed")
    assert "Traceback" not in log, log[-3000:]

    filler.unlink()
    r = requests.get(layer_url, timeout=30)
    assert r.status_code == 200 and r.content == layer
