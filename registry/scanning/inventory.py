"""The packages installed in an image, read from its layer tarballs. Pure (reads the layer files given).

Sources, as the image's final filesystem has them (layers applied in order, whiteouts honoured: see `layers`):

- dpkg (Debian, Ubuntu): `var/lib/dpkg/status`, and `var/lib/dpkg/status.d/*` as distroless images have them
  (their `.md5sums` skipped). Only installed packages count (a `Status` ending in "installed", or none, as in
  distroless). OSV's Debian and Ubuntu records are per source package, so a package is named by its `Source`
  (when it has one) and versioned by the source's version (`Source: foo (1.2-3)`, else its own); the binary
  package's name is kept in `binary`. The release comes from `etc/os-release` (or `usr/lib/os-release`, what
  `etc/os-release` usually links to): ID=debian with VERSION_ID=12 is "Debian:12"; ID=ubuntu with
  VERSION_ID=22.04 is "Ubuntu:22.04:LTS" when VERSION says LTS (as OSV names Ubuntu's LTS releases), else
  "Ubuntu:23.10". Without a release (sid, no os-release, a derivative), the bare "Debian" or "Ubuntu".
- apk (Alpine): `lib/apk/db/installed` (or `usr/lib/apk/db/installed`), named by origin (the source package,
  as OSV's Alpine records are) with the binary in `binary`; the release from `etc/alpine-release` (3.19.1 ->
  "Alpine:v3.19"), else os-release's VERSION_ID, else the bare "Alpine".
- Python ("PyPI"): every `*.dist-info/METADATA`, `*.egg-info/PKG-INFO` and `*.egg-info` file: their Name and
  Version headers, the name normalised as PEP 503 says (OSV's PyPI records use that form).
- npm: `package.json` directly in a package's directory under `node_modules` (`node_modules/<name>/` or
  `node_modules/@scope/<name>/`, at any depth, nested `node_modules` included); other package.json files in
  a package (a `lib/package.json` saying `"type": "module"`) are not packages, nor is one without a name and
  a version.

Bounds, beyond the layers' (`layers`): at most `max_entries` package entries are parsed over the whole image
(every dpkg or apk database entry, every Python or npm manifest, counted as they are read, those of files a later
layer replaces included); past it LayerError, rather than gigabytes of entries from a few small layers.

RPM (Red Hat, Fedora, Amazon Linux, SUSE) is left out: the rpmdb is a BerkeleyDB, NDB or SQLite file of binary
RPM headers, and no well-kept pip-installable library reads it without the native rpm library.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from registry.scanning import layers as _layers
from registry.scanning.layers import LayerError
from registry.scanning.packages import Package, normalize_pypi_name

__all__ = ["LayerError", "inventory"]

DPKG_STATUS = "var/lib/dpkg/status"
DPKG_STATUS_D = "var/lib/dpkg/status.d/"
OS_RELEASE = ("etc/os-release", "usr/lib/os-release")  # in order of preference
APK_INSTALLED = ("lib/apk/db/installed", "usr/lib/apk/db/installed")
ALPINE_RELEASE = "etc/alpine-release"

MAX_ENTRIES = 500_000  # a large image has a few thousand; each kept costs a few hundred bytes
_SOURCE = re.compile(r"^(\S+)(?:\s+\((\S+)\))?$")  # "foo" or "foo (1.2-3)"
_ALPINE_BRANCH = re.compile(r"^(\d+)\.(\d+)")


def inventory(
    layers: Sequence[str | os.PathLike[str]],
    *,
    max_member_bytes: int = _layers.MAX_MEMBER_BYTES,
    max_members: int = _layers.MAX_MEMBERS,
    max_entries: int = MAX_ENTRIES,
) -> list[Package]:
    """The packages of the image whose layers (tar files: gzip, zstd or uncompressed) apply in this order;
    sorted by `Package.sort_key`, without duplicates. LayerError if a layer cannot be read."""
    budget = _Budget(max_entries)

    def parse(kind: str, path: str, content: bytes) -> Any:
        return _parse(kind, path, content, budget)

    files = _layers.merged(layers, _kind, parse, max_member_bytes=max_member_bytes, max_members=max_members)
    os_release = _first(files, OS_RELEASE, "os-release") or {}
    found: set[Package] = set()
    found.update(_dpkg_packages(files, os_release))
    found.update(_apk_packages(files, os_release))
    for path, (name, version) in _layers.kinds(files, "python"):
        found.add(Package("PyPI", name, version, path))
    for path, (name, version) in _layers.kinds(files, "npm"):
        found.add(Package("npm", name, version, path))
    return sorted(found, key=Package.sort_key)


# -- which files -------------------------------------------------------------------------------------------


def _kind(path: str) -> str | None:
    if path == DPKG_STATUS:
        return "dpkg"
    if path.startswith(DPKG_STATUS_D):
        rest = path[len(DPKG_STATUS_D) :]
        return "dpkg" if "/" not in rest and not rest.endswith(".md5sums") else None
    if path in OS_RELEASE:
        return "os-release"
    if path in APK_INSTALLED:
        return "apk"
    if path == ALPINE_RELEASE:
        return "alpine-release"
    parent, _, base = path.rpartition("/")
    if base == "METADATA" and parent.endswith(".dist-info"):
        return "python"
    if (base == "PKG-INFO" and parent.endswith(".egg-info")) or base.endswith(".egg-info"):
        return "python"
    if base == "package.json" and _is_npm_package_dir(parent.split("/")):
        return "npm"
    return None


def _is_npm_package_dir(parts: list[str]) -> bool:
    """`node_modules/<name>` or `node_modules/@scope/<name>`."""
    if len(parts) >= 2 and parts[-2] == "node_modules":
        return not parts[-1].startswith((".", "@"))
    if len(parts) >= 3 and parts[-3] == "node_modules" and parts[-2].startswith("@"):
        return not parts[-1].startswith(".")
    return False


# -- reading them ------------------------------------------------------------------------------------------


class _Budget:
    """The package entries an image may still have parsed."""

    def __init__(self, entries: int) -> None:
        self.left = entries

    def take(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise LayerError("the image has more package entries than a scan considers")


def _parse(kind: str, path: str, content: bytes, budget: _Budget) -> Any:
    text = content.decode("utf-8", errors="replace")
    if kind == "dpkg":
        return _dpkg_entries(text, budget)
    if kind == "apk":
        return _apk_entries(text, budget)
    if kind in ("python", "npm"):
        project = _python_project(text) if kind == "python" else _npm_package(text)
        if project is not None:
            budget.take()
        return project
    if kind == "os-release":
        return _os_release(text)
    if kind == "alpine-release":
        return text.strip() or None
    return None


def paragraphs(text: str) -> Iterator[dict[str, str]]:
    """deb822 paragraphs (dpkg's status): field names lower-cased, continuation lines left out."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                yield fields
                fields = {}
            continue
        if line[0] in " \t":
            continue
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip().lower()] = value.strip()
    if fields:
        yield fields


