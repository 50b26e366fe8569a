"""Vulnerability scanning's engine, part one: version orderings (registry/scanning/versions.py), from each
ecosystem's own documentation, and reading OSV exports (registry/scanning/osv.py). The inventory and the
matcher have files of their own (test_unit_scanning_inventory.py, test_unit_scanning_matcher.py)."""

from __future__ import annotations

import itertools
import json
import random
import zipfile
from pathlib import Path
from typing import Any

import pytest
from debian.debian_support import Version as DebianVersion

from registry.scanning import osv, versions
from registry.scanning.versions import UnknownEcosystem, compare


def ascending(ecosystem: str, chain: list[str]) -> list[tuple[str, str, str]]:
    """Every pair of a list sorted oldest first: each older one < each newer one."""
    return [(ecosystem, a, b) for a, b in itertools.combinations(chain, 2)]


# Debian Policy §5.6.12 (Version): epochs first; then upstream and revision alike, alternating non-digit runs
# (letters before non-letters, `~` before everything, even the end) and numbers.
DPKG_CHAIN = [
    "1.0~~",
    "1.0~~a",
    "1.0~",  # Policy: "~~, ~~a, ~, the empty part, a"
    "1.0",
    "1.0a",
    "1.0+",  # letters sort before non-letters
    "1.0.0",
    "1.0.9",
    "1.0.10",  # numbers compare as numbers
    "1.1~rc1",
    "1.1",
    "1.1-1~bpo12+1",
    "1.1-1",
    "1.1-1+deb12u1",
    "1.1-1+deb12u10",
    "1.1-2",
    "9.9",
    "1:0.1",  # an epoch outranks everything after it
    "2:0.0.1",
]
PEP440_CHAIN = [  # PEP 440's own example of ordering (Summary of permitted suffixes and relative ordering)
    "1.0.dev456",
    "1.0a1",
    "1.0a2.dev456",
    "1.0a12.dev456",
    "1.0a12",
    "1.0b1.dev456",
    "1.0b2",
    "1.0b2.post345.dev456",
    "1.0b2.post345",
    "1.0rc1.dev456",
    "1.0rc1",
    "1.0",
    "1.0+abc.5",
    "1.0+abc.7",
    "1.0+5",
    "1.0.post456.dev34",
    "1.0.post456",
    "1.0.15",
    "1.1.dev1",
    "1!0.1",  # an epoch
]
SEMVER_CHAIN = [  # semver.org 2.0.0 §11
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0",
    "2.0.0",
    "2.1.0",
    "2.1.1",
    "10.0.0",
]
APK_CHAIN = [  # apk-tools: suffixes _alpha < _beta < _pre < _rc < (none) < _cvs < _svn < _git < _hg < _p
    "1.0_alpha",
    "1.0_alpha1",
    "1.0_alpha2",
    "1.0_beta",
    "1.0_pre1",
    "1.0_rc1",
    "1.0",
    "1.0-r1",
    "1.0-r2",
    "1.0-r10",  # revisions are numbers
    "1.0_cvs",
    "1.0_svn",
    "1.0_git20240101",
    "1.0_hg",
    "1.0_p1",
    "1.0_p9",
    "1.0_p10",
    "1.0a",  # a letter after the numbers
    "1.0b",
    "1.0.1",  # another number outranks a letter
    "1.0.2_rc1",
    "1.0.2",
    "1.2",
    "1.10",
]
ORDERINGS = (
    ascending("Debian:12", DPKG_CHAIN)
    + ascending("PyPI", PEP440_CHAIN)
    + ascending("npm", SEMVER_CHAIN)
    + ascending("Alpine:v3.19", APK_CHAIN)
)


@pytest.mark.parametrize(("ecosystem", "older", "newer"), ORDERINGS)
def test_each_ecosystem_orders_versions_as_its_documentation_does(ecosystem: str, older: str, newer: str) -> None:
    assert compare(ecosystem, older, newer) == -1
    assert compare(ecosystem, newer, older) == 1
    assert compare(ecosystem, older, older) == 0


