"""Wildcard matching (`*`, and optionally `?`) in time linear in the text, whatever the pattern. Pure.

IAM policy globs, tag-mutability exclusion filters and lifecycle tag patterns all use this one matcher. A
backtracking matcher (a regular expression such as `.*a.*a.*a.*b`, or fnmatch) takes time exponential in
the number of stars on a text that almost matches; this one never backtracks:

- the pattern is split at its stars into segments of literal characters (and `?`, each matching exactly
  one character). Without a star, the text must match the one segment exactly;
- the first segment must match at the start of the text and the last one at its end;
- the segments in between are placed left to right, each at its leftmost occurrence after the previous one.
  Taking the leftmost occurrence is never wrong: a later one leaves less text for the segments after it.

A segment without `?` is found with `str.find` (CPython's two-way search: linear). A segment with `?` in an
ASCII text is found with bitmasks, in C: each character of the text gets one byte of a big integer, one mask
per character says where that character occurs, and the positions where the segment matches are the AND
of each of its characters' masks shifted by its offset in the segment (a bit-parallel scan, O(len(segment) *
len(text) / 64) machine words). Any other text falls back to a Shift-And scan in Python, also one pass. No
step ever goes back in the text: no exponential, or even quadratic, blow-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

STAR = "*"
ANY = "?"


@lru_cache(maxsize=256)
def _byte_table(c: str) -> bytes:
    """A bytes.translate table that maps the character's byte to 1 and every other byte to 0."""
    table = bytearray(256)
    if ord(c) < 128:
        table[ord(c)] = 1
    return bytes(table)


class _Positions:
    """Where each character occurs in an ASCII text: one byte of a big integer per character of the text."""

    __slots__ = ("cache", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.cache: dict[str, int] = {}

    def of(self, c: str) -> int:
        mask = self.cache.get(c)
        if mask is None:
            mask = self.cache[c] = int.from_bytes(self.raw.translate(_byte_table(c)), "little")
        return mask


def _positions(value: str) -> _Positions | None:
    return _Positions(value.encode("ascii")) if value.isascii() else None


@dataclass(frozen=True, slots=True)
class _Segment:
    """A run of the pattern between stars: literal characters, with `?` matching any one character."""

    text: str
    chunks: tuple[tuple[int, str], ...]  # (offset, literal run) between the `?`s
    literals: tuple[tuple[int, str], ...]  # (offset, character) of each character that is not `?`
    masks: dict[str, int] | None  # Shift-And masks per character; None when there is no `?`
    any_mask: int  # the `?` positions: every character matches there

    def __len__(self) -> int:
        return len(self.text)

    def matches_at(self, value: str, start: int) -> bool:
        if self.masks is None:
            return value.startswith(self.text, start)
        return all(value.startswith(chunk, start + offset) for offset, chunk in self.chunks)

    def find(self, value: str, start: int, end: int, positions: _Positions | None) -> int:
        """The leftmost position >= start where the segment matches, ending at or before `end`; -1 if none."""
        if self.masks is None:
            return value.find(self.text, start, end)
        n = len(self.text)
        if end - start < n:
            return -1
        if positions is not None:
            return self._find_bitwise(positions, start, end - n)
        return self._find_shift_and(value, start, end)

    def _find_bitwise(self, positions: _Positions, first: int, last: int) -> int:
        """Every start position at once: AND the shifted masks of the literal characters."""
        width = last - first + 1  # candidate start positions first..last
        candidates = int.from_bytes(b"\x01" * width, "little") << (8 * first)
        for offset, c in self.literals:
            candidates &= positions.of(c) >> (8 * offset)
            if not candidates:
                return -1
        lowest = (candidates & -candidates).bit_length() - 1
        return lowest // 8

    def _find_shift_and(self, value: str, start: int, end: int) -> int:
        n = len(self.text)
        masks, any_mask, last = self.masks or {}, self.any_mask, 1 << (n - 1)
        state = 0
        for i in range(start, end):
            state = ((state << 1) | 1) & masks.get(value[i], any_mask)
            if state & last:
                return i - n + 1
        return -1


def _segment(text: str, single: bool) -> _Segment:
    if not single or ANY not in text:
        return _Segment(text, ((0, text),), (), None, 0)
    any_mask = 0
    for i, c in enumerate(text):
        if c == ANY:
            any_mask |= 1 << i
    masks: dict[str, int] = {}
    for i, c in enumerate(text):
        if c != ANY:
            masks[c] = masks.get(c, any_mask) | (1 << i)
    chunks: list[tuple[int, str]] = []
    offset = 0
    for run in text.split(ANY):
        if run:
            chunks.append((offset, run))
        offset += len(run) + 1
    literals = tuple((i, c) for i, c in enumerate(text) if c != ANY)
    return _Segment(text, tuple(chunks), literals, masks, any_mask)


@dataclass(frozen=True, slots=True)
class Glob:
    """A compiled pattern; `matches(value)` is anchored at both ends."""

    pattern: str
    ignore_case: bool
    starred: bool  # the pattern has at least one `*`
    first: _Segment
    middle: tuple[_Segment, ...]
    last: _Segment
    fixed: int  # characters the segments need; a shorter text cannot match
    bitwise: bool  # a segment in the middle has a `?`: find it with bitmasks

    def matches(self, value: str) -> bool:
        if self.ignore_case:
            value = value.lower()
        if not self.starred:
            return len(value) == self.fixed and self.first.matches_at(value, 0)
        if len(value) < self.fixed or not self.first.matches_at(value, 0):
            return False
        end = len(value) - len(self.last)
        if not self.last.matches_at(value, end):
            return False
        pos = len(self.first)
        positions = _positions(value) if self.bitwise else None
        for segment in self.middle:
            found = segment.find(value, pos, end, positions)
            if found < 0:
                return False
            pos = found + len(segment)
        return True


@lru_cache(maxsize=4096)
def compile_glob(pattern: str, *, single: bool = True, ignore_case: bool = False) -> Glob:
    """`*` matches any run of characters (none included); with `single`, `?` matches exactly one character.
    Nothing else is special. With `ignore_case`, pattern and text are compared lower-cased."""
    if ignore_case:
        pattern = pattern.lower()
    parts = pattern.split(STAR)
    segments = [_segment(p, single) for p in parts]
    fixed = sum(len(p) for p in parts)
    if len(parts) == 1:
        return Glob(pattern, ignore_case, False, segments[0], (), segments[0], fixed, False)
    middle = tuple(s for s in segments[1:-1] if len(s))
    bitwise = any(s.masks is not None for s in middle)
    return Glob(pattern, ignore_case, True, segments[0], middle, segments[-1], fixed, bitwise)


def glob_matches(pattern: str, value: str, *, single: bool = True, ignore_case: bool = False) -> bool:
    """Whether `value` matches the whole of `pattern` (see `compile_glob`)."""
    return compile_glob(pattern, single=single, ignore_case=ignore_case).matches(value)
