"""Vulnerability scanning's engine, part two: the packages of an image, read from real layer tarballs that the
tests build (registry/scanning/inventory.py, registry/scanning/layers.py)."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import pytest

from registry.scanning import inventory as inventory_module
from registry.scanning import layers
from registry.scanning.inventory import LayerError, inventory
from registry.scanning.packages import Package

DEBIAN_OS_RELEASE = """PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
"""
UBUNTU_OS_RELEASE = """PRETTY_NAME="Ubuntu 22.04.3 LTS"
NAME="Ubuntu"
VERSION_ID="22.04"
VERSION="22.04.3 LTS (Jammy Jellyfish)"
ID=ubuntu
ID_LIKE=debian
"""
DPKG_STATUS = """Package: libssl3
Status: install ok installed
Priority: optional
Architecture: amd64
Multi-Arch: same
Source: openssl
Version: 3.0.11-1~deb12u2
Description: Secure Sockets Layer toolkit - shared libraries
 This package is part of the OpenSSL project's implementation of the SSL and
 TLS cryptographic protocols.

Package: libc6
Status: install ok installed
Architecture: amd64
Source: glibc (2.36-9+deb12u3)
Version: 2.36-9+deb12u3+b1
Depends: libgcc-s1

Package: bash
Essential: yes
Status: install ok installed
Version: 5.2.15-2+b2
Description: GNU Bourne Again SHell

Package: oldpkg
Status: deinstall ok config-files
Version: 1.0-1

Package: half
Status: install reinstreq half-installed
Version: 2.0-1
"""
APK_INSTALLED = """C:Q1abc=
P:musl
V:1.2.4_git20230717-r4
A:x86_64
o:musl
F:lib
R:ld-musl-x86_64.so.1

C:Q1def=
P:libcrypto3
V:3.1.4-r1
A:x86_64
o:openssl
F:usr/lib

P:libssl3
V:3.1.4-r1
o:openssl

P:busybox-binsh
V:1.36.1-r15
o:busybox
"""


def metadata(name: str, version: str) -> str:
    return f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: x\n\nName: not-this-one\n"


def package_json(name: str, version: str | None = None, **more: object) -> str:
    document: dict[str, object] = {"name": name, **more}
    if version is not None:
        document["version"] = version
    return json.dumps(document)


Entry = tuple[str, str | bytes | None] | tuple[str, str | bytes | None, str]


def layer(path: Path, entries: Iterable[Entry], compression: str = "gzip") -> Path:
    """A layer tarball: (name, content) is a file, (name, None) a directory, (name, None, target) a symlink,
    (name, "", "hardlink:target") a hard link."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            name, content = entry[0], entry[1]
            info = tarfile.TarInfo(name)
            if len(entry) == 3:
                target = entry[2]
                if target.startswith("hardlink:"):
                    info.type, info.linkname = tarfile.LNKTYPE, target.removeprefix("hardlink:")
                else:
                    info.type, info.linkname = tarfile.SYMTYPE, target
                tar.addfile(info)
            elif content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                data = content.encode() if isinstance(content, str) else content
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    if compression == "gzip":
        data = gzip.compress(data)
    elif compression == "zstd":
        assert layers._zstd is not None
        data = layers._zstd.compress(data)
    path.write_bytes(data)
    return path


DIST = "usr/lib/python3/dist-packages"
SITE = "usr/local/lib/python3.11/site-packages"


