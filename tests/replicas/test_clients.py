"""Three replicas on PostgreSQL + S3 behind nginx behave as one registry to real clients.

skopeo and docker push and pull through the balancer (their requests spread over the replicas, as nginx's
access log shows); a write on one replica is seen by the very next request on another (tags, deletes,
repositories, policies); a chunked upload whose chunks land on three replicas commits; Range reads and the ECR
API work through the balancer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import boto3
import pytest
import requests
from botocore.config import Config

from tests.dockerd import Dockerd
from tests.layouts import write_single_image
from tests.oci import (
    ALL_MANIFEST_TYPES,
    OCI_MANIFEST,
    Client,
    assert_pulls,
    digest_of,
    error_codes,
    location,
    make_image,
)
from tests.replicas.cluster import Cluster
from tests.server import ADMIN_KEY, ADMIN_SECRET
from tests.skopeo import Skopeo, assert_layout_matches, skopeo_pull, skopeo_push
from tests.test_docker import build_image, push, remove_everything

MiB = 1 << 20


def admin_clients(cluster: Cluster) -> list[Client]:
    """A /v2 client per replica (direct, not through nginx), with a registry token any of them accepts."""
    auth = ("AWS", cluster.password())
    return [Client(r.url, auth) for r in cluster.replicas]


def ecr(url: str) -> object:
    return boto3.client(
        "ecr",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=ADMIN_KEY,
        aws_secret_access_key=ADMIN_SECRET,
        config=Config(retries={"max_attempts": 1}),
    )


def test_skopeo_pushes_and_pulls_through_the_balancer(cluster: Cluster, skopeo: Skopeo, tmp_path: Path) -> None:
    src = write_single_image(tmp_path / "src", "v1", n_layers=6)
    creds = f"AWS:{cluster.password()}"
    before = len(cluster.balancer.accesses())
    skopeo_push(skopeo, tmp_path / "src", "v1", f"{cluster.host}/lb/skopeo:v1", creds=creds)
    pushed = cluster.balancer.accesses()[before:]
    answered_by = {a.upstreams[-1] for a in pushed if a.path.startswith("/v2/lb/skopeo/")}
    assert len(answered_by) >= 2, f"the push's requests all went to {answered_by}: nothing crossed replicas"

    skopeo_pull(skopeo, f"{cluster.host}/lb/skopeo:v1", tmp_path / "dst", "v1", extra=["--src-creds", creds])
    assert_layout_matches(tmp_path / "dst", "v1", src.digest, src.blobs)
    for client in admin_clients(cluster):  # and each replica, asked directly, has all of it
        r = client.get("/v2/lb/skopeo/manifests/v1", headers={"Accept": ALL_MANIFEST_TYPES})
        assert r.status_code == 200 and digest_of(r.content) == src.digest
        for digest, data in src.blobs.items():
            kind = "manifests" if digest == src.digest else "blobs"
            got = client.get(f"/v2/lb/skopeo/{kind}/{digest}", headers={"Accept": ALL_MANIFEST_TYPES})
            assert got.status_code == 200 and got.content == data, (client.base, digest)


@pytest.mark.docker
def test_docker_pushes_and_pulls_through_the_balancer(cluster: Cluster, dockerd: Dockerd, tmp_path: Path) -> None:
    out = dockerd.run("login", "--username", "AWS", "--password-stdin", cluster.host, input=cluster.password())
    assert "Login Succeeded" in out.stdout, out
    ref = f"{cluster.host}/lb/docker:v1"
    built = build_image(dockerd, tmp_path / "ctx", ref)
    before = len(cluster.balancer.accesses())
    digest, _ = push(dockerd, ref)
    uploads = [a for a in cluster.balancer.accesses()[before:] if "/blobs/uploads/" in a.path]
    assert len({a.upstreams[-1] for a in uploads}) >= 2, "docker's upload requests all went to one replica"
    try:
        remove_everything(dockerd)
        dockerd.run("pull", ref, timeout=180)
        assert dockerd.run("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip() == built.image_id
        repo_digests = dockerd.run("image", "inspect", "--format", "{{json .RepoDigests}}", ref).stdout
        assert f"{cluster.host}/lb/docker@{digest}" in json.loads(repo_digests)
    finally:
        remove_everything(dockerd)


def test_a_write_on_one_replica_is_seen_by_the_next_request_on_another(cluster: Cluster) -> None:
    clients = admin_clients(cluster)
    repo = "lb/consistency"
    for i in range(12):  # each round: write on one replica, read at once on the others
        writer = clients[i % 3]
        image = make_image(1, 512)
        writer.push_image(repo, "latest", image)
        # every reader read the tag in the round before, so it is in their caches: a stale one would answer
        for reader in clients:
            r = reader.get(f"/v2/{repo}/manifests/latest", headers={"Accept": ALL_MANIFEST_TYPES})
            assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == image.digest, (i, r.status_code)
    # a deleted manifest is gone everywhere at once, by tag and by digest
    clients[0].push_image(repo, "doomed", image := make_image(1, 512))
    assert clients[1].get(f"/v2/{repo}/manifests/doomed", headers={"Accept": ALL_MANIFEST_TYPES}).ok
    assert clients[2].delete(f"/v2/{repo}/manifests/{image.digest}").status_code == 202
    for c in clients:
        assert c.get(f"/v2/{repo}/manifests/doomed", headers={"Accept": ALL_MANIFEST_TYPES}).status_code == 404
        assert c.head(f"/v2/{repo}/manifests/{image.digest}").status_code == 404


def test_repositories_and_policies_written_on_one_replica_hold_on_the_others(cluster: Cluster) -> None:
    first, second, third = (ecr(r.url) for r in cluster.replicas)
    first.create_repository(repositoryName="lb/ecr", imageTagMutability="IMMUTABLE")  # type: ignore[attr-defined]
    names = [r["repositoryName"] for r in second.describe_repositories()["repositories"]]  # type: ignore[attr-defined]
    assert "lb/ecr" in names
    clients = admin_clients(cluster)
    clients[2].push_image("lb/ecr", "1.0", make_image(1, 256))
    other = make_image(1, 256)
    for blob in other.blobs:
        clients[0].push_blob("lb/ecr", blob)
    r = clients[0].put("/v2/lb/ecr/manifests/1.0", data=other.manifest, headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 400 and error_codes(r) == ["TAG_INVALID"], "tag immutability set on replica 1 holds"
    deny = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Deny", "Principal": "*", "Action": "ecr:BatchGetImage"}],
    }
    third.set_repository_policy(repositoryName="lb/ecr", policyText=json.dumps(deny))  # type: ignore[attr-defined]
    r = clients[0].get("/v2/lb/ecr/manifests/1.0", headers={"Accept": ALL_MANIFEST_TYPES})
    assert r.status_code == 403, "a policy set on replica 3 governs the next pull on replica 1"
    second.delete_repository_policy(repositoryName="lb/ecr")  # type: ignore[attr-defined]
    assert clients[1].get("/v2/lb/ecr/manifests/1.0", headers={"Accept": ALL_MANIFEST_TYPES}).status_code == 200


def test_ecr_api_through_the_balancer(cluster: Cluster) -> None:
    """boto3 against nginx: its requests land on any replica and all of them sign, authorise and answer alike."""
    client = ecr(cluster.url)
    for i in range(6):
        client.create_repository(repositoryName=f"lb/api-{i}")  # type: ignore[attr-defined]
    token = client.get_authorization_token()["authorizationData"][0]  # type: ignore[attr-defined]
    assert token["proxyEndpoint"].endswith(cluster.host)
    pages = client.get_paginator("describe_repositories").paginate(PaginationConfig={"PageSize": 2})  # type: ignore[attr-defined]
    names = {r["repositoryName"] for page in pages for r in page["repositories"]}
    assert {f"lb/api-{i}" for i in range(6)} <= names  # pagination tokens from one replica work on the next
    answered = {a.upstreams[-1] for a in cluster.balancer.accesses("^POST /$")}
    assert len(answered) == 3, answered


def test_a_chunked_upload_whose_chunks_land_on_three_replicas(cluster: Cluster) -> None:
    one, two, three = admin_clients(cluster)
    repo = "lb/chunks"
    chunks = [os.urandom(6 * MiB), os.urandom(5 * MiB + 123), os.urandom(777)]
    blob = b"".join(chunks)
    r = one.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, r.text
    url, offset = location(r), 0
    for client, chunk in zip((two, three, one), chunks, strict=True):
        r = client.patch(
            url,
            data=chunk,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
                "Content-Length": str(len(chunk)),
            },
        )
        assert r.status_code == 202, r.text
        offset += len(chunk)
        assert r.headers["Range"] == f"0-{offset - 1}"
        url = location(r)
    assert three.upload_size(url) == len(blob)  # the session's state as another replica sees it
    r = two.put(url, params={"digest": digest_of(blob)})
    assert r.status_code == 201, r.text
    for client in (one, two, three):
        got = client.get(f"/v2/{repo}/blobs/{digest_of(blob)}")
        assert got.status_code == 200 and got.content == blob
    ranged = one.get(f"/v2/{repo}/blobs/{digest_of(blob)}", headers={"Range": "bytes=6291000-6291999"})
    assert ranged.status_code == 206 and ranged.content == blob[6291000:6292000]


def test_range_reads_and_pulls_through_the_balancer(cluster: Cluster) -> None:
    lb = Client(cluster.url, ("AWS", cluster.password()))
    image = make_image(2, 3 * MiB)
    lb.push_image("lb/range", "1", image)
    assert_pulls(lb, "lb/range", "1", image)
    layer = image.layers[0]
    for start, end in ((0, 0), (1000, 1999), (len(layer) - 10, len(layer) - 1)):
        r = requests.get(
            f"{cluster.url}/v2/lb/range/blobs/{digest_of(layer)}",
            headers={"Range": f"bytes={start}-{end}"},
            auth=lb.s.auth,
            timeout=30,
        )
        assert r.status_code == 206 and r.content == layer[start : end + 1], (start, end, r.status_code)
