"""Real-client end-to-end tests: skopeo copies OCI layouts into Moorage and back out, byte-exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from tests.layouts import LayoutImage, LayoutIndex, read_layout, write_multi_platform_image, write_single_image
from tests.oci import ALL_MANIFEST_TYPES, OCI_INDEX, OCI_MANIFEST, digest_of
from tests.server import MoorageServer
from tests.skopeo import Skopeo, assert_layout_matches
from tests.skopeo import skopeo_pull as pull
from tests.skopeo import skopeo_push as push


@pytest.fixture(autouse=True)
def skopeo_login(request: pytest.FixtureRequest, skopeo: Skopeo) -> None:
    """With auth on: `skopeo login -u AWS` with a token from GetAuthorizationToken."""
    if "server" in request.fixturenames:
        srv = request.getfixturevalue("server")
        if srv.credentials:
            out = skopeo("login", "--tls-verify=false", "-u", "AWS", "-p", srv.credentials[1], srv.host)
            assert "Login Succeeded" in out.stdout, out


def assert_registry_manifest(srv: MoorageServer, repo: str, ref: str, body: bytes, media_type: str) -> None:
    r = requests.get(
        f"{srv.url}/v2/{repo}/manifests/{ref}", headers={"Accept": ALL_MANIFEST_TYPES}, timeout=30, auth=srv.credentials
    )
    assert r.status_code == 200, (r.status_code, r.text)
    assert r.content == body, f"registry re-serialised the manifest:\n{r.content!r}\n!=\n{body!r}"
    assert r.headers.get("Docker-Content-Digest") == digest_of(body), dict(r.headers)
    assert r.headers.get("Content-Type", "").split(";")[0].strip() == media_type, dict(r.headers)


# -- single platform ---------------------------------------------------------------------------------


def test_single_platform_roundtrip_byte_exact(server: MoorageServer, repo: str, tmp_path: Path, skopeo: Skopeo):
    img: LayoutImage = write_single_image(tmp_path / "src", "v1", n_layers=3)
    src = read_layout(tmp_path / "src", "v1")
    assert src.top_digest == img.digest and set(src.blobs) == set(img.blobs)

    push(skopeo, tmp_path / "src", "v1", f"{server.host}/{repo}:v1")
    assert_registry_manifest(server, repo, "v1", img.manifest, OCI_MANIFEST)
    assert_registry_manifest(server, repo, img.digest, img.manifest, OCI_MANIFEST)
    for d, data in img.blobs.items():
        if d == img.digest:
            continue
        r = requests.get(f"{server.url}/v2/{repo}/blobs/{d}", timeout=30, auth=server.credentials)
        assert r.status_code == 200 and r.content == data, (d, r.status_code, r.headers)

    pull(skopeo, f"{server.host}/{repo}:v1", tmp_path / "dst", "v1")
    assert_layout_matches(tmp_path / "dst", "v1", img.digest, img.blobs)

    # By digest as well as by tag.
    pull(skopeo, f"{server.host}/{repo}@{img.digest}", tmp_path / "bydigest", "pinned")
    assert_layout_matches(tmp_path / "bydigest", "pinned", img.digest, img.blobs)


def test_inspect_raw_and_list_tags(server: MoorageServer, repo: str, tmp_path: Path, skopeo: Skopeo):
    img = write_single_image(tmp_path / "src", "v1", n_layers=2)
    push(skopeo, tmp_path / "src", "v1", f"{server.host}/{repo}:v1")
    push(skopeo, tmp_path / "src", "v1", f"{server.host}/{repo}:v2")
    ref = f"docker://{server.host}/{repo}"

    raw = skopeo("inspect", "--tls-verify=false", "--raw", f"{ref}:v1").stdout
    assert raw.encode() == img.manifest
    raw = skopeo("inspect", "--tls-verify=false", "--raw", f"{ref}@{img.digest}").stdout
    assert raw.encode() == img.manifest
    config = skopeo("inspect", "--tls-verify=false", "--raw", "--config", f"{ref}:v2").stdout
    assert config.encode() == img.config

    info = json.loads(skopeo("inspect", "--tls-verify=false", f"{ref}:v2").stdout)
    assert info["Digest"] == img.digest
    assert info["Layers"] == [digest_of(layer) for layer in img.layers]
    assert info["Architecture"] == "amd64" and info["Os"] == "linux"
    assert json.loads(img.config)["config"]["Labels"] == info["Labels"]

    tags = json.loads(skopeo("list-tags", "--tls-verify=false", ref).stdout)
    assert tags["Repository"] == f"{server.host}/{repo}"
    assert sorted(tags["Tags"]) == ["v1", "v2"]

    missing = skopeo("inspect", "--tls-verify=false", "--raw", f"{ref}:nope", check=False)
    assert missing.returncode != 0, missing.stdout
    assert "manifest unknown" in missing.stderr, missing.stderr  # the registry's MANIFEST_UNKNOWN, as skopeo says it


# -- multi platform ----------------------------------------------------------------------------------


def test_multi_platform_all_roundtrip_byte_exact(server: MoorageServer, repo: str, tmp_path: Path, skopeo: Skopeo):
    idx: LayoutIndex = write_multi_platform_image(tmp_path / "src", "multi")
    assert len(idx.blobs) == 1 + 2 * (1 + 1 + 2)  # index + 2 x (manifest, config, 2 layers)

    push(skopeo, tmp_path / "src", "multi", f"{server.host}/{repo}:multi", all_images=True)
    assert_registry_manifest(server, repo, "multi", idx.index, OCI_INDEX)
    for child in idx.children:
        assert_registry_manifest(server, repo, child.digest, child.manifest, OCI_MANIFEST)
    raw = skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{server.host}/{repo}:multi").stdout
    assert raw.encode() == idx.index

    pull(skopeo, f"{server.host}/{repo}:multi", tmp_path / "dst", "multi", all_images=True)
    assert_layout_matches(tmp_path / "dst", "multi", idx.digest, idx.blobs)


def test_multi_platform_pull_selects_platform(server: MoorageServer, repo: str, tmp_path: Path, skopeo: Skopeo):
    """Without --all skopeo resolves the index and fetches just the chosen platform's image by digest."""
    idx = write_multi_platform_image(tmp_path / "src", "multi")
    push(skopeo, tmp_path / "src", "multi", f"{server.host}/{repo}:multi", all_images=True)
    for child in idx.children:
        arch = child.platform["architecture"]
        dst = tmp_path / f"dst-{arch}"
        skopeo(
            "--override-arch", arch, "--override-os", "linux",
            "copy", "--src-tls-verify=false", "--preserve-digests",
            f"docker://{server.host}/{repo}:multi", f"oci:{dst}:one",
        )  # fmt: skip
        assert_layout_matches(dst, "one", child.digest, child.blobs)


