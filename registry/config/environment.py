"""The `MOORAGE_<SECTION>_<KEY>` environment variables: reading them into `{section: {key: value}}` settings
(the layer `registry.config.loading` puts between the file and the command line), and listing every one with its
default as it would be written in the variable (for `moorage serve --help`)."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from typing import Any

from registry.config.render import toml_value
from registry.config.schema import Config
from registry.config.values import Problems

ENV_PREFIX = "MOORAGE_"


def environment_variables() -> list[tuple[str, str]]:
    """Every `MOORAGE_<SECTION>_<KEY>` variable, with its key's default as it would be written in the variable
    (`moorage serve --help` lists them). Arrays of tables (principals, rules) and [secrets] have none."""
    defaults = Config()
    out: list[tuple[str, str]] = []

    def keys(prefix: str, body: Any) -> None:
        for f in dataclasses.fields(body):
            v = getattr(body, f.name)
            kind = f.metadata["kind"]
            if kind == "duration":
                shown = _short_duration(v)
            elif kind == "path":
                shown = v.as_posix() if v.is_absolute() else f"./{v.as_posix()}"
            elif kind == "str":
                shown = v or '""'
            elif kind == "tables":
                continue
            elif kind == "table":  # [storage.s3] endpoint_url: MOORAGE_STORAGE_S3_ENDPOINT_URL
                keys(f"{prefix}_{f.name}", v)
                continue
            else:
                shown = toml_value(v)
            out.append((f"{prefix}_{f.name}".upper(), shown))

    for section in dataclasses.fields(Config):
        if section.name != "secrets":
            keys(f"{ENV_PREFIX}{section.name}", getattr(defaults, section.name))
    return out


def _short_duration(seconds: float) -> str:
    """30s, 15m, 12h: the largest unit that divides it."""
    for size, unit in ((3600, "h"), (60, "m")):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def from_environ(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """`MOORAGE_<SECTION>_<KEY>=value` settings, e.g. MOORAGE_SERVER_LISTEN=0.0.0.0:5000,
    MOORAGE_AUTH_ENABLED=false, MOORAGE_PULL_THROUGH_OFFLINE=true. Values are read as TOML values when they
    parse as one (true, 10, "x"), else as plain strings. Unknown names fail like unknown keys."""
    settings, problems = read_environ(environ)
    problems.raise_any()
    return settings


def read_environ(environ: Mapping[str, str]) -> tuple[dict[str, dict[str, Any]], Problems]:
    """`from_environ`'s settings and the problems found, not yet raised (`load` reports them with the rest)."""
    sections = sorted((f.name for f in dataclasses.fields(Config) if f.name != "secrets"), key=len, reverse=True)
    out: dict[str, dict[str, Any]] = {}
    problems = Problems()
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in ("MOORAGE_CONFIG", "MOORAGE_INSTANCE_ID"):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        section = next((s for s in sections if rest.startswith(s + "_")), None)
        if section is None:
            problems.found.append(
                f"environment variable {name}: no such section (known: {', '.join(sorted(sections))})"
            )
            continue
        try:
            parsed: Any = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value
        key, target = rest[len(section) + 1 :], out.setdefault(section, {})
        table = next((t for t in _sub_tables(section) if key.startswith(t + "_")), None)
        if table is not None:  # MOORAGE_STORAGE_S3_REGION: [storage.s3] region
            target, key = target.setdefault(table, {}), key[len(table) + 1 :]
        target[key] = parsed
    return out, problems


def _sub_tables(section: str) -> list[str]:
    """The sub-tables of a section ([storage.s3]: "s3")."""
    body = getattr(Config(), section)
    return [f.name for f in dataclasses.fields(body) if f.metadata.get("kind") == "table"]
