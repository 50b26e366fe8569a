"""Vulnerability scanning's engine, part three: OSV records matched against packages
(registry/scanning/matcher.py), on a small OSV database the tests write, read back through `osv.read_export`."""

from __future__ import annotations

import json
import random
import time
import zipfile
from pathlib import Path
from typing import Any

from registry.scanning import osv
from registry.scanning.matcher import Finding, VulnIndex, cvss_severity, index_keys
from registry.scanning.packages import Package

GLIBC_VECTOR = "CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H"  # CVE-2023-4911: 7.8
REQUESTS_VECTOR = "CVSS:3.1/AV:N/AC:H/PR:N/UI:R/S:C/C:H/I:N/A:N"  # CVE-2023-32681: 6.1
LODASH_VECTOR = "CVSS:3.1/AV:N/AC:L/PR:H/UI:N/S:U/C:H/I:H/A:H"  # CVE-2021-23337: 7.2
MINIMIST_VECTOR = "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N"  # 9.3

OPENSSL = Package("Debian:12", "openssl", "3.0.11-1~deb12u2", "var/lib/dpkg/status", binary="libssl3")
GLIBC = Package("Debian:12", "glibc", "2.36-9+deb12u3", "var/lib/dpkg/status", binary="libc6")
BASH = Package("Debian:12", "bash", "5.2.15-2+b2", "var/lib/dpkg/status")
CURL = Package("Ubuntu:22.04:LTS", "curl", "7.81.0-1ubuntu1.14", "var/lib/dpkg/status")
REQUESTS = Package("PyPI", "requests", "2.31.0", "site-packages/requests-2.31.0.dist-info/METADATA")
PYYAML = Package("PyPI", "pyyaml", "5.3", "site-packages/PyYAML-5.3.dist-info/METADATA")
DJANGO = Package("PyPI", "django", "4.2.0", "site-packages/Django-4.2.0.dist-info/METADATA")
FLASK = Package("PyPI", "flask", "2.0.0", "site-packages/Flask-2.0.0.dist-info/METADATA")
LODASH = Package("npm", "lodash", "4.17.20", "app/node_modules/lodash/package.json")
MINIMIST = Package("npm", "minimist", "1.2.5", "app/node_modules/minimist/package.json")
LEFT_PAD = Package("npm", "left-pad", "1.3.0-beta.1", "app/node_modules/left-pad/package.json")
APK_OPENSSL = Package("Alpine:v3.19", "openssl", "3.1.4-r1", "lib/apk/db/installed", binary="libcrypto3")
PACKAGES = [OPENSSL, GLIBC, BASH, CURL, REQUESTS, PYYAML, DJANGO, FLASK, LODASH, MINIMIST, LEFT_PAD, APK_OPENSSL]


def affected(ecosystem: str, name: str, *ranges: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"package": {"ecosystem": ecosystem, "name": name}, "ranges": list(ranges), **more}


def ecosystem_range(*events: dict[str, str], kind: str = "ECOSYSTEM") -> dict[str, Any]:
    return {"type": kind, "events": list(events)}


def rec(record_id: str, *affects: dict[str, Any], modified: str = "2024-01-01T00:00:00Z", **fields: Any) -> dict:
    return {"schema_version": "1.6.0", "id": record_id, "modified": modified, "affected": list(affects), **fields}


