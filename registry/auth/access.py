"""Access control: who is asking (token or access key) and whether policy lets them (ecr:* actions).

Transport-free: the /v2 routes and the ECR API both call `check`, which evaluates the principal's identity
policies, the repository's policy and the registry policy (for the actions its scope covers) as IAM does, at
request time. An evaluation is a pure function of the
principal, action, resource, repository policy text and condition keys, so recent ones are remembered (the
same client pulling layer after layer asks the same question many times).

A /v2 request without credentials, or with an anonymous token, is the anonymous principal: it has no identity
policy, so it gets exactly what repository policies grant `Principal: "*"`. Where it is refused, the answer is a
401 with a challenge: the Docker token flow's (`Bearer realm=<token endpoint>`, the default, so that clients
without credentials fetch an anonymous token and try) or ECR's own (`Basic`, `[auth] challenge = "basic"`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence

from registry.auth.principals import Directory, Principal
from registry.auth.tokens import TOKEN_EXPIRED, Claims, KeyRing, TokenError
from registry.cache import LRUCache
from registry.errors import AuthenticationRequired, Denied, Unauthorized
from registry.iam_policy import (
    Decision,
    Evaluation,
    Policy,
    RequestContext,
    access_denied_message,
    evaluate,
    parse_policy,
)
from registry.naming import repository_arn
from registry.registry_policy import V2, governs

EVALUATION_CACHE = 4096
ECR_SERVICE = "ecr.amazonaws.com"
ANONYMOUS_TTL = 3600.0  # anonymous tokens name nobody and grant nothing by themselves; one is shared meanwhile


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
        challenge: str = "bearer",
        clock: Callable[[], float] = time.time,
        registry_policy: Callable[[], tuple[str | None, str]] = lambda: (None, V2),
    ) -> None:
        self.enabled = enabled
        self.challenge_scheme = challenge  # "bearer" (the Docker token flow) or "basic" (ECR's)
        self.directory = directory
        self.keyring = keyring
        self.account_id = account_id
        self.region = region
        self.clock = clock
        self._evaluations = LRUCache(EVALUATION_CACHE)
        self._anonymous: tuple[str, float, float] | None = None  # (token, issued_at, expires_at)
        # The registry policy's text (None: none) and its scope, REGISTRY_POLICY_SCOPE (registry.registry_policy).
        self.registry_policy = registry_policy

    # -- authentication ----------------------------------------------------------------------------
    def anonymous_token(self) -> tuple[str, float, float]:
        """A token naming nobody, with its issue and expiry times. One is shared while more than half of its life
        is left (a fleet of mirrors asks for one per repository it pulls; signing each would cost more)."""
        now = self.clock()
        cached = self._anonymous
        if cached is None or now >= cached[2] - ANONYMOUS_TTL / 2 or now < cached[1]:
            token, expires_at = self.keyring.issue_anonymous(now, ANONYMOUS_TTL)
            cached = self._anonymous = (token, float(int(now)), expires_at)
        return cached

    def verify_token(self, token: str, challenge: Challenge) -> tuple[Principal | None, Claims]:
        """The principal a registry token names (None for an anonymous token) and its claims; ECR's 403 for an
        expired token, a 401 (with `challenge`) saying why otherwise."""
        try:
            claims = self.keyring.verify(token, self.clock())
        except TokenError as e:
            if e.kind == "expired":
                raise Denied(TOKEN_EXPIRED) from None
            raise Unauthorized(e.message, headers=_headers(challenge)) from None
        if claims.anonymous:
            return None, claims
        principal = self.directory.by_name.get(claims.principal)
        if principal is None:
            raise Unauthorized(f"principal {claims.principal!r} no longer exists", headers=_headers(challenge))
        return principal, claims

    def principal_for_token(self, token: str, challenge: Challenge) -> Principal | None:
        return self.verify_token(token, challenge)[0]

    # -- authorization -----------------------------------------------------------------------------
    def evaluate(
        self,
        principal: Principal | None,
        action: str,
        resource: str,
        policy_text: str | None,
        condition_keys: Mapping[str, str],
    ) -> tuple[RequestContext, Evaluation]:
        registry_text, scope = self.registry_policy()
        if registry_text is not None and not governs(scope, action):
            registry_text = None
        key = (
            principal.name if principal else None,
            action,
            resource,
            policy_text,
            registry_text,
            tuple(condition_keys.items()),
        )
        hit = self._evaluations.get(key)
        if hit is not None:
            return hit
        ctx = RequestContext(
            principal.arn if principal else None, self.account_id, action, resource, dict(condition_keys)
        )
        resource_policies = [repository_policy(text) for text in (policy_text, registry_text) if text]
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
        resource = repository_arn(self.region, self.account_id, repository) if repository else "*"
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
        challenge: Challenge | None = None,
    ) -> None:
        """Allow if any of `actions` is allowed on the repository (or `*`); else 401 (anonymous) or 403. The 401
        carries `challenge`, or ECR's Basic challenge for `realm` without one."""
        if not self.enabled:
            return
        resource = repository_arn(self.region, self.account_id, repository) if repository else "*"
        first: tuple[RequestContext, Evaluation] | None = None
        for action in actions:
            ctx, ev = self.evaluate(principal, action, resource, policy_text, condition_keys or {})
            if ev.decision is Decision.ALLOW:
                return
            first = first or (ctx, ev)
        assert first is not None, "check() needs at least one action"
        if principal is None:
            raise AuthenticationRequired(
                headers=_headers(challenge) if challenge is not None else basic_challenge(realm)
            )
        raise Denied(access_denied_message(*first))


# A 401's WWW-Authenticate header, or how to make it (only a refusal needs it: most requests never do).
Challenge = Mapping[str, str] | Callable[[], Mapping[str, str]]


def _headers(challenge: Challenge) -> dict[str, str]:
    return dict(challenge() if callable(challenge) else challenge)


def basic_challenge(realm: str) -> dict[str, str]:
    """ECR's answer to a registry request without (valid) credentials: `realm` is the registry's base URL."""
    return {"WWW-Authenticate": f'Basic realm="{realm}",service="{ECR_SERVICE}"'}


def bearer_challenge(realm: str, service: str, scope: str | None = None) -> dict[str, str]:
    """The Docker token flow's challenge: get a token from `realm` (the token endpoint) for `service`/`scope`."""
    value = f'Bearer realm="{realm}",service="{service}"'
    if scope:
        value += f',scope="{scope}"'
    return {"WWW-Authenticate": value}