def test_an_image_of_two_layers_with_whiteouts(tmp_path: Path) -> None:
    base = layer(
        tmp_path / "base.tar.gz",
        [
            ("etc/", None),
            ("./etc/os-release", None, "../usr/lib/os-release"),  # as Debian has it: a symlink
            ("usr/lib/os-release", DEBIAN_OS_RELEASE),
            ("var/lib/dpkg/status", DPKG_STATUS),
            (f"{DIST}/requests-2.31.0.dist-info/METADATA", metadata("requests", "2.31.0")),
            (f"{DIST}/requests-2.31.0.dist-info/RECORD", "requests/__init__.py,,\n"),
            (f"{DIST}/PyYAML-6.0.1.egg-info/PKG-INFO", metadata("PyYAML", "6.0.1")),
            (f"{DIST}/six-1.16.0.egg-info", metadata("six", "1.16.0")),  # distutils' egg-info is a file
            (f"{SITE}/Flask_SQLAlchemy-3.1.1.dist-info/METADATA", metadata("Flask_SQLAlchemy", "3.1.1")),
            (f"{SITE}/huge-1.0.dist-info/METADATA", metadata("huge", "1.0") + "x" * 5000),  # over the bound
            (f"{SITE}/nameless-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nVersion: 1.0\n"),
            ("app/package.json", package_json("my-app", "1.0.0")),  # the application, not a dependency
            ("app/node_modules/express/package.json", package_json("express", "4.18.2")),
            ("app/node_modules/express/lib/package.json", json.dumps({"type": "module"})),  # not a package
            ("app/node_modules/express/test/fixture/package.json", package_json("fixture", "0.0.1")),
            ("app/node_modules/express/node_modules/debug/package.json", package_json("debug", "2.6.9")),
            ("app/node_modules/@babel/core/package.json", package_json("@babel/core", "7.23.0")),
            ("app/node_modules/@babel/package.json", package_json("not-a-package", "1.0.0")),
            ("app/node_modules/broken/package.json", package_json("broken")),  # no version
            ("app/node_modules/garbled/package.json", "{not json"),
            ("usr/lib/node_modules/npm/package.json", package_json("npm", "10.2.4")),
            ("../../outside/node_modules/evil/package.json", package_json("evil", "6.6.6")),  # climbs out
        ],
    )
    top = layer(
        tmp_path / "top.tar",
        [
            (f"{DIST}/.wh.requests-2.31.0.dist-info", ""),  # pip uninstall requests
            ("usr/lib/node_modules/corepack/package.json", package_json("corepack", "0.23.0")),
            ("usr/lib/node_modules/.wh..wh..opq", ""),  # hides npm, not corepack from this same layer
            ("/app/node_modules/express/node_modules/debug/package.json", package_json("debug", "2.6.10")),
        ],
        compression="none",
    )
    assert inventory([base, top], max_member_bytes=4096) == [
        Package("Debian:12", "bash", "5.2.15-2+b2", "var/lib/dpkg/status"),
        Package("Debian:12", "glibc", "2.36-9+deb12u3", "var/lib/dpkg/status", binary="libc6"),
        Package("Debian:12", "openssl", "3.0.11-1~deb12u2", "var/lib/dpkg/status", binary="libssl3"),
        Package("PyPI", "flask-sqlalchemy", "3.1.1", f"{SITE}/Flask_SQLAlchemy-3.1.1.dist-info/METADATA"),
        Package("PyPI", "pyyaml", "6.0.1", f"{DIST}/PyYAML-6.0.1.egg-info/PKG-INFO"),
        Package("PyPI", "six", "1.16.0", f"{DIST}/six-1.16.0.egg-info"),
        Package("npm", "@babel/core", "7.23.0", "app/node_modules/@babel/core/package.json"),
        Package("npm", "corepack", "0.23.0", "usr/lib/node_modules/corepack/package.json"),
        Package("npm", "debug", "2.6.10", "app/node_modules/express/node_modules/debug/package.json"),
        Package("npm", "express", "4.18.2", "app/node_modules/express/package.json"),
    ]
    # the base layer alone: requests and npm are there, and the old debug
    alone = inventory([base], max_member_bytes=4096)
    assert Package("PyPI", "requests", "2.31.0", f"{DIST}/requests-2.31.0.dist-info/METADATA") in alone
    assert Package("npm", "npm", "10.2.4", "usr/lib/node_modules/npm/package.json") in alone
    assert Package("npm", "debug", "2.6.9", "app/node_modules/express/node_modules/debug/package.json") in alone
    # with the default bound (64 MiB) the 5 KB METADATA is read
    assert Package("PyPI", "huge", "1.0", f"{SITE}/huge-1.0.dist-info/METADATA") in inventory([base])
    assert layers.MAX_MEMBER_BYTES == 64 * 1024 * 1024


