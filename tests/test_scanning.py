"""Vulnerability scanning for real: images whose layers hold a dpkg status, an apk database, Python and npm
packages, a small OSV database loaded with `moorage vuln-db import`, and the exact findings through boto3
(scan on push, StartImageScan, the ImageScanComplete waiter, DescribeImages' summary, ENHANCED's shape), a
rescan when a newer database affects an image under CONTINUOUS_SCAN, and scans that never count as pulls."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.ecr_shapes import assert_matches_output
from tests.helpers import wait_for
from tests.oci import OCI_INDEX, OCI_MANIFEST, SIG, Client, descriptor, make_image, push_artifact
from tests.scan_images import HIGH, RECORDS, alpine_image, debian_image, osv, write_export
from tests.server import MoorageServer, auth_config, ecr_client, login_password, principal_toml

WAIT = {"Delay": 1, "MaxAttempts": 60}
PULLER = ("AKIAPULLERONLY000001", "puller-secret-0123456789")
PULL_ONLY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["ecr:GetAuthorizationToken", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"],
                "Resource": "*",
            }
        ],
    }
)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    root = tmp_path_factory.mktemp("scanning")
    puller = principal_toml("puller", *PULLER, PULL_ONLY)
    server = MoorageServer(root / "data", auth_config(puller, extra='[scanning]\nsweep_interval = "1s"\n')).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ecr(srv: MoorageServer) -> Any:
    return ecr_client(srv)


@pytest.fixture(scope="module")
def v2(srv: MoorageServer) -> Client:
    return Client(srv.url, ("AWS", login_password(srv)))


def vuln_db(srv: MoorageServer, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "registry",
            "vuln-db",
            "import",
            "--config",
            str(srv.config_path),
            "--data-dir",
            str(srv.data_dir),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def loaded(srv: MoorageServer, ecr: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    p = vuln_db(srv, write_export(tmp_path_factory.mktemp("osv") / "all.zip", RECORDS))
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert (report["recordsRead"], report["recordsNewOrChanged"], report["recordsLoaded"]) == (6, 6, 6), report
    ecr.put_registry_scanning_configuration(scanType="BASIC", rules=[ON_PUSH])


ON_PUSH = {"scanFrequency": "SCAN_ON_PUSH", "repositoryFilters": [{"filter": "scan/*", "filterType": "WILDCARD"}]}
CONTINUOUS = {"scanFrequency": "CONTINUOUS_SCAN", "repositoryFilters": [{"filter": "cont/*", "filterType": "WILDCARD"}]}


def findings(ecr: Any, repository: str, tag: str) -> set[tuple[str, str, str, str]]:
    """(name, package, version, severity) of every finding, all pages read."""
    out = set()
    for page in ecr.get_paginator("describe_image_scan_findings").paginate(
        repositoryName=repository, imageId={"imageTag": tag}, PaginationConfig={"PageSize": 2}
    ):
        for f in page.get("imageScanFindings", {}).get("findings", []):
            attrs = {a["key"]: a.get("value") for a in f["attributes"]}
            out.add((f["name"], attrs["package_name"], attrs["package_version"], f["severity"]))
        for f in page.get("imageScanFindings", {}).get("enhancedFindings", []):  # the scan type is ENHANCED
            details = f["packageVulnerabilityDetails"]
            (package,) = details["vulnerablePackages"]
            out.add((details["vulnerabilityId"], package["name"], package["version"], f["severity"]))
    return out


def scanned(ecr: Any, repository: str, tag: str) -> dict[str, Any]:
    ecr.get_waiter("image_scan_complete").wait(repositoryName=repository, imageId={"imageTag": tag}, WaiterConfig=WAIT)
    return ecr.describe_image_scan_findings(repositoryName=repository, imageId={"imageTag": tag})


DEBIAN_FINDINGS = {
    ("CVE-2023-5678", "libssl3", "3.0.11-1~deb12u1", "CRITICAL"),
    ("CVE-2021-23337", "lodash", "4.17.15", "HIGH"),
    ("CVE-2023-32681", "requests", "2.25.0", "MEDIUM"),
}


def test_a_push_is_scanned_and_its_findings_are_exact(loaded: None, ecr: Any, v2: Client):
    img = debian_image()
    v2.push_image("scan/app", "v1", img)
    out = scanned(ecr, "scan/app", "v1")
    assert out["imageScanStatus"]["status"] == "COMPLETE", out
    assert_matches_output("DescribeImageScanFindings", out)
    assert findings(ecr, "scan/app", "v1") == DEBIAN_FINDINGS
    summary = out["imageScanFindings"]
    assert summary["findingSeverityCounts"] == {"CRITICAL": 1, "HIGH": 1, "MEDIUM": 1}
    openssl = next(f for f in summary["findings"] if f["name"] == "CVE-2023-5678")
    attrs = {a["key"]: a["value"] for a in openssl["attributes"]}
    assert openssl["uri"] == "https://example.test/advisories/DSA-5532-1"
    assert (attrs["source_package"], attrs["fixed_in_versions"], attrs["CVSS3_SCORE"]) == (
        "openssl",
        "3.0.11-1~deb12u2",
        "9.8",
    )
    # DescribeImages carries the status and the counts; the scan read the blobs but pulled nothing.
    (detail,) = ecr.describe_images(repositoryName="scan/app", imageIds=[{"imageTag": "v1"}])["imageDetails"]
    assert detail["imageScanStatus"]["status"] == "COMPLETE"
    assert detail["imageScanFindingsSummary"]["findingSeverityCounts"] == {"CRITICAL": 1, "HIGH": 1, "MEDIUM": 1}
    assert "lastRecordedPullTime" not in detail
    assert_matches_output("DescribeImages", {"imageDetails": [detail]})


def test_start_image_scan_scans_an_image_no_rule_covers(loaded: None, ecr: Any, v2: Client):
    v2.push_image("manual/alpine", "v1", alpine_image())
    with pytest.raises(ClientError) as e:  # no rule: not scanned on push
        ecr.describe_image_scan_findings(repositoryName="manual/alpine", imageId={"imageTag": "v1"})
    assert e.value.response["Error"]["Code"] == "ScanNotFoundException"
    started = ecr.start_image_scan(repositoryName="manual/alpine", imageId={"imageTag": "v1"})
    assert started["imageScanStatus"]["status"] == "IN_PROGRESS"
    assert scanned(ecr, "manual/alpine", "v1")["imageScanStatus"]["status"] == "COMPLETE"
    assert findings(ecr, "manual/alpine", "v1") == {("CVE-2023-42366", "busybox", "1.36.1-r15", "LOW")}


def test_enhanced_scanning_answers_inspector_shaped_findings(loaded: None, ecr: Any, v2: Client):
    v2.push_image("scan/enhanced", "v1", debian_image())
    scanned(ecr, "scan/enhanced", "v1")
    config = ecr.get_registry_scanning_configuration()["scanningConfiguration"]
    ecr.put_registry_scanning_configuration(scanType="ENHANCED", rules=config["rules"])
    try:
        out = ecr.describe_image_scan_findings(repositoryName="scan/enhanced", imageId={"imageTag": "v1"})
        assert_matches_output("DescribeImageScanFindings", out)
        enhanced = out["imageScanFindings"]["enhancedFindings"]
        by_id = {f["packageVulnerabilityDetails"]["vulnerabilityId"]: f for f in enhanced}
        assert set(by_id) == {"CVE-2023-5678", "CVE-2021-23337", "CVE-2023-32681"}
        openssl = by_id["CVE-2023-5678"]
        (package,) = openssl["packageVulnerabilityDetails"]["vulnerablePackages"]
        assert (package["name"], package["version"], package["fixedInVersion"], package["release"]) == (
            "libssl3",
            "3.0.11-1~deb12u1",
            "3.0.11-1~deb12u2",
            "12",
        )
        assert (openssl["severity"], openssl["score"], openssl["fixAvailable"]) == ("CRITICAL", 9.8, "YES")
    finally:
        ecr.put_registry_scanning_configuration(scanType="BASIC", rules=config["rules"])


def test_a_newer_database_rescans_images_under_continuous_scan(
    loaded: None, srv: MoorageServer, ecr: Any, v2: Client, tmp_path: Path
):
    # CONTINUOUS_SCAN needs the ENHANCED scan type, as on ECR
    ecr.put_registry_scanning_configuration(scanType="ENHANCED", rules=[ON_PUSH, CONTINUOUS])
    try:
        rescanned_after_import(srv, ecr, v2, tmp_path)
    finally:
        ecr.put_registry_scanning_configuration(scanType="BASIC", rules=[ON_PUSH])


def rescanned_after_import(srv: MoorageServer, ecr: Any, v2: Client, tmp_path: Path) -> None:
    v2.push_image("cont/app", "v1", debian_image())
    v2.push_image("scan/unchanged", "v1", debian_image())  # SCAN_ON_PUSH only: not rescanned
    scanned(ecr, "cont/app", "v1")
    scanned(ecr, "scan/unchanged", "v1")
    assert findings(ecr, "cont/app", "v1") == DEBIAN_FINDINGS
    newer = [osv("DSA-5600-1", "Debian", "zlib", "1:1.3.dfsg-1", vector=HIGH, aliases=("CVE-2024-0001",))]
    p = vuln_db(srv, write_export(tmp_path / "newer.zip", newer))
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert (report["recordsNewOrChanged"], report["rescansQueued"], report["recordsLoaded"]) == (1, 1, 7), report
    expected = DEBIAN_FINDINGS | {("CVE-2024-0001", "zlib1g", "1:1.2.13.dfsg-1", "HIGH")}
    wait_for(lambda: findings(ecr, "cont/app", "v1") == expected, 60, "the rescan to find the new advisory")
    assert findings(ecr, "scan/unchanged", "v1") == DEBIAN_FINDINGS
    # importing the same export again changes nothing and queues nothing
    p = vuln_db(srv, tmp_path / "newer.zip")
    assert json.loads(p.stdout)["rescansQueued"] == 0


def test_what_is_not_an_image_is_unsupported(loaded: None, ecr: Any, v2: Client):
    img = debian_image()
    v2.push_image("scan/multi", img.digest, img)
    index = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor(OCI_MANIFEST, img.manifest)]}
    )
    v2.push_manifest("scan/multi", "v1", index.encode(), OCI_INDEX)
    push_artifact(v2, "scan/multi", descriptor(OCI_MANIFEST, img.manifest), SIG, ref="sig")
    for tag in ("v1", "sig"):
        out = scanned_or_unsupported(ecr, "scan/multi", tag)
        assert out["imageScanStatus"]["status"] == "UNSUPPORTED_IMAGE", out


def scanned_or_unsupported(ecr: Any, repository: str, tag: str) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        out = ecr.describe_image_scan_findings(repositoryName=repository, imageId={"imageTag": tag})
        return out if out["imageScanStatus"]["status"] != "IN_PROGRESS" else None

    return wait_for(ended, 60, f"the scan of {repository}:{tag}")


def test_vuln_db_import_refuses_what_is_not_an_osv_export(srv: MoorageServer, tmp_path: Path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    p = vuln_db(srv, bad)
    assert p.returncode == 1 and "moorage:" in p.stderr and "Traceback" not in p.stderr, p.stderr
    p = vuln_db(srv, tmp_path / "missing.zip")
    assert p.returncode == 1 and "missing.zip" in p.stderr, p.stderr


def test_the_console_shows_an_images_findings(loaded: None, srv: MoorageServer, ecr: Any, v2: Client):
    from registry.web.console.pages import image_url
    from tests.console.conftest import sign_in_session

    img = debian_image()
    v2.push_image("scan/console", "v1", img)
    scanned(ecr, "scan/console", "v1")
    page = sign_in_session(srv.url).get(srv.url + image_url("scan/console", img.digest), timeout=10)
    assert page.status_code == 200, page.text
    text = page.text
    assert 'id="scan" data-status="COMPLETE"' in text
    for advisory in ("DSA-5532-1", "GHSA-35jh-r3h4-6jhm", "GHSA-j8r2-6x86-q33q"):
        assert f'data-id="{advisory}"' in text, advisory
    assert 'data-severity="CRITICAL">1 critical' in text and "3.0.11-1~deb12u2" in text


def test_scratch_files_left_by_a_killed_process_are_removed(srv: MoorageServer):
    """A process killed mid-scan leaves its spooled layers (object storage's blobs, copied to be read) and a
    database file it was writing; the sweep removes those of processes that no longer run, never a live one's."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    scratch = srv.data_dir / "scanning"
    (scratch / "vulnerability-db").mkdir(parents=True, exist_ok=True)
    left = [scratch / f"layer-{dead.pid}-k1ll3d", scratch / "vulnerability-db" / f".osv-1-2.jsonl.{dead.pid}.tmp"]
    live = scratch / f"layer-{os.getpid()}-running"
    for path in [*left, live]:
        path.write_bytes(b"x" * 4096)
    wait_for(lambda: not any(p.exists() for p in left), 30, "the leftovers to be removed")
    assert live.exists()
    live.unlink()


def test_a_layer_that_is_no_tar_is_unsupported_and_named_by_its_digest(
    loaded: None, srv: MoorageServer, ecr: Any, v2: Client
):
    img = make_image(1, 512)  # its layer is random bytes
    v2.push_image("scan/not-a-tar", "v1", img)
    out = scanned_or_unsupported(ecr, "scan/not-a-tar", "v1")
    status = out["imageScanStatus"]
    assert status["status"] == "UNSUPPORTED_IMAGE", out
    layer = descriptor("", img.blobs[-1])["digest"]
    assert layer in status["description"], status
    assert str(srv.data_dir) not in status["description"] and "/blobs/" not in status["description"], status


def test_the_console_shows_findings_only_to_who_may_describe_them(
    loaded: None, srv: MoorageServer, ecr: Any, v2: Client
):
    """A principal allowed to pull but not ecr:DescribeImageScanFindings sees the image's page, not its findings
    (which DescribeImageScanFindings refuses it)."""
    from registry.web.console.pages import image_url
    from tests.console.conftest import sign_in_session

    img = debian_image()
    v2.push_image("scan/pull-only", "v1", img)
    scanned(ecr, "scan/pull-only", "v1")
    with pytest.raises(ClientError) as e:
        ecr_client(srv, *PULLER).describe_image_scan_findings(
            repositoryName="scan/pull-only", imageId={"imageTag": "v1"}
        )
    assert e.value.response["Error"]["Code"] == "AccessDeniedException"
    page = sign_in_session(srv.url, *PULLER).get(srv.url + image_url("scan/pull-only", img.digest), timeout=10)
    assert page.status_code == 200, page.text
    assert img.digest in page.text
    assert 'id="scan"' not in page.text and "DSA-5532-1" not in page.text