DATABASE = [
    # Debian 12's openssl: fixed in the installed version (not affected), then a later advisory (affected)
    rec(
        "DSA-5532-1",
        affected("Debian:12", "openssl", ecosystem_range({"introduced": "0"}, {"fixed": "3.0.11-1~deb12u2"})),
    ),
    rec(
        "DSA-5600-1",
        affected("Debian:12", "openssl", ecosystem_range({"introduced": "0"}, {"fixed": "3.0.13-1~deb12u1"})),
        affected("Debian:11", "openssl", ecosystem_range({"introduced": "0"}, {"fixed": "1.1.1w-0+deb11u1"})),
        aliases=["CVE-2024-0727"],
        summary="openssl security update",
        details="Several vulnerabilities were discovered in OpenSSL.",
        published="2024-02-01T00:00:00Z",
        references=[{"type": "ADVISORY", "url": "https://www.debian.org/security/2024/dsa-5600"}],
    ),
    # the bare "Debian" ecosystem covers every release; "Debian:11" only Debian 11
    rec(
        "DEBIAN-CVE-2023-4911",
        affected("Debian", "glibc", ecosystem_range({"introduced": "0"}, {"fixed": "2.36-9+deb12u4"})),
        aliases=["CVE-2023-4911"],
        severity=[{"type": "CVSS_V3", "score": GLIBC_VECTOR}],
        references=[
            {"type": "WEB", "url": "https://security-tracker.debian.org/tracker/CVE-2023-4911"},
            {"type": "ADVISORY", "url": "https://www.openwall.com/lists/oss-security/2023/10/03/2"},
        ],
    ),
    rec("DLA-9999-1", affected("Debian:11", "glibc", ecosystem_range({"introduced": "0"}))),
    rec(
        "DEBIAN-CVE-2022-0001",
        affected("Debian", "glibc", ecosystem_range({"introduced": "0"}, {"fixed": "2.36-9+deb12u3"})),
    ),
    # Ubuntu's priority when there is no CVSS vector
    rec(
        "UBUNTU-CVE-2023-38545",
        affected("Ubuntu:22.04:LTS", "curl", ecosystem_range({"introduced": "0"}, {"fixed": "7.81.0-1ubuntu1.15"})),
        severity=[{"type": "Ubuntu", "score": "high"}],
    ),
    # PyPI: an ECOSYSTEM range, a non-normalised name, a GIT range and another ecosystem's entry ignored
    rec(
        "GHSA-j8r2-6x86-q33q",
        affected("PyPI", "Requests", ecosystem_range({"introduced": "2.3.0"}, {"fixed": "2.31.1"})),
        affected("Maven", "org.example:requests", ecosystem_range({"introduced": "0"})),
        {"package": {"ecosystem": "PyPI", "name": "requests"}, "ranges": [{"type": "GIT", "events": []}]},
        aliases=["CVE-2023-32681"],
        summary="Unintended leak of Proxy-Authorization header in requests",
        severity=[{"type": "CVSS_V3", "score": REQUESTS_VECTOR}],
        references=[{"type": "WEB", "url": "https://github.com/psf/requests/commit/74ea7cf"}],
        database_specific={"severity": "MODERATE"},
    ),
    # a versions list only; the severity from GitHub's word
    rec(
        "GHSA-8q59-q68h-6hv4",
        {"package": {"ecosystem": "PyPI", "name": "PyYAML"}, "versions": ["5.1", "5.2", "5.3"]},
        database_specific={"severity": "CRITICAL"},
    ),
    # last_affected: 4.2.0 is affected, flask 2.0.0 is past its last_affected
    rec(
        "PYSEC-2023-0001",
        affected("PyPI", "django", ecosystem_range({"introduced": "4.0"}, {"last_affected": "4.2.0"})),
        severity=[{"type": "CVSS_V3", "score": "not a vector"}],  # unreadable: no severity from it
        affected_severity_note="the affected entry's own severity wins over the record's",
    ),
    rec("PYSEC-2023-0002", affected("PyPI", "flask", ecosystem_range({"introduced": "0"}, {"last_affected": "1.9"}))),
    # npm: SEMVER ranges, two branches, a pre-release, CVSS v4 only
    rec(
        "GHSA-35jh-r3h4-6jhm",
        affected("npm", "lodash", ecosystem_range({"introduced": "0"}, {"fixed": "4.17.21"}, kind="SEMVER")),
        severity=[{"type": "CVSS_V3", "score": LODASH_VECTOR}],
    ),
    rec(
        "GHSA-xvch-5gv4-984h",
        affected(
            "npm",
            "minimist",
            ecosystem_range(
                {"introduced": "0"}, {"fixed": "0.2.4"}, {"introduced": "1.0.0"}, {"fixed": "1.2.6"}, kind="SEMVER"
            ),
        ),
        severity=[{"type": "CVSS_V4", "score": MINIMIST_VECTOR}],
    ),
    rec("GHSA-left-pad", affected("npm", "left-pad", ecosystem_range({"introduced": "0"}, {"fixed": "1.3.0"}))),
    # a withdrawn record
    rec(
        "GHSA-withdrawn",
        affected("npm", "lodash", ecosystem_range({"introduced": "0"})),
        withdrawn="2024-02-01T00:00:00Z",
    ),
    # Alpine: release-specific only
    rec(
        "ALPINE-CVE-2024-0727",
        affected("Alpine:v3.19", "openssl", ecosystem_range({"introduced": "0"}, {"fixed": "3.1.4-r5"})),
        affected("Alpine:v3.18", "openssl", ecosystem_range({"introduced": "0"}, {"fixed": "3.1.4-r0"})),
    ),
    rec("ALPINE-CVE-2023-0001", affected("Alpine:v3.18", "openssl", ecosystem_range({"introduced": "0"}))),
]
DATABASE[8]["affected"][0]["severity"] = [{"type": "CVSS_V3", "score": GLIBC_VECTOR}]
# the same id twice: the newer `modified` wins, whichever comes first
REPLACED_OLD = rec(
    "GHSA-replaced", affected("PyPI", "requests", ecosystem_range({"introduced": "0"})), modified="2023-05-01T00:00:00Z"
)
REPLACED_NEW = rec(
    "GHSA-replaced",
    affected("PyPI", "requests", ecosystem_range({"introduced": "0"}, {"fixed": "2.0"})),
    modified="2023-06-01T10:00:00.123456Z",
)