def test_a_later_layer_replaces_and_removes_files(tmp_path: Path) -> None:
    base = layer(
        tmp_path / "1.tar.gz",
        [("etc/os-release", DEBIAN_OS_RELEASE), ("var/lib/dpkg/status", DPKG_STATUS)],
    )
    upgraded = DPKG_STATUS.replace("5.2.15-2+b2", "5.2.15-2+b7")
    second = layer(tmp_path / "2.tar.gz", [("var/lib/dpkg/status", upgraded), ("srv/", None)])
    assert Package("Debian:12", "bash", "5.2.15-2+b7", "var/lib/dpkg/status") in inventory([base, second])
    # a whiteout of a whole directory, and a file where a directory was
    gone = layer(tmp_path / "3.tar.gz", [("var/lib/.wh.dpkg", "")])
    assert inventory([base, gone]) == []
    flattened = layer(tmp_path / "4.tar.gz", [("var/lib/dpkg", "now a file")])
    assert inventory([base, flattened]) == []
    # an opaque directory at the root hides every lower layer
    fresh = layer(tmp_path / "5.tar.gz", [(".wh..wh..opq", ""), ("usr/lib/node_modules/a/package.json", "{}")])
    assert inventory([base, fresh]) == []
    # the release comes from any layer: without os-release the packages are bare "Debian"
    no_release = layer(tmp_path / "6.tar.gz", [("etc/.wh.os-release", "")])
    assert {p.ecosystem for p in inventory([base, no_release])} == {"Debian"}


def test_alpine_from_a_zstd_layer(tmp_path: Path) -> None:
    alpine = layer(
        tmp_path / "alpine.tar.zst",
        [
            ("etc/alpine-release", "3.19.1\n"),
            ("lib/apk/db/installed", APK_INSTALLED),
            ("usr/lib/python3.11/site-packages/pip-23.3.1.dist-info/METADATA", metadata("pip", "23.3.1")),
        ],
        compression="zstd",
    )
    assert inventory([alpine]) == [
        Package("Alpine:v3.19", "busybox", "1.36.1-r15", "lib/apk/db/installed", binary="busybox-binsh"),
        Package("Alpine:v3.19", "musl", "1.2.4_git20230717-r4", "lib/apk/db/installed"),
        Package("Alpine:v3.19", "openssl", "3.1.4-r1", "lib/apk/db/installed", binary="libcrypto3"),
        Package("Alpine:v3.19", "openssl", "3.1.4-r1", "lib/apk/db/installed", binary="libssl3"),
        Package("PyPI", "pip", "23.3.1", "usr/lib/python3.11/site-packages/pip-23.3.1.dist-info/METADATA"),
    ]


def test_distroless_status_d_and_ubuntu_releases(tmp_path: Path) -> None:
    distroless = layer(
        tmp_path / "distroless.tar.gz",
        [
            ("etc/os-release", DEBIAN_OS_RELEASE.replace('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"', "")),
            ("var/lib/dpkg/status.d/base", "Package: base-files\nVersion: 12.4+deb12u5\nArchitecture: amd64\n"),
            ("var/lib/dpkg/status.d/libc6", "Package: libc6\nVersion: 2.36-9+deb12u4\nSource: glibc\n"),
            ("var/lib/dpkg/status.d/libc6.md5sums", "0123456789abcdef  lib/x86_64-linux-gnu/libc.so.6\n"),
            ("var/lib/dpkg/status.d/sub/nested", "Package: nested\nVersion: 1\n"),
        ],
    )
    assert inventory([distroless]) == [
        Package("Debian:12", "base-files", "12.4+deb12u5", "var/lib/dpkg/status.d/base"),
        Package("Debian:12", "glibc", "2.36-9+deb12u4", "var/lib/dpkg/status.d/libc6", binary="libc6"),
    ]
    ubuntu = layer(
        tmp_path / "ubuntu.tar.gz",
        [("usr/lib/os-release", UBUNTU_OS_RELEASE), ("var/lib/dpkg/status", DPKG_STATUS)],
    )
    assert {p.ecosystem for p in inventory([ubuntu])} == {"Ubuntu:22.04:LTS"}
    interim = UBUNTU_OS_RELEASE.replace('VERSION_ID="22.04"', 'VERSION_ID="23.10"').replace(
        "22.04.3 LTS (Jammy Jellyfish)", "23.10 (Mantic Minotaur)"
    )
    assert inventory_module.dpkg_ecosystem(inventory_module._os_release(interim)) == "Ubuntu:23.10"
    mint = {"ID": "linuxmint", "ID_LIKE": "ubuntu debian", "VERSION_ID": "21.2"}
    assert inventory_module.dpkg_ecosystem(mint) == "Ubuntu"
    assert inventory_module.alpine_ecosystem(None, {"ID": "alpine", "VERSION_ID": "3.18.4"}) == "Alpine:v3.18"
    assert inventory_module.alpine_ecosystem("edge", {}) == "Alpine"


