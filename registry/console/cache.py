"""What the console's pull-through cache pages show: every rule (from the configuration file or the API) with
this process's counters for it, and the repositories it created with their sizes. No HTTP here.

The counters (hits, misses, upstream bytes, stale serves, the last upstream failure) are the ones `/metrics`
exports, counted by the process that served the requests: with several workers or replicas each has its own,
and a page shows those of the process that answered it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from registry.console.views import NONE
from registry.naming import normalize_prefix
from registry.proxy import rules as cache_rules
from registry.proxy.pullthrough import PullThrough, RuleMetrics
from registry.proxy.rules import secret_arn
from storage.metadata import MetadataStore
from storage.records import PullThroughRule


@dataclass(frozen=True, slots=True)
class CachedRepository:
    name: str
    images: int
    size: int  # the images' sizes summed (as DescribeImages counts them)


@dataclass(frozen=True, slots=True)
class RuleRow:
    rule: PullThroughRule
    declared: bool  # in the configuration file: read-only here
    metrics: RuleMetrics  # a copy of this process's counters
    repositories: list[CachedRepository]  # those the viewer may see
    repository_count: int  # all of them
    cached_bytes: int  # all of them, summed

    @property
    def hits(self) -> int:
        return self.metrics.manifest_hits + self.metrics.blob_hits

    @property
    def misses(self) -> int:
        return self.metrics.manifest_misses + self.metrics.blob_misses

    @property
    def hit_ratio(self) -> float | None:
        """Hits over requests (None before the first)."""
        total = self.hits + self.misses
        return self.hits / total if total else None


def ratio(value: float | None) -> str:
    return NONE if value is None else f"{value * 100:.1f} %"


class CacheData:
    def __init__(self, pull_through: PullThrough, meta: MetadataStore, account_id: str) -> None:
        self.pull_through = pull_through
        self.meta = meta
        self.account_id = account_id

    def declared(self) -> set[str]:
        return {normalize_prefix(rule.ecr_repository_prefix) for rule in self.pull_through.config.rules}

    def secret_arns(self) -> list[str]:
        """The credential ARNs a rule may name: one per `[secrets.NAME]` (names only; never a secret)."""
        pt = self.pull_through
        return [secret_arn(pt.region, self.account_id, name) for name in sorted(pt.secrets)]

    async def rules(self, visible: Callable[[str], Awaitable[bool]]) -> list[RuleRow]:
        """Every rule by prefix, with its cache repositories (`visible` picks those listed by name)."""
        await self.pull_through.sync()
        rules = sorted(self.pull_through.rules, key=lambda rule: rule.prefix)
        by_rule: dict[str, list[CachedRepository]] = {rule.prefix: [] for rule in rules}
        for name, images, size in await self.meta.repository_sizes():
            rule = cache_rules.match(rules, name)
            if rule is not None:
                by_rule[rule.prefix].append(CachedRepository(name, images, size))
        declared = self.declared()
        out = []
        for rule in rules:
            cached = by_rule[rule.prefix]
            metrics = dataclasses.replace(self.pull_through.rule_metrics(rule))
            out.append(
                RuleRow(
                    rule,
                    rule.prefix in declared,
                    metrics,
                    [repo for repo in cached if await visible(repo.name)],
                    len(cached),
                    sum(repo.size for repo in cached),
                )
            )
        return out
