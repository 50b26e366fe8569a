"""OSV records indexed by package, and what they say about a set of installed packages. Pure.

`VulnIndex(records)` keeps, of the records sharing an id, the one with the latest `modified` (of equal ones, the
last read), then drops withdrawn records, and indexes each `affected` entry whose ecosystem has a known version
ordering (`versions.ORDERINGS`) by (ecosystem, package name); PyPI names are PEP 503 normalised on both sides.

A package is looked up under its own ecosystem and, when that names a release ("Debian:12",
"Ubuntu:22.04:LTS", "Alpine:v3.19"), under the bare ecosystem too ("Debian"): a record for the bare ecosystem
covers every release, one for "Debian:11" only Debian 11. `index_keys(package)` gives those keys, so that
`index_keys(p) & affected_names()` tells whether a database has anything about a package at all.

An entry affects a version as OSV's schema evaluates it: the version is in the entry's `versions` list (equal
in the ecosystem's ordering), or in one of its ranges of type ECOSYSTEM (the ecosystem's ordering) or SEMVER
(semver's), whose events (`introduced` "0" before everything) are walked in order: at or after `introduced`
the version is affected, at or after `fixed` not, after `last_affected` not; a range with `limit` events only
covers versions below one of them ("*": no limit). GIT ranges are ignored (a package in an image has no
commit).

A finding's severity is ECR's (CRITICAL, HIGH, MEDIUM, LOW, INFORMATIONAL, UNDEFINED). It comes from the first
CVSS vector the `cvss` library reads, in the order CVSS v3, v4, v2, looking at the matching `affected` entries'
own `severity` before the record's: its base score gives the severity by CVSS's qualitative bands (0.0 is
INFORMATIONAL; v2 has no CRITICAL). Without one, from an "Ubuntu" priority, else from an `ecosystem_specific`
or `database_specific` `severity` word (GitHub's MODERATE is MEDIUM), else UNDEFINED. The `uri` is the first
ADVISORY reference, else the first WEB one, else the record's page on osv.dev; `fixed` lists the versions in
the matching ranges' `fixed` events that are newer than the installed version, oldest first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from operator import itemgetter
from typing import Any

from cvss import CVSS2, CVSS3, CVSS4
from cvss.exceptions import CVSSError

from registry.scanning import versions
from registry.scanning.packages import Package, normalize_pypi_name
from registry.scanning.versions import VersionKey

SEVERITIES = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "INFORMATIONAL", "UNDEFINED")  # most severe first
_SEVERITY_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}
_SEVERITY_WORDS = {
    "critical": "CRITICAL",
    "high": "HIGH",
    "important": "HIGH",
    "moderate": "MEDIUM",
    "medium": "MEDIUM",
    "low": "LOW",
    "negligible": "INFORMATIONAL",
    "unimportant": "INFORMATIONAL",
    "none": "INFORMATIONAL",
    "info": "INFORMATIONAL",
    "informational": "INFORMATIONAL",
}
_CVSS_TYPES = ("CVSS_V3", "CVSS_V4", "CVSS_V2")  # the order a finding's severity is taken in
_INTRODUCED, _FIXED, _LAST_AFFECTED = 0, 1, 2
_EVENT_KINDS = {"introduced": _INTRODUCED, "fixed": _FIXED, "last_affected": _LAST_AFFECTED}


@dataclass(frozen=True, slots=True)
class Finding:
    id: str  # the OSV id ("DSA-5000-1", "GHSA-...", "CVE-...")
    aliases: tuple[str, ...]
    package: Package
    severity: str  # one of SEVERITIES
    score: float | None  # the CVSS base score the severity comes from, if any
    vector: str | None  # that CVSS vector
    summary: str
    details: str
    uri: str
    fixed: tuple[str, ...]  # versions newer than the installed one that fix it, oldest first
    published: str | None
    modified: str


def index_keys(package: Package) -> tuple[tuple[str, str], ...]:
    """The (ecosystem, name) pairs a package is looked up under: its own, and the bare ecosystem's."""
    name = normalize_pypi_name(package.name) if package.ecosystem == "PyPI" else package.name
    bare = package.ecosystem.split(":", 1)[0]
    if bare == package.ecosystem:
        return ((package.ecosystem, name),)
    return ((package.ecosystem, name), (bare, name))


