"""Configuration parsing (pure) and the documented example."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path

import pytest

from registry import config

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


def test_example_documents_every_key_with_its_default() -> None:
    text = EXAMPLE.read_text()
    raw = tomllib.loads(text)
    for section in dataclasses.fields(config.Config):
        documented = raw.get(section.name, {})
        if section.name == "secrets":  # named tables, shown commented out
            for f in dataclasses.fields(config.SecretConfig):
                assert f"# {f.name} = " in text, f"config.example.toml lacks secrets.NAME.{f.name}"
            continue
        for f in dataclasses.fields(getattr(config.Config(), section.name)):
            if f.metadata["kind"] == "tables":  # arrays of tables are shown commented out, as examples
                table = f"[[{section.name}.{f.name}]]"
                assert f"# {table}" in text, f"config.example.toml lacks {table}"
                continue
            assert f.name in documented, f"config.example.toml lacks {section.name}.{f.name}"
    # Every value shown is the default.
    assert config.from_dict(raw) == config.Config()


def test_example_principal_block_is_valid() -> None:
    """The commented [[auth.principals]] example, uncommented, is a working configuration."""
    lines = EXAMPLE.read_text().splitlines()
    start = lines.index("# [[auth.principals]]")
    block = []
    for line in lines[start:]:
        if not line.startswith("# "):
            break
        block.append(line[2:])
    parsed = config.from_dict(tomllib.loads("\n".join(block)))
    (principal,) = parsed.auth.principals
    assert principal.name and "****" in repr(principal) and principal.secret_access_key.reveal() not in repr(principal)


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
        {"server": {"workers": -1}},
        {"server": {"workers": 65}},
        {"server": {"workers": "auto"}},
        {"server": {"event_loop": "trio"}},
    ],
)
def test_bad_values(raw: dict) -> None:
    with pytest.raises(config.ConfigError):
        config.from_dict(raw)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("12h", 43200),
        ("1h30m", 5400),
        ("45s", 45),
        ("2d", 172800),
        ("250ms", 0.25),
        (30, 30),
        (1.5, 1.5),
    ],
)
def test_durations(text: str | int | float, seconds: float) -> None:
    assert config.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "12", "h", "12x", "1h 30", "-5s", "0s", "12hours"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        config.parse_duration(text)


@pytest.mark.parametrize(("workers", "expected"), [(1, 1), (3, 3), (64, 64)])
def test_worker_count(workers: int, expected: int) -> None:
    assert config.load(None, {"server": {"workers": workers}}).server.worker_count == expected


def test_auto_workers_follow_usable_cpus_up_to_four() -> None:
    usable = len(os.sched_getaffinity(0))
    assert config.load(None, {}).server.worker_count == max(1, min(usable, config.AUTO_WORKERS_MAX))


def test_secrets_never_show() -> None:
    s = config.Secret("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    assert "wJalr" not in repr(s) and "wJalr" not in str(s) and "wJalr" not in f"{s}"
    assert s.reveal().startswith("wJalr") and s == config.Secret(s.reveal())


def test_bad_principal_secret_is_masked_in_the_error() -> None:
    with pytest.raises(config.ConfigError) as e:
        config.from_dict(
            {
                "auth": {
                    "principals": [
                        {
                            "name": "x",
                            "access_key_id": "AKIAIOSFODNN7EXAMPLE",
                            "secret_access_key": "tooshort",
                            "policy": "{}",
                        }
                    ]
                }
            }
        )
    assert "tooshort" not in str(e.value) and "secret_access_key" in str(e.value)


def test_duplicate_access_keys_are_refused() -> None:
    p = {
        "access_key_id": "AKIAIOSFODNN7EXAMPLE",
        "secret_access_key": "s" * 40,
        "policy": '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ecr:*","Resource":"*"}]}',
    }
    with pytest.raises(config.ConfigError, match="access_key_id"):
        config.from_dict({"auth": {"principals": [{"name": "a", **p}, {"name": "b", **p}]}})