@pytest.mark.parametrize(
    ("ecosystem", "a", "b", "expected"),
    [
        # dpkg: a missing epoch is 0, a missing revision is "0"; numbers compare as numbers (leading zeros too)
        ("Debian", "0:1.0", "1.0", 0),
        ("Debian:12", "1.0", "1.0-0", 0),
        ("Debian:12", "1.002", "1.2", 0),
        ("Debian:12", "1.0.", "1.0.0", 0),  # an empty number is 0
        ("Ubuntu:22.04:LTS", "7.81.0-1ubuntu1.14", "7.81.0-1ubuntu1.15", -1),
        ("Debian:12", "2.36-9+deb12u4", "2.36-9+deb12u10", -1),
        ("Debian:12", "1.0A", "1.0a", -1),  # letters by character code
        ("Debian:12", "1.0-1", "1.0-1.1", -1),
        # PEP 440: normalised forms are equal; release segments padded with zeros
        ("PyPI", "1.0", "1.0.0", 0),
        ("PyPI", "1.0.0-RC1", "1.0rc1", 0),
        ("PyPI", "v2.0", "2.0", 0),
        ("PyPI", "1.0_post1", "1.0.post1", 0),
        ("PyPI", "not a version", "1.0", 1),  # an invalid version compares as a string: "n" > "1"
        ("PyPI", "1.0", "not a version", -1),
        ("PyPI", "0.9-weird!", "1.0", -1),
        # semver: build metadata does not count; node-semver's loose forms
        ("npm", "1.0.0+20130313144700", "1.0.0", 0),
        ("npm", "1.0.0-beta+exp.sha.5114f85", "1.0.0-beta", 0),
        ("npm", "v1.2.3", "1.2.3", 0),
        ("npm", "=1.2.3", "1.2.3", 0),
        ("npm", "1.2", "1.2.0", 0),
        ("npm", "1.0.0-2", "1.0.0-10", -1),  # numeric identifiers compare as numbers
        ("npm", "1.0.0-10", "1.0.0-a", -1),  # ... and before alphanumeric ones
        ("npm", "1.0.0-alpha-1", "1.0.0-alpha.1", 1),  # "alpha-1" is one identifier, after "alpha"
        # apk: a leading zero makes the numbers compare as strings (Gentoo's rule)
        ("Alpine:v3.19", "1.02", "1.1", -1),
        ("Alpine:v3.19", "8.2.0", "8.2.001", -1),
        ("Alpine:v3.19", "8.2.0015", "8.2.002", -1),
        ("Alpine:v3.19", "1.0_p10-r0", "1.0_p9-r0", 1),
        ("Alpine:v3.19", "0.1.0_alpha_pre2", "0.1.0_alpha", -1),  # a second pre-release suffix is older
        ("Alpine:v3.19", "3.0.11-r0", "3.0.9-r3", 1),
        ("Alpine:v3.19", "1.0~1234-r1", "1.0~2345-r0", -1),  # the commit hash as a string, before -r
        ("Alpine:v3.19", "1.0~1234-r1", "1.0~1234-r0", 1),
        ("Alpine:v3.19", "2.34", "0.1.0_alpha", 1),
        ("Alpine:v3.19", "1.0", "1.0bc", -1),  # "1.0bc" is invalid past "b": a valid end ranks above
        ("Alpine:v3.19", "1.2.3-r4", "1.2.3-r4", 0),
    ],
)
def test_edge_cases_of_each_ordering(ecosystem: str, a: str, b: str, expected: int) -> None:
    assert compare(ecosystem, a, b) == expected
    assert compare(ecosystem, b, a) == -expected


def test_the_dpkg_ordering_agrees_with_python_debian() -> None:
    """dpkg's order is a tuple for speed (versions.py): on thousands of random valid versions, it answers as
    python-debian's own comparison does."""
    rng = random.Random(20240612)

    def random_version() -> str:
        text = f"{rng.randint(0, 2)}:" if rng.random() < 0.2 else ""
        text += str(rng.randint(0, 20)) + "".join(rng.choice("0123456789.+~abZ") for _ in range(rng.randint(0, 6)))
        if rng.random() < 0.6:
            text += "-" + "".join(rng.choice("0123456789.+~ab") for _ in range(rng.randint(1, 5)))
        return text

    pool = [random_version() for _ in range(1500)]
    disagreements = []
    for _ in range(20000):
        a, b = rng.choice(pool), rng.choice(pool)
        va, vb = DebianVersion(a), DebianVersion(b)
        if compare("Debian", a, b) != (va > vb) - (va < vb):
            disagreements.append((a, b))
    assert disagreements == []


def test_a_sorted_chain_sorts_back_with_the_keys() -> None:
    for ecosystem, chain in (("Debian", DPKG_CHAIN), ("PyPI", PEP440_CHAIN), ("npm", SEMVER_CHAIN)):
        shuffled = list(reversed(chain))
        assert sorted(shuffled, key=lambda v, e=ecosystem: versions.key(e, v)) == chain
    assert sorted(reversed(APK_CHAIN), key=lambda v: versions.key("Alpine:v3.20", v)) == APK_CHAIN


