"""Unit tests of the operations pages' pure parts: the lifecycle preview's marks and rule summaries, the
server-drawn charts' geometry, where a permission answer came from, and the "as of" times."""

from __future__ import annotations

import hashlib

import pytest

from registry import lifecycle
from registry.console.charts import bar_chart, hits_chart
from registry.console.lifecycle_view import preview, rule_summary
from registry.console.permissions import source_of
from registry.proxy.history import Minute
from registry.service.lifecycle import Planned
from registry.web.console.calls import parse_time, time_field
from storage.records import ImageRecord

POLICY = lifecycle.parse_policy(
    '{"rules": ['
    '{"rulePriority": 1, "description": "releases", "selection": {"tagStatus": "tagged", "tagPrefixList": ["v"], '
    '"countType": "imageCountMoreThan", "countNumber": 1}, "action": {"type": "expire"}},'
    '{"rulePriority": 2, "selection": {"tagStatus": "any", "countType": "sinceImagePulled", "countUnit": "days", '
    '"countNumber": 30}, "action": {"type": "transition", "targetStorageClass": "archive"}}]}'
)


def image(n: int, *tags: str) -> ImageRecord:
    digest = "sha256:" + hashlib.sha256(str(n).encode()).hexdigest()
    return ImageRecord(n, "r", digest, "m", 100, 1000 * n, None, None, None, float(n), None, tags)


@pytest.mark.parametrize(
    ("priority", "expected"),
    [(1, "tagged v* · more than 1 images · expire"), (2, "any · not pulled for 30 days · archive")],
)
def test_rule_summary(priority: int, expected: str) -> None:
    assert rule_summary(next(r for r in POLICY.rules if r.priority == priority)) == expected


def test_preview_marks_each_image_with_its_action_and_rule() -> None:
    images = [image(1, "v1"), image(2, "v2"), image(3, "dev"), image(4)]
    planned = [
        Planned(lifecycle.Action(images[0].digest, 1, "expire", None), images[0]),
        Planned(lifecycle.Action(images[2].digest, 2, "transition", "archive"), images[2]),
    ]
    shown = preview(images, planned, POLICY, 99.0)
    assert [row.image.id for row in shown.rows] == [4, 3, 2, 1]  # newest first
    marks = {row.image.id: (row.action, row.rule.priority if row.rule else None) for row in shown.rows}
    assert marks == {1: ("expire", 1), 2: (None, None), 3: ("transition", 2), 4: (None, None)}
    assert (shown.expiring, shown.archiving, shown.expiring_bytes, shown.total) == (1, 1, 1000, 4)


def test_bar_chart_scales_to_the_largest() -> None:
    chart = bar_chart([("big", 4096), ("half", 2048), ("tiny", 0)], width=720)
    room = 720 - chart.label_width - 90
    assert [bar.width for bar in chart.bars] == [room, room / 2, 1.0]  # a zero still shows as a sliver
    assert [bar.y for bar in chart.bars] == [0, 26, 52] and chart.bars[0].text == "4.0 KiB"
    assert bar_chart([]).bars == []


def test_hits_chart_stacks_hits_on_misses() -> None:
    minutes = [Minute(0.0, 0, 0), Minute(60.0, 3, 1), Minute(120.0, 1, 1)]
    chart = hits_chart(minutes, width=300, height=120)
    assert chart.plot_height == 100 and chart.top == 4 and (chart.hits, chart.misses) == (4, 2)
    busy = chart.columns[1]
    assert (busy.misses_height, busy.hits_height) == (25.0, 75.0)
    assert busy.misses_y == 75.0 and busy.hits_y == 0.0  # misses at the bottom, hits on top
    assert chart.columns[0].hits_height == chart.columns[0].misses_height == 0
    assert busy.title == "00:01 UTC: 3 hits, 1 misses" and (chart.first, chart.last) == ("00:00 UTC", "00:02 UTC")


@pytest.mark.parametrize(
    ("reason", "source"),
    [
        ("allowed by an identity-based policy", "identity-based policy"),
        ("allowed by a resource-based policy", "repository policy"),
        ("with an explicit deny in a resource-based policy", "repository policy"),
        ("allowed by an identity-based and a resource-based policy", "both"),
        ("no identity-based policy allows the ecr:PutImage action", "identity-based policy"),
    ],
)
def test_source_of_an_answer(reason: str, source: str) -> None:
    assert source_of(reason) == source


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-12-01", 1796083200.0),
        ("2026-12-01T08:30", 1796083200.0 + 8.5 * 3600),
        ("2026-12-01T08:30:15", 1796083200.0 + 8.5 * 3600 + 15),
        ("next week", None),
        ("2026-13-01", None),
    ],
)
def test_as_of_times_are_utc(raw: str, expected: float | None) -> None:
    assert parse_time(raw) == expected
    if expected is not None:
        assert parse_time(time_field(expected)) == expected // 60 * 60