def test_hard_links_and_unsafe_names(tmp_path: Path) -> None:
    image = layer(
        tmp_path / "links.tar.gz",
        [
            ("etc/os-release", DEBIAN_OS_RELEASE),
            ("opt/a/node_modules/left-pad/package.json", package_json("left-pad", "1.3.0")),
            ("opt/b/node_modules/left-pad/package.json", "", "hardlink:opt/a/node_modules/left-pad/package.json"),
            ("opt/c/node_modules/left-pad/package.json", None, "../../a/node_modules/left-pad/package.json"),
            ("var/lib/dpkg/status", None, "/etc/passwd"),  # a symlink is not followed
            ("./../var/lib/dpkg/status", DPKG_STATUS),  # climbs out: ignored
        ],
    )
    assert inventory([image]) == [
        Package("npm", "left-pad", "1.3.0", "opt/a/node_modules/left-pad/package.json"),
        Package("npm", "left-pad", "1.3.0", "opt/b/node_modules/left-pad/package.json"),
    ]
    assert layers.clean_path("./a//b/./c") == "a/b/c"
    assert layers.clean_path("/abs/path") == "abs/path"
    assert layers.clean_path("a/../../b") is None


def test_unreadable_layers_and_the_member_bound(tmp_path: Path) -> None:
    not_a_tar = tmp_path / "blob"
    not_a_tar.write_bytes(b"this is not a tar file at all" * 40)
    with pytest.raises(LayerError, match="blob: not a readable layer"):
        inventory([not_a_tar])
    truncated = tmp_path / "truncated.tar.gz"
    whole = layer(tmp_path / "whole.tar.gz", [("var/lib/dpkg/status", DPKG_STATUS * 50)]).read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(LayerError, match=r"truncated\.tar\.gz"):
        inventory([truncated])
    many = layer(tmp_path / "many.tar.gz", [(f"f{i}", "x") for i in range(10)])
    assert inventory([many], max_members=10) == []
    with pytest.raises(LayerError, match="more members than a scan considers"):
        inventory([many, many], max_members=15)  # the bound is over the whole image
    assert inventory([]) == []


# -- headers crafted to exhaust memory -----------------------------------------------------------------------

HOSTILE = 8 * 1024 * 1024  # bytes of header data a hostile layer declares (it compresses to a few KiB)


def _header(name: str, kind: bytes, size: int, *, fmt: Literal[0, 1, 2] = tarfile.GNU_FORMAT) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size
    return info.tobuf(format=fmt)