def test_an_unknown_ecosystem_is_refused() -> None:
    with pytest.raises(UnknownEcosystem, match="Maven"):
        compare("Maven", "1.0", "2.0")
    assert issubclass(UnknownEcosystem, ValueError)
    assert versions.ordering("Debian:12") == versions.DPKG and versions.ordering("Ubuntu:Pro:18.04:LTS") == "dpkg"
    assert versions.supports("Alpine:v3.19") and not versions.supports("crates.io")


# -- OSV exports -------------------------------------------------------------------------------------------


def record(record_id: str, **fields: Any) -> dict[str, Any]:
    return {"schema_version": "1.6.0", "id": record_id, "modified": "2024-01-01T00:00:00Z", **fields}


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_a_zip_export_yields_each_record(tmp_path: Path) -> None:
    records = [record("DSA-5000-1"), record("GHSA-aaaa-bbbb-cccc", aliases=["CVE-2024-1"]), record("CVE-2024-2")]
    members = {f"{r['id']}.json": json.dumps(r).encode() for r in records}
    members["README.txt"] = b"not a record, and not named as one"
    path = write_zip(tmp_path / "all.zip", members)
    assert list(osv.read_export(path)) == records
    assert list(osv.read_export(str(path))) == records


def test_a_single_record_and_a_list_of_records(tmp_path: Path) -> None:
    single = tmp_path / "GHSA-1.json"
    single.write_text(json.dumps(record("GHSA-1", summary="caf\u00e9")), encoding="utf-8")
    assert list(osv.read_export(single)) == [record("GHSA-1", summary="caf\u00e9")]
    listed = tmp_path / "records.json"
    listed.write_text(json.dumps([record("A-1"), record("A-2")]))
    assert [r["id"] for r in osv.read_export(listed)] == ["A-1", "A-2"]
    empty = write_zip(tmp_path / "empty.zip", {})
    assert list(osv.read_export(empty)) == []


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[1, 2]", "an OSV record is a JSON object, not list"),
        (b'{"modified": "2024-01-01T00:00:00Z"}', "an OSV record needs a string id"),
        (b'{"id": 5}', "an OSV record needs a string id"),
    ],
)
def test_a_corrupt_member_is_named(tmp_path: Path, data: bytes, reason: str) -> None:
    path = write_zip(tmp_path / "all.zip", {"GOOD-1.json": json.dumps(record("GOOD-1")).encode(), "BAD-1.json": data})
    found = osv.read_export(path)
    assert next(found)["id"] == "GOOD-1"  # records before the bad one are read
    with pytest.raises(ValueError, match=rf"^BAD-1\.json: {reason}"):
        next(found)


def test_a_corrupt_list_item_or_file_is_named(tmp_path: Path) -> None:
    listed = tmp_path / "records.json"
    listed.write_text(json.dumps([record("A-1"), "oops"]))
    with pytest.raises(ValueError, match=r"records\.json\[1\]: an OSV record is a JSON object, not str"):
        list(osv.read_export(listed))
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00\x01\x02 not a zip, not JSON")
    with pytest.raises(ValueError, match=r"garbage\.bin: not"):
        list(osv.read_export(garbage))
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(write_zip(tmp_path / "whole.zip", {"A-1.json": b"{}" * 1000}).read_bytes()[:60])
    with pytest.raises(ValueError, match=r"truncated\.zip: not a readable zip"):
        list(osv.read_export(truncated))


def test_a_zip_bomb_is_refused_before_it_is_unpacked(tmp_path: Path) -> None:
    # 20 MiB of blanks deflate to ~20 KiB: more than a record may be, so refused from the zip's directory
    bomb = write_zip(tmp_path / "bomb.zip", {"A-1.json": b'{"id": "A-1"}', "BOMB-1.json": b" " * (20 * 1024 * 1024)})
    assert bomb.stat().st_size < 100 * 1024
    with pytest.raises(ValueError, match=r"^BOMB-1\.json: unpacks to 20971520 bytes, more than the 16777216"):
        list(osv.read_export(bomb))
    # many members that together unpack to too much are refused before the first is read
    many = write_zip(tmp_path / "many.zip", {f"M-{i}.json": b" " * 4096 for i in range(20)})
    with pytest.raises(ValueError, match="unpack to 81920 bytes, more than the 65536 allowed"):
        next(osv.read_export(many, max_total_bytes=65536))
    with pytest.raises(ValueError, match="20 members, more than the 10 allowed"):
        next(osv.read_export(many, max_members=10))
    big_single = tmp_path / "big.json"
    big_single.write_text(json.dumps(record("A-1", details="x" * 5000)))
    with pytest.raises(ValueError, match="more than the 1000 allowed"):
        list(osv.read_export(big_single, max_total_bytes=1000))
