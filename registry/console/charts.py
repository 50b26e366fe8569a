"""Small charts drawn on the server: the geometry of an inline SVG, computed here (pure), drawn by a template.

No script and no chart library: a horizontal bar chart (storage by repository) and a column chart of hits and
misses per minute (the pull-through cache's history). Every number a chart shows is also in its `title`s and
in a table or text next to it, for screen readers and for copying.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from registry.console.views import human_size
from registry.proxy.history import Minute

BAR_HEIGHT, BAR_GAP, LABEL_WIDTH, VALUE_WIDTH = 20, 6, 220, 90


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    value: int
    text: str  # the value as shown (human size)
    y: int
    width: float  # of the bar, from the label column on


@dataclass(frozen=True, slots=True)
class BarChart:
    width: int
    height: int
    label_width: int
    bars: list[Bar]


def bar_chart(items: Sequence[tuple[str, int]], width: int = 720) -> BarChart:
    """Horizontal bars for (label, bytes), largest first as given; the largest spans the room there is."""
    room = width - LABEL_WIDTH - VALUE_WIDTH
    top = max((value for _, value in items), default=0)
    bars = [
        Bar(
            label if len(label) <= 32 else label[:31] + "…",
            value,
            human_size(value),
            i * (BAR_HEIGHT + BAR_GAP),
            max(room * value / top, 1.0) if top else 1.0,
        )
        for i, (label, value) in enumerate(items)
    ]
    return BarChart(width, max(len(bars) * (BAR_HEIGHT + BAR_GAP), BAR_HEIGHT), LABEL_WIDTH, bars)


@dataclass(frozen=True, slots=True)
class Column:
    x: float
    width: float
    hits_y: float  # hits stacked on misses: misses at the bottom
    hits_height: float
    misses_y: float
    misses_height: float
    title: str  # "12:34 UTC: 5 hits, 1 miss"


@dataclass(frozen=True, slots=True)
class ColumnChart:
    width: int
    height: int
    plot_height: int  # above the time axis
    top: int  # the y axis' top value
    columns: list[Column]
    first: str  # the time axis' ends ("11:35 UTC")
    last: str
    hits: int  # totals over the window
    misses: int


def _clock(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%H:%M UTC")


def hits_chart(minutes: Sequence[Minute], width: int = 720, height: int = 160) -> ColumnChart:
    """A column per minute: misses at the bottom, hits on top, scaled to the busiest minute."""
    plot = height - 20
    top = max((m.hits + m.misses for m in minutes), default=0) or 1
    step = width / max(len(minutes), 1)
    columns = []
    for i, m in enumerate(minutes):
        misses_h = plot * m.misses / top
        hits_h = plot * m.hits / top
        columns.append(
            Column(
                x=i * step,
                width=max(step - 1, 1.0),
                hits_y=plot - misses_h - hits_h,
                hits_height=hits_h,
                misses_y=plot - misses_h,
                misses_height=misses_h,
                title=f"{_clock(m.start)}: {m.hits} hits, {m.misses} misses",
            )
        )
    return ColumnChart(
        width,
        height,
        plot,
        top,
        columns,
        _clock(minutes[0].start) if minutes else "",
        _clock(minutes[-1].start) if minutes else "",
        sum(m.hits for m in minutes),
        sum(m.misses for m in minutes),
    )
