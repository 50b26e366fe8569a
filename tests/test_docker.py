"""Real-client end-to-end tests: a private dockerd builds, pushes to and pulls from Moorage."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.dockerd import Dockerd
from tests.oci import DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST, OCI_LAYER, OCI_MANIFEST
from tests.server import MoorageServer, aws_cli

pytestmark = [pytest.mark.docker, pytest.mark.slow]

PUSH_DIGEST = re.compile(r"^(?P<tag>\S+): digest: (?P<digest>sha256:[0-9a-f]{64}) size: (?P<size>\d+)$", re.M)


@dataclass
class Built:
    ref: str  # host/repo:tag
    image_id: str
    layers: list[str]  # RootFS diff_ids
    files: dict[str, bytes]  # path in image -> content
    nonce: str


def build_image(d: Dockerd, ctx: Path, ref: str) -> Built:
    """`docker build` (legacy builder) of FROM scratch + COPY of random files + a LABEL."""
    ctx.mkdir(parents=True)
    nonce = os.urandom(8).hex()
    files = {
        "/data/blob.bin": os.urandom(256 * 1024 + 17),
        "/etc/moorage/note.txt": f"moorage docker e2e {nonce}\n".encode() * 50,
    }
    (ctx / "blob.bin").write_bytes(files["/data/blob.bin"])
    (ctx / "note.txt").write_bytes(files["/etc/moorage/note.txt"])
    (ctx / "Dockerfile").write_text(
        "FROM scratch\n"
        "COPY blob.bin /data/blob.bin\n"
        "COPY note.txt /etc/moorage/note.txt\n"
        f'LABEL moorage.test.nonce="{nonce}"\n'
    )
    d.run("build", "--rm", "-t", ref, str(ctx), timeout=180)
    image_id = d.run("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()
    layers = json.loads(d.run("image", "inspect", "--format", "{{json .RootFS.Layers}}", ref).stdout)
    assert image_id.startswith("sha256:") and len(layers) == 2, (image_id, layers)
    return Built(ref, image_id, layers, files, nonce)


def push(d: Dockerd, ref: str) -> tuple[str, str]:
    """`docker push`; returns (manifest digest from the push output, full output)."""
    out = d.run("push", ref, timeout=180).stdout
    m = PUSH_DIGEST.search(out)
    assert m, f"no digest line in `docker push {ref}` output:\n{out}"
    assert m["tag"] == ref.rsplit(":", 1)[1], out
    return m["digest"], out


def remove_everything(d: Dockerd) -> None:
    """Remove all containers and images so a following pull must really fetch from the registry."""
    containers = d.run("ps", "-aq").stdout.split()
    if containers:
        d.run("rm", "-f", *containers)
    d.run("image", "prune", "-a", "-f")
    left = d.run("images", "-aq").stdout.split()
    assert not left, f"images still present after prune: {left}"


@pytest.fixture(autouse=True)
def docker_login(docker: Dockerd, server: MoorageServer) -> None:
    """With auth on: `aws ecr get-login-password | docker login --username AWS --password-stdin HOST`."""
    if server.credentials:
        password = aws_cli(server, "ecr", "get-login-password").stdout.strip()
        out = docker.run("login", "--username", "AWS", "--password-stdin", server.host, input=password)
        assert "Login Succeeded" in out.stdout, out


def get_manifest(srv: MoorageServer, repo: str, ref: str) -> requests.Response:
    r = requests.get(
        f"{srv.url}/v2/{repo}/manifests/{ref}",
        headers={"Accept": f"{DOCKER_MANIFEST}, {OCI_MANIFEST}"},
        timeout=30,
        auth=srv.credentials,
    )
    assert r.status_code == 200, (r.status_code, r.text)
    return r


@pytest.fixture
def docker(dockerd: Dockerd) -> Iterator[Dockerd]:
    """The session dockerd, emptied of images and containers after each test."""
    yield dockerd
    remove_everything(dockerd)


def test_build_push_rmi_pull_roundtrip(docker: Dockerd, server: MoorageServer, repo: str, tmp_path: Path):
    ref = f"{server.host}/{repo}:v1"
    built = build_image(docker, tmp_path / "ctx", ref)

    digest, _ = push(docker, ref)
    repo_digests = json.loads(docker.run("image", "inspect", "--format", "{{json .RepoDigests}}", ref).stdout)
    assert f"{server.host}/{repo}@{digest}" in repo_digests, (digest, repo_digests)

    # The registry serves exactly the manifest docker pushed, by tag and by digest.
    r = get_manifest(server, repo, "v1")
    assert r.headers.get("Docker-Content-Digest") == digest, dict(r.headers)
    assert "sha256:" + hashlib.sha256(r.content).hexdigest() == digest
    assert r.headers.get("Content-Type", "").split(";")[0].strip() == DOCKER_MANIFEST, dict(r.headers)
    manifest = r.json()
    assert manifest["mediaType"] == DOCKER_MANIFEST
    assert manifest["config"]["mediaType"] == DOCKER_CONFIG
    assert manifest["config"]["digest"] == built.image_id
    assert len(manifest["layers"]) == len(built.layers)
    assert all(layer["mediaType"] in (DOCKER_LAYER, OCI_LAYER) for layer in manifest["layers"]), manifest
    assert get_manifest(server, repo, digest).content == r.content
    for desc in [manifest["config"], *manifest["layers"]]:
        b = requests.get(f"{server.url}/v2/{repo}/blobs/{desc['digest']}", timeout=30, auth=server.credentials)
        assert b.status_code == 200, (desc, b.status_code, b.text[:500])
        assert len(b.content) == desc["size"]
        assert "sha256:" + hashlib.sha256(b.content).hexdigest() == desc["digest"]

    # Really gone locally, then back from the registry.
    docker.run("rmi", ref)
    remove_everything(docker)
    gone = docker.run("image", "inspect", built.image_id, check=False)
    assert gone.returncode != 0, gone.stdout

    pulled = docker.run("pull", ref, timeout=180).stdout
    assert f"Digest: {digest}" in pulled, pulled
    assert docker.run("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip() == built.image_id
    layers = json.loads(docker.run("image", "inspect", "--format", "{{json .RootFS.Layers}}", ref).stdout)
    assert layers == built.layers
    labels = json.loads(docker.run("image", "inspect", "--format", "{{json .Config.Labels}}", ref).stdout)
    assert labels == {"moorage.test.nonce": built.nonce}

    # The files come back byte for byte (docker create needs no runtime; docker cp reads the layers).
    cid = docker.run("create", "--network", "none", ref, "/nonexistent").stdout.strip()
    out = tmp_path / "out"
    out.mkdir()
    for i, (path, content) in enumerate(built.files.items()):
        dest = out / f"f{i}"
        docker.run("cp", f"{cid}:{path}", str(dest))
        assert dest.read_bytes() == content, f"{path} differs after the round trip"
    docker.run("rm", cid)


def test_second_tag_and_second_repo_dedupe(docker: Dockerd, server: MoorageServer, repo: str, tmp_path: Path):
    ref1 = f"{server.host}/{repo}:v1"
    built = build_image(docker, tmp_path / "ctx", ref1)
    digest1, _ = push(docker, ref1)

    # Same image, second tag: every layer already exists, same manifest digest.
    ref2 = f"{server.host}/{repo}:v2"
    docker.run("tag", ref1, ref2)
    digest2, out = push(docker, ref2)
    assert digest2 == digest1, out
    assert out.count("Layer already exists") == len(built.layers), out
    tags = requests.get(f"{server.url}/v2/{repo}/tags/list", timeout=30, auth=server.credentials)
    assert tags.status_code == 200, (tags.status_code, tags.text)
    assert tags.json()["name"] == repo
    assert sorted(tags.json()["tags"]) == ["v1", "v2"]
    r2 = get_manifest(server, repo, "v2")
    assert r2.headers.get("Docker-Content-Digest") == digest1
    assert r2.content == get_manifest(server, repo, "v1").content

    # Same image into another repository: docker offers a cross-repo mount (the registry may accept or
    # fall back to an upload); either way the other repository serves the same manifest.
    other = f"{repo}-other"
    ref3 = f"{server.host}/{other}:v1"
    docker.run("tag", ref1, ref3)
    digest3, out = push(docker, ref3)
    assert digest3 == digest1, out
    assert out.count("Mounted from") + out.count("Pushed") + out.count("Layer already exists") >= len(built.layers), out
    assert get_manifest(server, other, "v1").headers.get("Docker-Content-Digest") == digest1

    # Pull by digest from the second repository after wiping the local store.
    remove_everything(docker)
    docker.run("pull", f"{server.host}/{other}@{digest1}", timeout=180)
    got = docker.run("image", "inspect", "--format", "{{.Id}}", f"{server.host}/{other}@{digest1}")
    assert got.stdout.strip() == built.image_id