def _gzip_stream(path: Path, *parts: bytes | tuple[bytes, int]) -> Path:
    """A gzip file of `parts`: bytes as they are, (piece, count) as `piece` repeated `count` times (streamed)."""
    with gzip.open(path, "wb", compresslevel=1) as out:
        for part in parts:
            if isinstance(part, bytes):
                out.write(part)
                continue
            piece, count = part
            batch = piece * max(1, (1 << 20) // len(piece))
            per_batch = len(batch) // len(piece)
            while count > 0:
                n = min(count, per_batch)
                out.write(batch[: n * len(piece)])
                count -= n
    return path


def _sparse_header(name: str) -> bytes:
    """An old GNU sparse member's header that says extension blocks follow (`isextended`)."""
    block = bytearray(_header(name, tarfile.GNUTYPE_SPARSE, 0))
    block[482] = 1
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def _extension_block() -> bytes:
    entry = b"00000000001\0" * 2  # offset 1, 1 byte: a struct kept for each
    return entry * 21 + b"\x01" + b"\0" * 7  # ... and another block follows


def _peak_while(read: Path) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        with contextlib.suppress(LayerError):
            inventory([read])
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


END = b"\0" * 1024


@pytest.mark.parametrize(
    "what",
    ["gnu long name", "gnu long link", "pax header", "global pax headers", "old gnu sparse map", "gnu sparse 1.0 map"],
)
def test_a_header_declaring_a_huge_size_is_refused_unread(tmp_path: Path, what: str) -> None:
    path = tmp_path / "hostile.tar.gz"
    follow = _header("etc/os-release", tarfile.REGTYPE, 0)
    if what == "gnu long name":
        _gzip_stream(path, _header("././@LongLink", tarfile.GNUTYPE_LONGNAME, HOSTILE), (b"a", HOSTILE), follow, END)
    elif what == "gnu long link":
        _gzip_stream(path, _header("././@LongLink", tarfile.GNUTYPE_LONGLINK, HOSTILE), (b"a", HOSTILE), follow, END)
    elif what == "pax header":
        _gzip_stream(path, _header("pax", tarfile.XHDTYPE, HOSTILE, fmt=tarfile.USTAR_FORMAT), (b"a", HOSTILE))
    elif what == "global pax headers":
        # each within a sane size, together a growing set of keys that every later member copies
        parts: list[bytes | tuple[bytes, int]] = []
        for n in range(16):
            record = _pax_record(b"k%d" % n, b"v" * (512 * 1024))
            parts += [_header("g", tarfile.XGLTYPE, len(record), fmt=tarfile.USTAR_FORMAT), record, _pad(len(record))]
        _gzip_stream(path, *parts, follow, END)
    elif what == "old gnu sparse map":
        _gzip_stream(path, _sparse_header("etc/os-release"), (_extension_block(), HOSTILE // 512))
    else:
        pax = _pax_record(b"GNU.sparse.major", b"1") + _pax_record(b"GNU.sparse.minor", b"0")
        pax_header = _header("pax", tarfile.XHDTYPE, len(pax), fmt=tarfile.USTAR_FORMAT)
        member = _header("etc/os-release", tarfile.REGTYPE, HOSTILE, fmt=tarfile.USTAR_FORMAT)
        _gzip_stream(path, pax_header, pax, _pad(len(pax)), member, b"999999999999\n", (b"1\n", HOSTILE // 2))
    assert path.stat().st_size < 2 * 1024 * 1024
    peak = _peak_while(path)
    assert peak < 4 * 1024 * 1024, f"{what}: {peak} bytes allocated at the peak"


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    size = len(body) + 1
    while len(str(size).encode() + body) != size:
        size = len(str(size).encode() + body)
    return str(size).encode() + body


def _pad(size: int) -> bytes:
    return b"\0" * (-size % 512)


def test_package_databases_holding_more_entries_than_a_scan_considers_are_refused(tmp_path: Path) -> None:
    """Each dpkg database file may be 64 MiB: a few of them, of distinct small entries, would parse into
    gigabytes (~250 bytes per entry kept, from ~25 of gzip-friendly text). The image's entries over all its
    package databases are bounded, and counted as they are parsed."""
    entries = 20_000

    def status(n: int) -> str:
        return "".join(f"Package: p{n}x{i}\nVersion: 1.{i}\n\n" for i in range(entries))

    files: list[Entry] = [(f"var/lib/dpkg/status.d/f{n}", status(n)) for n in range(4)]
    apk: list[Entry] = [("lib/apk/db/installed", "".join(f"P:a{i}\nV:1.{i}\n\n" for i in range(entries)))]
    big = layer(tmp_path / "big.tar.gz", files + apk)
    assert len(inventory([big], max_entries=5 * entries)) == 5 * entries
    for at_most in (5 * entries - 1, entries // 2):
        with pytest.raises(LayerError, match="more package entries than a scan considers"):
            inventory([big], max_entries=at_most)
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(LayerError):
            inventory([big], max_entries=1000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # One file's text and lines are held while it is parsed (~5 MiB here); every entry kept would be ~40 MiB.
    assert peak < 10 * 1024 * 1024, f"{peak} bytes allocated at the peak: entries were kept past the bound"
