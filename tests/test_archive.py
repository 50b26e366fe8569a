"""Archived images as ECR serves them (issue 20, item 3).

- A pull of an archived image answers 404 (ECR: pulls of archived images fail with a 404), with a message that
  says it is archived and how to restore it; skopeo shows that message.
- A blob GET of a layer that only archived images use answers 404 BLOB_UNKNOWN saying so, and
  BatchCheckLayerAvailability reports it ARCHIVED; a layer an active image shares stays available.
- Pushing the same image again (skopeo, or PutImage) restores it to ACTIVE, as on ECR.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from tests.layouts import write_single_image
from tests.oci import ALL_MANIFEST_TYPES, OCI_MANIFEST, Client, error_codes, make_image
from tests.server import MoorageServer, ecr_client
from tests.skopeo import Skopeo, isolated_skopeo

AUTH = "[auth]\nenabled = false\n"


@pytest.fixture
def skopeo(tmp_path: Path) -> Skopeo:
    cfg = tmp_path / "skopeo"
    cfg.mkdir()
    return isolated_skopeo(cfg)


def _status(ecr, repo: str, digest: str) -> dict:
    (detail,) = ecr.describe_images(repositoryName=repo, imageIds=[{"imageDigest": digest}])["imageDetails"]
    return detail


def test_archived_image_pull_is_a_404_that_says_how_to_restore(make_server, skopeo: Skopeo, tmp_path: Path):
    srv: MoorageServer = make_server(AUTH)
    image = write_single_image(tmp_path / "layout", "v1", n_layers=2)
    repo = "team/archived"
    skopeo("copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'layout'}:v1", f"docker://{srv.host}/{repo}:v1")
    ecr = ecr_client(srv)
    ecr.update_image_storage_class(repositoryName=repo, imageId={"imageTag": "v1"}, targetStorageClass="ARCHIVE")

    for ref in ("v1", image.digest):
        r = requests.get(f"{srv.url}/v2/{repo}/manifests/{ref}", headers={"Accept": ALL_MANIFEST_TYPES}, timeout=30)
        assert r.status_code == 404 and error_codes(r) == ["MANIFEST_UNKNOWN"], (r.status_code, r.text)
        message = r.json()["errors"][0]["message"]
        assert "archived" in message and "update-image-storage-class" in message, message
        assert r.json()["errors"][0]["detail"]["storageClass"] == "ARCHIVE"
    head = requests.head(f"{srv.url}/v2/{repo}/manifests/v1", headers={"Accept": ALL_MANIFEST_TYPES}, timeout=30)
    assert head.status_code == 404

    pulled = skopeo(
        "copy", "--src-tls-verify=false", f"docker://{srv.host}/{repo}:v1", f"dir:{tmp_path / 'out'}", check=False
    )
    assert pulled.returncode != 0 and "archived" in pulled.stderr, pulled.stderr

    # Its layers are archived with it: 404 that says so, and ARCHIVED in BatchCheckLayerAvailability.
    layer_digests = [d["digest"] for d in json.loads(image.manifest)["layers"]]
    for digest in layer_digests:
        r = requests.get(f"{srv.url}/v2/{repo}/blobs/{digest}", timeout=30)
        assert r.status_code == 404 and error_codes(r) == ["BLOB_UNKNOWN"], (r.status_code, r.text)
        assert "archived" in r.json()["errors"][0]["message"]
    check = ecr.batch_check_layer_availability(repositoryName=repo, layerDigests=layer_digests)
    assert [layer["layerAvailability"] for layer in check["layers"]] == ["ARCHIVED", "ARCHIVED"], check

    # Pushing the same image again restores it, as on ECR.
    skopeo("copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'layout'}:v1", f"docker://{srv.host}/{repo}:v1")
    detail = _status(ecr, repo, image.digest)
    assert detail["imageStatus"] == "ACTIVE" and "lastActivatedAt" in detail, detail
    skopeo("copy", "--src-tls-verify=false", f"docker://{srv.host}/{repo}:v1", f"dir:{tmp_path / 'out'}")
    assert (tmp_path / "out" / "manifest.json").read_bytes() == image.manifest
    for digest in layer_digests:
        assert requests.get(f"{srv.url}/v2/{repo}/blobs/{digest}", timeout=30).status_code == 200
    check = ecr.batch_check_layer_availability(repositoryName=repo, layerDigests=layer_digests)
    assert [layer["layerAvailability"] for layer in check["layers"]] == ["AVAILABLE", "AVAILABLE"], check


def test_a_layer_an_active_image_shares_stays_available_and_put_image_restores(make_server):
    srv: MoorageServer = make_server(AUTH)
    client, ecr, repo = Client(srv.url), ecr_client(srv), "team/shared"
    old = make_image(2, 1000)
    client.push_image(repo, "old", old)
    # A second image that shares the first one's first layer.
    doc = json.loads(old.manifest)
    fresh = make_image(1, 1000)
    fresh_doc = json.loads(fresh.manifest)
    fresh_doc["layers"].append(doc["layers"][0])
    fresh_manifest = json.dumps(fresh_doc).encode()
    for blob in fresh.blobs:
        client.push_blob(repo, blob)
    client.push_manifest(repo, "fresh", fresh_manifest, OCI_MANIFEST)

    ecr.update_image_storage_class(repositoryName=repo, imageId={"imageTag": "old"}, targetStorageClass="ARCHIVE")
    shared, own = doc["layers"][0]["digest"], doc["layers"][1]["digest"]
    assert requests.get(f"{srv.url}/v2/{repo}/blobs/{shared}", timeout=30).content == old.layers[0]
    r = requests.get(f"{srv.url}/v2/{repo}/blobs/{own}", timeout=30)
    assert r.status_code == 404 and error_codes(r) == ["BLOB_UNKNOWN"], r.text
    check = ecr.batch_check_layer_availability(repositoryName=repo, layerDigests=[shared, own])
    assert {layer["layerDigest"]: layer["layerAvailability"] for layer in check["layers"]} == {
        shared: "AVAILABLE",
        own: "ARCHIVED",
    }

    # PutImage of the same manifest restores it (no ImageAlreadyExistsException: it was a change).
    ecr.put_image(repositoryName=repo, imageManifest=old.manifest.decode(), imageTag="old")
    assert _status(ecr, repo, old.digest)["imageStatus"] == "ACTIVE"
    assert requests.get(f"{srv.url}/v2/{repo}/blobs/{own}", timeout=30).content == old.layers[1]
    r = requests.get(f"{srv.url}/v2/{repo}/manifests/old", headers={"Accept": OCI_MANIFEST}, timeout=30)
    assert r.status_code == 200 and r.content == old.manifest
