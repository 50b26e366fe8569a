"""Table-driven tests of IAM-style policy parsing and evaluation."""

from __future__ import annotations

import json
from typing import Any

import pytest

from registry import iam_policy as policy
from registry.iam_policy import Decision, PolicyError, RequestContext

ACCOUNT = "111122223333"
REPO = f"arn:aws:ecr:us-east-1:{ACCOUNT}:repository/team-a/app"
USER = f"arn:aws:iam::{ACCOUNT}:user/alice"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/builder"
OTHER_USER = "arn:aws:iam::444455556666:user/mallory"
ALLOW, EXPLICIT, IMPLICIT = Decision.ALLOW, Decision.EXPLICIT_DENY, Decision.IMPLICIT_DENY


def identity(*statements: dict[str, Any]) -> policy.Policy:
    return policy.parse_policy({"Version": "2012-10-17", "Statement": list(statements)})


def repo_policy(*statements: dict[str, Any]) -> policy.Policy:
    return policy.parse_policy({"Version": "2012-10-17", "Statement": list(statements)}, resource_policy=True)


def ctx(action: str = "ecr:BatchGetImage", principal: str | None = USER, resource: str = REPO) -> RequestContext:
    return RequestContext(principal, ACCOUNT, action, resource)


# -- globbing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "action", "matches"),
    [
        ("*", "ecr:BatchGetImage", True),
        ("ecr:*", "ecr:BatchGetImage", True),
        ("ecr:*", "s3:GetObject", False),
        ("ecr:Batch*", "ecr:BatchGetImage", True),
        ("ecr:Batch*", "ecr:BatchCheckLayerAvailability", True),
        ("ecr:Batch*", "ecr:PutImage", False),
        ("ecr:Get?ownloadUrlForLayer", "ecr:GetDownloadUrlForLayer", True),
        ("ecr:Get?ownloadUrlForLayer", "ecr:GetDDownloadUrlForLayer", False),
        ("ECR:batchgetimage", "ecr:BatchGetImage", True),
        ("ecr:batch*", "ecr:BatchGetImage", True),
        ("ecr:BatchGetImage", "ecr:BatchGetImages", False),
        ("ecr:*Image", "ecr:PutImage", True),
        ("ecr:*Image", "ecr:ListImages", False),
        ("ecr:List.*", "ecr:ListImages", False),  # regex metacharacters are literal
    ],
)
def test_action_matches(pattern: str, action: str, matches: bool) -> None:
    assert policy.action_matches(pattern, action) is matches


@pytest.mark.parametrize(
    ("pattern", "arn", "matches"),
    [
        ("*", REPO, True),
        (REPO, REPO, True),
        (REPO.upper(), REPO, False),
        (f"arn:aws:ecr:us-east-1:{ACCOUNT}:repository/team-a/*", REPO, True),
        (f"arn:aws:ecr:us-east-1:{ACCOUNT}:repository/team-a/*", REPO + "/deep/er", True),
        (f"arn:aws:ecr:us-east-1:{ACCOUNT}:repository/team-a/*", REPO.replace("team-a/app", "team-a"), False),
        (f"arn:aws:ecr:us-east-1:{ACCOUNT}:repository/team-a/*", REPO.replace("team-a", "team-ab") + "/x", False),
        (f"arn:aws:ecr:us-east-1:{ACCOUNT}:repository/team-a*", REPO.replace("team-a", "team-ab"), True),
        (f"arn:aws:ecr:us-east-1:{ACCOUNT}:repository/Team-A/*", REPO, False),
        ("arn:aws:ecr:*:*:repository/*", REPO, True),
        (f"arn:aws:ecr:us-east-?:{ACCOUNT}:repository/team-a/app", REPO, True),
        (f"arn:aws:ecr:us-east-1:{ACCOUNT}:repository/${{aws:username}}/*", REPO, False),
        (f"arn:aws:ecr:us-east-1:{ACCOUNT}:repository/team-a/ap[p]", REPO, False),
    ],
)
def test_resource_matches(pattern: str, arn: str, matches: bool) -> None:
    assert policy.resource_matches(pattern, arn) is matches


@pytest.mark.parametrize(
    ("pattern", "principal", "matches"),
    [
        ("*", USER, True),
        ("*", None, True),
        (USER, USER, True),
        (USER, ROLE, False),
        (USER, None, False),
        (f"arn:aws:iam::{ACCOUNT}:root", USER, True),
        (f"arn:aws:iam::{ACCOUNT}:root", ROLE, True),
        (f"arn:aws:iam::{ACCOUNT}:root", f"arn:aws:sts::{ACCOUNT}:assumed-role/builder/session", True),
        (f"arn:aws:iam::{ACCOUNT}:root", OTHER_USER, False),
        (f"arn:aws:iam::{ACCOUNT}:root", None, False),
        ("service:ecs.amazonaws.com", USER, False),
        ("service:ecs.amazonaws.com", None, False),
        (f"arn:aws:iam::{ACCOUNT}:user/*", USER, False),  # no wildcards in principals
    ],
)
def test_principal_matches(pattern: str, principal: str | None, matches: bool) -> None:
    assert policy.principal_matches(pattern, principal) is matches


# -- evaluation --------------------------------------------------------------------------------------

