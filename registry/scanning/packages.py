"""The packages an image holds, as the vulnerability database names them. Pure."""

from __future__ import annotations

import re
from dataclasses import dataclass

_PEP503 = re.compile(r"[-_.]+")


def normalize_pypi_name(name: str) -> str:
    """PEP 503's normalised form of a Python project name ("Foo_Bar.baz" -> "foo-bar-baz"), the form OSV's PyPI
    records use."""
    return _PEP503.sub("-", name).lower()


@dataclass(frozen=True, slots=True)
class Package:
    """One installed package.

    `ecosystem` is OSV's, with the distribution's release where OSV scopes records by release ("Debian:12",
    "Ubuntu:22.04:LTS", "Alpine:v3.19"; "PyPI", "npm"). `name` is the name OSV's records use: the source
    package for Debian, Ubuntu and Alpine (whose records are per source package), the PEP 503 normalised name
    for PyPI. `version` is the installed version (for dpkg, the source package's version when it differs from
    the binary's). `path` is the file in the image that says the package is there; `binary` is the binary
    package's name (dpkg, apk) when it differs from `name`.
    """

    ecosystem: str
    name: str
    version: str
    path: str
    binary: str | None = None

    def sort_key(self) -> tuple[str, str, str, str, str]:
        """The order of `inventory()` and of findings: ecosystem, name, version, path, binary."""
        return (self.ecosystem, self.name, self.version, self.path, self.binary or "")
