"""Configuration: TOML parsed once into frozen dataclasses.

Every key has a default (documented in config.example.toml); unknown keys and bad values fail at start with a
message that names the key. Command-line flags override the file.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """A configuration problem, phrased for the user (it names the key)."""


def _check_listen(v: str) -> str:
    parse_listen(v)
    return v


def parse_listen(value: str) -> tuple[str, int]:
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\[\]]*):(\d+)", value)
    if not m:
        raise ValueError("expected HOST:PORT (for IPv6, [ADDR]:PORT)")
    host = m.group(1) if m.group(1) is not None else m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 <= port <= 65535:
        raise ValueError("port must be between 0 and 65535")
    return host or "0.0.0.0", port


def _check_account(v: str) -> str:
    if not re.fullmatch(r"[0-9]{12}", v):
        raise ValueError("must be 12 digits, like an AWS account id")
    return v


def _check_region(v: str) -> str:
    if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d+", v):
        raise ValueError("must look like an AWS region, e.g. us-east-1")
    return v


def _check_level(v: str) -> str:
    if v.lower() not in {"debug", "info", "warning", "error"}:
        raise ValueError("must be one of debug, info, warning, error")
    return v.lower()


def _check_positive(v: int) -> int:
    if v <= 0:
        raise ValueError("must be a positive integer")
    return v


def _key(default: Any, check: Any = None, doc: str = "") -> Any:
    return field(default=default, metadata={"check": check, "doc": doc})


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: str = _key("127.0.0.1:5000", _check_listen)
    data_dir: Path = _key(Path("./data"))  # noqa: RUF009


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    account_id: str = _key("000000000000", _check_account)
    region: str = _key("us-east-1", _check_region)
    create_on_push: bool = _key(True)
    metadata_cache_entries: int = _key(10000, _check_positive)


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = _key("info", _check_level)


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def listen(self) -> tuple[str, int]:
        return parse_listen(self.server.listen)


def _coerce(section: str, name: str, f: dataclasses.Field[Any], value: Any) -> Any:
    key = f"{section}.{name}"
    default = f.default
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
    elif isinstance(default, int):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
    elif isinstance(default, Path):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected a path string, got {value!r}")
        value = Path(value)
    elif isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    check = f.metadata.get("check")
    if check is not None:
        try:
            value = check(value)
        except ValueError as e:
            raise ConfigError(f"{key}: {e} (got {value!r})") from None
    return value


def from_dict(raw: dict[str, Any]) -> Config:
    sections: dict[str, Any] = {}
    top = {f.name: f for f in dataclasses.fields(Config)}
    for section, body in raw.items():
        if section not in top:
            raise ConfigError(f"unknown section [{section}] (known: {', '.join(sorted(top))})")
        if not isinstance(body, dict):
            raise ConfigError(f"[{section}] must be a table")
        cls = top[section].default_factory  # type: ignore[misc]
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values = {}
        for name, value in body.items():
            if name not in fields:
                raise ConfigError(f"unknown key {section}.{name} (known: {', '.join(sorted(fields))})")
            values[name] = _coerce(section, name, fields[name], value)
        sections[section] = cls(**values)
    return Config(**sections)


def load(path: str | Path | None = None, overrides: dict[str, dict[str, Any]] | None = None) -> Config:
    """Read a TOML file (or nothing: all defaults) and apply `{section: {key: value}}` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML: {e}") from None
    for section, values in (overrides or {}).items():
        raw.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
    return from_dict(raw)
