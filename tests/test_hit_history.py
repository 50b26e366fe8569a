"""The pull-through cache's per-minute hit history (`registry.proxy.history`): a pure ring of minutes."""

from __future__ import annotations

from registry.proxy.history import HitHistory, Minute

T = 1_700_000_080.0  # 40 s into a minute


def test_the_first_sample_counts_from_the_start() -> None:
    """The counters start at zero with the process: hits before the first sample (the first seconds after a
    start) count in its minute."""
    history = HitHistory(minutes=3)
    history.sample(T, 10, 5)
    assert [(m.hits, m.misses) for m in history.series(T)] == [(0, 0), (0, 0), (10, 5)]
    later = HitHistory(minutes=3, totals=(10, 5))  # counting from totals already there
    later.sample(T, 12, 5)
    assert [(m.hits, m.misses) for m in later.series(T)] == [(0, 0), (0, 0), (2, 0)]


def test_growth_between_samples_counts_in_the_minute_of_the_sample() -> None:
    history = HitHistory(minutes=3)
    history.sample(T, 0, 0)
    history.sample(T + 10, 4, 1)  # same minute
    history.sample(T + 30, 6, 1)  # the next minute (T + 20 starts it)
    series = history.series(T + 30)
    assert series[-2:] == [Minute((T + 10) // 60 * 60, 4, 1), Minute((T + 30) // 60 * 60, 2, 0)]
    assert [m.start for m in series] == sorted(m.start for m in series) and len(series) == 3


def test_old_minutes_fall_out_of_the_ring_and_totals_never_go_backwards() -> None:
    history = HitHistory(minutes=2)
    history.sample(T, 0, 0)
    history.sample(T + 1, 5, 0)
    history.sample(T + 200, 5, 0)  # three minutes later: the first minute is gone
    assert all(m.hits == 0 for m in history.series(T + 200))
    history.sample(T + 201, 3, 0)  # a smaller total (a reset) adds nothing
    history.sample(T + 202, 4, 2)
    assert history.series(T + 202)[-1] == Minute((T + 202) // 60 * 60, 1, 2)
