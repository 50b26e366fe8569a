"""Access control: who is asking (token or access key) and whether policy lets them (ecr:* actions).

Transport-free: the /v2 routes and the ECR API both call `check`, which evaluates the principal's identity
policies and the repository's policy as IAM does, at request time. An evaluation is a pure function of the
principal, action, resource, repository policy text and condition keys, so recent ones are remembered (the
same client pulling layer after layer asks the same question many times).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence

from registry.auth.policy import (
    Decision,
    Evaluation,
    Policy,
    RequestContext,
    access_denied_message,
    evaluate,
    parse_policy,
)
from registry.auth.principals import Directory, Principal
from registry.auth.tokens import KeyRing, TokenError
from registry.cache import LRUCache
from registry.errors import AuthenticationRequired, Denied, Unauthorized

EVALUATION_CACHE = 4096
EXPIRED_MESSAGE = "Your authorization token has expired. Reauthenticate and try again."


@functools.lru_cache(maxsize=1024)
def repository_policy(text: str) -> Policy:
    return parse_policy(text, resource_policy=True)


class AccessControl:
    def __init__(
        self,
        *,
        enabled: bool,
        directory: Directory,
        keyring: KeyRing,
        account_id: str,
        region: str,
        token_ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.enabled = enabled
        self.directory = directory
        self.keyring = keyring
        self.account_id = account_id
        self.region = region
        self.token_ttl = token_ttl
        self.clock = clock
        self._evaluations = LRUCache(EVALUATION_CACHE)

    def repository_arn(self, repository: str) -> str:
        return f"arn:aws:ecr:{self.region}:{self.account_id}:repository/{repository}"

    # -- authentication ----------------------------------------------------------------------------
    def issue_token(self, principal: Principal) -> tuple[str, float]:
        return self.keyring.issue(principal.name, self.clock(), self.token_ttl)

    def principal_for_token(self, token: str, realm: str) -> Principal:
        """The principal a registry token names; ECR's 403 for an expired token, a 401 saying why otherwise."""
        try:
            claims = self.keyring.verify(token, self.clock())
        except TokenError as e:
            if e.kind == "expired":
                raise Denied(EXPIRED_MESSAGE) from None
            raise Unauthorized(e.message, headers=challenge(realm)) from None
        principal = self.directory.by_name.get(claims.principal)
        if principal is None:
            raise Unauthorized(f"principal {claims.principal!r} no longer exists", headers=challenge(realm))
        return principal

    # -- authorization -----------------------------------------------------------------------------
    def evaluate(
        self,
        principal: Principal | None,
        action: str,
        resource: str,
        policy_text: str | None,
        condition_keys: Mapping[str, str],
    ) -> tuple[RequestContext, Evaluation]:
        key = (principal.name if principal else None, action, resource, policy_text, tuple(condition_keys.items()))
        hit = self._evaluations.get(key)
        if hit is not None:
            return hit
        ctx = RequestContext(
            principal.arn if principal else None, self.account_id, action, resource, dict(condition_keys)
        )
        resource_policies = [repository_policy(policy_text)] if policy_text else []
        identity = list(principal.policies) if principal else []
        result = ctx, evaluate(ctx, identity, resource_policies)
        self._evaluations.put(key, result)
        return result

    def allowed(
        self,
        principal: Principal | None,
        actions: Sequence[str],
        repository: str | None,
        policy_text: str | None = None,
        condition_keys: Mapping[str, str] | None = None,
    ) -> bool:
        if not self.enabled:
            return True
        resource = self.repository_arn(repository) if repository else "*"
        return any(
            self.evaluate(principal, a, resource, policy_text, condition_keys or {})[1].decision is Decision.ALLOW
            for a in actions
        )

    def check(
        self,
        principal: Principal | None,
        actions: Sequence[str],
        repository: str | None,
        *,
        policy_text: str | None = None,
        condition_keys: Mapping[str, str] | None = None,
        realm: str = "",
    ) -> None:
        """Allow if any of `actions` is allowed on the repository (or `*`); else 401 (anonymous) or 403."""
        if not self.enabled:
            return
        resource = self.repository_arn(repository) if repository else "*"
        first: tuple[RequestContext, Evaluation] | None = None
        for action in actions:
            ctx, ev = self.evaluate(principal, action, resource, policy_text, condition_keys or {})
            if ev.decision is Decision.ALLOW:
                return
            first = first or (ctx, ev)
        assert first is not None, "check() needs at least one action"
        if principal is None:
            raise AuthenticationRequired(headers=challenge(realm))
        raise Denied(access_denied_message(*first))


def challenge(realm: str) -> dict[str, str]:
    """ECR's answer to a registry request without (valid) credentials."""
    return {"WWW-Authenticate": f'Basic realm="{realm}",service="ecr.amazonaws.com"'}