class _Range:
    __slots__ = ("events", "limits", "order")

    def __init__(self, order: str, events: list[tuple[int, VersionKey | None]], limits: list[VersionKey | None]):
        self.order = order
        self.events = events  # sorted; None is introduced "0", before everything
        self.limits = limits  # None is "*", no limit

    def includes(self, version: VersionKey) -> bool:
        if self.limits and not any(limit is None or version < limit for limit in self.limits):
            return False
        affected = False
        for kind, at in self.events:
            if kind == _INTRODUCED:
                if at is None or version >= at:
                    affected = True
            elif at is not None and (version >= at if kind == _FIXED else version > at):
                affected = False
        return affected


class _Entry:
    """One `affected` entry of a record, its ranges and versions read on first use."""

    __slots__ = ("_ranges", "_versions", "affected", "order", "record")

    def __init__(self, record: dict[str, Any], affected: dict[str, Any], order: str) -> None:
        self.record = record
        self.affected = affected
        self.order = order
        self._ranges: list[_Range] | None = None
        self._versions: set[Any] | None = None

    def ranges(self) -> list[_Range]:
        if self._ranges is None:
            self._ranges = [r for r in map(self._read_range, _dicts(self.affected.get("ranges"))) if r is not None]
        return self._ranges

    def _read_range(self, raw: Mapping[str, Any]) -> _Range | None:
        kind = raw.get("type")
        if kind not in ("ECOSYSTEM", "SEMVER"):
            return None  # GIT: commits, which an installed package does not have
        order = versions.SEMVER if kind == "SEMVER" else self.order
        zeros: list[tuple[int, VersionKey | None]] = []
        events: list[tuple[int, VersionKey]] = []
        limits: list[VersionKey | None] = []
        for event in _dicts(raw.get("events")):
            if isinstance(event.get("limit"), str):
                limits.append(None if "*" in event["limit"] else versions.key_in(order, event["limit"]))
                continue
            for name, kind_of in _EVENT_KINDS.items():
                value = event.get(name)
                if isinstance(value, str):
                    if kind_of == _INTRODUCED and value == "0":
                        zeros.append((kind_of, None))
                    else:
                        events.append((kind_of, versions.key_in(order, value)))
                    break
        events.sort(key=itemgetter(1))
        return _Range(order, [*zeros, *events], limits)

    def listed(self, version: str) -> bool:
        if self._versions is None:
            listed = self.affected.get("versions")
            texts = [v for v in listed if isinstance(v, str)] if isinstance(listed, list) else []
            self._versions = {_identity(versions.key_in(self.order, v)) for v in texts}
        return bool(self._versions) and _identity(versions.key_in(self.order, version)) in self._versions

    def affects(self, version: str) -> bool:
        if self.listed(version):
            return True
        return any(r.includes(versions.key_in(r.order, version)) for r in self.ranges())

    def fixes_after(self, version: str) -> list[VersionKey]:
        out = []
        for r in self.ranges():
            installed = versions.key_in(r.order, version)
            out += [at for kind, at in r.events if kind == _FIXED and at is not None and at > installed]
        return out


