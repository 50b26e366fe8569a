"""The schema: every section of the configuration as a frozen dataclass, and every key as a field whose
metadata says its kind (str, bool, int, path, duration, secret, strs, or tables: an array of tables of another
dataclass) and the check its value passes (from `registry.config.values`). The defaults here are the
configuration's defaults (documented in config.example.toml); `registry.config.loading` builds instances from
TOML, and `render` and `environment` read the same fields to write them out."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.config.values import (
    Secret,
    check_access_key,
    check_account,
    check_allowed_upstreams,
    check_blobs_url,
    check_challenge,
    check_event_loop,
    check_format,
    check_free_space,
    check_hostname,
    check_level,
    check_listen,
    check_max_connections,
    check_metadata_url,
    check_policy,
    check_positive,
    check_prefix,
    check_principal_name,
    check_region,
    check_repository_globs,
    check_secret,
    check_secret_name,
    check_size,
    check_upstream_url,
    check_workers,
    parse_free_space,
    parse_listen,
)
from registry.naming import ROOT
from registry.upstream_url import DEFAULT_ALLOWED_UPSTREAMS


def _key(default: Any, kind: str, check: Callable[[Any], Any] | None = None) -> Any:
    return field(default=default, metadata={"kind": kind, "check": check})


def _required(kind: str, check: Callable[[Any], Any] | None = None) -> Any:
    return field(metadata={"kind": kind, "check": check})


def _tables(cls: type) -> Any:
    return field(default=(), metadata={"kind": "tables", "cls": cls})


def _table(cls: type) -> Any:
    """A sub-table of a section (`[storage.s3]`)."""
    return field(default_factory=cls, metadata={"kind": "table", "cls": cls})


AUTO_WORKERS_MAX = 4


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: str = _key("127.0.0.1:5000", "str", check_listen)
    data_dir: Path = _key(Path("./data"), "path")
    drain_timeout: float = _key(30.0, "duration")
    bind_retry: float = _key(5.0, "duration")
    workers: int = _key(0, "int", check_workers)
    event_loop: str = _key("uvloop", "str", check_event_loop)
    header_timeout: float = _key(10.0, "duration")
    body_timeout: float = _key(60.0, "duration")  # registry/web/bodies.py
    keepalive_timeout: float = _key(75.0, "duration")
    max_connections: int = _key(1024, "int", check_max_connections)
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
    account_id: str = _key("000000000000", "str", check_account)
    region: str = _key("us-east-1", "str", check_region)
    create_on_push: bool = _key(True, "bool")
    metadata_cache_entries: int = _key(10000, "int", check_positive)
    hostname: str = _key("", "str", check_hostname)


@dataclass(frozen=True, slots=True)
class PrincipalConfig:
    name: str = _required("str", check_principal_name)
    access_key_id: str = _required("str", check_access_key)
    secret_access_key: Secret = _required("secret", check_secret)
    policy: str = _required("str", check_policy)


@dataclass(frozen=True, slots=True)
class AuthConfig:
    enabled: bool = _key(True, "bool")
    token_ttl: float = _key(12 * 3600.0, "duration")
    challenge: str = _key("bearer", "str", check_challenge)
    principals: tuple[PrincipalConfig, ...] = _tables(PrincipalConfig)


@dataclass(frozen=True, slots=True)
class RuleConfig:
    ecr_repository_prefix: str = _required("str", check_prefix)
    upstream_registry_url: str = _required("str", check_upstream_url)
    upstream_repository_prefix: str = _key(ROOT, "str", check_prefix)
    credential: str = _key("", "str", lambda v: check_secret_name(v) if v else v)


@dataclass(frozen=True, slots=True)
class PullThroughConfig:
    max_rules: int = _key(10, "int", check_positive)
    tag_refresh_interval: float = _key(24 * 3600.0, "duration")
    upstream_timeout: float = _key(30.0, "duration")
    upstream_response_timeout: float = _key(5.0, "duration")
    allowed_upstreams: tuple[str, ...] = _key(DEFAULT_ALLOWED_UPSTREAMS, "strs", check_allowed_upstreams)
    blob_download_timeout: float = _key(15 * 60.0, "duration")
    failure_retry_interval: float = _key(60.0, "duration")
    offline: bool = _key(False, "bool")
    max_cache_bytes: int = _key(0, "int", lambda v: check_positive(v) if v else v)
    rules: tuple[RuleConfig, ...] = _tables(RuleConfig)


@dataclass(frozen=True, slots=True)
class LifecycleConfig:
    evaluation_interval: float = _key(24 * 3600.0, "duration")


@dataclass(frozen=True, slots=True)
class S3Config:
    """`[storage.s3]`: the S3-compatible service of `[storage] blobs = "s3://..."`."""

    endpoint_url: str = _key("", "str")  # any S3-compatible service; empty for AWS S3
    region: str = _key("us-east-1", "str")
    access_key_id: str = _key("", "str")  # empty: the standard AWS environment / shared credentials
    secret_access_key: Secret = _key(Secret(""), "secret")
    redirect: bool = _key(False, "bool")  # blob GETs answer 307 to a presigned GET URL
    # Verified copies of blobs read or written here, kept on the replica's disk and served with sendfile.
    local_cache: str = _key("2GiB", "str", check_size)


@dataclass(frozen=True, slots=True)
class StorageConfig:
    min_free_space: str = _key("1GiB", "str", check_free_space)
    # Where metadata lives: empty for SQLite in the data dir, or "postgresql://USER:PASS@HOST:PORT/DB".
    metadata: Secret = _key(Secret(""), "secret", check_metadata_url)
    # Where blobs live: empty for the data dir's filesystem, or "s3://BUCKET/optional/prefix".
    blobs: str = _key("", "str", check_blobs_url)
    s3: S3Config = _table(S3Config)

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


@dataclass(frozen=True, slots=True)
class DestinationConfig:
    """`[[replication.destinations]]`: the registry an ECR replication destination `{region, registryId}` names.
    Another Moorage is reached through its ECR API (access keys: a GetAuthorizationToken, then /v2 with the
    token); any OCI registry through /v2 (username and password, or neither for an open one)."""

    region: str = _required("str", check_region)
    registry_id: str = _required("str", check_account)
    endpoint: str = _required("str", check_upstream_url)
    access_key_id: str = _key("", "str")
    secret_access_key: Secret = _key(Secret(""), "secret")
    username: str = _key("", "str")
    password: Secret = _key(Secret(""), "secret")

    @property
    def key(self) -> str:
        return f"{self.region}/{self.registry_id}"

    @property
    def is_moorage(self) -> bool:
        """Reached with access keys through an ECR API (another Moorage, or ECR itself)."""
        return bool(self.access_key_id)


@dataclass(frozen=True, slots=True)
class ReplicationConfig:
    destinations: tuple[DestinationConfig, ...] = _tables(DestinationConfig)
    concurrency: int = _key(4, "int", check_positive)  # copies running at once, per process
    retry_max_interval: float = _key(300.0, "duration")  # the longest wait between two attempts of a copy
    retry_for: float = _key(24 * 3600.0, "duration")  # a copy failing for this long is given up (FAILED)
    timeout: float = _key(30.0, "duration")  # connecting to a destination, and each read from it


@dataclass(frozen=True, slots=True)
class ScanningConfig:
    # How often one process of the registry looks for scans to run that no process is running: queued by
    # `moorage vuln-db import` (CONTINUOUS_SCAN rescans) or left by a process that stopped.
    sweep_interval: float = _key(30.0, "duration")


@dataclass(frozen=True, slots=True)
class SigningConfig:
    # Repository globs (`*` any run of characters, `/` included) whose pulls need a signature by the registry's
    # image signing key: manifest GET/HEAD on /v2 and BatchGetImage of anything else are refused (403 DENIED).
    enforce: tuple[str, ...] = _key((), "strs", check_repository_globs)


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = _key("info", "str", check_level)
    format: str = _key("auto", "str", check_format)
    access: bool = _key(True, "bool")


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    # true: /metrics needs a principal allowed moorage:GetMetrics (with [auth] enabled)
    require_auth: bool = _key(False, "bool")


@dataclass(frozen=True, slots=True)
class ConsoleConfig:
    # true: the web console is served under /console/ (and GET / leads there)
    enabled: bool = _key(True, "bool")


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
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    replication: ReplicationConfig = field(default_factory=ReplicationConfig)
    scanning: ScanningConfig = field(default_factory=ScanningConfig)
    signing: SigningConfig = field(default_factory=SigningConfig)

    @property
    def listen(self) -> tuple[str, int]:
        return parse_listen(self.server.listen)
