"""The pull-through cache's hits and misses per minute, in this process (pure: `now` is an argument).

The cache counts hits and misses per rule as running totals (`RuleMetrics`); a `HitHistory` is handed those
totals now and then (`sample`) and files what was added since the last sample under the current minute, in a
ring of the last `MINUTES` minutes. It is per process: each worker or replica keeps its own, as its counters.
"""

from __future__ import annotations

from dataclasses import dataclass

MINUTES = 60  # minutes kept


@dataclass(frozen=True, slots=True)
class Minute:
    start: float  # epoch seconds, a multiple of 60
    hits: int
    misses: int


class HitHistory:
    def __init__(self, minutes: int = MINUTES, totals: tuple[int, int] = (0, 0)) -> None:
        """`totals`: the running totals when counting starts (the counters start at zero with the process, so
        the first sample counts what they grew by since then: a hit before it is not lost)."""
        self.minutes = minutes
        self._counts: dict[int, list[int]] = {}  # minute number -> [hits, misses]
        self._totals = totals  # the totals of the last sample

    def sample(self, now: float, hits: int, misses: int) -> None:
        """The running totals as they are at `now`: what they grew by since the last sample counts in this
        minute."""
        added_hits, added_misses = max(hits - self._totals[0], 0), max(misses - self._totals[1], 0)
        if added_hits or added_misses:
            counts = self._counts.setdefault(int(now // 60), [0, 0])
            counts[0] += added_hits
            counts[1] += added_misses
        self._totals = (hits, misses)
        oldest = int(now // 60) - self.minutes + 1
        for minute in [m for m in self._counts if m < oldest]:
            del self._counts[minute]

    def series(self, now: float) -> list[Minute]:
        """The last `minutes` minutes, oldest first, the current one last (minutes without any: zeros)."""
        current = int(now // 60)
        out = []
        for minute in range(current - self.minutes + 1, current + 1):
            hits, misses = self._counts.get(minute, (0, 0))
            out.append(Minute(minute * 60.0, hits, misses))
        return out
