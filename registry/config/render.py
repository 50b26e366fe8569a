"""The effective configuration written out as TOML (what `moorage check-config` prints): every section and key
with its value, durations annotated in seconds, secrets masked. `toml_value` writes one value, as the list of
environment variables (`registry.config.environment`) does too."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from registry.config.schema import Config
from registry.config.values import Secret


def toml_value(v: Any) -> str:
    if isinstance(v, Secret):
        return '"****"' if v.reveal() else '""'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, tuple):
        return json.dumps(list(v))
    return json.dumps(str(v))


def render(config: Config) -> str:
    """The effective configuration as TOML, secrets masked (what `moorage check-config` prints)."""

    def table(header: str, obj: Any) -> list[str]:
        lines = [header]
        nested: list[str] = []
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if f.metadata.get("kind") == "tables":
                for item in v:
                    nested += ["", *table(f"[[{header.strip('[]')}.{f.name}]]", item)]
                continue
            if f.metadata.get("kind") == "table":
                nested += ["", *table(f"[{header.strip('[]')}.{f.name}]", v)]
                continue
            shown = toml_value(v)
            if f.metadata.get("kind") == "duration":
                shown += f"  # {v:g} seconds"
            lines.append(f"{f.name} = {shown}")
        return lines + nested

    out: list[str] = []
    for section in dataclasses.fields(config):
        body = getattr(config, section.name)
        if section.name == "secrets":
            for name, secret in body.items():
                out += [*table(f"[secrets.{name}]", secret), ""]
            continue
        out += [*table(f"[{section.name}]", body), ""]
    return "\n".join(out).rstrip() + "\n"
