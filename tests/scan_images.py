"""Images whose layers hold real package databases (dpkg, apk, Python, npm), and a small OSV database: what the
scanning tests push and load."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

from tests.oci import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, Image, canonical, descriptor

CRITICAL = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"  # 9.8
HIGH = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N"  # 7.5
MEDIUM = "CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:H/I:N/A:N"  # 5.9
LOW = "CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:L/I:N/A:N"  # 3.3


def layer(files: dict[str, bytes | str]) -> bytes:
    """A gzipped tar layer holding these files (parent directories implied)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for path, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def image(*layers: bytes) -> Image:
    config = canonical(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
            "nonce": os.urandom(4).hex(),
        }
    )
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [descriptor(OCI_LAYER, x) for x in layers],
        }
    ).encode()
    return Image(config, list(layers), manifest)


DPKG_STATUS = """Package: libssl3
Status: install ok installed
Architecture: amd64
Source: openssl
Version: 3.0.11-1~deb12u1

Package: zlib1g
Status: install ok installed
Architecture: amd64
Source: zlib
Version: 1:1.2.13.dfsg-1

Package: bash
Status: install ok installed
Architecture: amd64
Version: 5.2.15-2+b2
"""


SITE = "usr/lib/python3/dist-packages"


def debian_image() -> Image:
    """Debian 12 with libssl3 (source openssl) at an affected version, zlib fixed; requests (PyPI) affected and
    urllib3 fixed; lodash (npm) affected."""
    base = layer(
        {
            "etc/os-release": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n',
            "var/lib/dpkg/status": DPKG_STATUS,
        }
    )
    apps = layer(
        {
            f"{SITE}/requests-2.25.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: requests\nVersion: 2.25.0\n",
            f"{SITE}/urllib3-2.2.2.dist-info/METADATA": "Metadata-Version: 2.1\nName: urllib3\nVersion: 2.2.2\n",
            "usr/lib/node_modules/lodash/package.json": json.dumps({"name": "lodash", "version": "4.17.15"}),
        }
    )
    return image(base, apps)


def alpine_image() -> Image:
    installed = "P:busybox\nV:1.36.1-r15\nA:x86_64\n\nP:musl\nV:1.2.4_git20230717-r4\nA:x86_64\n\n"
    return image(layer({"etc/alpine-release": "3.19.1\n", "lib/apk/db/installed": installed}))


def osv(
    vid: str,
    ecosystem: str,
    package: str,
    fixed: str,
    *,
    vector: str | None = None,
    kind: str = "ECOSYSTEM",
    aliases: tuple[str, ...] = (),
    modified: str = "2024-01-01T00:00:00Z",
    summary: str | None = None,
) -> dict:
    record: dict = {
        "schema_version": "1.6.0",
        "id": vid,
        "modified": modified,
        "published": "2023-06-01T00:00:00Z",
        "aliases": list(aliases),
        "summary": summary or f"{package}: a vulnerability fixed in {fixed}",
        "details": f"{package} before {fixed} is vulnerable.",
        "affected": [
            {
                "package": {"ecosystem": ecosystem, "name": package},
                "ranges": [{"type": kind, "events": [{"introduced": "0"}, {"fixed": fixed}]}],
            }
        ],
        "references": [{"type": "ADVISORY", "url": f"https://example.test/advisories/{vid}"}],
    }
    if vector:
        record["severity"] = [{"type": "CVSS_V3", "score": vector}]
    return record


RECORDS = [
    osv("DSA-5532-1", "Debian:12", "openssl", "3.0.11-1~deb12u2", vector=CRITICAL, aliases=("CVE-2023-5678",)),
    osv("DSA-5000-1", "Debian:12", "zlib", "1:1.2.11.dfsg-2", vector=HIGH),  # fixed before what is installed
    osv("GHSA-j8r2-6x86-q33q", "PyPI", "requests", "2.31.0", vector=MEDIUM, aliases=("CVE-2023-32681",)),
    osv("GHSA-34jh-p97f-mpxf", "PyPI", "urllib3", "1.26.19", vector=MEDIUM),  # fixed before what is installed
    osv("GHSA-35jh-r3h4-6jhm", "npm", "lodash", "4.17.21", vector=HIGH, kind="SEMVER", aliases=("CVE-2021-23337",)),
    osv("ALPINE-CVE-2023-42366", "Alpine:v3.19", "busybox", "1.36.1-r16", vector=LOW, aliases=("CVE-2023-42366",)),
]


def write_export(path: Path, records: list[dict]) -> Path:
    """An OSV export as OSV publishes them: a zip of one JSON file per record."""
    with zipfile.ZipFile(path, "w") as z:
        for record in records:
            z.writestr(f"{record['id']}.json", json.dumps(record))
    return path