def write_database(path: Path, records: list[dict[str, Any]]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for index, record in enumerate(records):
            archive.writestr(f"{index:03}-{record['id']}.json", json.dumps(record))
    return path


def finding(record_id: str, package: Package, severity: str = "UNDEFINED", **fields: Any) -> Finding:
    values: dict[str, Any] = {
        "aliases": (),
        "score": None,
        "vector": None,
        "summary": "",
        "details": "",
        "uri": f"https://osv.dev/vulnerability/{record_id}",
        "fixed": (),
        "published": None,
        "modified": "2024-01-01T00:00:00Z",
        **fields,
    }
    return Finding(id=record_id, package=package, severity=severity, **values)


EXPECTED = [
    finding("GHSA-8q59-q68h-6hv4", PYYAML, "CRITICAL"),
    finding("GHSA-xvch-5gv4-984h", MINIMIST, "CRITICAL", score=9.3, vector=MINIMIST_VECTOR, fixed=("1.2.6",)),
    finding(
        "DEBIAN-CVE-2023-4911",
        GLIBC,
        "HIGH",
        aliases=("CVE-2023-4911",),
        score=7.8,
        vector=GLIBC_VECTOR,
        uri="https://www.openwall.com/lists/oss-security/2023/10/03/2",  # ADVISORY before an earlier WEB
        fixed=("2.36-9+deb12u4",),
    ),
    finding("GHSA-35jh-r3h4-6jhm", LODASH, "HIGH", score=7.2, vector=LODASH_VECTOR, fixed=("4.17.21",)),
    finding("PYSEC-2023-0001", DJANGO, "HIGH", score=7.8, vector=GLIBC_VECTOR),
    finding("UBUNTU-CVE-2023-38545", CURL, "HIGH", fixed=("7.81.0-1ubuntu1.15",)),
    finding(
        "GHSA-j8r2-6x86-q33q",
        REQUESTS,
        "MEDIUM",
        aliases=("CVE-2023-32681",),
        score=6.1,
        vector=REQUESTS_VECTOR,
        summary="Unintended leak of Proxy-Authorization header in requests",
        uri="https://github.com/psf/requests/commit/74ea7cf",
        fixed=("2.31.1",),
    ),
    finding("ALPINE-CVE-2024-0727", APK_OPENSSL, fixed=("3.1.4-r5",)),
    finding(
        "DSA-5600-1",
        OPENSSL,
        aliases=("CVE-2024-0727",),
        summary="openssl security update",
        details="Several vulnerabilities were discovered in OpenSSL.",
        uri="https://www.debian.org/security/2024/dsa-5600",
        fixed=("3.0.13-1~deb12u1",),
        published="2024-02-01T00:00:00Z",
    ),
    finding("GHSA-left-pad", LEFT_PAD, fixed=("1.3.0",)),
]


def test_the_exact_findings_of_a_small_database(tmp_path: Path) -> None:
    database = write_database(tmp_path / "all.zip", [REPLACED_OLD, *DATABASE, REPLACED_NEW])
    index = VulnIndex(osv.read_export(database))
    assert index.findings(PACKAGES) == EXPECTED
    # the order of the packages, or their repetition, changes nothing
    assert index.findings(list(reversed(PACKAGES)) + PACKAGES) == EXPECTED
    assert len(index) == len(DATABASE) + 1 - 1  # one withdrawn; two copies of GHSA-replaced count once
    assert index.findings([]) == []


def test_the_newer_copy_of_a_record_replaces_the_older_whichever_comes_first() -> None:
    for records in ([REPLACED_OLD, REPLACED_NEW], [REPLACED_NEW, REPLACED_OLD]):
        assert VulnIndex(records).findings([REQUESTS]) == []  # the newer copy says fixed in 2.0
    newer_old = {**REPLACED_OLD, "modified": "2023-07-01T00:00:00+02:00"}
    for records in ([newer_old, REPLACED_NEW], [REPLACED_NEW, newer_old]):
        assert [f.id for f in VulnIndex(records).findings([REQUESTS])] == ["GHSA-replaced"]
    withdrawn_later = {**REPLACED_NEW, "modified": "2025-01-01T00:00:00Z", "withdrawn": "2025-01-01T00:00:00Z"}
    assert VulnIndex([REPLACED_OLD, withdrawn_later]).findings([REQUESTS]) == []


def test_release_scoping_and_affected_names() -> None:
    index = VulnIndex(DATABASE)
    bookworm_glibc = Package("Debian:12", "glibc", "2.36-9+deb12u3", "s", binary="libc6")
    bullseye_glibc = Package("Debian:11", "glibc", "2.31-13+deb11u7", "s", binary="libc6")
    ids = {p.ecosystem: [f.id for f in index.findings([p])] for p in (bookworm_glibc, bullseye_glibc)}
    assert ids == {
        "Debian:12": ["DEBIAN-CVE-2023-4911"],
        "Debian:11": ["DEBIAN-CVE-2023-4911", "DEBIAN-CVE-2022-0001", "DLA-9999-1"],
    }
    names = index.affected_names()
    assert ("Debian", "glibc") in names and ("Debian:11", "glibc") in names and ("PyPI", "requests") in names
    assert ("PyPI", "pyyaml") in names and ("Maven", "org.example:requests") not in names
    assert ("npm", "lodash") in names  # by GHSA-35jh-r3h4-6jhm (the withdrawn record adds nothing)
    assert index_keys(bookworm_glibc) == (("Debian:12", "glibc"), ("Debian", "glibc"))
    assert index_keys(Package("PyPI", "Flask_SQLAlchemy", "3.1.1", "m")) == (("PyPI", "flask-sqlalchemy"),)
    assert any(k in names for k in index_keys(bookworm_glibc))
    assert not any(k in names for k in index_keys(Package("Debian:12", "zlib", "1", "s")))


def test_limits_and_boundaries() -> None:
    def affected_versions(*events: dict[str, str], kind: str = "ECOSYSTEM", ecosystem: str = "PyPI") -> list[str]:
        index = VulnIndex([rec("X-1", affected(ecosystem, "p", ecosystem_range(*events, kind=kind)))])
        candidates = ["0.1", "1.0", "1.5", "2.0", "2.5", "3.0", "3.5"]
        return [v for v in candidates if index.findings([Package(ecosystem, "p", v, "m")])]

    assert affected_versions({"introduced": "1.0"}, {"fixed": "2.0"}) == ["1.0", "1.5"]
    assert affected_versions({"fixed": "2.0"}, {"introduced": "1.0"}) == ["1.0", "1.5"]  # events get sorted
    assert affected_versions({"introduced": "1.0"}, {"last_affected": "2.0"}) == ["1.0", "1.5", "2.0"]
    assert affected_versions({"introduced": "0"}, {"limit": "2.5"}) == ["0.1", "1.0", "1.5", "2.0"]
    assert affected_versions({"introduced": "0"}, {"limit": "*"}) == ["0.1", "1.0", "1.5", "2.0", "2.5", "3.0", "3.5"]
    assert affected_versions({"introduced": "1.0"}, {"fixed": "1.5"}, {"introduced": "3.0"}) == ["1.0", "3.0", "3.5"]
    assert affected_versions({"introduced": "0"}, {"fixed": "1.0"}, kind="GIT") == []
    assert affected_versions({"introduced": "1.5.0"}, {"fixed": "2.5.0"}, kind="SEMVER") == [
        "1.5",
        "2.0",
    ]  # 1.5 = 1.5.0
    # a SEMVER range compares as semver whatever the ecosystem: 1.0.0-10 is a pre-release there, and a
    # post-release (1.0.0.post10) in PEP 440
    for kind, expected in (("SEMVER", ["X-1"]), ("ECOSYSTEM", [])):
        index = VulnIndex(
            [rec("X-1", affected("PyPI", "p", ecosystem_range({"introduced": "0"}, {"fixed": "1.0.0"}, kind=kind)))]
        )
        assert [f.id for f in index.findings([Package("PyPI", "p", "1.0.0-10", "m")])] == expected
    # fixed versions from ranges of both kinds, in the ecosystem's order
    mixed = rec(
        "X-3",
        affected(
            "PyPI",
            "p",
            ecosystem_range({"introduced": "0"}, {"fixed": "1.10.0"}, kind="SEMVER"),
            ecosystem_range({"introduced": "0"}, {"fixed": "1.9"}),
            ecosystem_range({"introduced": "0"}, {"fixed": "1.9.0"}),
            ecosystem_range({"introduced": "0"}, {"fixed": "0.5"}),
        ),
    )
    [found] = VulnIndex([mixed]).findings([Package("PyPI", "p", "1.0", "m")])
    assert found.fixed == ("1.9", "1.9.0", "1.10.0")  # 1.9 and 1.9.0 are equal: by text then
    # the versions list compares in the ecosystem's order: PEP 440's 1.0 is 1.0.0
    listed = VulnIndex([rec("X-2", {"package": {"ecosystem": "PyPI", "name": "p"}, "versions": ["1.0.0"]})])
    assert [f.id for f in listed.findings([Package("PyPI", "p", "1.0", "m")])] == ["X-2"]


def test_malformed_records_are_skipped_not_fatal() -> None:
    package = Package("PyPI", "p", "1.0", "m")
    records: list[Any] = [
        "not a record",
        {"id": 7},
        {"id": "M-1", "affected": "nope", "aliases": "CVE-1", "references": "x", "severity": 5},
        {"id": "M-2", "affected": [5, {"package": "p"}, {"package": {"ecosystem": 1, "name": "p"}}]},
        {"id": "M-3", "affected": [{"package": {"ecosystem": "PyPI", "name": "p"}, "ranges": "x", "versions": 3}]},
        {"id": "M-4", "modified": 12, "affected": [affected("PyPI", "p", {"type": "ECOSYSTEM", "events": [1, {}]})]},
        {
            "id": "M-5",
            "modified": "yesterday",
            "summary": ["x"],
            "references": [{"type": "ADVISORY", "url": 5}],
            "severity": [{"type": "CVSS_V3", "score": 9.8}, "junk"],
            "database_specific": {"severity": 3},
            "affected": [
                affected("PyPI", "p", {"type": "ECOSYSTEM", "events": [{"introduced": 0}, {"introduced": "0"}]}),
            ],
        },
    ]
    index = VulnIndex(records)
    assert index.findings([package]) == [finding("M-5", package, modified="yesterday")]
    assert index.affected_names() == {("PyPI", "p")}


def test_severity_from_cvss_vectors() -> None:
    assert cvss_severity("CVSS_V3", "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H") == ("CRITICAL", 9.8)
    assert cvss_severity("CVSS_V3", "CVSS:3.0/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:L") == ("MEDIUM", 5.3)
    assert cvss_severity("CVSS_V3", "CVSS:3.1/AV:L/AC:H/PR:H/UI:R/S:U/C:L/I:N/A:N") == ("LOW", 1.8)
    assert cvss_severity("CVSS_V3", "CVSS:3.1/AV:L/AC:H/PR:H/UI:R/S:U/C:N/I:N/A:N") == ("INFORMATIONAL", 0.0)
    assert cvss_severity("CVSS_V4", MINIMIST_VECTOR) == ("CRITICAL", 9.3)
    assert cvss_severity("CVSS_V2", "AV:N/AC:L/Au:N/C:C/I:C/A:C") == ("HIGH", 10.0)  # v2 has no CRITICAL
    assert cvss_severity("CVSS_V3", "CVSS:3.1/AV:X") is None
    assert cvss_severity("CVSS_V5", "whatever") is None
    # v3 is preferred to v4 in the same record
    both = rec(
        "X-3",
        affected("PyPI", "p", ecosystem_range({"introduced": "0"})),
        severity=[{"type": "CVSS_V4", "score": MINIMIST_VECTOR}, {"type": "CVSS_V3", "score": LODASH_VECTOR}],
    )
    [only] = VulnIndex([both]).findings([Package("PyPI", "p", "1", "m")])
    assert (only.severity, only.score, only.vector) == ("HIGH", 7.2, LODASH_VECTOR)


def test_building_and_matching_are_fast_enough() -> None:
    """~50,000 records index in seconds, not minutes; a few hundred packages match in well under a second."""
    rng = random.Random(7)
    records = []
    for i in range(50_000):
        ecosystem, name = rng.choice([("Debian:12", f"src{i % 3000}"), ("PyPI", f"py{i % 5000}"), ("Debian", "x")])
        fixed = f"1.{i % 50}-{i % 7}" if ecosystem != "PyPI" else f"1.{i % 50}.{i % 7}"
        records.append(
            rec(
                f"CVE-2024-{i}",
                affected(ecosystem, name, ecosystem_range({"introduced": "0"}, {"fixed": fixed})),
                severity=[{"type": "CVSS_V3", "score": GLIBC_VECTOR if i % 2 else REQUESTS_VECTOR}],
            )
        )
    started = time.perf_counter()
    index = VulnIndex(records)
    built = time.perf_counter() - started
    packages = [Package("Debian:12", f"src{i}", "1.25-3", "s") for i in range(200)]
    packages += [Package("PyPI", f"py{i}", "1.25.3", "m") for i in range(200)]
    started = time.perf_counter()
    found = index.findings(packages)
    matched = time.perf_counter() - started
    assert len(found) > 500
    assert built < 10, f"indexing 50,000 records took {built:.1f} s"
    assert matched < 5, f"matching 400 packages took {matched:.1f} s"
