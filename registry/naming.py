"""How things are named, for the configuration, the services and the pull-through cache alike (pure; no I/O).

Repository prefixes: a pull-through cache rule and a repository creation template each apply to the
repositories under a prefix (`team/app` is under `team`), `ROOT` meaning every repository; where several
apply, the most specific (longest) prefix wins, ROOT being the fallback.

ECR's names: a repository's ARN, and the host names of ECR registries.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import TypeVar

ROOT = "ROOT"

# What docker-credential-ecr-login (and kubelet) take for an ECR registry: <account>.dkr.ecr.<region>.amazonaws.com
ECR_HOSTNAME = re.compile(r"(?P<account>\d{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?")

T = TypeVar("T")


def normalize_prefix(prefix: str) -> str:
    return prefix if prefix == ROOT else prefix.rstrip("/")


def under_prefix(prefix: str, repository: str) -> bool:
    """Whether `repository` is under `prefix` (every repository is under ROOT)."""
    return prefix == ROOT or repository.startswith(prefix + "/")


def most_specific(items: Iterable[T], prefix_of: Callable[[T], str], repository: str) -> T | None:
    """The item whose prefix `repository` is under, the longest such prefix winning, with ROOT as the fallback."""
    best: T | None = None
    for item in items:
        prefix = prefix_of(item)
        if not under_prefix(prefix, repository):
            continue
        if best is None or prefix_of(best) == ROOT or (prefix != ROOT and len(prefix) > len(prefix_of(best))):
            best = item
    return best


def repository_arn(region: str, account_id: str, repository: str) -> str:
    return f"arn:aws:ecr:{region}:{account_id}:repository/{repository}"


def repository_in_arn(arn: str, region: str, account_id: str) -> str | None:
    """The repository name a repository ARN of this registry names (unchecked), or None if it is not one."""
    prefix = repository_arn(region, account_id, "")
    return arn[len(prefix) :] if arn.startswith(prefix) and arn != prefix else None