def _identity(key: VersionKey) -> Any:
    """What makes two versions equal in their ordering, as a hashable value."""
    return ("parsed", key.parsed) if key.parsed is not None else ("text", key.text)


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _modified(record: Mapping[str, Any]) -> tuple[int, float, str]:
    """A record's `modified` as something comparable: a timestamp when RFC 3339 (UTC when no zone), else text."""
    text = record.get("modified")
    if not isinstance(text, str):
        return (0, 0.0, "")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return (0, 0.0, text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (1, moment.timestamp(), "")


class VulnIndex:
    """OSV records indexed by (ecosystem, package name); see the module's docstring."""

    def __init__(self, records: Iterable[dict[str, Any]]) -> None:
        latest: dict[str, tuple[tuple[int, float, str], dict[str, Any]]] = {}
        for record in records:
            record_id = record.get("id") if isinstance(record, dict) else None
            if not isinstance(record_id, str):
                continue
            stamp = _modified(record)
            if record_id in latest and stamp < latest[record_id][0]:
                continue
            latest[record_id] = (stamp, record)
        self._entries: dict[tuple[str, str], list[_Entry]] = {}
        self._records = 0
        for _, record in latest.values():
            if record.get("withdrawn"):
                continue
            self._records += 1
            for affected in _dicts(record.get("affected")):
                package = affected.get("package")
                if not isinstance(package, dict):
                    continue
                ecosystem, name = package.get("ecosystem"), package.get("name")
                if not isinstance(ecosystem, str) or not isinstance(name, str) or not versions.supports(ecosystem):
                    continue
                if ecosystem == "PyPI":
                    name = normalize_pypi_name(name)
                entry = _Entry(record, affected, versions.ordering(ecosystem))
                self._entries.setdefault((ecosystem, name), []).append(entry)

    def __len__(self) -> int:
        """The records indexed (withdrawn ones and older copies left out)."""
        return self._records

    def affected_names(self) -> set[tuple[str, str]]:
        """The (ecosystem, name) pairs that some record affects (compare with `index_keys` of packages)."""
        return set(self._entries)

    def findings(self, packages: Iterable[Package]) -> list[Finding]:
        """What the records say about these packages: a finding per (record, package) that it affects, the most
        severe first, then by id and package."""
        out = []
        for package in dict.fromkeys(packages):
            matched: dict[str, list[_Entry]] = {}
            for index_key in index_keys(package):
                for entry in self._entries.get(index_key, ()):
                    if entry.affects(package.version):
                        matched.setdefault(entry.record["id"], []).append(entry)
            out += [_finding(package, entries) for entries in matched.values()]
        out.sort(key=lambda f: (_SEVERITY_RANK[f.severity], f.id, f.package.sort_key()))
        return out


def _finding(package: Package, entries: Sequence[_Entry]) -> Finding:
    record = entries[0].record
    severity, score, vector = _severity(record, entries)
    # sorted in the ecosystem's order (a SEMVER range's keys are of another ordering: not comparable)
    texts = {key.text for entry in entries for key in entry.fixes_after(package.version)}
    fixed = tuple(sorted(texts, key=lambda text: (versions.key_in(entries[0].order, text), text)))
    aliases = record.get("aliases")
    published = record.get("published")
    return Finding(
        id=record["id"],
        aliases=tuple(a for a in aliases if isinstance(a, str)) if isinstance(aliases, list) else (),
        package=package,
        severity=severity,
        score=score,
        vector=vector,
        summary=_text(record.get("summary")),
        details=_text(record.get("details")),
        uri=_uri(record),
        fixed=fixed,
        published=published if isinstance(published, str) else None,
        modified=_text(record.get("modified")),
    )


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _uri(record: Mapping[str, Any]) -> str:
    references = [r for r in _dicts(record.get("references")) if isinstance(r.get("url"), str)]
    for wanted in ("ADVISORY", "WEB"):
        for reference in references:
            if reference.get("type") == wanted:
                return str(reference["url"])
    return f"https://osv.dev/vulnerability/{record['id']}"


def _severity(record: Mapping[str, Any], entries: Sequence[_Entry]) -> tuple[str, float | None, str | None]:
    lists = [_dicts(entry.affected.get("severity")) for entry in entries] + [_dicts(record.get("severity"))]
    for cvss_type in _CVSS_TYPES:
        for items in lists:
            for item in items:
                if item.get("type") == cvss_type and isinstance(item.get("score"), str):
                    scored = cvss_severity(cvss_type, item["score"])
                    if scored is not None:
                        return scored[0], scored[1], item["score"]
    words = [item.get("score") for items in lists for item in items if item.get("type") == "Ubuntu"]
    for entry in entries:
        for field in ("ecosystem_specific", "database_specific"):
            specific = entry.affected.get(field)
            words.append(specific.get("severity") if isinstance(specific, dict) else None)
    specific = record.get("database_specific")
    words.append(specific.get("severity") if isinstance(specific, dict) else None)
    for word in words:
        if isinstance(word, str) and word.strip().lower() in _SEVERITY_WORDS:
            return _SEVERITY_WORDS[word.strip().lower()], None, None
    return "UNDEFINED", None, None


@lru_cache(maxsize=65536)
def cvss_severity(cvss_type: str, vector: str) -> tuple[str, float] | None:
    """ECR's severity and the base score of a CVSS vector (type CVSS_V2, CVSS_V3 or CVSS_V4, as OSV names
    them); None if the vector does not read."""
    try:
        if cvss_type == "CVSS_V2":
            score = float(CVSS2(vector).base_score)
            return ("HIGH" if score >= 7.0 else "MEDIUM" if score >= 4.0 else "LOW"), score
        if cvss_type == "CVSS_V3":
            score = float(CVSS3(vector).base_score)
        elif cvss_type == "CVSS_V4":
            score = float(CVSS4(vector).base_score)
        else:
            return None
    except (CVSSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None
    if score >= 9.0:
        return "CRITICAL", score
    if score >= 7.0:
        return "HIGH", score
    if score >= 4.0:
        return "MEDIUM", score
    if score > 0.0:
        return "LOW", score
    return "INFORMATIONAL", score
