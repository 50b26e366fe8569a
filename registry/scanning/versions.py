"""Version ordering, per ecosystem, the way each ecosystem's own tools order versions. Pure.

- dpkg (Debian, Ubuntu): python-debian's `Version` reads the version (epoch, upstream version, Debian revision)
  and says whether it is valid; the order is dpkg's `verrevcmp`, turned into a tuple that Python compares
  natively (python-debian's pure-Python comparison costs ~16 µs a pair, too slow for a database of tens of
  thousands of ranges). Each part alternates runs of non-digits, compared character by character with `~`
  before the end of the run, the end before letters and letters before everything else, and runs of digits,
  compared as numbers. The tests hold the two to the same answers.
- PEP 440 (PyPI): `packaging.version.Version` (epochs, pre-, post- and dev-releases, local versions).
- semver (npm, and OSV's SEMVER ranges): the `semver` library reads the version; the order is semver 2.0.0's
  precedence (build metadata ignored, a pre-release before its release, numeric identifiers before
  alphanumeric ones). Like node-semver's loose mode, a leading `v` or `=` and surrounding blanks are dropped;
  a missing minor or patch number counts as 0 ("1.2" is 1.2.0).
- apk (Alpine): no library; apk-tools' rules, written here once. A version is
  `digits{.digits}...{letter}{_suffix{digits}}...{~hash}{-r digits}`; versions compare token by token: numbers
  as numbers (but as strings when either has a leading zero, as Gentoo does), the letter by its character,
  suffixes in the order _alpha < _beta < _pre < _rc < (none) < _cvs < _svn < _git < _hg < _p, the commit
  hash as a string, the -rN revision as a number. When one version runs out of tokens or has a token of
  another kind, a pre-release suffix (_alpha.._rc) makes it the lesser; otherwise the one whose next token
  comes later in that list of kinds (digit, letter, suffix, suffix number, hash, revision, end, invalid) is
  the lesser: 1.0 < 1.0.1, 1.0_rc1 < 1.0 < 1.0-r1 < 1.0_p1 < 1.0a, and an invalid rest ranks below all.

A version an ordering cannot read (dpkg, PEP 440, semver) compares with other versions as a plain string.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import semver
from debian.debian_support import Version as DebianVersion
from packaging.version import InvalidVersion
from packaging.version import Version as Pep440Version

DPKG = "dpkg"
PEP440 = "pep440"
SEMVER = "semver"
APK = "apk"

# OSV's ecosystem (without its ":release" suffix) -> the ordering of its versions
ORDERINGS: dict[str, str] = {"Debian": DPKG, "Ubuntu": DPKG, "Alpine": APK, "PyPI": PEP440, "npm": SEMVER}


class UnknownEcosystem(ValueError):
    """An ecosystem whose version ordering this module does not know."""


def ordering(ecosystem: str) -> str:
    """The ordering of an OSV ecosystem's versions ("Debian:12" -> "dpkg"); UnknownEcosystem if none."""
    try:
        return ORDERINGS[ecosystem.split(":", 1)[0]]
    except KeyError:
        raise UnknownEcosystem(f"no version ordering for the ecosystem {ecosystem!r}") from None


def supports(ecosystem: str) -> bool:
    return ecosystem.split(":", 1)[0] in ORDERINGS


class VersionKey:
    """A version's place in an ordering: keys compare by their parsed form when both versions could be read,
    else by their text. Unhashable (two equal keys can have different texts: PEP 440's 1.0 and 1.0.0)."""

    __slots__ = ("parsed", "text")

    def __init__(self, text: str, parsed: Any) -> None:
        self.text = text
        self.parsed = parsed

    def _cmp(self, other: VersionKey) -> int:
        a: Any
        b: Any
        if self.parsed is not None and other.parsed is not None:
            a, b = self.parsed, other.parsed
        else:
            a, b = self.text, other.text
        return -1 if a < b else (1 if a > b else 0)

    def __lt__(self, other: VersionKey) -> bool:
        return self._cmp(other) < 0

    def __le__(self, other: VersionKey) -> bool:
        return self._cmp(other) <= 0

    def __gt__(self, other: VersionKey) -> bool:
        return self._cmp(other) > 0

    def __ge__(self, other: VersionKey) -> bool:
        return self._cmp(other) >= 0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VersionKey):
            return NotImplemented
        return self._cmp(other) == 0

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"VersionKey({self.text!r})"


def key(ecosystem: str, version: str) -> VersionKey:
    """The sort key of `version` in `ecosystem`'s ordering (UnknownEcosystem if the ecosystem has none)."""
    return key_in(ordering(ecosystem), version)


def compare(ecosystem: str, a: str, b: str) -> int:
    """-1, 0 or 1 as `a` is older than, the same as or newer than `b` in the ecosystem's own ordering."""
    order = ordering(ecosystem)
    return key_in(order, a)._cmp(key_in(order, b))


@lru_cache(maxsize=1 << 17)
def key_in(order: str, version: str) -> VersionKey:
    """The sort key of `version` in one of the orderings (DPKG, PEP440, SEMVER, APK). Cached: a database
    names the same versions over and over."""
    parse = _PARSERS.get(order)
    if parse is None:
        raise UnknownEcosystem(f"no version ordering {order!r}")
    return VersionKey(version, parse(version))


# -- dpkg --------------------------------------------------------------------------------------------------

_DPKG_RUN = re.compile(r"(\D*)(\d*)")


def _dpkg_char(c: str) -> int:
    if c == "~":
        return -1
    if c.isascii() and c.isalpha():
        return ord(c)
    return ord(c) + 256


