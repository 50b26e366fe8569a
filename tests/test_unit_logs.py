"""The access log's JSON lines (registry/logs.AccessLog): every member per request, whatever the kept templates."""

from __future__ import annotations

import json

import pytest

from registry import logs

FIELDS = ("method", "path", "route", "status", "principal", "repository", "action", "remote", "user_agent", "worker")


class _Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, line: str) -> None:
        self.lines.append(line)


def _log(access: logs.AccessLog, rid: str, **fields: object) -> dict[str, object]:
    values = {
        "method": "GET",
        "path": "/v2/app/manifests/v1",
        "route": "/v2/{name}/manifests/{reference}",
        "status": 200,
        "principal": None,
        "repository": "app",
        "action": "ecr:BatchGetImage",
        "remote": "127.0.0.1",
        "user_agent": "docker/27",
        "worker": None,
        **fields,
    }
    access.request(rid, bytes_in=0, bytes_out=1234, seconds=0.0125, **values)  # type: ignore[arg-type]
    line = json.loads(access.writer.lines[-1])  # type: ignore[attr-defined]
    assert line["request_id"] == rid and line["bytes_out"] == 1234 and line["duration_ms"] == 12.5
    expected = {k: v for k, v in values.items() if v is not None or k != "worker"}  # (no worker: no member)
    assert {k: line[k] for k in FIELDS if k in line} == expected
    assert line["msg"] == f"{values['method']} {values['path']} {values['status']}"
    return line


@pytest.mark.parametrize("kept", [4096, 2])
def test_each_line_says_its_own_request_whatever_was_kept(monkeypatch: pytest.MonkeyPatch, kept: int):
    """Lines that differ in any one member, one after another and again (from kept templates, or after the kept
    ones were dropped): each says exactly its own request; strings are escaped."""
    monkeypatch.setattr(logs, "TEMPLATES", kept)
    access = logs.AccessLog(_Lines(), use_json=True)  # type: ignore[arg-type]
    variants: list[dict[str, object]] = [
        {},
        {"status": 404},
        {"path": "/v2/app/manifests/v2"},
        {"principal": "admin"},
        {"remote": None, "route": None},
        {"user_agent": 'quote " and \\ and \n newline'},
        {"worker": 1},
        {"method": "HEAD"},
    ]
    for round_ in range(2):
        for i, variant in enumerate(variants):
            _log(access, f"id-{round_}-{i}", **variant)
    assert len(access._templates) <= max(kept, len(variants))
