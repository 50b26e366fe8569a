"""The values of a configuration, one at a time: `ConfigError` (every problem found, each naming its key) and
`Problems` that gathers them so one bad key does not hide the next; `Secret`, a string that never shows itself;
the parsers of the value forms that keys share (listen addresses, durations, free-space sizes, the registry's
host name); and the checks that `registry.config.schema` attaches to single keys, each raising ValueError that
says what is expected (the loader adds the key's name)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from registry.iam_policy import PolicyError, parse_policy
from registry.naming import ROOT
from registry.upstream_url import UPSTREAM_URL_SHAPE, UpstreamPolicy, is_upstream_url


class ConfigError(Exception):
    """Configuration problems, each phrased for the user and naming its key: validation goes on past the first,
    so `problems` lists every one found (str() joins them, one per line)."""

    def __init__(self, *problems: str) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(problems))


class Problems:
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


# -- parsers ---------------------------------------------------------------------------------------


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


def split_hostname(v: str) -> tuple[str | None, str]:
    """`[registry] hostname` as (scheme or None, host[:port])."""
    scheme, sep, rest = v.partition("://")
    return (scheme, rest) if sep else (None, v)


# -- checks ----------------------------------------------------------------------------------------


def check_listen(v: str) -> str:
    parse_listen(v)
    return v


def check_account(v: str) -> str:
    if not re.fullmatch(r"[0-9]{12}", v):
        raise ValueError("must be 12 digits, like an AWS account id")
    return v


def check_region(v: str) -> str:
    if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d+", v):
        raise ValueError("must look like an AWS region, e.g. us-east-1")
    return v


# A host name or an IP address (v6 in brackets), with an optional port, and optionally a scheme.
_HOSTNAME = re.compile(
    r"(?:(?P<scheme>https?)://)?"
    r"(?P<host>[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::(?P<port>\d{1,5}))?"
)


def check_hostname(v: str) -> str:
    m = _HOSTNAME.fullmatch(v)
    if v and (m is None or (m["port"] is not None and not 0 < int(m["port"]) < 65536)):
        raise ValueError(
            'must be a host name or address with an optional port, such as "registry.example.com" or '
            '"10.0.0.5:5000" (or "https://registry.example.com" behind a TLS-terminating proxy), without a path'
        )
    return v


_REPOSITORY_GLOB = re.compile(r"[a-z0-9*]+(?:[._/-]+[a-z0-9*]+)*")


def check_repository_globs(v: tuple[str, ...]) -> tuple[str, ...]:
    for glob in v:
        if len(glob) > 256 or not _REPOSITORY_GLOB.fullmatch(glob):
            raise ValueError(
                f"{glob!r} is not a repository glob: lowercase repository name characters and `*` (any run of "
                'characters, "/" included), e.g. "prod/*"'
            )
    return v


def check_challenge(v: str) -> str:
    if v not in ("bearer", "basic"):
        raise ValueError('must be "bearer" (the Docker token flow; anonymous clients work) or "basic" (ECR\'s)')
    return v


def check_level(v: str) -> str:
    if v.lower() not in {"debug", "info", "warning", "error"}:
        raise ValueError("must be one of debug, info, warning, error")
    return v.lower()


def check_positive(v: int) -> int:
    if v <= 0:
        raise ValueError("must be a positive integer")
    return v


def check_event_loop(v: str) -> str:
    if v not in ("uvloop", "asyncio"):
        raise ValueError('must be "uvloop" or "asyncio"')
    return v


def check_workers(v: int) -> int:
    if not 0 <= v <= 64:
        raise ValueError("must be 0 (one per CPU, up to 4) or a number of processes from 1 to 64")
    return v


def check_max_connections(v: int) -> int:
    if v < 0:
        raise ValueError("must be 0 (no cap) or a positive number of connections")
    return v


def check_principal_name(v: str) -> str:
    if not re.fullmatch(r"[\w+=,.@-]{1,64}", v):
        raise ValueError("must be 1-64 characters of letters, digits and +=,.@_-, like an IAM user name")
    return v


def check_access_key(v: str) -> str:
    if not re.fullmatch(r"[A-Z0-9]{16,128}", v):
        raise ValueError("must be 16-128 upper-case letters and digits, like AKIAIOSFODNN7EXAMPLE")
    return v


def check_secret(v: Secret) -> Secret:
    if len(v.reveal()) < 16:
        raise ValueError("must be at least 16 characters")
    return v


def check_policy(v: str) -> str:
    try:
        parse_policy(v)
    except PolicyError as e:
        raise ValueError(f"not a valid IAM policy: {e}") from None
    return v


def check_prefix(v: str) -> str:
    if v != ROOT and not re.fullmatch(
        r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*/?", v
    ):
        raise ValueError("must be ROOT or a repository namespace such as docker-hub or team/quay")
    if not 2 <= len(v) <= 30:
        raise ValueError("must be 2-30 characters")
    return v.rstrip("/")


def check_upstream_url(v: str) -> str:
    url = v.removesuffix("/")
    if not is_upstream_url(url):
        raise ValueError(f"must be {UPSTREAM_URL_SHAPE} (http://127.0.0.1:5001)")
    return url


def check_allowed_upstreams(v: tuple[str, ...]) -> tuple[str, ...]:
    UpstreamPolicy.parse(v)  # each entry's ValueError names it
    return v


def check_secret_name(v: str) -> str:
    if not re.fullmatch(r"[a-zA-Z0-9/_+=.@-]+", v):
        raise ValueError("must be a secret name from [secrets.NAME]")
    return v


def check_free_space(v: str) -> str:
    parse_free_space(v)
    return v


def parse_size(value: str) -> int:
    """A size in bytes ("2GiB", "500MB", "0", a number of bytes)."""
    size, percent = parse_free_space(value)
    if percent:
        raise ValueError('expected a size such as "2GiB", "500MB" or "0"')
    return size


def check_size(v: str) -> str:
    parse_size(v)
    return v


def check_metadata_url(v: Secret) -> Secret:
    """`[storage] metadata`: empty (SQLite in the data dir) or a PostgreSQL URL."""
    url = v.reveal()
    if url and not url.startswith(("postgresql://", "postgres://")):
        raise ValueError(
            'must be empty (SQLite in the data dir) or a PostgreSQL URL "postgresql://USER:PASS@HOST:PORT/DB"'
        )
    return v


def check_blobs_url(v: str) -> str:
    """`[storage] blobs`: empty (the data dir's filesystem) or "s3://BUCKET[/prefix]"."""
    if v and not (v.startswith("s3://") and v[5:].split("/", 1)[0]):
        raise ValueError('must be empty (the data dir\'s filesystem) or "s3://BUCKET/optional/prefix"')
    return v


def check_format(v: str) -> str:
    if v not in ("auto", "json", "text"):
        raise ValueError("must be auto (JSON when not a terminal), json or text")
    return v
