"""Configuration: TOML parsed once into frozen dataclasses.

Every key has a default (documented in config.example.toml); unknown keys and bad values fail at start with a
message that names the key. Command-line flags override the file. Secrets are wrapped so that `repr` and logs
never show them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.iam_policy import PolicyError, parse_policy
from registry.naming import ECR_HOSTNAME, ROOT
from registry.upstream_url import (
    DEFAULT_ALLOWED_UPSTREAMS,
    UPSTREAM_URL_SHAPE,
    NotAllowed,
    UpstreamPolicy,
    is_upstream_url,
)


class ConfigError(Exception):
    """Configuration problems, each phrased for the user and naming its key: validation goes on past the first,
    so `problems` lists every one found (str() joins them, one per line)."""

    def __init__(self, *problems: str) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(problems))


class _Problems:
    """Collects what `ConfigError`s say, so one bad key does not hide the next."""

    def __init__(self) -> None:
        self.found: list[str] = []

    @contextlib.contextmanager
    def gathered(self) -> Iterator[None]:
        try:
            yield
        except ConfigError as e:
            self.found += e.problems

    def raise_any(self) -> None:
        if self.found:
            raise ConfigError(*self.found)


class Secret:
    """A string that never shows itself in repr, str or logs; `reveal()` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('****')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


# -- value checks ----------------------------------------------------------------------------------


def parse_listen(value: str) -> tuple[str, int]:
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\[\]]*):(\d+)", value)
    if not m:
        raise ValueError("expected HOST:PORT (for IPv6, [ADDR]:PORT)")
    host = m.group(1) if m.group(1) is not None else m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 <= port <= 65535:
        raise ValueError("port must be between 0 and 65535")
    return host or "0.0.0.0", port


