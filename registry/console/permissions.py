"""The console's "who can pull / push" answer: for a principal of the directory and a repository, whether each
action a pull or a push needs is allowed, and what decided it, from the evaluator every request goes through
(`AccessControl.evaluate`: the principal's identity policies and the repository's policy, as IAM combines
them). No HTTP here.

A pull needs `ecr:BatchGetImage` (manifests) and `ecr:GetDownloadUrlForLayer` (layers); clients that check a
layer before fetching it also need `ecr:BatchCheckLayerAvailability`. A push needs
`ecr:BatchCheckLayerAvailability`, `ecr:InitiateLayerUpload`, `ecr:UploadLayerPart`, `ecr:CompleteLayerUpload`
and `ecr:PutImage` (ECR's list).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from registry.auth.access import AccessControl
from registry.auth.principals import Principal
from registry.iam_policy import Decision
from registry.naming import repository_arn

PULL = ("ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability")
PULL_NEEDS = ("ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer")
PUSH = (
    "ecr:BatchCheckLayerAvailability",
    "ecr:InitiateLayerUpload",
    "ecr:UploadLayerPart",
    "ecr:CompleteLayerUpload",
    "ecr:PutImage",
)


@dataclass(frozen=True, slots=True)
class Answer:
    action: str
    allowed: bool
    decision: str  # "allow", "explicit deny", "implicit deny"
    source: str  # "identity-based policy", "repository policy", "both", "auth off", or "" (nothing allowed it)
    sid: str | None  # the deciding statement's Sid, when it has one
    reason: str  # the evaluator's words


@dataclass(frozen=True, slots=True)
class WhoCan:
    principal: str
    pull: list[Answer]
    push: list[Answer]

    @property
    def can_pull(self) -> bool:
        return all(answer.allowed for answer in self.pull if answer.action in PULL_NEEDS)

    @property
    def can_push(self) -> bool:
        return all(answer.allowed for answer in self.push)


def source_of(reason: str) -> str:
    """Which kind of policy the evaluator's reason names."""
    identity, resource = "identity-based" in reason, "resource-based" in reason
    if identity and resource:
        return "both"
    if identity:
        return "identity-based policy"
    if resource:
        return "repository policy"
    return ""


def answer(
    access: AccessControl,
    principal: Principal,
    action: str,
    repository: str,
    policy: str | None,
    keys: Mapping[str, str],
) -> Answer:
    if not access.enabled:
        return Answer(action, True, "allow", "auth off", None, "[auth] enabled = false: everyone may do everything")
    resource = repository_arn(access.region, access.account_id, repository)
    _, evaluation = access.evaluate(principal, action, resource, policy, keys)
    allowed = evaluation.decision is Decision.ALLOW
    deciding = allowed or evaluation.decision is Decision.EXPLICIT_DENY
    return Answer(
        action,
        allowed,
        evaluation.decision.value,
        source_of(evaluation.reason) if deciding else "",
        evaluation.matched_sid,
        evaluation.reason,
    )


def who_can(
    access: AccessControl, principal: Principal, repository: str, policy: str | None, keys: Mapping[str, str]
) -> WhoCan:
    """Pull and push for `principal` on `repository` with the repository policy `policy`. `keys` are the
    condition keys to evaluate with (the viewer's address and transport; the principal's own name and ARN)."""
    own = {**keys, "aws:username": principal.name, "aws:PrincipalArn": principal.arn}
    return WhoCan(
        principal.name,
        [answer(access, principal, action, repository, policy, own) for action in PULL],
        [answer(access, principal, action, repository, policy, own) for action in PUSH],
    )
