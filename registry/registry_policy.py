"""The registry policy and the account settings around it: what they may say and what they govern. Pure: no I/O.

A registry policy is a resource-based policy on the whole registry (`PutRegistryPolicy`). It is evaluated with
the caller's identity policies and the repository's policy by the same IAM evaluator (`registry.iam_policy`),
for the actions its scope covers (the account setting `REGISTRY_POLICY_SCOPE`, as on ECR):

- `V1`: only replication and pull-through cache actions: `ecr:ReplicateImage`, `ecr:CreateRepository`,
  `ecr:BatchImportUpstreamImage`.
- `V2` (ECR's default for new registries, and Moorage's): every `ecr:*` action.

Account settings (`Get/PutAccountSetting`): each name has its values and a default. Moorage's one deliberate
difference: `BLOB_MOUNTING` defaults to `ENABLED` (a local registry has always mounted across repositories; ECR
starts `DISABLED`): `PutAccountSetting BLOB_MOUNTING DISABLED` gives ECR's behaviour.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from registry.iam_policy import Policy, PolicyError, action_matches, parse_policy

V1, V2 = "V1", "V2"
V1_ACTIONS = ("ecr:ReplicateImage", "ecr:CreateRepository", "ecr:BatchImportUpstreamImage")

REGISTRY_POLICY_SCOPE = "REGISTRY_POLICY_SCOPE"
BLOB_MOUNTING = "BLOB_MOUNTING"
BASIC_SCAN_TYPE_VERSION = "BASIC_SCAN_TYPE_VERSION"
# name -> (allowed values, default)
ACCOUNT_SETTINGS: Mapping[str, tuple[tuple[str, ...], str]] = {
    BASIC_SCAN_TYPE_VERSION: (("AWS_NATIVE", "CLAIR"), "AWS_NATIVE"),
    REGISTRY_POLICY_SCOPE: ((V1, V2), V2),
    BLOB_MOUNTING: (("ENABLED", "DISABLED"), "ENABLED"),
}


class SettingError(ValueError):
    """An account setting name or value ECR does not know; the message says which and what is allowed."""


def governs(scope: str, action: str) -> bool:
    """Whether a registry policy of this scope has a say in `action` (an `ecr:` action, case-insensitive)."""
    if scope == V1:
        return any(action.lower() == known.lower() for known in V1_ACTIONS)
    return action.lower().startswith("ecr:")


def parse_registry_policy(text: str | dict[str, Any], scope: str) -> Policy:
    """Parse and check a registry policy: a resource-based policy whose actions are ECR's; under scope V1, only
    the actions V1 covers (a name outside them, or a wildcard matching none of them, is refused)."""
    policy = parse_policy(text, resource_policy=True)
    for i, statement in enumerate(policy.statements):
        for action in (*(statement.actions or ()), *(statement.not_actions or ())):
            if action != "*" and not action.lower().startswith("ecr:"):
                raise PolicyError(f"Statement[{i}]: {action!r} is not an ECR action (a registry policy grants ecr:*)")
            if scope == V1 and statement.actions is not None and action in statement.actions:
                if not any(action_matches(action, known) for known in V1_ACTIONS):
                    raise PolicyError(
                        f"Statement[{i}]: {action!r} is outside the registry policy scope V1 (only "
                        f"{', '.join(V1_ACTIONS)}); set the account setting REGISTRY_POLICY_SCOPE to V2 for others"
                    )
    return policy


def check_setting(name: str, value: str | None = None) -> str:
    """The setting's name checked (and `value`, when given); returns its default."""
    known = ACCOUNT_SETTINGS.get(name)
    if known is None:
        raise SettingError(
            f"Invalid parameter at 'name' failed to satisfy constraint: 'Member must satisfy enum value set: "
            f"[{', '.join(ACCOUNT_SETTINGS)}]'"
        )
    values, default = known
    if value is not None and value not in values:
        raise SettingError(
            f"Invalid parameter at 'value' failed to satisfy constraint: 'Member must satisfy enum value set: "
            f"[{', '.join(values)}]' for the setting {name}"
        )
    return default
