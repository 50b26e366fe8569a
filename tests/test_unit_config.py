"""Configuration parsing (pure) and the documented example."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from registry import config

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


def test_example_documents_every_key_with_its_default() -> None:
    raw = tomllib.loads(EXAMPLE.read_text())
    defaults = config.Config()
    for section in dataclasses.fields(config.Config):
        documented = raw.get(section.name, {})
        current = getattr(defaults, section.name)
        for f in dataclasses.fields(current):
            assert f.name in documented, f"config.example.toml lacks {section.name}.{f.name}"
            value = getattr(current, f.name)
            shown = Path(documented[f.name]) if isinstance(value, Path) else documented[f.name]
            assert shown == value, f"{section.name}.{f.name}: example says {documented[f.name]!r}, default is {value!r}"
    assert config.from_dict(raw) == defaults


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[server]\nlisten = "127.0.0.1:1"\ndata_dir = "/x"\n')
    c = config.load(path, {"server": {"listen": "[::1]:7000", "data_dir": None}})
    assert c.listen == ("::1", 7000)
    assert c.server.data_dir == Path("/x")


@pytest.mark.parametrize(
    ("listen", "parsed"),
    [
        ("127.0.0.1:5000", ("127.0.0.1", 5000)),
        (":5000", ("0.0.0.0", 5000)),
        ("[::]:80", ("::", 80)),
    ],
)
def test_listen(listen: str, parsed: tuple[str, int]) -> None:
    assert config.parse_listen(listen) == parsed


@pytest.mark.parametrize(
    "raw",
    [
        {"server": {"listen": "x"}},
        {"server": {"listen": "h:99999"}},
        {"server": {"data_dir": 3}},
        {"registry": {"metadata_cache_entries": 0}},
        {"registry": {"metadata_cache_entries": True}},
        {"registry": []},
        {"log": {"level": 1}},
    ],
)
def test_bad_values(raw: dict) -> None:
    with pytest.raises(config.ConfigError):
        config.from_dict(raw)
