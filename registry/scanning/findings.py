"""Findings as stored (a neutral JSON form, so a scan need not be redone when the registry's scan type changes)
and as ECR's APIs show them: BASIC's `ImageScanFinding`, ENHANCED's `EnhancedImageScanFinding`."""

from __future__ import annotations

import hashlib
from collections import Counter
from datetime import datetime
from typing import Any

from registry.scanning.matcher import Finding

SEVERITIES = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "INFORMATIONAL", "UNDEFINED")
# OSV ecosystems (without a release) to the package manager names of Inspector's findings
PACKAGE_MANAGERS = {"Debian": "OS", "Ubuntu": "OS", "Alpine": "OS", "PyPI": "PYTHONPKG", "npm": "NODEPKG"}


def stored(finding: Finding) -> dict[str, Any]:
    p = finding.package
    return {
        "id": finding.id,
        "aliases": list(finding.aliases),
        "severity": finding.severity,
        "score": finding.score,
        "vector": finding.vector,
        "summary": finding.summary,
        "details": finding.details,
        "uri": finding.uri,
        "fixed": list(finding.fixed),
        "published": finding.published,
        "modified": finding.modified,
        "package": {"ecosystem": p.ecosystem, "name": p.name, "version": p.version, "path": p.path, "binary": p.binary},
    }


def severity_counts(findings: list[dict[str, Any]]) -> dict[str, int]:
    counts = Counter(f["severity"] for f in findings)
    return {s: counts[s] for s in SEVERITIES if counts[s]}


def _description(f: dict[str, Any]) -> str:
    text = str(f["summary"] or f["details"] or f["id"])
    return text if len(text) <= 4000 else text[:3997] + "..."


def _cve(f: dict[str, Any]) -> str:
    """The name ECR shows: the CVE id when the advisory has one, else its own id."""
    return str(next((a for a in [f["id"], *f["aliases"]] if a.startswith("CVE-")), f["id"]))


def basic(f: dict[str, Any]) -> dict[str, Any]:
    p = f["package"]
    attributes = [
        ("package_name", p["binary"] or p["name"]),
        ("package_version", p["version"]),
        ("package_ecosystem", p["ecosystem"]),
        ("file_path", p["path"]),
        ("advisory_id", f["id"]),
    ]
    if p["binary"] and p["binary"] != p["name"]:
        attributes.append(("source_package", p["name"]))
    if f["fixed"]:
        attributes.append(("fixed_in_versions", ", ".join(f["fixed"])))
    if f["score"] is not None:
        version = "CVSS4" if str(f["vector"] or "").startswith("CVSS:4") else "CVSS3"
        attributes += [(f"{version}_SCORE", f"{f['score']:g}"), (f"{version}_VECTOR", f["vector"] or "")]
    return {
        "name": _cve(f),
        "description": _description(f),
        "uri": f["uri"],
        "severity": f["severity"],
        "attributes": [{"key": k, "value": v[:256]} for k, v in attributes if v],
    }


def _finding_id(f: dict[str, Any], repository: str, digest: str) -> str:
    """Stable across scans and processes: the same advisory on the same package of the same image."""
    key = "\0".join([repository, digest, f["id"], f["package"]["name"], f["package"]["version"]])
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _date(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def enhanced(
    f: dict[str, Any], *, account_id: str, region: str, repository: str, digest: str, observed: float
) -> dict[str, Any]:
    p = f["package"]
    ecosystem, _, release = p["ecosystem"].partition(":")
    package: dict[str, Any] = {
        "name": p["binary"] or p["name"],
        "version": p["version"],
        "filePath": p["path"],
        "packageManager": PACKAGE_MANAGERS.get(ecosystem, ecosystem.upper()),
    }
    if release:
        package["release"] = release
    if f["fixed"]:
        package["fixedInVersion"] = f["fixed"][0]
    details: dict[str, Any] = {
        "vulnerabilityId": _cve(f),
        "source": ecosystem.upper() if ecosystem else "OSV",
        "sourceUrl": f["uri"],
        "vendorSeverity": f["severity"],
        "referenceUrls": [f["uri"]],
        "relatedVulnerabilities": [a for a in [f["id"], *f["aliases"]] if a != _cve(f)],
        "vulnerablePackages": [package],
    }
    for key, value in (("vendorCreatedAt", _date(f["published"])), ("vendorUpdatedAt", _date(f["modified"]))):
        if value is not None:
            details[key] = value.timestamp()
    out: dict[str, Any] = {
        "awsAccountId": account_id,
        "description": _description(f),
        "findingArn": f"arn:aws:inspector2:{region}:{account_id}:finding/{_finding_id(f, repository, digest)}",
        "firstObservedAt": observed,
        "lastObservedAt": observed,
        "packageVulnerabilityDetails": details,
        "remediation": {
            "recommendation": {
                "text": f"Update {package['name']} to {f['fixed'][0]} or later" if f["fixed"] else "None provided",
            }
        },
        "resources": [
            {
                "id": f"arn:aws:ecr:{region}:{account_id}:repository/{repository}/{digest}",
                "type": "AWS_ECR_CONTAINER_IMAGE",
                "details": {
                    "awsEcrContainerImage": {"repositoryName": repository, "imageHash": digest, "registry": account_id}
                },
            }
        ],
        "severity": f["severity"],
        "status": "ACTIVE",
        "title": f"{_cve(f)} - {package['name']}",
        "type": "PACKAGE_VULNERABILITY",
        "updatedAt": observed,
        "fixAvailable": "YES" if f["fixed"] else "NO",
        "exploitAvailable": "NO",
    }
    if f["score"] is not None:
        out["score"] = f["score"]
        version = "4.0" if str(f["vector"] or "").startswith("CVSS:4") else "3.1"
        cvss = {"baseScore": f["score"], "scoringVector": f["vector"] or "", "source": "OSV", "version": version}
        details["cvss"] = [cvss]
        out["scoreDetails"] = {
            "cvss": {"score": f["score"], "scoreSource": "OSV", "scoringVector": f["vector"] or "", "version": version}
        }
    return out
