"""Real clients against a registry whose blobs are in S3 with `redirect = true`: a blob GET answers 307 with a
presigned URL on the S3 service (the session's SeaweedFS, on loopback), and skopeo, podman and docker follow it
and verify what they get. The access log shows the 307s, so a pass can't come from the streamed path."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dockerd import Dockerd
from tests.helpers import wait_for
from tests.oci import Client
from tests.podman import isolated_podman
from tests.runnable_image import RunnableImage, runnable_image
from tests.server import AUTH_OFF, MoorageServer
from tests.services.seaweedfs import ACCESS_KEY, BUCKET, REGION, SECRET_KEY, SeaweedFS
from tests.skopeo import Skopeo

LAYER_PAYLOAD = 256 * 1024  # well above the size under which blobs are served from memory, not redirected


@pytest.fixture(scope="module")
def redirecting(seaweedfs: SeaweedFS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    prefix = f"s3-clients/{uuid.uuid4().hex[:12]}"
    config = AUTH_OFF + (
        f'[storage]\nblobs = "s3://{BUCKET}/{prefix}"\n'
        f'[storage.s3]\nendpoint_url = "{seaweedfs.endpoint_url}"\nregion = "{REGION}"\n'
        f'access_key_id = "{ACCESS_KEY}"\nsecret_access_key = "{SECRET_KEY}"\nredirect = true\n'
    )
    srv = MoorageServer(tmp_path_factory.mktemp("s3-redirect") / "data", config).start()
    try:
        yield srv
    finally:
        srv.stop()
        seaweedfs.delete_prefix(prefix)


def pushed(srv: MoorageServer, label: str) -> tuple[str, RunnableImage]:
    repository = f"redirect/{label}-{uuid.uuid4().hex[:8]}"
    image = runnable_image(label, payload=LAYER_PAYLOAD)
    Client(srv.url).push_image(repository, "v1", image)
    return repository, image


def redirected_blob_gets(srv: MoorageServer, repository: str) -> list[tuple[str, int]]:
    """(path, status) of the blob GETs the access log holds for `repository`."""
    found = []
    for line in srv.log().splitlines():
        if not line.startswith("{"):
            continue
        entry: dict[str, Any] = json.loads(line)
        fields = entry.get("fields", entry)
        path = str(fields.get("path", ""))
        if fields.get("method") == "GET" and path.startswith(f"/v2/{repository}/blobs/"):
            found.append((path, int(fields["status"])))
    return found


def assert_layer_was_redirected(srv: MoorageServer, repository: str, image: RunnableImage) -> None:
    layer = json.loads(image.manifest)["layers"][0]["digest"]
    wait_for(
        lambda: (f"/v2/{repository}/blobs/{layer}", 307) in redirected_blob_gets(srv, repository),
        what="the layer's GET, redirected, in the access log",
        details=lambda: repr(redirected_blob_gets(srv, repository)),
    )


def test_skopeo_follows_the_redirect(redirecting: MoorageServer, skopeo: Skopeo, tmp_path: Path):
    repository, image = pushed(redirecting, "skopeo")
    skopeo("copy", "--src-tls-verify=false", f"docker://{redirecting.host}/{repository}:v1", f"dir:{tmp_path}/d")
    layer = json.loads(image.manifest)["layers"][0]["digest"]
    assert (tmp_path / "d" / layer.removeprefix("sha256:")).read_bytes() == image.layer
    assert (tmp_path / "d" / "manifest.json").read_bytes() == image.manifest
    assert_layer_was_redirected(redirecting, repository, image)


@pytest.mark.slow
def test_podman_follows_the_redirect(redirecting: MoorageServer, tmp_path: Path):
    repository, image = pushed(redirecting, "podman")
    with isolated_podman(tmp_path) as run:
        run("pull", "--tls-verify=false", f"{redirecting.host}/{repository}:v1")
        image_id = run("image", "inspect", "--format", "{{.Id}}", f"{redirecting.host}/{repository}:v1").stdout
        assert "sha256:" + image_id.strip().removeprefix("sha256:") == image.image_id
    assert_layer_was_redirected(redirecting, repository, image)


@pytest.mark.docker
@pytest.mark.slow
def test_docker_follows_the_redirect(redirecting: MoorageServer, dockerd: Dockerd, tmp_path: Path):
    repository, image = pushed(redirecting, "docker")
    ref = f"{redirecting.host}/{repository}:v1"
    try:
        out = dockerd.run("pull", ref, timeout=180).stdout
        assert f"Digest: {image.digest}" in out, out
        assert dockerd.run("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip() == image.image_id
        cid = dockerd.run("create", "--network", "none", ref, "/nonexistent").stdout.strip()
        dockerd.run("cp", f"{cid}:/moorage/hello.txt", str(tmp_path / "hello.txt"))
        dockerd.run("rm", cid)
        assert (tmp_path / "hello.txt").read_bytes() == image.files["moorage/hello.txt"]
    finally:
        dockerd.run("rmi", "-f", ref, check=False)
    assert_layer_was_redirected(redirecting, repository, image)
