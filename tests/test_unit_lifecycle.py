"""Table-driven tests of lifecycle policy parsing, validation and evaluation (ECR reference §5)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from registry import lifecycle
from registry.lifecycle import Action, Image, LifecyclePolicyError, Policy, Rule

NOW = 1_750_000_000.0
HOUR = 3600.0
DAY = 86400.0

# §5.5 acceptance cases, verbatim from the reference's machine-readable form (ages in hours).
ACCEPTANCE_JSON = r"""
[
    {"id":"L1","images":[{"id":"I1","tags":["prod"],"pushedHoursAgo":480.0},{"id":"I2","tags":["production-team1"],"pushedHoursAgo":360.0},{"id":"I3","tags":["prod1"],"pushedHoursAgo":72.0},{"id":"X","tags":["dev"],"pushedHoursAgo":720.0}],"policy":{"rules":[{"rulePriority":1,"selection":{"tagStatus":"tagged","countType":"sinceImagePushed","countNumber":14,"tagPatternList":["prod*"],"countUnit":"days"},"action":{"type":"expire"}}]},"expectExpired":["I1","I2"]},
    {"id":"L2","images":[{"id":"U1","tags":[],"pushedHoursAgo":72.0},{"id":"U2","tags":[],"pushedHoursAgo":48.0},{"id":"T","tags":["v1"],"pushedHoursAgo":120.0}],"policy":{"rules":[{"rulePriority":1,"selection":{"tagStatus":"untagged","countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]},"expectExpired":["U1"]},
    {"id":"L3","images":[{"id":"A","tags":["beta-1","prod-1"],"pushedHoursAgo":240.0},{"id":"B","tags":["beta-2","prod-2"],"pushedHoursAgo":216.0},{"id":"C","tags":["beta-3"],"pushedHoursAgo":192.0}],"policy":{"rules":[{"rulePriority":1,"selection":{"tagStatus":"tagged","countType":"imageCountMoreThan","countNumber":1,"tagPatternList":["prod*"]},"action":{"type":"expire"}},{"rulePriority":2,"selection":{"tagStatus":"tagged","countType":"imageCountMoreThan","countNumber":1,"tagPatternList":["beta*"]},"action":{"type":"expire"}}]},"expectExpired":["A"]},
    {"id":"L3p","images":[{"id":"A","tags":["beta-1","prod-1"],"pushedHoursAgo":240.0},{"id":"B","tags":["beta-2","prod-2"],"pushedHoursAgo":216.0},{"id":"C","tags":["beta-3"],"pushedHoursAgo":192.0}],"policy":{"rules":[{"rulePriority":1,"selection":{"tagStatus":"tagged","countType":"imageCountMoreThan","countNumber":1,"tagPrefixList":["prod"]},"action":{"type":"expire"}},{"rulePriority":2,"selection":{"tagStatus":"tagged","countType":"imageCountMoreThan","countNumber":1,"tagPrefixList":["beta"]},"action":{"type":"expire"}}]},"expectExpired":["A"]},
    {"id":"L4","images":[{"id":"A","tags":["beta-1","prod-1"],"pushedHoursAgo":240.0},{"id":"B","tags":["beta-2","prod-2"],"pushedHoursAgo":216.0},{"id":"C","tags":["beta-3"],"pushedHoursAgo":192.0}],"policy":{"rules":[{"rulePriority":1,"selection":{"tagStatus":"tagged","countType":"imageCountMoreThan","countNumber":1,"tagPatternList":["beta*"]},"action":{"type":"expire"}},{"rulePriority":2,"selection":{"tagStatus":"tagged","countType":"imageCountMoreThan","countNumber":1,"tagPatternList":["prod*"]},"action":{"type":"expire"}}]},"expectExpired":["A","B"]},
    {"id":"L5","images":[{"id":"A","tags":["alpha-1"],"pushedHoursAgo":288.0},{"id":"B","tags":["beta-1"],"pushedHoursAgo":264.0},{"id":"C","tags":["alpha-2","beta-2"],"pushedHoursAgo":240.0},{"id":"D","tags":["alpha-3"],"pushedHoursAgo":96.0},{"id":"E","tags":["beta-3"],"pushedHoursAgo":72.0},{"id":"F","tags":["alpha-4","beta-4"],"pushedHoursAgo":48.0}],"policy":{"rules":[{"rulePriority":1,"selection":{"tagStatus":"tagged","countType":"sinceImagePushed","countNumber":5,"tagPatternList":["alpha*","beta*"],"countUnit":"days"},"action":{"type":"expire"}}]},"expectExpired":["C"]},
    {"id":"L6","images":[{"id":"A","tags":["alpha-1","beta-1","gamma-1"],"pushedHoursAgo":240.0},{"id":"B","tags":["alpha-2","beta-2"],"pushedHoursAgo":216.0},{"id":"C","tags":["alpha-3","beta-3","gamma-2"],"pushedHoursAgo":192.0}],"policy":{"rules":[{"rulePriority":1,"selection":{"tagStatus":"tagged","countType":"imageCountMoreThan","countNumber":1,"tagPatternList":["alpha*","beta*"]},"action":{"type":"expire"}}]},"expectExpired":["A","B"]},
    {"id":"L7","images":[{"id":"A","tags":["alpha-1"],"pushedHoursAgo":96.0},{"id":"B","tags":["beta-1"],"pushedHoursAgo":72.0},{"id":"C","tags":[],"pushedHoursAgo":48.0},{"id":"D","tags":["alpha-2"],"pushedHoursAgo":24.0}],"policy":{"rules":[{"rulePriority":1,"selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]},"expectExpired":["A","B","C"]},
    {"id":"L8","images":[{"id":"A","tags":["alpha-1","beta-1"],"pushedHoursAgo":96.0},{"id":"B","tags":[],"pushedHoursAgo":72.0},{"id":"C","tags":["alpha-2"],"pushedHoursAgo":48.0},{"id":"D","tags":["git hash"],"pushedHoursAgo":18.0},{"id":"E","tags":[],"pushedHoursAgo":12.0}],"policy":{"rules":[{"rulePriority":1,"selection":{"tagStatus":"tagged","countType":"imageCountMoreThan","countNumber":1,"tagPatternList":["alpha*"]},"action":{"type":"expire"}},{"rulePriority":2,"selection":{"tagStatus":"untagged","countType":"sinceImagePushed","countNumber":1,"countUnit":"days"},"action":{"type":"expire"}},{"rulePriority":3,"selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]},"expectExpired":["A","B","D"]}
]
"""  # noqa: E501
ACCEPTANCE: list[dict[str, Any]] = json.loads(ACCEPTANCE_JSON)


def _prefix_variant(case: dict[str, Any], new_id: str, prefixes: list[str]) -> dict[str, Any]:
    """L9: the 2023 documentation's tagPrefixList form of a tagPatternList case."""
    case = json.loads(json.dumps(case))
    case["id"] = new_id
    for rule in case["policy"]["rules"]:
        del rule["selection"]["tagPatternList"]
        rule["selection"]["tagPrefixList"] = prefixes
    return case


_BY_ID = {case["id"]: case for case in ACCEPTANCE}
ACCEPTANCE += [
    _prefix_variant(_BY_ID["L5"], "L9 (L5 with prefixes)", ["alpha", "beta"]),
    _prefix_variant(_BY_ID["L6"], "L9 (L6 with prefixes)", ["alpha", "beta"]),
]


def digest(name: str) -> str:
    return "sha256:" + name.encode().hex().ljust(64, "0")[:64]


@pytest.mark.parametrize("case", ACCEPTANCE, ids=[case["id"] for case in ACCEPTANCE])
def test_acceptance(case: dict[str, Any]) -> None:
    policy = lifecycle.parse_policy(json.dumps(case["policy"]))
    images = [Image(digest(im["id"]), tuple(im["tags"]), NOW - im["pushedHoursAgo"] * HOUR) for im in case["images"]]
    names = {digest(im["id"]): im["id"] for im in case["images"]}
    actions = lifecycle.evaluate(policy, images, NOW)
    assert sorted(names[a.digest] for a in actions) == sorted(case["expectExpired"])
    assert all(a.action == "expire" and a.target_storage_class is None for a in actions)
    assert len({a.digest for a in actions}) == len(actions)


@pytest.mark.parametrize("case", ACCEPTANCE, ids=[case["id"] for case in ACCEPTANCE])
def test_acceptance_policies_are_valid(case: dict[str, Any]) -> None:
    text = json.dumps(case["policy"])
    policy = lifecycle.parse_policy(text)
    assert [r.priority for r in policy.rules] == sorted(r["rulePriority"] for r in case["policy"]["rules"])
    assert lifecycle.parse_policy(lifecycle.minify(text)) == policy


def test_acceptance_rule_priorities() -> None:
    """L8: which rule takes which image."""
    case = _BY_ID["L8"]
    images = [Image(im["id"], tuple(im["tags"]), NOW - im["pushedHoursAgo"] * HOUR) for im in case["images"]]
    actions = lifecycle.evaluate(lifecycle.parse_policy(json.dumps(case["policy"])), images, NOW)
    assert [(a.digest, a.rule_priority) for a in actions] == [("A", 1), ("B", 2), ("D", 3)]


# -- building documents ------------------------------------------------------------------------------

DROP = object()  # a member to leave out


def rule(priority: Any = 1, **members: Any) -> dict[str, Any]:
    """A rule document; `selection`/`action` members are given as sel_<name>/act_<name>; DROP removes one."""
    sel: dict[str, Any] = {"tagStatus": "untagged", "countType": "imageCountMoreThan", "countNumber": 5}
    act: dict[str, Any] = {"type": "expire"}
    doc: dict[str, Any] = {"rulePriority": priority}
    for key, value in members.items():
        target, name = (
            (sel, key[4:]) if key.startswith("sel_") else (act, key[4:]) if key.startswith("act_") else (doc, key)
        )
        target[name] = value
    doc.setdefault("selection", sel)
    doc.setdefault("action", act)
    for target in (doc, sel, act):
        for name in [k for k, v in target.items() if v is DROP]:
            del target[name]
    return doc


def text(*rules: dict[str, Any], **top: Any) -> str:
    """A policy document, padded with spaces to the API's 100-character minimum."""
    return json.dumps(_without_dropped({"rules": list(rules), **top})).ljust(lifecycle.MIN_TEXT_LENGTH)


def _without_dropped(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_dropped(v) for k, v in value.items() if v is not DROP}
    if isinstance(value, list):
        return [_without_dropped(v) for v in value]
    return value


def tagged(priority: int = 1, patterns: list[str] | None = None, **members: Any) -> dict[str, Any]:
    return rule(priority, sel_tagStatus="tagged", sel_tagPatternList=patterns or ["prod*"], **members)


PULLED_TO_ARCHIVE = rule(
    1,
    sel_tagStatus="any",
    sel_countType="sinceImagePulled",
    sel_countUnit="days",
    sel_countNumber=90,
    act_type="transition",
    act_targetStorageClass="archive",
)
ARCHIVED_EXPIRE = rule(
    2,
    sel_tagStatus="any",
    sel_storageClass="archive",
    sel_countType="sinceImageTransitioned",
    sel_countUnit="days",
    sel_countNumber=365,
)
PUSHED_TO_ARCHIVE = rule(
    1,
    sel_tagStatus="any",
    sel_countType="sinceImagePushed",
    sel_countUnit="days",
    sel_countNumber=30,
    act_type="transition",
    act_targetStorageClass="archive",
)


# -- validation: accepted ----------------------------------------------------------------------------

VALID = [
    ("four wildcards per pattern", text(tagged(1, ["*test*1*2*3", "test*1*2*3*"]))),
    ("pattern without a wildcard", text(tagged(1, ["latest"]))),
    ("tagPrefixList form", text(rule(1, sel_tagStatus="tagged", sel_tagPrefixList=["prod", "release-"]))),
    ("description", text(rule(1, description="keep five untagged images"))),
    ("sinceImagePushed with countUnit", text(tagged(1, sel_countType="sinceImagePushed", sel_countUnit="days"))),
    ("storageClass standard spelled out", text(rule(1, sel_storageClass="standard"))),
    ("non-contiguous priorities, any last", text(tagged(3), rule(10), rule(99, sel_tagStatus="any"))),
    ("rules out of priority order", text(rule(20, sel_tagStatus="any"), tagged(5))),
    ("lists mixed across rules", text(tagged(1, ["a*"]), rule(2, sel_tagStatus="tagged", sel_tagPrefixList=["b"]))),
    ("archive example: not pulled for 90 days", text(PULLED_TO_ARCHIVE)),
    ("archive example: archived for 365 days", text(ARCHIVED_EXPIRE)),
    ("archive example: combined, two any rules", text(PUSHED_TO_ARCHIVE, ARCHIVED_EXPIRE)),
    (
        "two any rules for different storage classes",
        text({**ARCHIVED_EXPIRE, "rulePriority": 1}, {**PUSHED_TO_ARCHIVE, "rulePriority": 2}),
    ),
    (
        "untagged once per storage class",
        text(rule(1), {**ARCHIVED_EXPIRE, "selection": {**ARCHIVED_EXPIRE["selection"], "tagStatus": "untagged"}}),
    ),
    (
        "archive rule at exactly 90 days",
        text({**ARCHIVED_EXPIRE, "selection": {**ARCHIVED_EXPIRE["selection"], "countNumber": 90}}),
    ),
    ("imageCountMoreThan transitions", text(rule(1, act_type="transition", act_targetStorageClass="archive"))),
    ("exactly 100 characters", json.dumps({"rules": [rule(1)]}).ljust(100)),
    ("exactly 30720 characters", json.dumps({"rules": [rule(1)]}).ljust(30720)),
    ("50 rules", text(*[tagged(i, [f"t{i}-*"]) for i in range(1, 51)])),
    (
        "same prefixes in different storage classes",
        text(
            rule(1, sel_tagStatus="tagged", sel_tagPrefixList=["v"]),
            {
                **ARCHIVED_EXPIRE,
                "selection": {**ARCHIVED_EXPIRE["selection"], "tagStatus": "tagged", "tagPrefixList": ["v"]},
            },
        ),
    ),
]


@pytest.mark.parametrize(("name", "doc"), VALID, ids=[v[0] for v in VALID])
def test_valid_policies(name: str, doc: str) -> None:
    policy = lifecycle.parse_policy(doc)
    assert isinstance(policy, Policy) and policy.rules
    assert [r.priority for r in policy.rules] == sorted(r.priority for r in policy.rules)


def test_parsed_rule_fields() -> None:
    policy = lifecycle.parse_policy(text(PUSHED_TO_ARCHIVE, ARCHIVED_EXPIRE))
    assert policy.rules == (
        Rule(1, None, "any", (), (), "standard", "sinceImagePushed", 30, "transition", "archive"),
        Rule(2, None, "any", (), (), "archive", "sinceImageTransitioned", 365, "expire", None),
    )
    (parsed,) = lifecycle.parse_policy(
        text(rule(7, description="d", sel_tagStatus="tagged", sel_tagPrefixList=["a", "b"]))
    ).rules
    assert parsed == Rule(7, "d", "tagged", ("a", "b"), (), "standard", "imageCountMoreThan", 5, "expire", None)


# -- validation: rejected ----------------------------------------------------------------------------

MISSING_ALL = 'object has missing required properties (["action","rulePriority"])'
NULL = "instance failed to match exactly one schema (matched 0 out of 2)"
TOO_SMALL = "numeric instance is lower than the required minimum (minimum: 1, found: 0)"

INVALID = [
    # (§5.2 point, name, document, expected part of the reason)
    # 1: length, JSON, the top-level shape, unknown members, rule count
    (1, "too short", '{"rules":[]}', "too short (length: 12, required minimum: 100)"),
    (1, "too long", text(rule(1)).ljust(30721), "too long (length: 30721, maximum allowed: 30720)"),
    (1, "not JSON", "{rules: [".ljust(100), "Could not map policyString into LifecyclePolicy."),
    (1, "NaN", text(rule(1, sel_countNumber=1)).replace("1}", "NaN}", 1), "Could not map policyString"),
    (1, "deeply nested", "[" * 30000 + "]" * 720, "Could not map policyString"),
    (
        1,
        "top level an array",
        json.dumps([rule(1)]).ljust(100),
        'instance type (array) does not match any allowed primitive type (allowed: ["object"])',
    ),
    (1, "no rules member", json.dumps({"Rules": [rule(1)]}).ljust(100), 'not allowed by the schema: (["Rules"])'),
    (1, "no rules at all", "{}".ljust(100), 'object has missing required properties (["rules"])'),
    (
        1,
        "unknown top-level member",
        text(rule(1), foo=1),
        'object instance has properties which are not allowed by the schema: (["foo"])',
    ),
    (1, "rules not an array", json.dumps({"rules": rule(1)}).ljust(100), "rules: instance type (object)"),
    (1, "empty rules", '{"rules": []}'.ljust(100), "rules: array is too short: must have at least 1 elements"),
    (
        1,
        "51 rules",
        text(*[tagged(i, [f"t{i}-*"]) for i in range(1, 52)]),
        "rules: array is too long: must have at most 50 elements but instance has 51",
    ),
    (1, "rule not an object", text("rule"), "rules[0]: instance type (string)"),
    (
        1,
        "unknown rule member",
        text(rule(1, foo="bar")),
        'rules[0]: object instance has properties which are not allowed by the schema: (["foo"])',
    ),
    (
        1,
        "unknown selection member",
        text(rule(1, sel_tagPrefix="x", sel_zzz=1)),
        "(rulePriority 1), selection: object instance has properties which are not allowed by the schema: "
        '(["tagPrefix","zzz"])',
    ),
    (
        1,
        "unknown action member",
        text(rule(1, act_storageClass="archive")),
        'action: object instance has properties which are not allowed by the schema: (["storageClass"])',
    ),
    (1, "missing rule members", text({"selection": rule(1)["selection"]}), f"rules[0]: {MISSING_ALL}"),
    (
        1,
        "missing selection members",
        text(rule(1, sel_tagStatus=DROP, sel_countNumber=DROP)),
        'selection: object has missing required properties (["countNumber","tagStatus"])',
    ),
    (
        1,
        "missing action type",
        text(rule(1, act_type=DROP)),
        'action: object has missing required properties (["type"])',
    ),
    (1, "action not an object", text(rule(1, action="expire")), "action: instance type (string)"),
    (1, "description not a string", text(rule(1, description=5)), "description: instance type (integer)"),
    # 2: rulePriority
    (
        2,
        "duplicate rulePriority",
        text(tagged(1, ["a*"]), tagged(1, ["b*"])),
        "rules[1] (rulePriority 1), rulePriority: rulePriority 1 is already used by rules[0]",
    ),
    (
        2,
        "any rule not last",
        text(rule(1, sel_tagStatus="any"), tagged(2)),
        'rules[0] (rulePriority 1), selection.tagStatus: a rule with tagStatus "any" must have the highest '
        "rulePriority",
    ),
    (
        2,
        "any rule not last among archive rules",
        text(
            PUSHED_TO_ARCHIVE,
            ARCHIVED_EXPIRE,
            {
                **ARCHIVED_EXPIRE,
                "rulePriority": 3,
                "selection": {**ARCHIVED_EXPIRE["selection"], "tagStatus": "untagged"},
            },
        ),
        "but rules[2] (rulePriority 3) is higher",
    ),
    (
        2,
        "two any rules in one storage class",
        text(rule(1, sel_tagStatus="any"), rule(2, sel_tagStatus="any")),
        'tagStatus "any" must have the highest rulePriority among the rules for storageClass "standard"',
    ),
    (2, "rulePriority 0", text(rule(0)), f"rules[0], rulePriority: {TOO_SMALL}"),
    (2, "rulePriority negative", text(rule(-3)), "(minimum: 1, found: -3)"),
    (
        2,
        "rulePriority a string",
        text(rule("1")),
        'rulePriority: instance type (string) does not match any allowed primitive type (allowed: ["integer"])',
    ),
    (2, "rulePriority a float", text(rule(1.5)), "rulePriority: instance type (number)"),
    (2, "rulePriority 1.0", text(rule(1.0)), "rulePriority: instance type (number)"),
    (2, "rulePriority a boolean", text(rule(True)), "rulePriority: instance type (boolean)"),
    # 3: tag lists
    (
        3,
        "tagged without a list",
        text(rule(1, sel_tagStatus="tagged")),
        'selection: tagStatus "tagged" requires the specification of a tagPrefixList or a tagPatternList',
    ),
    (
        3,
        "tagged with an empty list",
        text(rule(1, sel_tagStatus="tagged", sel_tagPrefixList=[])),
        "selection.tagPrefixList: array is too short",
    ),
    (
        3,
        "untagged with a list",
        text(rule(1, sel_tagPatternList=["a*"])),
        "selection.tagPatternList: tagPrefixList and tagPatternList can only be specified when tagStatus is set to "
        '"tagged", not "untagged"',
    ),
    (
        3,
        "any with a prefix list",
        text(rule(1, sel_tagStatus="any", sel_tagPrefixList=["a"])),
        'only be specified when tagStatus is set to "tagged", not "any"',
    ),
    (
        3,
        "both lists",
        text(tagged(1, sel_tagPrefixList=["prod"])),
        "selection: both tagPrefixList and tagPatternList cannot be specified together",
    ),
    (
        3,
        "empty prefix",
        text(rule(1, sel_tagStatus="tagged", sel_tagPrefixList=["a", ""])),
        'selection.tagPrefixList[1]: string "" is too short',
    ),
    (3, "empty pattern", text(tagged(1, [""])), 'selection.tagPatternList[0]: string "" is too short'),
    (3, "pattern not a string", text(tagged(1, [5])), "selection.tagPatternList[0]: instance type (integer)"),
    (
        3,
        "list not an array",
        text(rule(1, sel_tagStatus="tagged", sel_tagPrefixList="prod")),
        "selection.tagPrefixList: instance type (string)",
    ),
    (
        3,
        "tagStatus not in enum",
        text(rule(1, sel_tagStatus="TAGGED")),
        'instance value (TAGGED) not found in enum :(possible values: ["tagged","untagged","any"])',
    ),
    # 4: wildcards
    (
        4,
        "six wildcards",
        text(tagged(1, ["test*1*2*3*4*5*6"])),
        "selection.tagPatternList[0]: a tag pattern cannot contain more than four wildcard characters (*)",
    ),
    (
        4,
        "five wildcards in the second pattern",
        text(tagged(1, ["a*", "*****"])),
        "selection.tagPatternList[1]: a tag pattern cannot contain more than four",
    ),
    # 5: countUnit
    (
        5,
        "countUnit with imageCountMoreThan",
        text(rule(1, sel_countUnit="days")),
        f"selection.countUnit: {NULL}: countUnit cannot be specified when countType is imageCountMoreThan",
    ),
    (
        5,
        "sinceImagePushed without countUnit",
        text(rule(1, sel_countType="sinceImagePushed")),
        f"selection: {NULL}: countType sinceImagePushed requires countUnit",
    ),
    (
        5,
        "sinceImagePulled without countUnit",
        text({**PULLED_TO_ARCHIVE, "selection": {**PULLED_TO_ARCHIVE["selection"], "countUnit": DROP}}),
        "countType sinceImagePulled requires countUnit",
    ),
    (
        5,
        "countUnit hours",
        text(rule(1, sel_countType="sinceImagePushed", sel_countUnit="hours")),
        'selection.countUnit: instance value (hours) not found in enum :(possible values: ["days"])',
    ),
    (
        5,
        "countType not in enum",
        text(rule(1, sel_countType="sinceImageCreated")),
        "selection.countType: instance value (sinceImageCreated) not found in enum",
    ),
    # 6: countNumber
    (6, "countNumber 0", text(rule(1, sel_countNumber=0)), f"selection.countNumber: {TOO_SMALL}"),
    (6, "countNumber negative", text(rule(1, sel_countNumber=-1)), "(minimum: 1, found: -1)"),
    (6, "countNumber a float", text(rule(1, sel_countNumber=2.5)), "selection.countNumber: instance type (number)"),
    (6, "countNumber 5.0", text(rule(1, sel_countNumber=5.0)), "selection.countNumber: instance type (number)"),
    (6, "countNumber a boolean", text(rule(1, sel_countNumber=True)), "selection.countNumber: instance type (boolean)"),
    (6, "countNumber a string", text(rule(1, sel_countNumber="5")), "selection.countNumber: instance type (string)"),
    # 7: storage classes
    (
        7,
        "sinceImageTransitioned without storageClass",
        text({**ARCHIVED_EXPIRE, "selection": {**ARCHIVED_EXPIRE["selection"], "storageClass": DROP}}),
        'selection.storageClass: countType sinceImageTransitioned requires storageClass "archive", not "standard"',
    ),
    (
        7,
        "imageCountMoreThan in archive",
        text(rule(1, sel_storageClass="archive")),
        'countType imageCountMoreThan can only be used with storageClass "standard", not "archive"',
    ),
    (
        7,
        "sinceImagePulled in archive",
        text({**PULLED_TO_ARCHIVE, "selection": {**PULLED_TO_ARCHIVE["selection"], "storageClass": "archive"}}),
        'countType sinceImagePulled can only be used with storageClass "standard"',
    ),
    (
        7,
        "storageClass not in enum",
        text(rule(1, sel_storageClass="glacier")),
        'selection.storageClass: instance value (glacier) not found in enum :(possible values: ["standard","archive"])',
    ),
    # 8: count types and actions
    (
        8,
        "sinceImagePulled with expire",
        text({**PULLED_TO_ARCHIVE, "action": {"type": "expire"}}),
        'action.type: countType sinceImagePulled can only be used with action type "transition"',
    ),
    (
        8,
        "sinceImageTransitioned with transition",
        text({**ARCHIVED_EXPIRE, "action": {"type": "transition", "targetStorageClass": "archive"}}),
        'action.type: countType sinceImageTransitioned can only be used with action type "expire"',
    ),
    (
        8,
        "archived for less than 90 days",
        text({**ARCHIVED_EXPIRE, "selection": {**ARCHIVED_EXPIRE["selection"], "countNumber": 89}}),
        "selection.countNumber: numeric instance is lower than the required minimum (minimum: 90, found: 89)",
    ),
    # 9: transition
    (
        9,
        "transition without targetStorageClass",
        text(rule(1, act_type="transition")),
        'action: object has missing required properties (["targetStorageClass"])',
    ),
    (
        9,
        "targetStorageClass standard",
        text(rule(1, act_type="transition", act_targetStorageClass="standard")),
        'action.targetStorageClass: instance value (standard) not found in enum :(possible values: ["archive"])',
    ),
    (
        9,
        "expire with targetStorageClass",
        text(rule(1, act_targetStorageClass="archive")),
        'action.targetStorageClass: targetStorageClass can only be specified when action type is "transition"',
    ),
    (
        9,
        "action type not in enum",
        text(rule(1, act_type="delete")),
        'action.type: instance value (delete) not found in enum :(possible values: ["expire","transition"])',
    ),
    # 10: per storage class uniqueness
    (
        10,
        "two untagged rules",
        text(rule(1), rule(2, sel_countNumber=3)),
        "rules[1] (rulePriority 2), selection.tagStatus: only one rule may select untagged images for "
        'storageClass "standard"',
    ),
    (
        10,
        "same prefix set",
        text(
            rule(1, sel_tagStatus="tagged", sel_tagPrefixList=["a", "b"]),
            rule(2, sel_tagStatus="tagged", sel_tagPrefixList=["b", "a"]),
        ),
        "rules[1] (rulePriority 2), selection.tagPrefixList: the set of tag prefixes must be unique",
    ),
    # 11: nulls
    (11, "null rules", '{"rules": null}'.ljust(100), f"rules: {NULL}"),
    (11, "null description", text(rule(1, description=None)), f"rules[0], description: {NULL}"),
    (11, "null rulePriority", text(rule(None)), f"rules[0], rulePriority: {NULL}"),
    (11, "null selection", text(rule(1, selection=None)), f"selection: {NULL}"),
    (11, "null countUnit", text(rule(1, sel_countUnit=None)), f"selection.countUnit: {NULL}"),
    (
        11,
        "null tagPatternList",
        text(rule(1, sel_tagStatus="tagged", sel_tagPatternList=None)),
        f"selection.tagPatternList: {NULL}",
    ),
    (11, "null pattern", text(tagged(1, ["a*", None])), f"selection.tagPatternList[1]: {NULL}"),
    (11, "null targetStorageClass", text(rule(1, act_targetStorageClass=None)), f"action.targetStorageClass: {NULL}"),
    (11, "null policy", "null".ljust(100), NULL),
]


@pytest.mark.parametrize(("point", "name", "doc", "reason"), INVALID, ids=[f"{p}-{n}" for p, n, _, _ in INVALID])
def test_invalid_policies(point: int, name: str, doc: str, reason: str) -> None:
    with pytest.raises(LifecyclePolicyError) as info:
        lifecycle.parse_policy(doc)
    assert reason in str(info.value)


def test_every_validation_rule_has_a_rejecting_case() -> None:
    assert {point for point, *_ in INVALID} == set(range(1, 12))


def test_error_message() -> None:
    with pytest.raises(LifecyclePolicyError) as info:
        lifecycle.parse_policy(text(rule(1, act_type="delete")))
    assert lifecycle.error_message(info.value) == (
        "Invalid parameter at 'LifecyclePolicyText' failed to satisfy constraint: 'Lifecycle policy validation "
        "failure: rules[0] (rulePriority 1), action.type: instance value (delete) not found in enum :(possible "
        'values: ["expire","transition"])\''
    )
    with pytest.raises(LifecyclePolicyError) as info:
        lifecycle.parse_policy("{}".ljust(100))
    assert str(info.value) == 'object has missing required properties (["rules"])'
    assert isinstance(info.value, ValueError)


# -- minify ------------------------------------------------------------------------------------------


def test_minify_keeps_content_and_key_order() -> None:
    doc = {
        "rules": [
            {
                "selection": {
                    "tagStatus": "tagged",
                    "tagPatternList": ["ä*", "b c"],
                    "countType": "imageCountMoreThan",
                    "countNumber": 2,
                },
                "rulePriority": 1,
                "description": "keep  two",
                "action": {"type": "expire"},
            }
        ]
    }
    pretty = json.dumps(doc, indent=4, ensure_ascii=False)
    small = lifecycle.minify(pretty)
    assert json.loads(small) == doc
    assert list(json.loads(small)["rules"][0]) == ["selection", "rulePriority", "description", "action"]
    assert small.startswith('{"rules":[{"selection":{"tagStatus":"tagged","tagPatternList":[')
    assert '"description":"keep  two"' in small and "\n" not in small and ": " not in small
    assert lifecycle.minify(small) == small
    assert lifecycle.parse_policy(small) == lifecycle.parse_policy(pretty)


# -- selection ---------------------------------------------------------------------------------------


def make_rule(
    tag_status: str = "tagged",
    prefixes: tuple[str, ...] = (),
    patterns: tuple[str, ...] = (),
    *,
    priority: int = 1,
    storage_class: str = "standard",
    count_type: str = "imageCountMoreThan",
    count_number: int = 1,
    action: str = "expire",
) -> Rule:
    target = "archive" if action == "transition" else None
    return Rule(priority, None, tag_status, prefixes, patterns, storage_class, count_type, count_number, action, target)


@pytest.mark.parametrize(
    ("rule_", "tags", "selected"),
    [
        (make_rule("untagged"), (), True),
        (make_rule("untagged"), ("v1",), False),
        (make_rule("any"), (), True),
        (make_rule("any"), ("v1", "latest"), True),
        (make_rule(patterns=("prod*",)), (), False),
        (make_rule(patterns=("prod*",)), ("prod",), True),
        (make_rule(patterns=("prod*",)), ("prod1",), True),
        (make_rule(patterns=("prod*",)), ("production-team1",), True),
        (make_rule(patterns=("prod*",)), ("my-prod",), False),
        (make_rule(patterns=("prod*",)), ("Prod",), False),  # case-sensitive
        (make_rule(patterns=("*prod*",)), ("repo-production",), True),
        (make_rule(patterns=("*prod*",)), ("prod-team",), True),
        (make_rule(patterns=("latest",)), ("latest",), True),
        (make_rule(patterns=("latest",)), ("latest-1",), False),
        (make_rule(patterns=("v1.?",)), ("v1.2",), False),  # only * is special
        (make_rule(patterns=("v1.?",)), ("v1.?",), True),
        (make_rule(patterns=("v.*",)), ("vX1",), False),
        (make_rule(patterns=("*-rc*",)), ("1.0-rc2",), True),
        (make_rule(patterns=("a*", "b*")), ("a-1",), False),  # every pattern must match some tag
        (make_rule(patterns=("a*", "b*")), ("a-1", "b-1"), True),
        (make_rule(patterns=("a*", "*b")), ("ab",), True),  # one tag may satisfy several patterns
        (make_rule(prefixes=("prod",)), ("production",), True),
        (make_rule(prefixes=("prod",)), ("xprod",), False),
        (make_rule(prefixes=("alpha", "beta")), ("alpha-1", "gamma"), False),
        (make_rule(prefixes=("alpha", "beta")), ("gamma", "beta-2", "alpha-2"), True),
        (make_rule(prefixes=("alpha", "beta")), (), False),
    ],
)
def test_selects(rule_: Rule, tags: tuple[str, ...], selected: bool) -> None:
    assert lifecycle.selects(rule_, Image("sha256:x", tags, NOW)) is selected


def test_selects_by_storage_class() -> None:
    standard, archived = Image("s", (), NOW), Image("a", (), NOW, storage_class="archive")
    any_standard = make_rule("any")
    any_archive = make_rule("any", storage_class="archive", count_type="sinceImageTransitioned", count_number=90)
    assert lifecycle.selects(any_standard, standard) and not lifecycle.selects(any_standard, archived)
    assert lifecycle.selects(any_archive, archived) and not lifecycle.selects(any_archive, standard)


# -- evaluation extras -------------------------------------------------------------------------------


def img(name: str, days_ago: float, *tags: str, **fields: Any) -> Image:
    return Image(name, tags, NOW - days_ago * DAY, **fields)


def expired(policy: Policy | str, images: list[Image]) -> list[str]:
    parsed = lifecycle.parse_policy(policy) if isinstance(policy, str) else policy
    return [a.digest for a in lifecycle.evaluate(parsed, images, NOW)]


def one(*rules: Rule) -> Policy:
    return Policy(tuple(sorted(rules, key=lambda r: r.priority)))


def test_images_referenced_by_an_index_are_never_acted_on() -> None:
    images = [
        img("old-child", 30, referenced_by_index=True),
        img("old", 20),
        img("young-child", 2, referenced_by_index=True),
        img("young", 1),
    ]
    assert expired(one(make_rule("untagged")), images) == ["old"]
    age = make_rule("untagged", count_type="sinceImagePushed", count_number=10)
    assert expired(one(age), images) == ["old"]
    # They still count: the one image kept is the youngest, even though it cannot be expired anyway.
    assert expired(one(make_rule("any")), [img("a", 3), img("b", 2), img("c", 1, referenced_by_index=True)]) == [
        "a",
        "b",
    ]


def test_storage_classes_are_separate() -> None:
    old_archived = img("arch", 500, "v1", storage_class="archive", last_archived_at=NOW - 400 * DAY)
    young_archived = img("arch2", 500, storage_class="archive", last_archived_at=NOW - 100 * DAY)
    images = [old_archived, young_archived, img("std-old", 600, "v0"), img("std", 1)]
    standard_count = make_rule("any", count_number=1)
    assert expired(one(standard_count), images) == ["std-old"]
    archive_age = make_rule("any", storage_class="archive", count_type="sinceImageTransitioned", count_number=365)
    assert expired(one(archive_age), images) == ["arch"]
    both = lifecycle.parse_policy(text(PUSHED_TO_ARCHIVE, ARCHIVED_EXPIRE))
    actions = lifecycle.evaluate(both, images, NOW)
    assert actions == [
        Action("std-old", 1, "transition", "archive"),
        Action("arch", 2, "expire", None),
    ]


def test_archived_image_without_archive_time_is_not_expired() -> None:
    rule_ = make_rule("any", storage_class="archive", count_type="sinceImageTransitioned", count_number=90)
    assert expired(one(rule_), [img("a", 1000, storage_class="archive")]) == []


def test_since_image_pulled_times() -> None:
    policy = lifecycle.parse_policy(text(PULLED_TO_ARCHIVE))
    images = [
        img("never-pulled-old", 100),
        img("never-pulled-young", 80),
        img("pulled-recently", 200, last_pulled_at=NOW - 10 * DAY),
        img("pulled-long-ago", 200, last_pulled_at=NOW - 95 * DAY),
        img("restored-recently", 300, last_pulled_at=NOW - 250 * DAY, last_activated_at=NOW - 5 * DAY),
        img("restored-long-ago", 300, last_activated_at=NOW - 91 * DAY),
        img("restored-then-pulled", 300, last_pulled_at=NOW - 1 * DAY, last_activated_at=NOW - 120 * DAY),
        img("archived", 400, storage_class="archive", last_archived_at=NOW - 300 * DAY),
    ]
    actions = lifecycle.evaluate(policy, images, NOW)
    assert [a.digest for a in actions] == ["restored-long-ago", "pulled-long-ago", "never-pulled-old"]
    assert {(a.action, a.target_storage_class, a.rule_priority) for a in actions} == {("transition", "archive", 1)}


def test_image_count_ranks_restored_images_by_activation() -> None:
    images = [
        img("restored", 100, last_activated_at=NOW - 1 * DAY),
        img("mid", 10),
        img("new", 5),
    ]
    assert expired(one(make_rule("any", count_number=2)), images) == ["mid"]
    assert expired(one(make_rule("any", count_number=1)), images) == ["mid", "new"]


@pytest.mark.parametrize(
    ("age", "expires"),
    [
        (14 * DAY, False),  # exactly N days: not older than N days
        (14 * DAY + 1, True),
        (14 * DAY - 1, False),
        (14 * DAY + 0.001, True),
    ],
)
def test_since_is_strictly_older(age: float, expires: bool) -> None:
    rule_ = make_rule("any", count_type="sinceImagePushed", count_number=14)
    assert expired(one(rule_), [Image("i", (), NOW - age)]) == (["i"] if expires else [])


def test_sinceImageTransitioned_exact_boundary() -> None:
    rule_ = make_rule("any", storage_class="archive", count_type="sinceImageTransitioned", count_number=90)
    at = img("at", 200, storage_class="archive", last_archived_at=NOW - 90 * DAY)
    past = img("past", 200, storage_class="archive", last_archived_at=NOW - 90 * DAY - 1)
    assert expired(one(rule_), [at, past]) == ["past"]


def test_higher_rule_that_keeps_an_image_still_protects_it() -> None:
    images = [img("prod-old", 50, "prod-1"), img("dev-old", 40, "dev-1"), img("new", 1, "dev-2")]
    keep_prod = make_rule(patterns=("prod*",), count_number=10)  # selects prod-old, keeps it
    expire_old = make_rule("any", priority=2, count_type="sinceImagePushed", count_number=30)
    assert expired(one(keep_prod, expire_old), images) == ["dev-old"]
    assert expired(one(expire_old), images) == ["prod-old", "dev-old"]


def test_lower_rules_count_images_claimed_by_higher_rules() -> None:
    # Rule 1 selects (and keeps) "a"; rule 2 still counts it as the one "any" image to keep, so both others go.
    images = [img("a", 1, "x-1"), img("b", 2), img("c", 3)]
    keep_x = make_rule(patterns=("x*",), count_number=5)
    keep_one = make_rule("any", priority=2, count_number=1)
    assert expired(one(keep_x, keep_one), images) == ["c", "b"]


def test_each_image_is_acted_on_once() -> None:
    images = [img(f"i{n}", n, "t") for n in range(1, 6)]
    rules = one(make_rule(patterns=("t",), count_number=1), make_rule("any", priority=2, count_number=1))
    actions = lifecycle.evaluate(rules, images, NOW)
    assert [(a.digest, a.rule_priority) for a in actions] == [("i5", 1), ("i4", 1), ("i3", 1), ("i2", 1)]


def test_actions_are_oldest_first_with_deterministic_ties() -> None:
    same = NOW - 10 * DAY
    images = [Image("c", (), same), Image("a", (), same), Image("b", (), same), Image("z", (), NOW - 20 * DAY)]
    age = one(make_rule("untagged", count_type="sinceImagePushed", count_number=1))
    assert expired(age, images) == ["z", "a", "b", "c"]
    # imageCountMoreThan with a tie: the greater digest counts as the younger one.
    assert expired(one(make_rule("untagged", count_number=2)), images) == ["z", "a"]
    assert expired(one(make_rule("untagged", count_number=2)), list(reversed(images))) == ["z", "a"]


def test_evaluate_with_no_images_or_nothing_due() -> None:
    policy = lifecycle.parse_policy(text(PUSHED_TO_ARCHIVE, ARCHIVED_EXPIRE))
    assert lifecycle.evaluate(policy, [], NOW) == []
    assert lifecycle.evaluate(policy, [img("new", 29)], NOW) == []
