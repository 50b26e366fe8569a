"""Loading: a TOML file, `MOORAGE_*` environment variables and command-line overrides, layered in that order,
then each value coerced to its field's kind and checked (`from_dict`), then the checks that span keys (a TLS
certificate and its key, an ECR-shaped host name against the account and region, principals' unique names and
keys, pull-through rules against `max_rules`, the allowed upstreams and [secrets]). Every problem found is
reported at once, in one `ConfigError`."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from registry.config.environment import read_environ
from registry.config.schema import (
    Config,
    PrincipalConfig,
    RegistryConfig,
    ReplicationConfig,
    SecretConfig,
    ServerConfig,
)
from registry.config.values import (
    ConfigError,
    Problems,
    Secret,
    check_secret_name,
    parse_duration,
    split_hostname,
)
from registry.naming import ECR_HOSTNAME, ROOT
from registry.upstream_url import NotAllowed, UpstreamPolicy

_TYPES: dict[str, tuple[type | tuple[type, ...], str]] = {
    "str": (str, "a string"),
    "bool": (bool, "true or false"),
    "int": (int, "an integer"),
    "path": (str, "a path string"),
    "secret": (str, "a string"),
    "duration": ((str, int, float), 'a duration such as "12h"'),
    "strs": (list, "an array of strings"),
}


def _coerce(key: str, f: dataclasses.Field[Any], value: Any) -> Any:
    kind = f.metadata["kind"]
    if kind == "table":
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table ([{key}])")
        return _build(f.metadata["cls"], value, key)
    if kind == "tables":
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ConfigError(f"{key}: expected an array of tables ([[{key}]])")
        problems, items = Problems(), []
        for i, item in enumerate(value):
            with problems.gathered():
                items.append(_build(f.metadata["cls"], item, f"{key}[{i}]"))
        problems.raise_any()
        return tuple(items)
    expected, wording = _TYPES[kind]
    if not _is_a(value, expected) or (kind != "bool" and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {wording}, got {value!r}")
    try:
        if kind == "path":
            value = Path(value)
        elif kind == "secret":
            value = Secret(value)
        elif kind == "duration":
            value = parse_duration(value)
        elif kind == "strs":
            if not all(isinstance(item, str) for item in value):
                raise ValueError("expected an array of strings")
            value = tuple(value)
        check = f.metadata.get("check")
        if check is not None:
            value = check(value)
    except ValueError as e:
        shown = "****" if kind == "secret" else repr(value)
        raise ConfigError(f"{key}: {e} (got {shown})") from None
    return value


def _is_a(value: Any, expected: type | tuple[type, ...]) -> bool:
    """isinstance, without narrowing `value` for the type checker (it stays Any for the conversions)."""
    return isinstance(value, expected)


def _build(cls: type, body: dict[str, Any], prefix: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    problems = Problems()
    for name, value in body.items():
        if name not in fields:
            problems.found.append(f"unknown key {prefix}.{name} (known: {', '.join(sorted(fields))})")
            continue
        with problems.gathered():
            values[name] = _coerce(f"{prefix}.{name}", fields[name], value)
    missing = [
        n
        for n, f in fields.items()
        if n not in body and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        problems.found.append(f"{prefix}: missing required key {', '.join(missing)}")
    problems.raise_any()
    return cls(**values)


def from_dict(raw: dict[str, Any]) -> Config:
    """The configuration from parsed TOML; ConfigError lists every problem found. (Checks across keys run only
    on sections that parsed, so a bad value does not also show up as their consequences.)"""
    sections: dict[str, Any] = {}
    top = {f.name: f for f in dataclasses.fields(Config)}
    problems = Problems()
    for section, body in raw.items():
        if section not in top:
            problems.found.append(f"unknown section [{section}] (known: {', '.join(sorted(top))})")
        elif not isinstance(body, dict):
            problems.found.append(f"[{section}] must be a table")
        else:
            with problems.gathered():
                sections[section] = (
                    _secrets(body) if section == "secrets" else _build(top[section].default_factory, body, section)  # type: ignore[arg-type]
                )
    failed = {s for s in raw if s in top and s not in sections}
    config = Config(**sections)
    checks: list[tuple[set[str], Callable[[], None]]] = [
        ({"server"}, lambda: _check_tls_pair(config.server)),
        ({"registry"}, lambda: _check_hostname_names_registry(config.registry)),
        ({"auth"}, lambda: _check_principals(config.auth.principals)),
        ({"pull_through", "secrets"}, lambda: _check_rules(config)),
        ({"replication", "registry"}, lambda: _check_destinations(config.replication, config.registry)),
    ]
    for needs, check in checks:
        if not needs & failed:
            with problems.gathered():
                check()
    problems.raise_any()
    return config


def _check_tls_pair(server: ServerConfig) -> None:
    if bool(server.tls_cert_file) != bool(server.tls_key_file):
        raise ConfigError("server.tls_cert_file and server.tls_key_file: give both (TLS) or neither (plain HTTP)")


def _check_hostname_names_registry(registry: RegistryConfig) -> None:
    """An ECR-shaped hostname names an account and a region: they must be the registry's own (clients such as
    docker-credential-ecr-login take them from the host name; ARNs and registry ids use the configured ones)."""
    host = split_hostname(registry.hostname)[1].rsplit(":", 1)[0] if registry.hostname else ""
    m = ECR_HOSTNAME.fullmatch(host.lower())
    if m and (m["account"], m["region"]) != (registry.account_id, registry.region):
        raise ConfigError(
            f"registry.hostname: {host!r} names account {m['account']} in {m['region']}, but [registry] has "
            f"account_id = {registry.account_id!r} and region = {registry.region!r}; make them agree"
        )


def _secrets(body: dict[str, Any]) -> dict[str, SecretConfig]:
    out = {}
    problems = Problems()
    for name, value in body.items():
        with problems.gathered():
            out[name] = _secret(name, value)
    problems.raise_any()
    return out


def _secret(name: str, value: Any) -> SecretConfig:
    try:
        check_secret_name(name)
    except ValueError:
        raise ConfigError(f"[secrets.{name}]: a secret's name may have letters, digits and /_+=.@- only") from None
    if not isinstance(value, dict):
        raise ConfigError(f"[secrets.{name}] must be a table with username/password or access keys")
    secret = _build(SecretConfig, value, f"secrets.{name}")
    has_basic = bool(secret.username) or bool(secret.password.reveal())
    has_keys = bool(secret.access_key_id) or bool(secret.secret_access_key.reveal())
    if has_basic == has_keys:
        raise ConfigError(
            f"[secrets.{name}] needs either username and password (registry credentials) or "
            "access_key_id and secret_access_key (an ECR-style upstream), not both"
        )
    return secret


def _check_rules(config: Config) -> None:
    rules = config.pull_through.rules
    problems = Problems()
    if len(rules) > config.pull_through.max_rules:
        problems.found.append(
            f"pull_through.rules: {len(rules)} rules, more than pull_through.max_rules "
            f"({config.pull_through.max_rules})"
        )
    policy = UpstreamPolicy.parse(config.pull_through.allowed_upstreams)
    seen: set[str] = set()
    for i, rule in enumerate(rules):
        key = f"pull_through.rules[{i}]"
        if rule.ecr_repository_prefix in seen:
            problems.found.append(
                f"{key}.ecr_repository_prefix: {rule.ecr_repository_prefix!r} is used by another rule"
            )
        seen.add(rule.ecr_repository_prefix)
        if rule.ecr_repository_prefix == ROOT and rule.upstream_repository_prefix != ROOT:
            problems.found.append(
                f"{key}.upstream_repository_prefix: only allowed when ecr_repository_prefix is not ROOT"
            )
        if rule.credential and rule.credential not in config.secrets:
            problems.found.append(f"{key}.credential: no [secrets.{rule.credential}] is configured")
        try:
            policy.check_url(rule.upstream_registry_url)
        except NotAllowed as e:
            problems.found.append(f"{key}.upstream_registry_url: {e}")
    problems.raise_any()


def _check_destinations(replication: ReplicationConfig, registry: RegistryConfig) -> None:
    """Each destination once, never the registry itself, with one kind of credentials (or none, for an open OCI
    registry); access keys are for another Moorage's (or ECR's) API."""
    problems = Problems()
    seen: set[str] = set()
    for i, d in enumerate(replication.destinations):
        key = f"replication.destinations[{i}]"
        if d.key in seen:
            problems.found.append(f"{key}: region {d.region!r} and registry_id {d.registry_id!r} are another's")
        seen.add(d.key)
        if (d.region, d.registry_id) == (registry.region, registry.account_id):
            problems.found.append(f"{key}: names this registry itself ([registry] region and account_id)")
        has_keys = bool(d.access_key_id) or bool(d.secret_access_key.reveal())
        has_basic = bool(d.username) or bool(d.password.reveal())
        if has_keys and has_basic:
            problems.found.append(
                f"{key}: give access_key_id and secret_access_key (another Moorage) or username and password "
                "(an OCI registry), not both"
            )
        elif has_keys and not (d.access_key_id and d.secret_access_key.reveal()):
            problems.found.append(f"{key}: access_key_id and secret_access_key go together")
        elif has_basic and not (d.username and d.password.reveal()):
            problems.found.append(f"{key}: username and password go together")
    problems.raise_any()


def _check_principals(principals: tuple[PrincipalConfig, ...]) -> None:
    problems = Problems()
    for attr in ("name", "access_key_id"):
        seen: set[str] = set()
        for i, principal in enumerate(principals):
            value = getattr(principal, attr)
            if value in seen:
                problems.found.append(f"auth.principals[{i}].{attr}: {value!r} is used by another principal")
            seen.add(value)
    problems.raise_any()


def load(
    path: str | Path | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read a TOML file (or nothing: all defaults), then `MOORAGE_*` environment variables, then
    `{section: {key: value}}` overrides (the command line), each winning over the one before."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML: {e}") from None
    from_env, problems = read_environ(environ or {})
    for layer in (from_env, overrides or {}):
        for section, values in layer.items():
            target = raw.setdefault(section, {})
            if isinstance(target, dict):  # else from_dict says that [section] must be a table
                target.update({k: v for k, v in values.items() if v is not None})
    config = None
    with problems.gathered():
        config = from_dict(raw)
    problems.raise_any()
    assert config is not None
    return config