def _dpkg_part(text: str) -> tuple[Any, ...]:
    """verrevcmp as a tuple: (non-digit run, number, non-digit run, number, ..., end). A non-digit run is its
    characters' weights then 0 (its end, which sorts after `~` and before everything else); the final (0,) is
    the end of the string, so that a longer version compares with what follows rather than with nothing."""
    out: list[Any] = []
    pos = 0
    while True:
        run = _DPKG_RUN.match(text, pos)
        assert run is not None  # both groups may be empty: always matches
        letters, digits = run.group(1), run.group(2)
        out.append((*map(_dpkg_char, letters), 0))
        out.append(int(digits) if digits else 0)
        pos = run.end()
        if pos >= len(text):
            break
    out.append((0,))
    return tuple(out)


def _dpkg(version: str) -> tuple[Any, ...] | None:
    try:
        parsed = DebianVersion(version)
    except ValueError:
        return None
    return (
        int(parsed.epoch or "0"),
        _dpkg_part(parsed.upstream_version or "0"),
        _dpkg_part(parsed.debian_revision or "0"),
    )


# -- PEP 440 -----------------------------------------------------------------------------------------------


def _pep440(version: str) -> Pep440Version | None:
    try:
        return Pep440Version(version)
    except InvalidVersion:
        return None


# -- semver ------------------------------------------------------------------------------------------------


def _semver(version: str) -> tuple[Any, ...] | None:
    text = version.strip().lstrip("=v").strip()
    try:
        parsed = semver.Version.parse(text, optional_minor_and_patch=True)
    except (ValueError, TypeError):
        return None
    if parsed.prerelease is None:
        pre: tuple[Any, ...] = (1,)  # a release sorts after all of its pre-releases
    else:
        pre = (0, tuple((0, int(p)) if p.isdigit() else (1, p) for p in parsed.prerelease.split(".")))
    return (parsed.major, parsed.minor, parsed.patch, pre)


# -- apk ---------------------------------------------------------------------------------------------------

# apk-tools' token kinds, in its order: where two versions part ways on kinds, the later kind is the lesser.
_INITIAL, _DIGIT, _LETTER, _SUFFIX, _SUFFIX_NO, _HASH, _REVISION, _END, _INVALID = range(9)
_APK_SUFFIXES = {"alpha": 0, "beta": 1, "pre": 2, "rc": 3, "cvs": 5, "svn": 6, "git": 7, "hg": 8, "p": 9}
_APK_SUFFIX_NONE = 4  # the release itself: suffixes below it are pre-releases
_APK_DIGITS = re.compile(r"[0-9]+")
_APK_WORD = re.compile(r"[a-z]*")
_APK_HASH = re.compile(r"[0-9a-f]*")
_PRE_RELEASE_RANK = 0  # below every kind's rank


def _rank(kind: int) -> int:
    """A token's rank among tokens of other kinds: the later the kind, the lower (1 for invalid, 9 for the
    first number); a pre-release suffix ranks 0, below all."""
    return 9 - kind


def _apk(version: str) -> tuple[Any, ...]:
    """The version as a tuple of (rank, value) tokens, ending with the end or an invalid token (rank only):
    equal kinds compare by value, and the ranks order different kinds the way apk-tools does."""
    first = _APK_DIGITS.match(version)
    if first is None:
        return ((_rank(_INVALID),),)
    tokens: list[tuple[Any, ...]] = [(_rank(_INITIAL), int(first.group()))]
    previous, pos, end = _INITIAL, first.end(), len(version)
    while pos < end:
        c = version[pos]
        token: tuple[Any, ...] | None = None
        kind = _INVALID
        if "a" <= c <= "z" and previous <= _DIGIT:
            kind, token, pos = _LETTER, (_rank(_LETTER), c), pos + 1
        elif (c == "." and previous <= _DIGIT) or ("0" <= c <= "9" and previous == _SUFFIX):
            digits = _APK_DIGITS.match(version, pos + 1 if c == "." else pos)
            if digits is not None:
                text, pos = digits.group(), digits.end()
                value: Any
                if c == ".":  # a leading zero makes apk compare the digits as a string
                    kind, value = _DIGIT, ((0, text) if text[0] == "0" else (1, int(text)))
                else:
                    kind, value = _SUFFIX_NO, int(text)
                token = (_rank(kind), value)
        elif c == "_" and previous <= _SUFFIX_NO:
            word = _APK_WORD.match(version, pos + 1)
            assert word is not None
            suffix = _APK_SUFFIXES.get(word.group())
            if suffix is not None:
                kind, pos = _SUFFIX, word.end()
                token = (_PRE_RELEASE_RANK if suffix < _APK_SUFFIX_NONE else _rank(_SUFFIX), suffix)
        elif c == "~" and previous < _HASH:
            digest = _APK_HASH.match(version, pos + 1)
            assert digest is not None
            if digest.group():
                kind, token, pos = _HASH, (_rank(_HASH), digest.group()), digest.end()
        elif c == "-" and previous < _REVISION and version.startswith("-r", pos):
            digits = _APK_DIGITS.match(version, pos + 2)
            if digits is not None:
                kind, token, pos = _REVISION, (_rank(_REVISION), int(digits.group())), digits.end()
        if token is None:
            tokens.append((_rank(_INVALID),))
            return tuple(tokens)
        tokens.append(token)
        previous = kind
    tokens.append((_rank(_END),))
    return tuple(tokens)


_PARSERS: dict[str, Any] = {DPKG: _dpkg, PEP440: _pep440, SEMVER: _semver, APK: _apk}