PULL = {"Action": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"]}
ALLOW_ALL_ID = {"Effect": "Allow", "Action": "ecr:*", "Resource": "*"}
DENY_DELETE_ID = {"Sid": "NoDelete", "Effect": "Deny", "Action": "ecr:BatchDeleteImage", "Resource": "*"}
EVERYONE_PULLS = {"Sid": "PublicPull", "Effect": "Allow", "Principal": "*", **PULL}
ACCOUNT_PULLS = {"Sid": "AccountPull", "Effect": "Allow", "Principal": {"AWS": ACCOUNT}, **PULL}
DENY_ALICE_PUSH = {"Sid": "NoAlicePush", "Effect": "Deny", "Principal": {"AWS": USER}, "Action": "ecr:PutImage"}
ALICE_ALL = {"Sid": "Alice", "Effect": "Allow", "Principal": {"AWS": [USER]}, "Action": "ecr:*"}

EVALUATIONS = [
    # (name, context, identity statements, resource statements, decision, matched sid)
    ("nothing at all", ctx(), [], [], IMPLICIT, None),
    ("identity allows", ctx(), [ALLOW_ALL_ID], [], ALLOW, None),
    (
        "identity allows other action only",
        ctx("ecr:PutImage"),
        [{**ALLOW_ALL_ID, "Action": "ecr:Batch*"}],
        [],
        IMPLICIT,
        None,
    ),
    (
        "identity resource scoped to team-a/*",
        ctx(),
        [{**ALLOW_ALL_ID, "Resource": f"arn:aws:ecr:us-east-1:{ACCOUNT}:repository/team-a/*"}],
        [],
        ALLOW,
        None,
    ),
    (
        "identity resource scoped to team-b/*",
        ctx(),
        [{**ALLOW_ALL_ID, "Resource": f"arn:aws:ecr:us-east-1:{ACCOUNT}:repository/team-b/*"}],
        [],
        IMPLICIT,
        None,
    ),
    (
        "identity deny beats identity allow",
        ctx("ecr:BatchDeleteImage"),
        [ALLOW_ALL_ID, DENY_DELETE_ID],
        [],
        EXPLICIT,
        "NoDelete",
    ),
    ("deny first, allow later", ctx("ecr:BatchDeleteImage"), [DENY_DELETE_ID, ALLOW_ALL_ID], [], EXPLICIT, "NoDelete"),
    ("deny for other action leaves allow", ctx(), [DENY_DELETE_ID, ALLOW_ALL_ID], [], ALLOW, None),
    (
        "resource policy naming the user alone allows",
        ctx(),
        [],
        [{**ALICE_ALL, "Sid": "AlicePull"}],
        ALLOW,
        "AlicePull",
    ),
    ("account root alone delegates: nothing allowed", ctx(), [], [ACCOUNT_PULLS], IMPLICIT, None),
    ("account root with identity allow", ctx(), [ALLOW_ALL_ID], [ACCOUNT_PULLS], ALLOW, None),
    (
        "account root with identity allowing other actions only",
        ctx(),
        [{**ALLOW_ALL_ID, "Action": "ecr:PutImage"}],
        [ACCOUNT_PULLS],
        IMPLICIT,
        None,
    ),
    (
        "account root and the user's own ARN: the ARN grants",
        ctx(),
        [],
        [{**ACCOUNT_PULLS, "Principal": {"AWS": [ACCOUNT, USER]}}],
        ALLOW,
        "AccountPull",
    ),
    (
        "account root Deny applies to every principal of the account",
        ctx(principal=ROLE),
        [ALLOW_ALL_ID],
        [{**ACCOUNT_PULLS, "Sid": "AccountDeny", "Effect": "Deny"}],
        EXPLICIT,
        "AccountDeny",
    ),
    ("resource policy allows pull not push", ctx("ecr:PutImage"), [], [ACCOUNT_PULLS], IMPLICIT, None),
    (
        "resource deny beats identity allow",
        ctx("ecr:PutImage"),
        [ALLOW_ALL_ID],
        [DENY_ALICE_PUSH],
        EXPLICIT,
        "NoAlicePush",
    ),
    (
        "identity deny beats resource allow",
        ctx("ecr:BatchDeleteImage"),
        [DENY_DELETE_ID],
        [ALICE_ALL],
        EXPLICIT,
        "NoDelete",
    ),
    (
        "resource deny beats resource allow",
        ctx("ecr:PutImage"),
        [],
        [ALICE_ALL, DENY_ALICE_PUSH],
        EXPLICIT,
        "NoAlicePush",
    ),
    ("resource deny after allow order", ctx("ecr:PutImage"), [], [DENY_ALICE_PUSH, ALICE_ALL], EXPLICIT, "NoAlicePush"),
    ("resource deny for alice not bob", ctx("ecr:PutImage", ROLE), [ALLOW_ALL_ID], [DENY_ALICE_PUSH], ALLOW, None),
    ("anonymous pull with Principal *", ctx(principal=None), [], [EVERYONE_PULLS], ALLOW, "PublicPull"),
    ("anonymous push with Principal *", ctx("ecr:PutImage", None), [], [EVERYONE_PULLS], IMPLICIT, None),
    (
        "anonymous, AWS * principal",
        ctx(principal=None),
        [],
        [{**EVERYONE_PULLS, "Principal": {"AWS": "*"}}],
        ALLOW,
        "PublicPull",
    ),
    ("anonymous and account root", ctx(principal=None), [], [ACCOUNT_PULLS], IMPLICIT, None),
    ("anonymous ignores identity policies", ctx(principal=None), [ALLOW_ALL_ID], [], IMPLICIT, None),
    ("account root delegates for a role too", ctx(principal=ROLE), [], [ACCOUNT_PULLS], IMPLICIT, None),
    ("account root does not match other account", ctx(principal=OTHER_USER), [], [ACCOUNT_PULLS], IMPLICIT, None),
    (
        "root ARN form",
        ctx(principal=ROLE),
        [],
        [{**ACCOUNT_PULLS, "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}}],
        IMPLICIT,
        None,
    ),
    (
        "root ARN form with identity allow",
        ctx(principal=ROLE),
        [ALLOW_ALL_ID],
        [{**ACCOUNT_PULLS, "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}}],
        ALLOW,
        None,
    ),
    # Another account's principal needs both its identity policy and the repository policy to allow.
    ("other account: identity allow alone", ctx(principal=OTHER_USER), [ALLOW_ALL_ID], [], IMPLICIT, None),
    (
        "other account: repository policy alone",
        ctx(principal=OTHER_USER),
        [],
        [{**ALICE_ALL, "Principal": {"AWS": OTHER_USER}}],
        IMPLICIT,
        None,
    ),
    (
        "other account: both allow",
        ctx(principal=OTHER_USER),
        [ALLOW_ALL_ID],
        [{**ALICE_ALL, "Sid": "Mallory", "Principal": {"AWS": "444455556666"}}],
        ALLOW,
        "Mallory",
    ),
    (
        "service principal does not match users",
        ctx(),
        [],
        [{**ACCOUNT_PULLS, "Principal": {"Service": "ecs.amazonaws.com"}}],
        IMPLICIT,
        None,
    ),
    (
        "NotPrincipal: everyone but alice",
        ctx(),
        [],
        [{"Sid": "NotAlice", "Effect": "Allow", "NotPrincipal": {"AWS": USER}, "Action": "ecr:*"}],
        IMPLICIT,
        None,
    ),
    (
        "NotPrincipal: bob is not alice",
        ctx(principal=ROLE),
        [],
        [{"Sid": "NotAlice", "Effect": "Allow", "NotPrincipal": {"AWS": USER}, "Action": "ecr:*"}],
        ALLOW,
        "NotAlice",
    ),
    (
        "NotAction allows everything but delete",
        ctx("ecr:PutImage"),
        [{"Effect": "Allow", "NotAction": "ecr:BatchDelete*", "Resource": "*"}],
        [],
        ALLOW,
        None,
    ),
    (
        "NotAction excludes delete",
        ctx("ecr:BatchDeleteImage"),
        [{"Effect": "Allow", "NotAction": ["ecr:BatchDelete*", "ecr:Delete*"], "Resource": "*"}],
        [],
        IMPLICIT,
        None,
    ),
    (
        "Deny NotAction: everything but pull is denied",
        ctx("ecr:PutImage"),
        [ALLOW_ALL_ID, {"Sid": "PullOnly", "Effect": "Deny", "NotAction": "ecr:BatchGetImage", "Resource": "*"}],
        [],
        EXPLICIT,
        "PullOnly",
    ),
    (
        "NotResource allows other repositories",
        ctx(),
        [{"Effect": "Allow", "Action": "ecr:*", "NotResource": "arn:aws:ecr:*:*:repository/secret/*"}],
        [],
        ALLOW,
        None,
    ),
    (
        "NotResource excludes secret/*",
        ctx(resource=f"arn:aws:ecr:us-east-1:{ACCOUNT}:repository/secret/x"),
        [{"Effect": "Allow", "Action": "ecr:*", "NotResource": "arn:aws:ecr:*:*:repository/secret/*"}],
        [],
        IMPLICIT,
        None,
    ),
    (
        "resource policy Resource limits",
        ctx(),
        [],
        [{**ACCOUNT_PULLS, "Resource": f"arn:aws:ecr:us-east-1:{ACCOUNT}:repository/other"}],
        IMPLICIT,
        None,
    ),
    ("case-insensitive action in policy", ctx(), [{**ALLOW_ALL_ID, "Action": "ECR:batchgetimage"}], [], ALLOW, None),
    (
        "case-sensitive resource in policy",
        ctx(),
        [{**ALLOW_ALL_ID, "Resource": REPO.replace("team-a", "TEAM-A")}],
        [],
        IMPLICIT,
        None,
    ),
]


@pytest.mark.parametrize(
    ("name", "context", "identities", "resources", "decision", "sid"), EVALUATIONS, ids=[e[0] for e in EVALUATIONS]
)
def test_evaluate(
    name: str,
    context: RequestContext,
    identities: list[dict[str, Any]],
    resources: list[dict[str, Any]],
    decision: Decision,
    sid: str | None,
) -> None:
    id_policies = [identity(*identities)] if identities else []
    res_policies = [repo_policy(*resources)] if resources else []
    result = policy.evaluate(context, id_policies, res_policies)
    assert (result.decision, result.matched_sid) == (decision, sid)
    assert result.allowed is (decision is ALLOW)


def test_statements_across_several_policies() -> None:
    allow, deny = identity(ALLOW_ALL_ID), identity(DENY_DELETE_ID)
    assert policy.evaluate(ctx("ecr:BatchDeleteImage"), [allow, deny], []).decision is EXPLICIT
    assert policy.evaluate(ctx("ecr:BatchDeleteImage"), [deny, allow], []).decision is EXPLICIT
    assert policy.evaluate(ctx("ecr:PutImage"), [deny, allow], []).decision is ALLOW


# -- reasons and messages ----------------------------------------------------------------------------


def test_access_denied_messages() -> None:
    c = RequestContext("arn:aws:iam::111:user/x", "111", "ecr:ListImages", "arn:aws:ecr:eu-west-2:111:repository/r", {})
    implicit = policy.evaluate(c, [], [])
    assert implicit.reason == "no identity-based policy allows the ecr:ListImages action"
    assert policy.access_denied_message(c, implicit) == (
        "User: arn:aws:iam::111:user/x is not authorized to perform: ecr:ListImages on resource: "
        "arn:aws:ecr:eu-west-2:111:repository/r because no identity-based policy allows the ecr:ListImages action"
    )
    resource_deny = policy.evaluate(c, [], [repo_policy({"Effect": "Deny", "Principal": "*", "Action": "ecr:*"})])
    assert resource_deny.reason == "with an explicit deny in a resource-based policy"
    assert policy.access_denied_message(c, resource_deny) == (
        "User: arn:aws:iam::111:user/x is not authorized to perform: ecr:ListImages on resource: "
        "arn:aws:ecr:eu-west-2:111:repository/r with an explicit deny in a resource-based policy"
    )
    identity_deny = policy.evaluate(c, [identity({"Effect": "Deny", "Action": "*", "Resource": "*"})], [])
    assert identity_deny.reason == "with an explicit deny in an identity-based policy"
    unallowed_by_repo = policy.evaluate(c, [], [repo_policy(ACCOUNT_PULLS)])
    assert unallowed_by_repo.reason == "no identity-based policy allows the ecr:ListImages action"


def test_anonymous_message() -> None:
    c = ctx("ecr:PutImage", None)
    assert policy.access_denied_message(c, policy.evaluate(c, [], [])).startswith(
        "User: anonymous is not authorized to perform: ecr:PutImage on resource: "
    )


# -- conditions --------------------------------------------------------------------------------------


def _allow_if(condition: dict[str, Any]) -> policy.Policy:
    return identity({**ALLOW_ALL_ID, "Condition": condition})


CONDITIONS = [
    # (condition, condition keys, allowed?)
    ({"StringEquals": {"aws:username": "alice"}}, {"aws:username": "alice"}, True),
    ({"StringEquals": {"aws:username": "alice"}}, {"aws:username": "Alice"}, False),
    ({"StringEquals": {"aws:username": ["bob", "alice"]}}, {"aws:username": "alice"}, True),  # OR across values
    ({"StringEquals": {"AWS:UserName": "alice"}}, {"aws:username": "alice"}, True),  # key names ignore case
    ({"StringEquals": {"aws:username": "alice"}}, {"AWS:USERNAME": "alice"}, True),
    ({"StringEquals": {"aws:username": "alice"}}, {}, False),  # missing key: false
    ({"StringNotEquals": {"aws:username": "alice"}}, {"aws:username": "bob"}, True),
    ({"StringNotEquals": {"aws:username": ["alice", "bob"]}}, {"aws:username": "bob"}, False),
    ({"StringNotEquals": {"aws:username": "alice"}}, {}, True),  # missing key, negated operator: true (AWS)
    ({"StringEqualsIgnoreCase": {"aws:username": "ALICE"}}, {"aws:username": "alice"}, True),
    ({"StringLike": {"aws:username": "al*"}}, {"aws:username": "alice"}, True),
    ({"StringLike": {"aws:username": "al?ce"}}, {"aws:username": "alice"}, True),
    ({"StringLike": {"aws:username": "AL*"}}, {"aws:username": "alice"}, False),
    ({"StringNotLike": {"aws:username": "al*"}}, {"aws:username": "alice"}, False),
    ({"StringNotLike": {"aws:username": "bo*"}}, {"aws:username": "alice"}, True),
    ({"StringEquals": {"aws:username": "${aws:username}"}}, {"aws:username": "alice"}, False),  # no variables
    ({"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}, {"aws:SourceIp": "10.1.2.3"}, True),
    ({"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}, {"aws:SourceIp": "192.168.1.1"}, False),
    ({"IpAddress": {"aws:SourceIp": ["192.168.0.0/16", "10.0.0.0/8"]}}, {"aws:SourceIp": "10.1.2.3"}, True),
    ({"IpAddress": {"aws:SourceIp": "203.0.113.7"}}, {"aws:SourceIp": "203.0.113.7"}, True),
    ({"IpAddress": {"aws:SourceIp": "2001:db8::/32"}}, {"aws:SourceIp": "2001:db8::1"}, True),
    ({"IpAddress": {"aws:SourceIp": "2001:db8::/32"}}, {"aws:SourceIp": "10.0.0.1"}, False),
    ({"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}, {"aws:SourceIp": "not-an-ip"}, False),
    ({"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}, {}, False),
    ({"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}}, {"aws:SourceIp": "192.168.1.1"}, True),
    ({"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}}, {"aws:SourceIp": "10.9.9.9"}, False),
    ({"Bool": {"aws:SecureTransport": "true"}}, {"aws:SecureTransport": "true"}, True),
    ({"Bool": {"aws:SecureTransport": True}}, {"aws:SecureTransport": "True"}, True),
    ({"Bool": {"aws:SecureTransport": "true"}}, {"aws:SecureTransport": "false"}, False),
    ({"Bool": {"aws:SecureTransport": "false"}}, {}, False),
    ({"BoolIfExists": {"aws:SecureTransport": "true"}}, {}, True),
    ({"BoolIfExists": {"aws:SecureTransport": "true"}}, {"aws:SecureTransport": "false"}, False),
    ({"StringEqualsIfExists": {"ecr:ResourceTag/team": "a"}}, {}, True),
    ({"StringEqualsIfExists": {"ecr:ResourceTag/team": "a"}}, {"ecr:ResourceTag/team": "b"}, False),
    ({"Null": {"aws:TokenIssueTime": "true"}}, {}, True),
    ({"Null": {"aws:TokenIssueTime": "true"}}, {"aws:TokenIssueTime": "2024-01-01T00:00:00Z"}, False),
    ({"Null": {"aws:TokenIssueTime": "false"}}, {"aws:TokenIssueTime": "2024-01-01T00:00:00Z"}, True),
    ({"Null": {"aws:TokenIssueTime": False}}, {}, False),
    ({"ForAnyValue:StringEquals": {"aws:TagKeys": ["team", "env"]}}, {"aws:TagKeys": ["owner", "env"]}, True),
    ({"ForAnyValue:StringEquals": {"aws:TagKeys": ["team", "env"]}}, {"aws:TagKeys": ["owner"]}, False),
    ({"ForAnyValue:StringEquals": {"aws:TagKeys": "team"}}, {}, False),
    ({"ForAllValues:StringEquals": {"aws:TagKeys": ["team", "env"]}}, {"aws:TagKeys": ["team", "env"]}, True),
    ({"ForAllValues:StringEquals": {"aws:TagKeys": ["team", "env"]}}, {"aws:TagKeys": ["team", "owner"]}, False),
    ({"ForAllValues:StringEquals": {"aws:TagKeys": ["team"]}}, {}, True),  # vacuously true
    ({"ForAllValues:StringLike": {"aws:TagKeys": ["t*", "e*"]}}, {"aws:TagKeys": ["team", "env"]}, True),
    ({"ForAnyValue:StringNotEquals": {"aws:TagKeys": "team"}}, {"aws:TagKeys": ["team", "env"]}, True),
    ({"ForAllValues:StringNotEquals": {"aws:TagKeys": "team"}}, {"aws:TagKeys": ["team", "env"]}, False),
    (
        {"DateGreaterThan": {"aws:CurrentTime": "2024-01-01T00:00:00Z"}},
        {"aws:CurrentTime": "2024-06-01T12:00:00Z"},
        True,
    ),
    (
        {"DateGreaterThan": {"aws:CurrentTime": "2024-01-01T00:00:00Z"}},
        {"aws:CurrentTime": "2023-12-31T23:59:59Z"},
        False,
    ),
    ({"DateGreaterThan": {"aws:CurrentTime": "2024-01-01"}}, {"aws:CurrentTime": "2024-01-01T00:00:01+00:00"}, True),
    ({"DateLessThan": {"aws:CurrentTime": "2024-01-01T00:00:00Z"}}, {"aws:CurrentTime": "2023-12-31T23:59:59Z"}, True),
    ({"DateLessThan": {"aws:EpochTime": "1704067200"}}, {"aws:EpochTime": "1704067199"}, True),
    ({"NumericLessThan": {"ecr:maxResults": 100}}, {"ecr:maxResults": "50"}, True),
    ({"NumericLessThan": {"ecr:maxResults": "100"}}, {"ecr:maxResults": "100"}, False),
    ({"NumericLessThanEquals": {"ecr:maxResults": "100"}}, {"ecr:maxResults": "100"}, True),
    ({"NumericGreaterThan": {"ecr:maxResults": "1.5"}}, {"ecr:maxResults": "2"}, True),
    ({"NumericEquals": {"ecr:maxResults": "10"}}, {"ecr:maxResults": "10.0"}, True),
    ({"NumericEquals": {"ecr:maxResults": "10"}}, {"ecr:maxResults": "ten"}, False),
    ({"ArnLike": {"aws:PrincipalArn": f"arn:aws:iam::{ACCOUNT}:user/*"}}, {}, True),  # implied from the context
    ({"ArnLike": {"aws:PrincipalArn": f"arn:aws:iam::{ACCOUNT}:role/*"}}, {}, False),
    (
        {"ArnEquals": {"aws:SourceArn": "arn:aws:ecs:*:111122223333:task/*"}},
        {"aws:SourceArn": "arn:aws:ecs:us-east-1:111122223333:task/x"},
        True,
    ),
    (
        {"ArnLike": {"aws:SourceArn": "arn:aws:ecs:*:111122223333:task/*"}},
        {"aws:SourceArn": "arn:aws:ecs:us-east-1:1:2:task/x"},
        False,
    ),
    ({"ArnNotLike": {"aws:PrincipalArn": f"arn:aws:iam::{ACCOUNT}:role/*"}}, {}, True),
    ({"StringEquals": {"aws:PrincipalAccount": ACCOUNT}}, {}, True),
    ({"StringEquals": {"aws:ResourceAccount": ACCOUNT}}, {}, True),
    # AND across operators and keys
    (
        {"StringEquals": {"aws:username": "alice"}, "IpAddress": {"aws:SourceIp": "10.0.0.0/8"}},
        {"aws:username": "alice", "aws:SourceIp": "10.0.0.1"},
        True,
    ),
    (
        {"StringEquals": {"aws:username": "alice"}, "IpAddress": {"aws:SourceIp": "10.0.0.0/8"}},
        {"aws:username": "alice", "aws:SourceIp": "11.0.0.1"},
        False,
    ),
    (
        {"StringEquals": {"aws:username": "alice", "aws:userid": "AIDA1"}},
        {"aws:username": "alice", "aws:userid": "AIDA2"},
        False,
    ),
]


@pytest.mark.parametrize(("condition", "keys", "allowed"), CONDITIONS, ids=[json.dumps(c[0]) for c in CONDITIONS])
def test_conditions(condition: dict[str, Any], keys: dict[str, str | list[str]], allowed: bool) -> None:
    c = RequestContext(USER, ACCOUNT, "ecr:BatchGetImage", REPO, keys)
    assert policy.evaluate(c, [_allow_if(condition)], []).allowed is allowed


# -- the repository policy example from the ECR documentation ----------------------------------------

AWS_EXAMPLE = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "AllowPull",
                "Effect": "Allow",
                "Principal": {"AWS": ["arn:aws:iam::111122223333:user/pull-user-1", "arn:aws:iam::111122223333:root"]},
                "Action": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"],
            },
            {
                "Sid": "DenyOutsideRange",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "ecr:*",
                "Condition": {"NotIpAddress": {"aws:SourceIp": "54.240.143.0/24"}},
            },
        ],
    }
)
PULL_USER = "arn:aws:iam::111122223333:user/pull-user-1"


@pytest.mark.parametrize(
    ("principal", "action", "source_ip", "decision", "sid"),
    [
        (PULL_USER, "ecr:BatchGetImage", "54.240.143.9", ALLOW, "AllowPull"),
        (PULL_USER, "ecr:GetDownloadUrlForLayer", "54.240.143.200", ALLOW, "AllowPull"),
        (PULL_USER, "ecr:BatchGetImage", "10.0.0.1", EXPLICIT, "DenyOutsideRange"),
        (PULL_USER, "ecr:PutImage", "54.240.143.9", IMPLICIT, None),
        (PULL_USER, "ecr:PutImage", "10.0.0.1", EXPLICIT, "DenyOutsideRange"),
        # The account root delegates: a role of the account needs an identity policy that allows.
        ("arn:aws:iam::111122223333:role/ci", "ecr:BatchGetImage", "54.240.143.9", IMPLICIT, None),
        ("arn:aws:iam::999999999999:user/x", "ecr:BatchGetImage", "54.240.143.9", IMPLICIT, None),
        (None, "ecr:BatchGetImage", "54.240.143.9", IMPLICIT, None),
        (None, "ecr:BatchGetImage", "10.0.0.1", EXPLICIT, "DenyOutsideRange"),
    ],
)
def test_ecr_documentation_example(
    principal: str | None, action: str, source_ip: str, decision: Decision, sid: str | None
) -> None:
    repo = policy.parse_policy(AWS_EXAMPLE, resource_policy=True)
    assert repo.statements[0].principals == (PULL_USER, "arn:aws:iam::111122223333:root")
    c = RequestContext(principal, "111122223333", action, REPO, {"aws:SourceIp": source_ip})
    result = policy.evaluate(c, [], [repo])
    assert (result.decision, result.matched_sid) == (decision, sid)


# -- parsing -----------------------------------------------------------------------------------------


def test_parse_shapes() -> None:
    p = policy.parse_policy(
        '{"Statement": {"Effect": "Allow", "Action": "ecr:*", "Resource": ["*"], '
        '"Condition": {"StringEquals": {"AWS:UserName": ["a", "b"]}, "Bool": {"aws:SecureTransport": true}}}}'
    )
    assert p.version == "2008-10-17"
    (s,) = p.statements
    assert (s.sid, s.effect, s.actions, s.not_actions, s.resources, s.principals) == (
        None,
        "Allow",
        ("ecr:*",),
        None,
        ("*",),
        None,
    )
    assert s.conditions == {"StringEquals": {"aws:username": ("a", "b")}, "Bool": {"aws:securetransport": ("true",)}}
    r = repo_policy(
        {"Effect": "Allow", "Principal": {"AWS": ["123456789012", "*"], "Service": "ecs.amazonaws.com"}, "Action": "*"}
    )
    assert r.statements[0].principals == ("arn:aws:iam::123456789012:root", "*", "service:ecs.amazonaws.com")
    assert r.statements[0].resources is None
    assert repo_policy({"Effect": "Deny", "NotPrincipal": "*", "NotAction": "ecr:Get*"}).statements[
        0
    ].not_principals == ("*",)


ID_STMT = {"Effect": "Allow", "Action": "ecr:*", "Resource": "*"}
RES_STMT = {"Effect": "Allow", "Principal": "*", "Action": "ecr:*"}
PARSE_ERRORS: list[tuple[str, Any, bool, str]] = [
    ("invalid JSON", '{"Statement": [', False, "not valid JSON"),
    ("not an object", "[]", False, "must be a JSON object"),
    ("bad Version", {"Version": "2012-10-18", "Statement": [ID_STMT]}, False, "Version must be 2012-10-17"),
    ("unknown top-level", {"Statement": [ID_STMT], "Statements": []}, False, "unknown element(s): Statements"),
    ("no Statement", {"Version": "2012-10-17"}, False, "must have a Statement"),
    ("Statement string", {"Statement": "Allow"}, False, "Statement must be an object or a list of objects"),
    ("Statement entry not object", {"Statement": [ID_STMT, "x"]}, False, "Statement[1] must be an object"),
    (
        "bad Effect",
        {"Statement": [ID_STMT, {**ID_STMT, "Effect": "allow"}]},
        False,
        "Statement[1].Effect must be Allow or Deny",
    ),
    ("missing Effect", {"Statement": [{"Action": "ecr:*", "Resource": "*"}]}, False, "Statement[0].Effect"),
    (
        "missing Action",
        {"Statement": [{"Effect": "Allow", "Resource": "*"}]},
        False,
        "exactly one of Action or NotAction",
    ),
    (
        "Action and NotAction",
        {"Statement": [{**ID_STMT, "NotAction": "ecr:PutImage"}]},
        False,
        "exactly one of Action or NotAction",
    ),
    (
        "bad Action",
        {"Statement": [{**ID_STMT, "Action": "BatchGetImage"}]},
        False,
        "'BatchGetImage' is not * or service:Action",
    ),
    ("empty Action list", {"Statement": [{**ID_STMT, "Action": []}]}, False, "Statement[0].Action must be a non-empty"),
    ("non-string Action", {"Statement": [{**ID_STMT, "Action": [1]}]}, False, "Statement[0].Action must be"),
    (
        "Principal in identity policy",
        {"Statement": [{**ID_STMT, "Principal": "*"}]},
        False,
        "Statement[0].Principal is not allowed in an identity-based policy",
    ),
    (
        "NotPrincipal in identity policy",
        {"Statement": [{**ID_STMT, "NotPrincipal": "*"}]},
        False,
        "NotPrincipal is not allowed",
    ),
    (
        "no Resource in identity policy",
        {"Statement": [{"Effect": "Allow", "Action": "ecr:*"}]},
        False,
        "must have a Resource or NotResource",
    ),
    (
        "Resource and NotResource",
        {"Statement": [{**ID_STMT, "NotResource": "*"}]},
        False,
        "both Resource and NotResource",
    ),
    (
        "bad Resource",
        {"Statement": [{**ID_STMT, "Resource": "repository/x"}]},
        False,
        "'repository/x' is not * or an ARN",
    ),
    ("missing Principal in resource policy", {"Statement": [ID_STMT]}, True, "must have a Principal or NotPrincipal"),
    (
        "Principal and NotPrincipal",
        {"Statement": [{**RES_STMT, "NotPrincipal": "*"}]},
        True,
        "both Principal and NotPrincipal",
    ),
    (
        "bad Principal string",
        {"Statement": [{**RES_STMT, "Principal": "alice"}]},
        True,
        'Statement[0].Principal must be "*"',
    ),
    ("bad AWS principal", {"Statement": [{**RES_STMT, "Principal": {"AWS": "alice"}}]}, True, "not 'alice'"),
    (
        "unknown principal type",
        {"Statement": [{**RES_STMT, "Principal": {"Robot": "x"}}]},
        True,
        "unsupported principal type 'Robot'",
    ),
    ("unknown statement element", {"Statement": [{**ID_STMT, "Actions": "x"}]}, False, "unknown element(s): Actions"),
    ("bad Sid", {"Statement": [{**ID_STMT, "Sid": 1}]}, False, "Statement[0].Sid must be a string"),
    (
        "unknown condition operator",
        {"Statement": [{**ID_STMT, "Condition": {"StringSortOf": {"a": "b"}}}]},
        False,
        "unknown condition operator 'StringSortOf'",
    ),
    (
        "lower-case operator",
        {"Statement": [{**ID_STMT, "Condition": {"stringequals": {"a": "b"}}}]},
        False,
        "unknown condition operator",
    ),
    (
        "bad qualifier",
        {"Statement": [{**ID_STMT, "Condition": {"ForSomeValues:StringEquals": {"a": "b"}}}]},
        False,
        "unknown condition operator",
    ),
    (
        "NullIfExists",
        {"Statement": [{**ID_STMT, "Condition": {"NullIfExists": {"a": "true"}}}]},
        False,
        "unknown condition operator 'NullIfExists'",
    ),
    (
        "condition not object",
        {"Statement": [{**ID_STMT, "Condition": ["x"]}]},
        False,
        "Statement[0].Condition must be an object",
    ),
    (
        "condition block not object",
        {"Statement": [{**ID_STMT, "Condition": {"StringEquals": "x"}}]},
        False,
        "StringEquals must be a non-empty object",
    ),
    (
        "empty condition values",
        {"Statement": [{**ID_STMT, "Condition": {"StringEquals": {"a": []}}}]},
        False,
        "StringEquals.a must not be empty",
    ),
    (
        "object condition value",
        {"Statement": [{**ID_STMT, "Condition": {"StringEquals": {"a": {}}}}]},
        False,
        "values must be strings",
    ),
    (
        "bad CIDR",
        {"Statement": [{**ID_STMT, "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/33"}}}]},
        False,
        "not an IP address or CIDR",
    ),
    (
        "bad number",
        {"Statement": [{**ID_STMT, "Condition": {"NumericLessThan": {"n": "ten"}}}]},
        False,
        "'ten' is not a number",
    ),
    (
        "bad date",
        {"Statement": [{**ID_STMT, "Condition": {"DateLessThan": {"d": "tomorrow"}}}]},
        False,
        "not an ISO 8601 date",
    ),
    (
        "bad Bool",
        {"Statement": [{**ID_STMT, "Condition": {"Bool": {"b": "yes"}}}]},
        False,
        "'yes' is not true or false",
    ),
    (
        "bad Null",
        {"Statement": [{**ID_STMT, "Condition": {"Null": {"b": "maybe"}}}]},
        False,
        "'maybe' is not true or false",
    ),
]


@pytest.mark.parametrize(("name", "doc", "resource_policy", "fragment"), PARSE_ERRORS, ids=[e[0] for e in PARSE_ERRORS])
def test_parse_errors(name: str, doc: Any, resource_policy: bool, fragment: str) -> None:
    with pytest.raises(PolicyError) as e:
        policy.parse_policy(doc, resource_policy=resource_policy)
    assert fragment in str(e.value)


ARN_A = "arn:aws:iam::111122223333:user/a"
ARN_B = "arn:aws:iam::444455556666:user/b"

# (operator, the policy's value, a context value for which the condition holds, one for which it does not;
#  None: the key is absent from the request)
OPERATORS: list[tuple[str, Any, Any, Any]] = [
    ("StringEquals", "v", "v", "w"),
    ("StringNotEquals", "v", "w", "v"),
    ("StringLike", "v*", "vw", "wv"),
    ("StringNotLike", "v*", "wv", "vw"),
    ("StringEqualsIgnoreCase", "v", "V", "w"),
    ("StringNotEqualsIgnoreCase", "v", "w", "V"),
    ("ArnLike", "arn:aws:iam::111122223333:user/*", ARN_A, ARN_B),
    ("ArnEquals", ARN_A, ARN_A, ARN_B),
    ("ArnNotLike", "arn:aws:iam::111122223333:*", ARN_B, ARN_A),
    ("ForAnyValue:StringLike", "t*", ["x", "team"], ["x", "y"]),
    ("ForAllValues:StringEquals", ["a", "b"], ["a", "b"], ["a", "c"]),
    ("StringLikeIfExists", "v*", None, "w"),
    ("ForAllValues:StringNotEqualsIfExists", "v", ["w", "x"], ["w", "v"]),
    ("NumericEquals", 1, "1.0", "2"),
    ("NumericNotEquals", 1, "2", "1"),
    ("NumericLessThanEquals", "1.5", "1.5", "1.6"),
    ("NumericGreaterThanEquals", -3, "-3", "-4"),
    ("DateEquals", "2024-01-01T00:00:00Z", "1704067200", "2024-01-02T00:00:00Z"),
    ("DateNotEquals", 1704067200, "2024-01-02T00:00:00Z", "2024-01-01T00:00:00Z"),
    ("DateLessThanEquals", "2024-01-01", "2024-01-01T00:00:00Z", "2024-01-01T00:00:01Z"),
    ("DateGreaterThanEqualsIfExists", "2024-01-01T00:00:00+02:00", None, "2023-12-31T21:59:59Z"),
    ("IpAddressIfExists", "::1", "::1", "::2"),
    ("Bool", False, "false", "true"),
    ("Null", True, None, "x"),
]


@pytest.mark.parametrize(("operator", "value", "holds", "fails"), OPERATORS, ids=[o[0] for o in OPERATORS])
def test_every_operator_parses_and_evaluates(operator: str, value: Any, holds: Any, fails: Any) -> None:
    """Each operator the parser accepts also decides: allowed when its condition holds, denied when not."""
    parsed = identity({**ID_STMT, "Condition": {operator: {"k": value}}})

    def decision(context_value: Any) -> Decision:
        keys = {} if context_value is None else {"k": context_value}
        return policy.evaluate(RequestContext(USER, ACCOUNT, "ecr:BatchGetImage", REPO, keys), [parsed], []).decision

    assert decision(holds) is ALLOW
    assert decision(fails) is IMPLICIT


def test_parse_accepts_bytes_and_2008_version() -> None:
    p = policy.parse_policy(b'{"Version": "2008-10-17", "Statement": []}')
    assert p == policy.Policy("2008-10-17", ())
