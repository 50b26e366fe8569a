"""Replication for real: a source Moorage copies pushes to two other Moorage servers (through their ECR API's
tokens, as `ecr:ReplicateImage`) and to a CNCF Distribution (`docker-registry`, with a password), byte-exact,
multi-arch images and referrers included. A destination that is down reports FAILED (retrying) and then COMPLETE
once it is back; a source killed mid-queue resumes it; a backfill copies what was pushed before its rule."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.helpers import wait_for
from tests.oci import ALL_MANIFEST_TYPES, OCI_INDEX, OCI_MANIFEST, Client, Image, descriptor, make_image, push_artifact
from tests.server import MoorageServer, auth_config, ecr_client, login_password, principal_toml
from tests.upstreams import DistributionRegistry

SOURCE_ACCOUNT = "000000000000"
PEER1, PEER2, DIST = "111111111111", "222222222222", "333333333333"
REGION = "eu-west-1"
REPLICATOR = ("AKIAREPLICATOR000001", "replicator-secret-0123456789")
DIST_USER = ("mirror", "mirror-password")
# What the source's principal may do on a destination Moorage: get a token and replicate, nothing else.
REPLICATE_ONLY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["ecr:GetAuthorizationToken", "ecr:ReplicateImage"], "Resource": "*"}
        ],
    }
)


def destination(registry_id: str, url: str, creds: str) -> str:
    return (
        f'[[replication.destinations]]\nregion = "{REGION}"\nregistry_id = "{registry_id}"\nendpoint = "{url}"\n{creds}'
    )


@dataclass
class Site:
    source: MoorageServer
    peers: dict[str, MoorageServer]  # registry id -> a destination Moorage
    dist: DistributionRegistry
    ecr: Any

    def reader(self, registry_id: str) -> Client:
        """A /v2 client that may read the destination."""
        if registry_id == DIST:
            return Client(self.dist.url, DIST_USER)
        peer = self.peers[registry_id]
        return Client(peer.url, ("AWS", login_password(peer, region=REGION)))

    def source_client(self) -> Client:
        return Client(self.source.url, ("AWS", login_password(self.source)))

    def statuses(self, repository: str, tag: str) -> dict[str, tuple[str, str]]:
        """By destination: (status, failure code) of the image `tag` (a tag, or a digest)."""
        image_id = {"imageDigest": tag} if tag.startswith("sha256:") else {"imageTag": tag}
        out = self.ecr.describe_image_replication_status(repositoryName=repository, imageId=image_id)
        return {s["registryId"]: (s["status"], s.get("failureCode", "")) for s in out["replicationStatuses"]}

    def wait_statuses(self, repository: str, tag: str, want: dict[str, str], timeout: float = 60) -> dict:
        def reached() -> dict | None:
            got = self.statuses(repository, tag)
            return got if {k: v[0] for k, v in got.items()} == want else None

        return wait_for(
            reached,
            timeout,
            f"{repository}:{tag} replication statuses {want}",
            details=lambda: f"{self.statuses(repository, tag)}\n{self.source.log()[-3000:]}",
        )


def rules(*rules: tuple[str, list[str]]) -> dict[str, Any]:
    return {
        "rules": [
            {
                "destinations": [{"region": REGION, "registryId": r} for r in ids],
                "repositoryFilters": [{"filter": prefix, "filterType": "PREFIX_MATCH"}],
            }
            for prefix, ids in rules
        ]
    }


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("replication")
    peers = {
        registry_id: MoorageServer(
            root / f"peer-{registry_id}" / "data",
            auth_config(principal_toml("replicator", *REPLICATOR, REPLICATE_ONLY))
            + f'[registry]\naccount_id = "{registry_id}"\nregion = "{REGION}"\n',
        )
        for registry_id in (PEER1, PEER2)
    }
    dist = DistributionRegistry(root / "dist", htpasswd=DIST_USER)
    keys = f'access_key_id = "{REPLICATOR[0]}"\nsecret_access_key = "{REPLICATOR[1]}"\n'
    config = auth_config(
        extra='[replication]\nretry_max_interval = "1s"\ntimeout = "5s"\n'
        + destination(PEER1, peers[PEER1].url, keys)
        + destination(PEER2, peers[PEER2].url, keys)
        + destination(DIST, dist.url, f'username = "{DIST_USER[0]}"\npassword = "{DIST_USER[1]}"\n')
    )
    source = MoorageServer(root / "source" / "data", config)
    try:
        for peer in peers.values():
            peer.start()
        dist.start()
        source.start()
        # On the first destination, repositories that replication creates get a template of their own.
        ecr_client(peers[PEER1], region=REGION).create_repository_creation_template(
            prefix="team",
            appliedFor=["REPLICATION"],
            imageTagMutability="IMMUTABLE",
            resourceTags=[{"Key": "origin", "Value": "replication"}],
        )
        ecr = ecr_client(source)
        ecr.put_replication_configuration(replicationConfiguration=rules(("team/", [PEER1, PEER2, DIST])))
        yield Site(source, peers, dist, ecr)
    finally:
        source.stop()
        dist.stop()
        for peer in peers.values():
            peer.stop()


def multi_arch(client: Client, repository: str, tag: str) -> tuple[bytes, list[Image]]:
    """Push two platforms' images and an index of them, tagged; returns the index's bytes and the images."""
    images = [make_image(2, 4096, platform=arch) for arch in ("amd64", "arm64")]
    for img in images:
        client.push_image(repository, img.digest, img)
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                descriptor(OCI_MANIFEST, img.manifest, platform={"architecture": arch, "os": "linux"})
                for img, arch in zip(images, ("amd64", "arm64"), strict=True)
            ],
        },
        indent=3,  # not canonical JSON: a copy that re-encoded it would change its digest
    ).encode()
    client.push_manifest(repository, tag, index, OCI_INDEX)
    return index, images


def assert_copied(reader: Client, repository: str, tag: str, index: bytes, images: list[Image]) -> None:
    """The destination serves the index under the tag, and every manifest and blob, byte for byte."""
    r = reader.get(f"/v2/{repository}/manifests/{tag}", headers={"Accept": ALL_MANIFEST_TYPES})
    assert r.status_code == 200 and r.content == index, (reader.base_url, r.status_code, r.text[:300])
    for img in images:
        r = reader.get(f"/v2/{repository}/manifests/{img.digest}", headers={"Accept": ALL_MANIFEST_TYPES})
        assert r.status_code == 200 and r.content == img.manifest, (reader.base_url, r.status_code)
        for blob in img.blobs:
            r = reader.get(f"/v2/{repository}/blobs/{descriptor('', blob)['digest']}")
            assert r.status_code == 200 and r.content == blob, (reader.base_url, r.status_code)


ALL_COMPLETE = {PEER1: "COMPLETE", PEER2: "COMPLETE", DIST: "COMPLETE"}


def test_a_multi_arch_push_with_a_referrer_is_copied_byte_exact_to_every_destination(site: Site):
    client = site.source_client()
    index, images = multi_arch(client, "team/app", "v1")
    signature = push_artifact(client, "team/app", descriptor(OCI_INDEX, index))
    site.wait_statuses("team/app", "v1", ALL_COMPLETE)
    for registry_id in (PEER1, PEER2, DIST):
        reader = site.reader(registry_id)
        assert_copied(reader, "team/app", "v1", index, images)
        wait_for(
            lambda reader=reader: (
                reader.get(
                    f"/v2/team/app/manifests/{signature['digest']}", headers={"Accept": OCI_MANIFEST}
                ).status_code
                == 200
            ),
            30,
            f"the signature on {registry_id}",
        )
    # Moorage destinations list it as a referrer of the index, as the source does.
    for registry_id in (PEER1, PEER2):
        r = site.reader(registry_id).get(f"/v2/team/app/referrers/{descriptor('', index)['digest']}")
        assert [m["digest"] for m in r.json()["manifests"]] == [signature["digest"]], r.text

    # The first destination created the repository with its REPLICATION template; the second with defaults.
    peer1 = ecr_client(site.peers[PEER1], region=REGION)
    (repo,) = peer1.describe_repositories(repositoryNames=["team/app"])["repositories"]
    assert repo["imageTagMutability"] == "IMMUTABLE"
    assert peer1.list_tags_for_resource(resourceArn=repo["repositoryArn"])["tags"] == [
        {"Key": "origin", "Value": "replication"}
    ]
    (repo,) = ecr_client(site.peers[PEER2], region=REGION).describe_repositories(repositoryNames=["team/app"])[
        "repositories"
    ]
    assert repo["imageTagMutability"] == "MUTABLE"


def test_only_what_the_rules_cover_is_copied_and_the_replicator_may_do_nothing_else(site: Site):
    client = site.source_client()
    img = make_image(1, 512)
    client.push_image("other/app", "v1", img)
    assert site.statuses("other/app", "v1") == {}  # no rule covers it: no status, as on ECR
    time.sleep(1.5)  # a runner that copied it anyway would have by now
    assert site.reader(PEER1).get("/v2/other/app/manifests/v1").status_code == 404
    assert site.reader(DIST).get("/v2/other/app/manifests/v1").status_code == 404
    # The source's principal on the destination: replicating is all it may do (no pull, no plain push).
    peer = site.peers[PEER1]
    replicator = Client(peer.url, ("AWS", login_password(peer, *REPLICATOR, region=REGION)))
    site.wait_statuses("team/app", "v1", ALL_COMPLETE)
    assert replicator.get("/v2/team/app/manifests/v1").status_code == 403
    assert replicator.post("/v2/team/plain/blobs/uploads/").status_code == 403
    header = {"Moorage-Replication": SOURCE_ACCOUNT}
    assert replicator.get("/v2/team/app/manifests/v1", headers=header).status_code == 403  # a read, still denied
    assert replicator.head("/v2/team/app/manifests/v1", headers=header).status_code == 200


def test_a_destination_that_is_down_reports_failed_then_complete_when_it_returns(site: Site):
    peer = site.peers[PEER2]
    peer.stop()
    try:
        client = site.source_client()
        index, images = multi_arch(client, "team/retry", "v1")
        # The platforms' manifests were pushed first: their copies fail, saying why, and are retried; the index's
        # waits behind them (copies to one repository of a destination keep their push order).
        got = site.wait_statuses("team/retry", images[0].digest, {PEER1: "COMPLETE", PEER2: "FAILED", DIST: "COMPLETE"})
        assert "(retrying)" in got[PEER2][1] and peer.url in got[PEER2][1], got
        site.wait_statuses("team/retry", "v1", {PEER1: "COMPLETE", PEER2: "IN_PROGRESS", DIST: "COMPLETE"})
    finally:
        peer.start()
    site.wait_statuses("team/retry", "v1", ALL_COMPLETE)
    assert_copied(site.reader(PEER2), "team/retry", "v1", index, images)


def test_a_source_killed_mid_queue_resumes_it_after_its_restart(site: Site):
    site.dist.stop()
    pushed: list[tuple[str, bytes, list[Image]]] = []
    try:
        client = site.source_client()
        for n in range(3):
            pushed.append((f"v{n}", *multi_arch(client, "team/queued", f"v{n}")))
        site.wait_statuses(
            "team/queued", pushed[0][2][0].digest, {PEER1: "COMPLETE", PEER2: "COMPLETE", DIST: "FAILED"}
        )
        for tag, _, _ in pushed:
            site.wait_statuses("team/queued", tag, {PEER1: "COMPLETE", PEER2: "COMPLETE", DIST: "IN_PROGRESS"})
        site.source.kill()  # SIGKILL: nothing is handed back
    finally:
        site.dist.start()
    site.source.start()
    for tag, index, images in pushed:
        site.wait_statuses("team/queued", tag, ALL_COMPLETE, timeout=120)  # a lease of a killed runner ends
        assert_copied(site.reader(DIST), "team/queued", tag, index, images)


def test_a_backfill_copies_older_images_and_reports_its_progress(site: Site):
    client = site.source_client()
    older = [(f"v{n}", *multi_arch(client, "legacy/app", f"v{n}")) for n in range(2)]
    assert site.statuses("legacy/app", "v0") == {}
    site.ecr.put_replication_configuration(
        replicationConfiguration=rules(("team/", [PEER1, PEER2, DIST]), ("legacy/", [PEER1]))
    )
    try:
        destination = {"region": REGION, "registryId": PEER1}
        started = site.ecr.start_replication_backfill(destination=destination)
        assert started["destination"] == destination and started["status"] in ("PREPARING", "IN_PROGRESS")
        backfill = started["replicationBackfillId"]

        def ended() -> dict | None:
            (found,) = [
                b for b in site.ecr.list_replication_backfills()["backfills"] if b["replicationBackfillId"] == backfill
            ]
            return found if found["status"] == "COMPLETE" else None

        done = wait_for(ended, 60, "the backfill to complete")
        results = site.ecr.describe_replication_backfill_results(replicationBackfillId=backfill)["results"]
        # Every image of the repositories replicated to the destination: legacy/ now, and team/ (copied already:
        # a few HEADs each). An index's platforms go with it, so each counts once.
        assert done["progress"] == {
            "totalReplicationCount": len(results),
            "completedReplicationCount": len(results),
            "failedReplicationCount": 0,
            "failureCodes": [],
        }, done
        assert all(r["status"] == "COMPLETE" for r in results), results
        legacy = sorted(
            (r["imageId"]["imageTag"], r["imageId"]["imageDigest"])
            for r in results
            if r["repositoryName"] == "legacy/app"
        )
        assert legacy == [("v0", descriptor("", older[0][1])["digest"]), ("v1", descriptor("", older[1][1])["digest"])]
        names = {r["repositoryName"] for r in results}
        assert "legacy/app" in names and all(n.startswith(("legacy/", "team/")) for n in names), names
        for tag, index, images in older:
            assert_copied(site.reader(PEER1), "legacy/app", tag, index, images)
            assert site.statuses("legacy/app", tag) == {PEER1: ("COMPLETE", "")}
        assert site.reader(PEER2).get("/v2/legacy/app/manifests/v0").status_code == 404  # not its destination
    finally:
        site.ecr.put_replication_configuration(replicationConfiguration=rules(("team/", [PEER1, PEER2, DIST])))


def test_a_backfill_to_a_destination_that_is_down_can_be_stopped(site: Site):
    client = site.source_client()
    for n in range(2):
        client.push_image("team/stop", f"v{n}", make_image(1, 256))
    site.wait_statuses("team/stop", "v1", ALL_COMPLETE)
    peer = site.peers[PEER2]
    peer.stop()
    try:
        ecr = site.ecr
        with pytest.raises(ClientError) as e:
            ecr.start_replication_backfill(destination={"region": REGION, "registryId": "999999999999"})
        assert e.value.response["Error"]["Code"] == "InvalidParameterException"
        backfill = ecr.start_replication_backfill(destination={"region": REGION, "registryId": PEER2})[
            "replicationBackfillId"
        ]
        with pytest.raises(ClientError) as e:  # one at a time per destination
            ecr.start_replication_backfill(destination={"region": REGION, "registryId": PEER2})
        assert e.value.response["Error"]["Code"] == "ReplicationBackfillInProgressException"
        stopped = ecr.stop_replication_backfill(replicationBackfillId=backfill)
        assert stopped["status"] in ("STOPPING", "STOPPED")
        wait_for(
            lambda: ecr.describe_replication_backfill_results(replicationBackfillId=backfill)["status"] == "STOPPED",
            30,
            "the backfill to stop",
        )
        described = ecr.describe_replication_backfill_results(replicationBackfillId=backfill)
        assert described["progress"]["completedReplicationCount"] == 0 and "endedAt" in described
        with pytest.raises(ClientError) as e:
            ecr.stop_replication_backfill(replicationBackfillId=backfill)
        assert e.value.response["Error"]["Code"] == "ReplicationBackfillInvalidStatusException"
        with pytest.raises(ClientError) as e:
            ecr.describe_replication_backfill_results(replicationBackfillId="00000000-0000-4000-8000-000000000000")
        assert e.value.response["Error"]["Code"] == "ReplicationBackfillNotFoundException"
    finally:
        peer.start()