def test_registry_to_registry_copy(server: MoorageServer, repo: str, tmp_path: Path, skopeo: Skopeo):
    """docker:// -> docker:// between two repositories (blob mounts or re-uploads), then byte-exact back."""
    idx = write_multi_platform_image(tmp_path / "src", "multi")
    push(skopeo, tmp_path / "src", "multi", f"{server.host}/{repo}:multi", all_images=True)
    other = f"{repo}-copy"
    skopeo(
        "copy", "--all", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false",
        f"docker://{server.host}/{repo}:multi", f"docker://{server.host}/{other}:copied",
    )  # fmt: skip
    assert_registry_manifest(server, other, "copied", idx.index, OCI_INDEX)
    pull(skopeo, f"{server.host}/{other}:copied", tmp_path / "dst", "copied", all_images=True)
    assert_layout_matches(tmp_path / "dst", "copied", idx.digest, idx.blobs)


# -- durability --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_content_survives_restart(make_server, tmp_path: Path, skopeo: Skopeo):
    srv: MoorageServer = make_server()
    img = write_single_image(tmp_path / "single", "v1")
    idx = write_multi_platform_image(tmp_path / "multi", "m1")
    push(skopeo, tmp_path / "single", "v1", f"{srv.host}/durable/single:v1")
    push(skopeo, tmp_path / "multi", "m1", f"{srv.host}/durable/multi:m1", all_images=True)

    srv.restart()

    pull(skopeo, f"{srv.host}/durable/single:v1", tmp_path / "back-single", "v1")
    assert_layout_matches(tmp_path / "back-single", "v1", img.digest, img.blobs)
    pull(skopeo, f"{srv.host}/durable/multi:m1", tmp_path / "back-multi", "m1", all_images=True)
    assert_layout_matches(tmp_path / "back-multi", "m1", idx.digest, idx.blobs)
    tags = json.loads(skopeo("list-tags", "--tls-verify=false", f"docker://{srv.host}/durable/single").stdout)
    assert tags["Tags"] == ["v1"]


@pytest.mark.slow
def test_content_survives_sigkill(make_server, tmp_path: Path, skopeo: Skopeo):
    srv: MoorageServer = make_server()
    img = write_single_image(tmp_path / "single", "v1")
    idx = write_multi_platform_image(tmp_path / "multi", "m1")
    push(skopeo, tmp_path / "single", "v1", f"{srv.host}/crash/single:v1")
    push(skopeo, tmp_path / "multi", "m1", f"{srv.host}/crash/multi:m1", all_images=True)

    srv.kill()  # SIGKILL right after the pushes were acknowledged
    srv.start()

    pull(skopeo, f"{srv.host}/crash/single:v1", tmp_path / "back-single", "v1")
    assert_layout_matches(tmp_path / "back-single", "v1", img.digest, img.blobs)
    pull(skopeo, f"{srv.host}/crash/multi:m1", tmp_path / "back-multi", "m1", all_images=True)
    assert_layout_matches(tmp_path / "back-multi", "m1", idx.digest, idx.blobs)
    assert_registry_manifest(srv, "crash/multi", "m1", idx.index, OCI_INDEX)
