"""The pull-through cache rules' ECR operations: Create, Describe, Update, Delete and
ValidatePullThroughCacheRule.

Rules created here are stored and take effect at once in every worker (`PullThrough.reload`); rules declared in
the configuration file are rewritten from it at every start, so they are read-only here. A rule may only name
an upstream `[pull_through] allowed_upstreams` allows, and a credential that `[secrets]` declares.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from registry.errors import (
    InvalidParameter,
    LimitExceeded,
    PullThroughCacheRuleAlreadyExists,
    PullThroughCacheRuleNotFound,
    RegistryError,
    SecretNotFound,
    UnsupportedUpstreamRegistry,
)
from registry.naming import ROOT, normalize_prefix
from registry.proxy.pullthrough import PullThrough
from registry.proxy.rules import infer_upstream_registry, secret_name
from registry.proxy.upstream import UpstreamError
from registry.service.ecr_shapes import DEFAULT_PAGE, Caller, decode_token, encode_token
from registry.upstream_url import UPSTREAM_URL_SHAPE, NotAllowed, is_upstream_url
from storage.errors import Conflict
from storage.metadata import MetadataStore
from storage.records import PullThroughRule


class PullThroughRuleService:
    def __init__(
        self,
        meta: MetadataStore,
        pull_through: PullThrough,
        *,
        account_id: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.meta = meta
        self.pull_through = pull_through
        self.account_id = account_id
        self.clock = clock

    def _rule(self, rule: PullThroughRule, *, created: bool = True, updated: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ecrRepositoryPrefix": rule.prefix,
            "upstreamRegistryUrl": rule.upstream_url,
            "registryId": self.account_id,
            "upstreamRepositoryPrefix": rule.upstream_prefix,
        }
        if created:
            out["createdAt"] = rule.created_at
        if updated:
            out["updatedAt"] = rule.updated_at
        if rule.upstream_registry:
            out["upstreamRegistry"] = rule.upstream_registry
        if rule.credential_arn:
            out["credentialArn"] = rule.credential_arn
        return out

    def read_only(self, prefix: str) -> str | None:
        """Why the rule may not be changed or deleted here (it is declared in the configuration file), or None."""
        try:
            self._check_not_declared(normalize_prefix(prefix), "change or delete")
        except InvalidParameter as e:
            return e.message
        return None

    def _check_not_declared(self, prefix: str, operation: str) -> None:
        """Rules from the configuration file are read-only through the API: they are rewritten from the file at
        every start, so a change here would silently come back."""
        declared = {normalize_prefix(declared.ecr_repository_prefix) for declared in self.pull_through.config.rules}
        if prefix in declared:
            raise InvalidParameter(
                f"The pull through cache rule with prefix '{prefix}' is declared in the configuration file "
                f"([[pull_through.rules]]); {operation} it there and restart (rules from the configuration file "
                "are read-only through the API)"
            )

    def _rule_not_found(self, prefix: str) -> RegistryError:
        return PullThroughCacheRuleNotFound(
            f"The pull through cache rule with prefix '{prefix}' does not exist in the registry with id "
            f"'{self.account_id}'"
        )

    def _check_secret(self, credential_arn: str | None) -> None:
        if credential_arn is None:
            return
        name = secret_name(credential_arn)
        if name is None or name not in self.pull_through.secrets:
            raise SecretNotFound(
                f"The secret '{credential_arn}' was not found: declare it as [secrets.{name}] in "
                "the Moorage configuration"
            )

    async def create_pull_through_cache_rule(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        prefix = normalize_prefix(params["ecrRepositoryPrefix"])
        upstream_prefix = normalize_prefix(params.get("upstreamRepositoryPrefix", ROOT))
        url = params["upstreamRegistryUrl"].rstrip("/")
        if not is_upstream_url(url):
            received = url if len(url) <= 200 else url[:200] + "..."
            hint = (
                " (the AWS CLI v1 fetched that URL and sent its body: set cli_follow_urlparam = false in ~/.aws/config)"
                if any(char in url for char in "\n<{ ")
                else ""
            )
            raise InvalidParameter(
                "Invalid parameter at 'upstreamRegistryUrl' failed to satisfy constraint: "
                f"'must be {UPSTREAM_URL_SHAPE}', got {json.dumps(received)}{hint}"
            )
        if prefix == ROOT and upstream_prefix != ROOT:
            raise InvalidParameter("upstreamRepositoryPrefix can only be set when ecrRepositoryPrefix is not ROOT")
        try:  # the same allowlist as rules in the configuration, and as every request made upstream
            self.pull_through.policy.check_url(url)
        except NotAllowed as e:
            raise UnsupportedUpstreamRegistry(f"The upstream registry '{url}' is not supported here: {e}") from None
        self._check_secret(params.get("credentialArn"))
        existing = await self.meta.list_rules()
        if len(existing) >= self.pull_through.config.max_rules:
            raise LimitExceeded(
                f"The maximum number of pull through cache rules "
                f"({self.pull_through.config.max_rules}) has been reached"
            )
        now = self.clock()
        rule = PullThroughRule(
            prefix,
            url,
            upstream_prefix,
            params.get("credentialArn"),
            params.get("upstreamRegistry") or infer_upstream_registry(url),
            now,
            now,
        )
        try:
            await self.meta.create_rule(rule)
        except Conflict:
            raise PullThroughCacheRuleAlreadyExists(
                f"A pull through cache rule with prefix '{prefix}' already exists in the registry with id "
                f"'{self.account_id}'"
            ) from None
        await self.pull_through.reload()
        return self._rule(rule)

    async def describe_pull_through_cache_rules(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        all_rules = {rule.prefix: rule for rule in await self.meta.list_rules()}
        wanted = params.get("ecrRepositoryPrefixes")
        if wanted is not None:
            out = []
            for prefix in wanted:
                rule = all_rules.get(normalize_prefix(prefix))
                if rule is None:
                    raise self._rule_not_found(prefix)
                out.append(rule)
            return {"pullThroughCacheRules": [self._rule(rule, updated=True) for rule in out]}
        limit = params.get("maxResults", DEFAULT_PAGE)
        after = decode_token(params.get("nextToken"), str) or ""
        ordered = [rule for prefix, rule in sorted(all_rules.items()) if prefix > after]
        result: dict[str, Any] = {"pullThroughCacheRules": [self._rule(rule, updated=True) for rule in ordered[:limit]]}
        if len(ordered) > limit:
            result["nextToken"] = encode_token(ordered[limit - 1].prefix)
        return result

    async def update_pull_through_cache_rule(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        prefix = normalize_prefix(params["ecrRepositoryPrefix"])
        self._check_not_declared(prefix, "change")
        self._check_secret(params.get("credentialArn"))
        rule = await self.meta.update_rule_credentials(prefix, params.get("credentialArn"), self.clock())
        if rule is None:
            raise self._rule_not_found(prefix)
        await self.pull_through.reload()
        out = self._rule(rule, created=False, updated=True)
        out.pop("upstreamRegistryUrl", None)
        out.pop("upstreamRegistry", None)
        return out

    async def delete_pull_through_cache_rule(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        prefix = normalize_prefix(params["ecrRepositoryPrefix"])
        self._check_not_declared(prefix, "delete")
        rule = await self.meta.delete_rule(prefix)  # the cache repositories it created stay
        if rule is None:
            raise self._rule_not_found(prefix)
        await self.pull_through.reload()
        out = self._rule(rule)
        out.pop("upstreamRegistry", None)
        return out

    async def validate_pull_through_cache_rule(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        prefix = normalize_prefix(params["ecrRepositoryPrefix"])
        rule = next((rule for rule in await self.meta.list_rules() if rule.prefix == prefix), None)
        if rule is None:
            raise self._rule_not_found(prefix)
        out = self._rule(rule, created=False)
        out.pop("upstreamRegistry", None)
        if self.pull_through.config.offline:  # offline means no upstream contact at all, this included
            out["isValid"] = False
            out["failure"] = (
                "The pull-through cache is offline ([pull_through] offline = true): the upstream was not contacted, "
                "and only cached content is served"
            )
            return out
        try:
            await self.pull_through.client(rule).ping()
            out["isValid"] = True
        except UpstreamError as e:
            out["isValid"] = False
            out["failure"] = e.message
        return out