def _dpkg_entries(text: str, budget: _Budget) -> list[tuple[str, str, str | None, str | None]]:
    """(package, version, source, source version) of each installed package."""
    out = []
    for fields in paragraphs(text):
        name, version = fields.get("package"), fields.get("version")
        status = fields.get("status")
        if not name or not version or (status is not None and status.split()[-1:] != ["installed"]):
            continue
        budget.take()
        source = _SOURCE.match(fields.get("source", ""))
        out.append((name, version, source.group(1) if source else None, source.group(2) if source else None))
    return out


def _apk_entries(text: str, budget: _Budget) -> list[tuple[str, str, str | None]]:
    """(package, version, origin) of each package in apk's installed database."""
    out = []
    fields: dict[str, str] = {}
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if fields.get("P") and fields.get("V"):
                budget.take()
                out.append((fields["P"], fields["V"], fields.get("o") or None))
            fields = {}
        elif len(line) > 2 and line[1] == ":" and line[0] in "PVo":
            fields[line[0]] = line[2:].strip()
    return out


def _python_project(text: str) -> tuple[str, str] | None:
    """Name and Version from a METADATA / PKG-INFO file's headers (they end at the first blank line)."""
    name = version = None
    for line in text.splitlines():
        if not line.strip():
            break
        header, sep, value = line.partition(":")
        if not sep:
            continue
        header = header.strip().lower()
        if header == "name" and name is None:
            name = value.strip()
        elif header == "version" and version is None:
            version = value.strip()
    if not name or not version:
        return None
    return normalize_pypi_name(name), version


def _npm_package(text: str) -> tuple[str, str] | None:
    try:
        document = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    name, version = document.get("name"), document.get("version")
    if not isinstance(name, str) or not isinstance(version, str) or not name.strip() or not version.strip():
        return None
    return name.strip(), version.strip()


def _os_release(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, raw = line.partition("=")
        try:
            words = shlex.split(raw)
        except ValueError:
            words = [raw.strip("\"'")]
        values[name.strip()] = " ".join(words)
    return values


# -- the packages ------------------------------------------------------------------------------------------


def _first(files: Mapping[str, tuple[str, Any]], paths: Sequence[str], kind: str) -> Any:
    for path in paths:
        if path in files and files[path][0] == kind:
            return files[path][1]
    return None


def dpkg_ecosystem(os_release: Mapping[str, str]) -> str:
    """OSV's ecosystem for the dpkg packages of an image with this os-release."""
    distribution = os_release.get("ID", "").lower()
    release = os_release.get("VERSION_ID", "")
    if distribution == "ubuntu" or (distribution != "debian" and "ubuntu" in os_release.get("ID_LIKE", "").split()):
        if distribution != "ubuntu" or not release:
            return "Ubuntu"
        return f"Ubuntu:{release}:LTS" if "LTS" in os_release.get("VERSION", "").split() else f"Ubuntu:{release}"
    if distribution == "debian" and release:
        return f"Debian:{release}"
    return "Debian"


def alpine_ecosystem(alpine_release: str | None, os_release: Mapping[str, str]) -> str:
    """OSV's ecosystem for the apk packages: "Alpine:v<major>.<minor>" of the release, else bare "Alpine"."""
    for release in (alpine_release, os_release.get("VERSION_ID") if os_release.get("ID") == "alpine" else None):
        branch = _ALPINE_BRANCH.match(release or "")
        if branch:
            return f"Alpine:v{branch.group(1)}.{branch.group(2)}"
    return "Alpine"


def _dpkg_packages(files: Mapping[str, tuple[str, Any]], os_release: Mapping[str, str]) -> Iterator[Package]:
    ecosystem = dpkg_ecosystem(os_release)
    for path, entries in _layers.kinds(files, "dpkg"):
        for binary, version, source, source_version in entries:
            name = source or binary
            yield Package(ecosystem, name, source_version or version, path, binary if binary != name else None)


def _apk_packages(files: Mapping[str, tuple[str, Any]], os_release: Mapping[str, str]) -> Iterator[Package]:
    ecosystem = alpine_ecosystem(_first(files, (ALPINE_RELEASE,), "alpine-release"), os_release)
    for path, entries in _layers.kinds(files, "apk"):
        for binary, version, origin in entries:
            name = origin or binary
            yield Package(ecosystem, name, version, path, binary if binary != name else None)
