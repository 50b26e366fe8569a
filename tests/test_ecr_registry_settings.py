"""The registry's own settings through boto3 and /v2 against real servers (issue 16, all but replication's copying):

- the registry policy, evaluated with identity and repository policies: under REGISTRY_POLICY_SCOPE V2 (the
  default) a Deny blocks a push the identity policy allows; under V1 the same policy leaves the push alone and
  governs only replication and pull-through actions (a first pull through the cache is refused, then allowed once
  the policy is gone);
- account settings: defaults, errors, and BLOB_MOUNTING deciding whether a cross-repository mount links;
- pull-time update exclusions: an excluded principal's pulls do not move lastRecordedPullTime, so a
  `sinceImagePulled` lifecycle rule still archives the image it pulled;
- ListImageReferrers: the same artifacts as /v2 referrers, artifactTypes and status filters, ECR's page sizes;
- scanning, signing and replication configurations stored and shown, statuses when nothing scans, signs or copies.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.ecr_shapes import assert_matches_output
from tests.helpers import wait_for
from tests.oci import OCI_MANIFEST, Client, descriptor, digest_of, make_image, push_artifact, random_blob
from tests.server import AUTH_OFF, MoorageServer, auth_config, ecr_client, login_password, principal_toml

ACCOUNT, REGION = "000000000000", "us-east-1"
ALLOW_ECR = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ecr:*", "Resource": "*"}]}
)
USERS = {name: (f"AKIAMOORAGE{name.upper():0<9}", f"{name}-secret-0123456789") for name in ("pusher", "scanner")}
ALL_REPOSITORIES = f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/*"


def user_arn(name: str) -> str:
    return f"arn:aws:iam::{ACCOUNT}:user/{name}"


def deny_all_ecr(name: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "NoEcrFor" + name,
                    "Effect": "Deny",
                    "Principal": {"AWS": user_arn(name)},
                    "Action": "ecr:*",
                    "Resource": ALL_REPOSITORIES,
                }
            ],
        }
    )


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    srv = MoorageServer(tmp_path_factory.mktemp("settings-up") / "data", AUTH_OFF).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, upstream: MoorageServer) -> Iterator[MoorageServer]:
    principals = [principal_toml(name, key, secret, ALLOW_ECR) for name, (key, secret) in USERS.items()]
    extra = (
        '[lifecycle]\nevaluation_interval = "1s"\n'
        f'[pull_through]\nallowed_upstreams = ["127.0.0.1"]\n'
        f'[[pull_through.rules]]\necr_repository_prefix = "up"\nupstream_registry_url = "{upstream.url}"\n'
    )
    server = MoorageServer(tmp_path_factory.mktemp("settings") / "data", auth_config(*principals, extra=extra))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ecr(srv: MoorageServer) -> Any:
    return ecr_client(srv)


@pytest.fixture(scope="module")
def admin(srv: MoorageServer) -> Client:
    return Client(srv.url, ("AWS", login_password(srv)))


def client_of(srv: MoorageServer, name: str) -> Client:
    return Client(srv.url, ("AWS", login_password(srv, *USERS[name])))


def error_of(call: Any, code: str, **params: Any) -> str:
    with pytest.raises(ClientError) as info:
        call(**params)
    assert info.value.response["Error"]["Code"] == code, info.value.response
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    return str(info.value.response["Error"]["Message"])


def push(client: Client, repo: str, tag: str) -> int:
    """Push a small image the way docker does; the status of the manifest PUT (or of the first refused step)."""
    image = make_image(1, 128)
    for blob in image.blobs:
        r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest_of(blob)}, data=blob)
        if r.status_code != 201:
            return r.status_code
    r = client.put(f"/v2/{repo}/manifests/{tag}", data=image.manifest, headers={"Content-Type": image.media_type})
    return r.status_code


# -- the registry policy -----------------------------------------------------------------------------------


def test_registry_policy_scopes(srv: MoorageServer, ecr: Any, upstream: MoorageServer) -> None:
    pusher = client_of(srv, "pusher")
    Client(upstream.url).push_image("lib/app", "v1", make_image(1, 128))
    ecr.create_repository(repositoryName="scoped/app")
    assert push(pusher, "scoped/app", "before") == 201, "the identity policy allows the push"
    assert ecr.get_account_setting(name="REGISTRY_POLICY_SCOPE")["value"] == "V2", "ECR's default for new registries"
    error_of(ecr.get_registry_policy, "RegistryPolicyNotFoundException")

    put = assert_matches_output("PutRegistryPolicy", ecr.put_registry_policy(policyText=deny_all_ecr("pusher")))
    assert json.loads(put["policyText"]) == json.loads(deny_all_ecr("pusher")) and put["registryId"] == ACCOUNT
    assert ecr.get_registry_policy()["policyText"] == put["policyText"]
    try:
        # V2: the Deny governs every ecr:* action, the push among them, on /v2 and on the ECR API alike.
        assert push(pusher, "scoped/app", "v2") == 403
        pusher_api = ecr_client(srv, *USERS["pusher"])
        message = error_of(pusher_api.list_images, "AccessDeniedException", repositoryName="scoped/app")
        assert "explicit deny in a resource-based policy" in message, message
        assert push(client_of(srv, "scanner"), "scoped/app", "other") == 201, "another principal is not denied"

        # V1: the same policy no longer reaches the push, but still the pull-through cache's import.
        ecr.put_account_setting(name="REGISTRY_POLICY_SCOPE", value="V1")
        assert push(pusher, "scoped/app", "v1") == 201
        r = pusher.get("/v2/up/lib/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
        assert r.status_code == 403, (r.status_code, r.text)
        assert "ecr:BatchImportUpstreamImage" in r.text or "ecr:CreateRepository" in r.text, r.text
        # Under V1 a registry policy may only name V1's actions.
        narrow = deny_all_ecr("pusher").replace('"ecr:*"', '"ecr:PutImage"')
        assert "scope V1" in error_of(ecr.put_registry_policy, "InvalidParameterException", policyText=narrow)
    finally:
        deleted = ecr.delete_registry_policy()
        ecr.put_account_setting(name="REGISTRY_POLICY_SCOPE", value="V2")
    assert deleted["policyText"] == put["policyText"]
    error_of(ecr.delete_registry_policy, "RegistryPolicyNotFoundException")
    r = pusher.get("/v2/up/lib/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200, (r.status_code, r.text)


def test_registry_policy_must_be_a_resource_policy_of_ecr_actions(ecr: Any) -> None:
    for bad in (
        "{not json",
        json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": "ecr:*", "Resource": "*"}]}),
        deny_all_ecr("x").replace('"ecr:*"', '"s3:GetObject"'),
    ):
        message = error_of(ecr.put_registry_policy, "InvalidParameterException", policyText=bad)
        assert message.startswith("Invalid parameter at 'PolicyText' failed to satisfy constraint"), message


# -- account settings and blob mounting --------------------------------------------------------------------


def test_account_settings_defaults_and_errors(ecr: Any) -> None:
    defaults = {"BASIC_SCAN_TYPE_VERSION": "AWS_NATIVE", "REGISTRY_POLICY_SCOPE": "V2", "BLOB_MOUNTING": "ENABLED"}
    for name, value in defaults.items():
        got = assert_matches_output("GetAccountSetting", ecr.get_account_setting(name=name))
        assert (got["name"], got["value"]) == (name, value)
    assert "enum value set" in error_of(ecr.get_account_setting, "InvalidParameterException", name="NO_SUCH")
    message = error_of(ecr.put_account_setting, "InvalidParameterException", name="BLOB_MOUNTING", value="ON")
    assert "ENABLED, DISABLED" in message
    put = ecr.put_account_setting(name="BASIC_SCAN_TYPE_VERSION", value="CLAIR")
    assert (put["name"], put["value"]) == ("BASIC_SCAN_TYPE_VERSION", "CLAIR")
    assert ecr.get_account_setting(name="BASIC_SCAN_TYPE_VERSION")["value"] == "CLAIR"
    ecr.put_account_setting(name="BASIC_SCAN_TYPE_VERSION", value="AWS_NATIVE")


def test_blob_mounting_links_only_when_enabled(ecr: Any, admin: Client) -> None:
    blob = random_blob(300)
    admin.push_blob("mount/src", blob)
    d = digest_of(blob)
    try:
        ecr.put_account_setting(name="BLOB_MOUNTING", value="DISABLED")
        r = admin.post("/v2/mount/dst/blobs/uploads/", params={"mount": d, "from": "mount/src"})
        assert r.status_code == 202 and "/blobs/uploads/" in r.headers["Location"], (r.status_code, r.headers)
        assert admin.head(f"/v2/mount/dst/blobs/{d}").status_code == 404, "nothing was linked"
    finally:
        ecr.put_account_setting(name="BLOB_MOUNTING", value="ENABLED")
    r = admin.post("/v2/mount/dst/blobs/uploads/", params={"mount": d, "from": "mount/src"})
    assert r.status_code == 201 and r.headers["Docker-Content-Digest"] == d, (r.status_code, r.text)


# -- pull-time update exclusions -----------------------------------------------------------------------------


def seed_pushed_at(srv: MoorageServer, repo: str, digest: str, days_ago: float) -> None:
    with contextlib.closing(sqlite3.connect(srv.data_dir / "moorage.db", timeout=30)) as db, db:
        db.execute(
            "UPDATE manifests SET pushed_at = ? WHERE digest = ? "
            "AND repository_id = (SELECT id FROM repositories WHERE name = ?)",
            (time.time() - days_ago * 86400, digest, repo),
        )


def test_excluded_principals_pulls_leave_images_to_lifecycle(srv: MoorageServer, ecr: Any, admin: Client) -> None:
    scanner = user_arn("scanner")
    registered = assert_matches_output(
        "RegisterPullTimeUpdateExclusion", ecr.register_pull_time_update_exclusion(principalArn=scanner)
    )
    assert registered["principalArn"] == scanner and abs(registered["createdAt"].timestamp() - time.time()) < 30
    error_of(ecr.register_pull_time_update_exclusion, "ExclusionAlreadyExistsException", principalArn=scanner)
    assert ecr.list_pull_time_update_exclusions()["pullTimeUpdateExclusions"] == [scanner]

    repo = "excluded/app"
    scanned, used = make_image(1, 128), make_image(1, 128)
    admin.push_image(repo, "scanned", scanned)
    admin.push_image(repo, "used", used)
    for image in (scanned, used):
        seed_pushed_at(srv, repo, image.digest, 30)
    # The scanner pulls the first image on /v2 and through the ECR API; an ordinary principal pulls the second.
    scanner_v2 = client_of(srv, "scanner")
    assert scanner_v2.get(f"/v2/{repo}/manifests/scanned", headers={"Accept": OCI_MANIFEST}).status_code == 200
    ecr_client(srv, *USERS["scanner"]).batch_get_image(repositoryName=repo, imageIds=[{"imageTag": "scanned"}])
    assert admin.get(f"/v2/{repo}/manifests/used", headers={"Accept": OCI_MANIFEST}).status_code == 200

    def details() -> dict[str, dict[str, Any]]:
        return {d["imageDigest"]: d for d in ecr.describe_images(repositoryName=repo)["imageDetails"]}

    wait_for(lambda: "lastRecordedPullTime" in details()[used.digest], 15, "the ordinary pull's time")
    assert "lastRecordedPullTime" not in details()[scanned.digest], "the excluded principal's pull was recorded"

    rule = {
        "rulePriority": 1,
        "description": "archive what nobody pulled for a week",
        "selection": {"tagStatus": "any", "countType": "sinceImagePulled", "countUnit": "days", "countNumber": 7},
        "action": {"type": "transition", "targetStorageClass": "archive"},
    }
    ecr.put_lifecycle_policy(repositoryName=repo, lifecyclePolicyText=json.dumps({"rules": [rule]}))

    def statuses() -> tuple[str, str]:
        d = details()
        return d[scanned.digest]["imageStatus"], d[used.digest]["imageStatus"]

    wait_for(lambda: statuses() == ("ARCHIVED", "ACTIVE"), 15, "the sweep", details=lambda: str(statuses()))

    deregistered = ecr.deregister_pull_time_update_exclusion(principalArn=scanner)
    assert assert_matches_output("DeregisterPullTimeUpdateExclusion", deregistered)["principalArn"] == scanner
    assert ecr.list_pull_time_update_exclusions()["pullTimeUpdateExclusions"] == []
    error_of(ecr.deregister_pull_time_update_exclusion, "ExclusionNotFoundException", principalArn=scanner)


def test_exclusions_are_paged(ecr: Any) -> None:
    arns = [f"arn:aws:iam::{ACCOUNT}:role/mirror-{i:02}" for i in range(5)]
    for arn in arns:
        ecr.register_pull_time_update_exclusion(principalArn=arn)
    try:
        seen, token = [], None
        while True:
            page = ecr.list_pull_time_update_exclusions(maxResults=2, **({"nextToken": token} if token else {}))
            assert len(page["pullTimeUpdateExclusions"]) <= 2
            seen += page["pullTimeUpdateExclusions"]
            token = page.get("nextToken")
            if token is None:
                break
        assert seen == arns
    finally:
        for arn in arns:
            ecr.deregister_pull_time_update_exclusion(principalArn=arn)


# -- ListImageReferrers -------------------------------------------------------------------------------------


def test_list_image_referrers(ecr: Any, admin: Client) -> None:
    repo = "referred/app"
    image = make_image(1, 128)
    admin.push_image(repo, "v1", image)
    subject = descriptor(OCI_MANIFEST, image.manifest)
    sigs = [push_artifact(admin, repo, subject, "application/vnd.example.sig")["digest"] for _ in range(22)]
    sboms = [push_artifact(admin, repo, subject, "application/vnd.example.sbom")["digest"] for _ in range(3)]
    v2 = admin.get(f"/v2/{repo}/referrers/{image.digest}").json()["manifests"]

    def listed(**params: Any) -> list[dict[str, Any]]:
        out, token = [], None
        while True:
            more = {"nextToken": token} if token else {}
            page = ecr.list_image_referrers(
                repositoryName=repo, subjectId={"imageDigest": image.digest}, **params, **more
            )
            assert_matches_output("ListImageReferrers", page)
            out.append(page)
            token = page.get("nextToken")
            if token is None:
                return out

    pages = listed()
    assert [len(p["referrers"]) for p in pages] == [20, 5], "ECR's page: 20 without maxResults"
    everything = [r for p in pages for r in p["referrers"]]
    assert [(r["digest"], r["mediaType"], r["size"], r["artifactType"]) for r in everything] == [
        (m["digest"], m["mediaType"], m["size"], m["artifactType"]) for m in v2
    ], "the same artifacts, in the same order, as /v2 referrers"
    assert {r["artifactStatus"] for r in everything} == {"ACTIVE"}
    assert [len(p["referrers"]) for p in listed(maxResults=50)] == [25]
    only_sboms = listed(filter={"artifactTypes": ["application/vnd.example.sbom"]})
    assert sorted(r["digest"] for p in only_sboms for r in p["referrers"]) == sorted(sboms)

    ecr.update_image_storage_class(repositoryName=repo, imageId={"imageDigest": sigs[0]}, targetStorageClass="ARCHIVE")
    active = [r["digest"] for p in listed(maxResults=50) for r in p["referrers"]]
    assert sigs[0] not in active and len(active) == 24, "ACTIVE only without a status filter"
    archived = [r for p in listed(filter={"artifactStatus": "ARCHIVED"}) for r in p["referrers"]]
    assert [(r["digest"], r["artifactStatus"]) for r in archived] == [(sigs[0], "ARCHIVED")]
    assert len([r for p in listed(filter={"artifactStatus": "ANY"}, maxResults=50) for r in p["referrers"]]) == 25
    error_of(
        ecr.list_image_referrers,
        "InvalidParameterException",
        repositoryName=repo,
        subjectId={"imageDigest": image.digest},
        maxResults=51,
    )


# -- scanning, signing, replication -----------------------------------------------------------------------------


def test_scanning_configuration(ecr: Any, admin: Client) -> None:
    assert ecr.get_registry_scanning_configuration()["scanningConfiguration"] == {"scanType": "BASIC", "rules": []}
    ecr.create_repository(repositoryName="scan/one", imageScanningConfiguration={"scanOnPush": True})
    ecr.create_repository(repositoryName="plain/two")
    rules = [{"scanFrequency": "SCAN_ON_PUSH", "repositoryFilters": [{"filter": "plain/*", "filterType": "WILDCARD"}]}]
    put = ecr.put_registry_scanning_configuration(scanType="BASIC", rules=rules)
    assert put["registryScanningConfiguration"] == {"scanType": "BASIC", "rules": rules}
    got = ecr.batch_get_repository_scanning_configuration(repositoryNames=["scan/one", "plain/two", "none/such"])
    by_name = {c["repositoryName"]: c for c in got["scanningConfigurations"]}
    assert by_name["scan/one"]["scanFrequency"] == "SCAN_ON_PUSH" and by_name["scan/one"]["appliedScanFilters"] == []
    assert by_name["plain/two"]["appliedScanFilters"] == rules[0]["repositoryFilters"]
    assert got["failures"] == [
        {"repositoryName": "none/such", "failureCode": "REPOSITORY_NOT_FOUND", "failureReason": "REPOSITORY_NOT_FOUND"}
    ]
    continuous = [{**rules[0], "scanFrequency": "CONTINUOUS_SCAN"}]
    error_of(ecr.put_registry_scanning_configuration, "InvalidParameterException", scanType="BASIC", rules=continuous)
    ecr.put_registry_scanning_configuration(scanType="BASIC", rules=[])

    admin.push_image("scan/one", "v1", make_image(1, 64))
    started = ecr.start_image_scan(repositoryName="scan/one", imageId={"imageTag": "v1"})
    assert started["imageScanStatus"]["status"] == "IN_PROGRESS"  # (tests/test_scanning.py: what it finds)
    error_of(ecr.start_image_scan, "ImageNotFoundException", repositoryName="scan/one", imageId={"imageTag": "v9"})
    error_of(ecr.start_image_scan, "RepositoryNotFoundException", repositoryName="no/repo", imageId={"imageTag": "v1"})
    ecr.update_image_storage_class(repositoryName="scan/one", imageId={"imageTag": "v1"}, targetStorageClass="ARCHIVE")
    error_of(ecr.start_image_scan, "ImageArchivedException", repositoryName="scan/one", imageId={"imageTag": "v1"})
    findings = ecr.describe_image_scan_findings(repositoryName="scan/one", imageId={"imageTag": "v1"})
    assert assert_matches_output("DescribeImageScanFindings", findings)["imageScanStatus"]["status"] == "IMAGE_ARCHIVED"


def test_signing_configuration_and_status(ecr: Any, admin: Client) -> None:
    error_of(ecr.get_signing_configuration, "SigningConfigurationNotFoundException")
    admin.push_image("signed/app", "v1", make_image(1, 64))
    image_id = {"imageTag": "v1"}
    assert ecr.describe_image_signing_status(repositoryName="signed/app", imageId=image_id)["signingStatuses"] == []
    profile = f"arn:aws:signer:{REGION}:{ACCOUNT}:/signing-profiles/team_profile"
    config = {
        "rules": [
            {
                "signingProfileArn": profile,
                "repositoryFilters": [{"filter": "signed/*", "filterType": "WILDCARD_MATCH"}],
            }
        ]
    }
    assert ecr.put_signing_configuration(signingConfiguration=config)["signingConfiguration"] == config
    assert ecr.get_signing_configuration()["signingConfiguration"] == config
    (status,) = ecr.describe_image_signing_status(repositoryName="signed/app", imageId=image_id)["signingStatuses"]
    assert (status["signingProfileArn"], status["status"]) == (profile, "FAILED")
    assert ecr.delete_signing_configuration()["signingConfiguration"] == config
    error_of(ecr.delete_signing_configuration, "SigningConfigurationNotFoundException")


def test_replication_configuration_and_status(ecr: Any, admin: Client) -> None:
    admin.push_image("replicated/app", "v1", make_image(1, 64))
    admin.push_image("local/app", "v1", make_image(1, 64))
    config = {
        "rules": [
            {
                "destinations": [{"region": "eu-west-1", "registryId": "111122223333"}],
                "repositoryFilters": [{"filter": "replicated", "filterType": "PREFIX_MATCH"}],
            }
        ]
    }
    assert ecr.put_replication_configuration(replicationConfiguration=config)["replicationConfiguration"] == config
    assert ecr.describe_registry()["replicationConfiguration"] == config
    # Pushed before the rule: not replicated (a backfill would copy it), no status.
    status = ecr.describe_image_replication_status(repositoryName="replicated/app", imageId={"imageTag": "v1"})
    assert status["replicationStatuses"] == []
    # Pushed after: queued, and failed at once, saying why (this server's configuration names no such peer).
    admin.push_image("replicated/app", "v2", make_image(1, 64))

    def replicated() -> list[dict[str, str]]:
        out = ecr.describe_image_replication_status(repositoryName="replicated/app", imageId={"imageTag": "v2"})
        return [s for s in out["replicationStatuses"] if s["status"] == "FAILED"]

    (destination,) = wait_for(replicated, 30, "the copy's status")
    assert (destination["region"], destination["registryId"]) == ("eu-west-1", "111122223333")
    assert "no [[replication.destinations]] entry" in destination["failureCode"], destination
    local = ecr.describe_image_replication_status(repositoryName="local/app", imageId={"imageTag": "v1"})
    assert local["replicationStatuses"] == [], "no rule sends it anywhere"
    to_self = {"rules": [{"destinations": [{"region": REGION, "registryId": ACCOUNT}]}]}
    message = error_of(ecr.put_replication_configuration, "InvalidParameterException", replicationConfiguration=to_self)
    assert "same as the source registry" in message
    ecr.put_replication_configuration(replicationConfiguration={"rules": []})
    assert ecr.describe_registry()["replicationConfiguration"] == {"rules": []}


# -- every worker applies the policy at once --------------------------------------------------------------------


def test_every_worker_applies_a_new_registry_policy_at_once(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Two workers: the policy put through one of them governs the very next request, whichever worker it
    reaches (each request on a fresh connection), and so does its deletion."""
    principals = [principal_toml(name, key, secret, ALLOW_ECR) for name, (key, secret) in USERS.items()]
    server = MoorageServer(tmp_path_factory.mktemp("settings-workers") / "data", auth_config(*principals), workers=2)
    server.start()
    try:
        ecr = ecr_client(server)
        ecr.create_repository(repositoryName="workers/app")
        password = login_password(server, *USERS["pusher"])
        for round_ in range(3):
            ecr.put_registry_policy(policyText=deny_all_ecr("pusher"))
            for i in range(6):
                assert push(Client(server.url, ("AWS", password)), "workers/app", f"d{round_}-{i}") == 403
            ecr.delete_registry_policy()
            for i in range(6):
                assert push(Client(server.url, ("AWS", password)), "workers/app", f"a{round_}-{i}") == 201
    finally:
        server.stop()
