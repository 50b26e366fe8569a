"""The registry policy's pure parts (`registry.registry_policy`), its evaluation with identity and repository
policies (`registry.auth.access`), and the pure rules of scanning and replication configurations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from registry.auth.access import AccessControl
from registry.auth.principals import Directory, Principal
from registry.auth.tokens import KeyRing
from registry.errors import InvalidParameter
from registry.iam_policy import PolicyError, parse_policy
from registry.registry_policy import V1, V2, SettingError, check_setting, governs, parse_registry_policy
from registry.replication.operations import check_configuration
from registry.replication.runner import destinations_for
from registry.service.ecr_scanning import repository_scanning
from storage.records import RepositoryRecord, RepositorySettings

ACCOUNT, REGION = "123456789012", "us-east-1"
ALICE = f"arn:aws:iam::{ACCOUNT}:user/alice"
REPOS = f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/*"


def policy(effect: str, actions: str | list[str], principal: str = ALICE, resource: str = REPOS) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": effect, "Principal": {"AWS": principal}, "Action": actions, "Resource": resource}],
        }
    )


@pytest.mark.parametrize(
    ("scope", "action", "expected"),
    [
        (V2, "ecr:PutImage", True),
        (V2, "ecr:BatchImportUpstreamImage", True),
        (V2, "ECR:putimage", True),
        (V2, "s3:GetObject", False),
        (V1, "ecr:PutImage", False),
        (V1, "ecr:BatchGetImage", False),
        (V1, "ecr:ReplicateImage", True),
        (V1, "ecr:CreateRepository", True),
        (V1, "ecr:batchimportupstreamimage", True),
    ],
)
def test_what_each_scope_governs(scope: str, action: str, expected: bool) -> None:
    assert governs(scope, action) is expected


@pytest.mark.parametrize(
    ("text", "scope", "error"),
    [
        (policy("Deny", "ecr:*"), V1, None),  # a wildcard covering V1's actions is fine under V1
        (policy("Allow", ["ecr:ReplicateImage", "ecr:CreateRepository"]), V1, None),
        (policy("Deny", "ecr:PutImage"), V2, None),
        (policy("Deny", "ecr:PutImage"), V1, "outside the registry policy scope V1"),
        (policy("Deny", "ecr:Describe*"), V1, "outside the registry policy scope V1"),
        (policy("Allow", "s3:GetObject"), V2, "is not an ECR action"),
        (json.dumps({"Statement": [{"Effect": "Deny", "Action": "ecr:*", "Resource": "*"}]}), V2, "Principal"),
        ("{not json", V2, "not valid JSON"),
    ],
)
def test_parse_registry_policy(text: str, scope: str, error: str | None) -> None:
    if error is None:
        assert parse_registry_policy(text, scope).statements
    else:
        with pytest.raises(PolicyError, match=error):
            parse_registry_policy(text, scope)


def test_account_settings_names_values_and_defaults() -> None:
    assert check_setting("REGISTRY_POLICY_SCOPE") == V2
    assert check_setting("BLOB_MOUNTING", "DISABLED") == "ENABLED"
    assert check_setting("BASIC_SCAN_TYPE_VERSION", "CLAIR") == "AWS_NATIVE"
    with pytest.raises(SettingError, match="'name'"):
        check_setting("NOPE")
    with pytest.raises(SettingError, match=r"'value'.*V1, V2"):
        check_setting("REGISTRY_POLICY_SCOPE", "V3")


def access(registry_text: str | None, scope: str) -> tuple[AccessControl, Principal]:
    allow_all = parse_policy(
        json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ecr:*", "Resource": "*"}]})
    )
    alice = Principal("alice", "AKIAALICE", None, ALICE, (allow_all,))  # type: ignore[arg-type]
    control = AccessControl(
        enabled=True, directory=Directory([]), keyring=KeyRing(Path("/nonexistent")), account_id=ACCOUNT, region=REGION
    )
    control.registry_policy = lambda: (registry_text, scope)
    return control, alice


@pytest.mark.parametrize(
    ("scope", "action", "allowed"),
    [
        (V2, "ecr:PutImage", False),
        (V2, "ecr:BatchImportUpstreamImage", False),
        (V1, "ecr:PutImage", True),
        (V1, "ecr:BatchImportUpstreamImage", False),
        (V1, "ecr:CreateRepository", False),
    ],
)
def test_registry_policy_deny_within_its_scope(scope: str, action: str, allowed: bool) -> None:
    control, alice = access(policy("Deny", "ecr:*"), scope)
    assert control.allowed(alice, [action], "team/app") is allowed
    assert control.allowed(alice, [action], None), "a registry-wide question (resource *) is outside repository/*"


def test_registry_policy_allow_grants_what_the_repository_policy_does_not() -> None:
    control, _ = access(policy("Allow", "ecr:BatchGetImage", principal="*"), V2)
    assert control.allowed(None, ["ecr:BatchGetImage"], "team/app"), "anonymous pull granted registry-wide"
    assert not control.allowed(None, ["ecr:PutImage"], "team/app")
    control.registry_policy = lambda: (None, V2)
    assert not control.allowed(None, ["ecr:BatchGetImage"], "team/app"), "a cached answer does not outlive the policy"


def repo(name: str, scan_on_push: bool = False) -> RepositoryRecord:
    return RepositoryRecord(1, name, 0.0, RepositorySettings(scan_on_push=scan_on_push))


def test_repository_scanning_frequency_and_filters() -> None:
    push = {"scanFrequency": "SCAN_ON_PUSH", "repositoryFilters": [{"filter": "team/*", "filterType": "WILDCARD"}]}
    continuous = {
        "scanFrequency": "CONTINUOUS_SCAN",
        "repositoryFilters": [{"filter": "*app", "filterType": "WILDCARD"}],
    }
    config = {"scanType": "ENHANCED", "rules": [push, continuous]}
    assert repository_scanning(config, repo("team/app")) == ("CONTINUOUS_SCAN", continuous["repositoryFilters"])
    assert repository_scanning(config, repo("team/db")) == ("SCAN_ON_PUSH", push["repositoryFilters"])
    assert repository_scanning(config, repo("other/db")) == ("MANUAL", [])
    assert repository_scanning(config, repo("other/db", scan_on_push=True)) == ("SCAN_ON_PUSH", [])


def test_replication_destinations_and_checks() -> None:
    eu = {"region": "eu-west-1", "registryId": "111122223333"}
    us = {"region": "us-west-2", "registryId": ACCOUNT}
    config = {
        "rules": [
            {"destinations": [eu], "repositoryFilters": [{"filter": "team", "filterType": "PREFIX_MATCH"}]},
            {"destinations": [us, eu]},
        ]
    }
    assert destinations_for(config, "team/app") == [eu, us]
    assert destinations_for(config, "other/app") == [us, eu]
    assert destinations_for({"rules": []}, "team/app") == []
    check_configuration(config, REGION, ACCOUNT)
    with pytest.raises(InvalidParameter, match="same as the source"):
        check_configuration({"rules": [{"destinations": [{"region": REGION, "registryId": ACCOUNT}]}]}, REGION, ACCOUNT)
    many = {"rules": [{"destinations": [{"region": "eu-west-1", "registryId": f"{i:012}"} for i in range(26)]}]}
    with pytest.raises(InvalidParameter, match="at most 25"):
        check_configuration(many, REGION, ACCOUNT)