_DURATION_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(value: str | int | float) -> float:
    """Seconds from `"12h"`, `"1h30m"`, `"45s"`, `"2d"`, `"250ms"`, or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError('expected a duration such as "12h", "30m" or "45s"')
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)(ms|d|h|m|s)", value.strip())
        if not parts or "".join(n + u for n, u in parts) != value.strip().replace(" ", ""):
            raise ValueError('expected a duration such as "12h", "1h30m", "45s" or "250ms"')
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


def _check_listen(v: str) -> str:
    parse_listen(v)
    return v


def _check_account(v: str) -> str:
    if not re.fullmatch(r"[0-9]{12}", v):
        raise ValueError("must be 12 digits, like an AWS account id")
    return v


def _check_region(v: str) -> str:
    if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d+", v):
        raise ValueError("must look like an AWS region, e.g. us-east-1")
    return v


# A host name or an IP address (v6 in brackets), with an optional port, and optionally a scheme.
_HOSTNAME = re.compile(
    r"(?:(?P<scheme>https?)://)?"
    r"(?P<host>[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::(?P<port>\d{1,5}))?"
)


def _check_hostname(v: str) -> str:
    m = _HOSTNAME.fullmatch(v)
    if v and (m is None or (m["port"] is not None and not 0 < int(m["port"]) < 65536)):
        raise ValueError(
            'must be a host name or address with an optional port, such as "registry.example.com" or '
            '"10.0.0.5:5000" (or "https://registry.example.com" behind a TLS-terminating proxy), without a path'
        )
    return v


def split_hostname(v: str) -> tuple[str | None, str]:
    """`[registry] hostname` as (scheme or None, host[:port])."""
    scheme, sep, rest = v.partition("://")
    return (scheme, rest) if sep else (None, v)


def _check_challenge(v: str) -> str:
    if v not in ("bearer", "basic"):
        raise ValueError('must be "bearer" (the Docker token flow; anonymous clients work) or "basic" (ECR\'s)')
    return v


def _check_level(v: str) -> str:
    if v.lower() not in {"debug", "info", "warning", "error"}:
        raise ValueError("must be one of debug, info, warning, error")
    return v.lower()


def _check_positive(v: int) -> int:
    if v <= 0:
        raise ValueError("must be a positive integer")
    return v


AUTO_WORKERS_MAX = 4


def _check_event_loop(v: str) -> str:
    if v not in ("uvloop", "asyncio"):
        raise ValueError('must be "uvloop" or "asyncio"')
    return v


def _check_workers(v: int) -> int:
    if not 0 <= v <= 64:
        raise ValueError("must be 0 (one per CPU, up to 4) or a number of processes from 1 to 64")
    return v


def _check_max_connections(v: int) -> int:
    if v < 0:
        raise ValueError("must be 0 (no cap) or a positive number of connections")
    return v


def _check_principal_name(v: str) -> str:
    if not re.fullmatch(r"[\w+=,.@-]{1,64}", v):
        raise ValueError("must be 1-64 characters of letters, digits and +=,.@_-, like an IAM user name")
    return v


def _check_access_key(v: str) -> str:
    if not re.fullmatch(r"[A-Z0-9]{16,128}", v):
        raise ValueError("must be 16-128 upper-case letters and digits, like AKIAIOSFODNN7EXAMPLE")
    return v


def _check_secret(v: Secret) -> Secret:
    if len(v.reveal()) < 16:
        raise ValueError("must be at least 16 characters")
    return v


def _check_policy(v: str) -> str:
    try:
        parse_policy(v)
    except PolicyError as e:
        raise ValueError(f"not a valid IAM policy: {e}") from None
    return v


# -- schema ----------------------------------------------------------------------------------------
# Each field says its kind: str, bool, int, path, duration, secret, or a nested table list.


def _key(default: Any, kind: str, check: Callable[[Any], Any] | None = None) -> Any:
    return field(default=default, metadata={"kind": kind, "check": check})


def _required(kind: str, check: Callable[[Any], Any] | None = None) -> Any:
    return field(metadata={"kind": kind, "check": check})


def _tables(cls: type) -> Any:
    return field(default=(), metadata={"kind": "tables", "cls": cls})


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: str = _key("127.0.0.1:5000", "str", _check_listen)
    data_dir: Path = _key(Path("./data"), "path")
    drain_timeout: float = _key(30.0, "duration")
    bind_retry: float = _key(5.0, "duration")
    workers: int = _key(0, "int", _check_workers)
    event_loop: str = _key("uvloop", "str", _check_event_loop)
    header_timeout: float = _key(10.0, "duration")
    keepalive_timeout: float = _key(75.0, "duration")
    max_connections: int = _key(1024, "int", _check_max_connections)
    # TLS: a PEM certificate chain (the server's certificate first) and its PEM private key; both or neither.
    tls_cert_file: str = _key("", "str")
    tls_key_file: str = _key("", "str")

    @property
    def worker_count(self) -> int:
        """`workers`, with 0 (auto) meaning one per usable CPU, at most AUTO_WORKERS_MAX."""
        if self.workers:
            return self.workers
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, min(usable, AUTO_WORKERS_MAX))


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    account_id: str = _key("000000000000", "str", _check_account)
    region: str = _key("us-east-1", "str", _check_region)
    create_on_push: bool = _key(True, "bool")
    metadata_cache_entries: int = _key(10000, "int", _check_positive)
    hostname: str = _key("", "str", _check_hostname)


@dataclass(frozen=True, slots=True)
class PrincipalConfig:
    name: str = _required("str", _check_principal_name)
    access_key_id: str = _required("str", _check_access_key)
    secret_access_key: Secret = _required("secret", _check_secret)
    policy: str = _required("str", _check_policy)


@dataclass(frozen=True, slots=True)
class AuthConfig:
    enabled: bool = _key(True, "bool")
    token_ttl: float = _key(12 * 3600.0, "duration")
    challenge: str = _key("bearer", "str", _check_challenge)
    principals: tuple[PrincipalConfig, ...] = _tables(PrincipalConfig)


def _check_prefix(v: str) -> str:
    if v != ROOT and not re.fullmatch(
        r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*/?", v
    ):
        raise ValueError("must be ROOT or a repository namespace such as docker-hub or team/quay")
    if not 2 <= len(v) <= 30:
        raise ValueError("must be 2-30 characters")
    return v.rstrip("/")


def _check_upstream_url(v: str) -> str:
    url = v.removesuffix("/")
    if not is_upstream_url(url):
        raise ValueError(f"must be {UPSTREAM_URL_SHAPE} (http://127.0.0.1:5001)")
    return url


def _check_allowed_upstreams(v: tuple[str, ...]) -> tuple[str, ...]:
    UpstreamPolicy.parse(v)  # each entry's ValueError names it
    return v


def _check_secret_name(v: str) -> str:
    if not re.fullmatch(r"[a-zA-Z0-9/_+=.@-]+", v):
        raise ValueError("must be a secret name from [secrets.NAME]")
    return v


@dataclass(frozen=True, slots=True)
class RuleConfig:
    ecr_repository_prefix: str = _required("str", _check_prefix)
    upstream_registry_url: str = _required("str", _check_upstream_url)
    upstream_repository_prefix: str = _key(ROOT, "str", _check_prefix)
    credential: str = _key("", "str", lambda v: _check_secret_name(v) if v else v)


@dataclass(frozen=True, slots=True)
class PullThroughConfig:
    max_rules: int = _key(10, "int", _check_positive)
    tag_refresh_interval: float = _key(24 * 3600.0, "duration")
    upstream_timeout: float = _key(30.0, "duration")
    upstream_response_timeout: float = _key(5.0, "duration")
    allowed_upstreams: tuple[str, ...] = _key(DEFAULT_ALLOWED_UPSTREAMS, "strs", _check_allowed_upstreams)
    blob_download_timeout: float = _key(15 * 60.0, "duration")
    failure_retry_interval: float = _key(60.0, "duration")
    offline: bool = _key(False, "bool")
    max_cache_bytes: int = _key(0, "int", lambda v: _check_positive(v) if v else v)
    rules: tuple[RuleConfig, ...] = _tables(RuleConfig)


@dataclass(frozen=True, slots=True)
class LifecycleConfig:
    evaluation_interval: float = _key(24 * 3600.0, "duration")


_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_SIZE_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_free_space(value: str) -> tuple[int, float]:
    """`[storage] min_free_space`: ("1GiB", "500MB", "0", a number of bytes) -> (bytes, 0.0); ("5%") -> (0, 5.0)."""
    text = value.strip()
    if m := re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", text):
        percent = float(m.group(1))
        if percent >= 100:
            raise ValueError("a percentage must be below 100")
        return 0, percent
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)", text)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError('expected a size such as "1GiB", "500MB" or "0", or a percentage such as "5%"')
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]), 0.0


def _check_free_space(v: str) -> str:
    parse_free_space(v)
    return v


@dataclass(frozen=True, slots=True)
class StorageConfig:
    min_free_space: str = _key("1GiB", "str", _check_free_space)

    def free_space_floor(self, total_bytes: int) -> int:
        """The free bytes below which /readyz says not ready, on a filesystem of `total_bytes`."""
        size, percent = parse_free_space(self.min_free_space)
        return size or int(total_bytes * percent / 100)


@dataclass(frozen=True, slots=True)
class GcConfig:
    interval: float = _key(3600.0, "duration")
    grace_period: float = _key(3600.0, "duration")


@dataclass(frozen=True, slots=True)
class SecretConfig:
    username: str = _key("", "str")
    password: Secret = _key(Secret(""), "secret")
    access_key_id: str = _key("", "str")
    secret_access_key: Secret = _key(Secret(""), "secret")
    # The region an ECR-style upstream's requests are signed for: its own, which SigV4 checks. Default: the one
    # in an ECR host name (<account>.dkr.ecr.<region>.amazonaws.com), else this registry's [registry] region.
    region: str = _key("", "str")


def _check_format(v: str) -> str:
    if v not in ("auto", "json", "text"):
        raise ValueError("must be auto (JSON when not a terminal), json or text")
    return v


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = _key("info", "str", _check_level)
    format: str = _key("auto", "str", _check_format)
    access: bool = _key(True, "bool")


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    # true: /metrics needs a principal allowed moorage:GetMetrics (with [auth] enabled)
    require_auth: bool = _key(False, "bool")


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    pull_through: PullThroughConfig = field(default_factory=PullThroughConfig)
    lifecycle: LifecycleConfig = field(default_factory=LifecycleConfig)
    gc: GcConfig = field(default_factory=GcConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    secrets: dict[str, SecretConfig] = field(default_factory=dict)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    @property
    def listen(self) -> tuple[str, int]:
        return parse_listen(self.server.listen)


# -- loading ---------------------------------------------------------------------------------------

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
    if kind == "tables":
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ConfigError(f"{key}: expected an array of tables ([[{key}]])")
        problems, items = _Problems(), []
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
    problems = _Problems()
    for name, value in body.items():
        if name not in fields:
            problems.found.append(f"unknown key {prefix}.{name} (known: {', '.join(sorted(fields))})")
            continue
        with problems.gathered():
            values[name] = _coerce(f"{prefix}.{name}", fields[name], value)
    missing = [n for n, f in fields.items() if n not in body and f.default is dataclasses.MISSING]
    if missing:
        problems.found.append(f"{prefix}: missing required key {', '.join(missing)}")
    problems.raise_any()
    return cls(**values)


def from_dict(raw: dict[str, Any]) -> Config:
    """The configuration from parsed TOML; ConfigError lists every problem found. (Checks across keys run only
    on sections that parsed, so a bad value does not also show up as their consequences.)"""
    sections: dict[str, Any] = {}
    top = {f.name: f for f in dataclasses.fields(Config)}
    problems = _Problems()
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
    problems = _Problems()
    for name, value in body.items():
        with problems.gathered():
            out[name] = _secret(name, value)
    problems.raise_any()
    return out


def _secret(name: str, value: Any) -> SecretConfig:
    try:
        _check_secret_name(name)
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
    problems = _Problems()
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


def _check_principals(principals: tuple[PrincipalConfig, ...]) -> None:
    problems = _Problems()
    for attr in ("name", "access_key_id"):
        seen: set[str] = set()
        for i, principal in enumerate(principals):
            value = getattr(principal, attr)
            if value in seen:
                problems.found.append(f"auth.principals[{i}].{attr}: {value!r} is used by another principal")
            seen.add(value)
    problems.raise_any()


def _toml_value(v: Any) -> str:
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
            shown = _toml_value(v)
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


ENV_PREFIX = "MOORAGE_"


def environment_variables() -> list[tuple[str, str]]:
    """Every `MOORAGE_<SECTION>_<KEY>` variable, with its key's default as it would be written in the variable
    (`moorage serve --help` lists them). Arrays of tables (principals, rules) and [secrets] have none."""
    defaults = Config()
    out = []
    for section in dataclasses.fields(Config):
        if section.name == "secrets":
            continue
        body = getattr(defaults, section.name)
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
            else:
                shown = _toml_value(v)
            out.append((f"{ENV_PREFIX}{section.name}_{f.name}".upper(), shown))
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
    settings, problems = _from_environ(environ)
    problems.raise_any()
    return settings


def _from_environ(environ: Mapping[str, str]) -> tuple[dict[str, dict[str, Any]], _Problems]:
    sections = sorted((f.name for f in dataclasses.fields(Config) if f.name != "secrets"), key=len, reverse=True)
    out: dict[str, dict[str, Any]] = {}
    problems = _Problems()
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
        out.setdefault(section, {})[rest[len(section) + 1 :]] = parsed
    return out, problems


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
    from_env, problems = _from_environ(environ or {})
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
