"""ECR lifecycle policies: parsing, validation and evaluation. Pure functions, no I/O, no clock.

A policy is a JSON document of prioritised rules; each rule selects images by tag status, tag prefixes or tag
patterns and storage class, counts them (`imageCountMoreThan`) or ages them (`since*`), and expires or archives
the ones over the limit. Validation follows ECR's, with JSON-schema-validator style reasons where ECR uses them;
every reason names the rule (by index and rulePriority) and the member it is about.

Evaluation follows ECR's documented rules: rules apply in priority order; an image is acted on by at most one
rule; an image that a higher-priority rule *selects* is never acted on by a lower-priority one, even if the
higher rule keeps it, though lower rules still count it; images that a manifest list or index references are
never acted on. `now` is always an argument.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from registry import jsonsafe
from registry.glob import glob_matches

MIN_TEXT_LENGTH = 100
MAX_TEXT_LENGTH = 30720
MAX_RULES = 50
MAX_PATTERN_WILDCARDS = 4
MIN_ARCHIVE_DAYS = 90  # archived images may not be deleted before they have spent 90 days in archive
DAY_SECONDS = 86400

TAG_STATUSES = ("tagged", "untagged", "any")
COUNT_TYPES = ("imageCountMoreThan", "sinceImagePushed", "sinceImagePulled", "sinceImageTransitioned")
COUNT_UNITS = ("days",)
STORAGE_CLASSES = ("standard", "archive")
ACTION_TYPES = ("expire", "transition")
TARGET_STORAGE_CLASSES = ("archive",)

_ERROR_PREFIX = (
    "Invalid parameter at 'LifecyclePolicyText' failed to satisfy constraint: 'Lifecycle policy validation failure: "
)
_UNMAPPABLE = "Could not map policyString into LifecyclePolicy."
_NULL = "instance failed to match exactly one schema (matched 0 out of 2)"
_COUNT_UNIT_MISMATCH = _NULL  # what ECR says for a countType/countUnit combination it does not accept

_POLICY_MEMBERS = frozenset({"rules"})
_RULE_MEMBERS = frozenset({"rulePriority", "description", "selection", "action"})
_RULE_REQUIRED = frozenset({"rulePriority", "selection", "action"})
_SELECTION_MEMBERS = frozenset(
    {"tagStatus", "tagPatternList", "tagPrefixList", "storageClass", "countType", "countUnit", "countNumber"}
)
_SELECTION_REQUIRED = frozenset({"tagStatus", "countType", "countNumber"})
_ACTION_MEMBERS = frozenset({"type", "targetStorageClass"})
_ACTION_REQUIRED = frozenset({"type"})


class LifecyclePolicyError(ValueError):
    """A policy that fails validation; str(e) is the reason (without ECR's prefix)."""


def error_message(e: LifecyclePolicyError) -> str:
    """ECR's full InvalidParameterException message for a rejected policy."""
    return f"{_ERROR_PREFIX}{e}'"


@dataclass(frozen=True, slots=True)
class Rule:
    priority: int
    description: str | None
    tag_status: str  # "tagged" | "untagged" | "any"
    tag_prefixes: tuple[str, ...]
    tag_patterns: tuple[str, ...]
    storage_class: str  # "standard" | "archive"
    count_type: str  # one of COUNT_TYPES
    count_number: int
    action: str  # "expire" | "transition"
    target_storage_class: str | None  # "archive" for transition, else None


@dataclass(frozen=True, slots=True)
class Policy:
    rules: tuple[Rule, ...]  # sorted by priority


@dataclass(frozen=True, slots=True)
class Image:
    digest: str
    tags: tuple[str, ...]
    pushed_at: float  # epoch seconds
    last_pulled_at: float | None = None
    storage_class: str = "standard"  # or "archive"
    last_archived_at: float | None = None
    last_activated_at: float | None = None  # restored from archive
    referenced_by_index: bool = False  # a manifest list/index in the repository lists it: never acted on


@dataclass(frozen=True, slots=True)
class Action:
    digest: str
    rule_priority: int
    action: str  # "expire" | "transition"
    target_storage_class: str | None  # "archive" for transition


# -- JSON-schema style checks ------------------------------------------------------------------------


def _fail(where: str, reason: str) -> NoReturn:
    raise LifecyclePolicyError(f"{where}: {reason}" if where else reason)


def _at(label: str, path: str) -> str:
    return f"{label}, {path}" if label else path


def _jlist(values: Sequence[str]) -> str:
    return json.dumps(list(values), separators=(",", ":"))


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _wrong_type(value: Any, where: str, allowed: str) -> NoReturn:
    if value is None:
        _fail(where, _NULL)
    _fail(
        where, f'instance type ({_json_type(value)}) does not match any allowed primitive type (allowed: ["{allowed}"])'
    )


def _object(
    value: Any, where: str, allowed: frozenset[str], required: frozenset[str], members_at: str
) -> dict[str, Any]:
    """A JSON object with only `allowed` members, all `required` ones and no nulls; `members_at` prefixes a
    member's name in a reason."""
    if not isinstance(value, dict):
        _wrong_type(value, where, "object")
    unknown = sorted(set(value) - allowed)
    if unknown:
        _fail(where, f"object instance has properties which are not allowed by the schema: ({_jlist(unknown)})")
    missing = sorted(required - set(value))
    if missing:
        _fail(where, f"object has missing required properties ({_jlist(missing)})")
    for key, member in value.items():
        if member is None:
            _fail(f"{members_at}{key}", _NULL)
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        _wrong_type(value, where, "string")
    return value


def _enum(value: Any, where: str, values: Sequence[str]) -> str:
    if not isinstance(value, str):
        _wrong_type(value, where, "string")
    if value not in values:
        _fail(where, f"instance value ({value}) not found in enum :(possible values: {_jlist(values)})")
    return value


def _integer(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _wrong_type(value, where, "integer")
    if value < minimum:
        _fail(where, f"numeric instance is lower than the required minimum (minimum: {minimum}, found: {value})")
    return value


def _strings(value: Any, where: str) -> tuple[str, ...]:
    """A non-empty array of non-empty strings."""
    if not isinstance(value, list):
        _wrong_type(value, where, "array")
    if not value:
        _fail(where, "array is too short: must have at least 1 elements but instance has 0 elements")
    for i, item in enumerate(value):
        _string(item, f"{where}[{i}]")
        if not item:
            _fail(f"{where}[{i}]", 'string "" is too short (length: 0, required minimum: 1)')
    return tuple(value)


# -- parsing -----------------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _load(text: str) -> Any:
    try:
        return jsonsafe.loads(text, parse_constant=_reject_constant)
    except ValueError:  # also a document nested too deep to be a policy
        raise LifecyclePolicyError(_UNMAPPABLE) from None


def _parse_rule(value: Any, index: int) -> Rule:
    label = f"rules[{index}]"
    raw = _object(value, label, _RULE_MEMBERS, _RULE_REQUIRED, f"{label}, ")
    priority = _integer(raw["rulePriority"], _at(label, "rulePriority"), 1)
    label = f"rules[{index}] (rulePriority {priority})"
    description = _string(raw["description"], _at(label, "description")) if "description" in raw else None

    sel = _object(
        raw["selection"], _at(label, "selection"), _SELECTION_MEMBERS, _SELECTION_REQUIRED, f"{label}, selection."
    )
    tag_status = _enum(sel["tagStatus"], _at(label, "selection.tagStatus"), TAG_STATUSES)
    prefixes = _strings(sel["tagPrefixList"], _at(label, "selection.tagPrefixList")) if "tagPrefixList" in sel else ()
    patterns = (
        _strings(sel["tagPatternList"], _at(label, "selection.tagPatternList")) if "tagPatternList" in sel else ()
    )
    storage_class = (
        _enum(sel["storageClass"], _at(label, "selection.storageClass"), STORAGE_CLASSES)
        if "storageClass" in sel
        else "standard"
    )
    count_type = _enum(sel["countType"], _at(label, "selection.countType"), COUNT_TYPES)
    count_unit = _enum(sel["countUnit"], _at(label, "selection.countUnit"), COUNT_UNITS) if "countUnit" in sel else None
    count_number = _integer(sel["countNumber"], _at(label, "selection.countNumber"), 1)

    act = _object(raw["action"], _at(label, "action"), _ACTION_MEMBERS, _ACTION_REQUIRED, f"{label}, action.")
    action = _enum(act["type"], _at(label, "action.type"), ACTION_TYPES)
    target = (
        _enum(act["targetStorageClass"], _at(label, "action.targetStorageClass"), TARGET_STORAGE_CLASSES)
        if "targetStorageClass" in act
        else None
    )

    # Tag selection.
    if prefixes and patterns:
        _fail(_at(label, "selection"), "both tagPrefixList and tagPatternList cannot be specified together in a rule")
    if tag_status == "tagged" and not (prefixes or patterns):
        _fail(
            _at(label, "selection"),
            'tagStatus "tagged" requires the specification of a tagPrefixList or a tagPatternList',
        )
    if tag_status != "tagged" and (prefixes or patterns):
        member = "tagPrefixList" if prefixes else "tagPatternList"
        _fail(
            _at(label, f"selection.{member}"),
            'tagPrefixList and tagPatternList can only be specified when tagStatus is set to "tagged", '
            f'not "{tag_status}"',
        )
    for i, pattern in enumerate(patterns):
        if pattern.count("*") > MAX_PATTERN_WILDCARDS:
            _fail(
                _at(label, f"selection.tagPatternList[{i}]"),
                f"a tag pattern cannot contain more than four wildcard characters (*): {pattern}",
            )

    # Counting.
    if count_type == "imageCountMoreThan" and count_unit is not None:
        _fail(
            _at(label, "selection.countUnit"),
            f"{_COUNT_UNIT_MISMATCH}: countUnit cannot be specified when countType is imageCountMoreThan",
        )
    if count_type != "imageCountMoreThan" and count_unit is None:
        _fail(
            _at(label, "selection"),
            f'{_COUNT_UNIT_MISMATCH}: countType {count_type} requires countUnit "days"',
        )

    # Storage classes and actions.
    if count_type == "sinceImageTransitioned":
        if storage_class != "archive":
            _fail(
                _at(label, "selection.storageClass"),
                f'countType sinceImageTransitioned requires storageClass "archive", not "{storage_class}"',
            )
        if action != "expire":
            _fail(
                _at(label, "action.type"),
                'countType sinceImageTransitioned can only be used with action type "expire"',
            )
        if count_number < MIN_ARCHIVE_DAYS:
            _fail(
                _at(label, "selection.countNumber"),
                f"numeric instance is lower than the required minimum (minimum: {MIN_ARCHIVE_DAYS}, found: "
                f"{count_number}): images cannot be expired before they have been in archive for "
                f"{MIN_ARCHIVE_DAYS} days",
            )
    elif storage_class != "standard":
        _fail(
            _at(label, "selection.storageClass"),
            f'countType {count_type} can only be used with storageClass "standard", not "{storage_class}"',
        )
    if count_type == "sinceImagePulled" and action != "transition":
        _fail(_at(label, "action.type"), 'countType sinceImagePulled can only be used with action type "transition"')
    if action == "transition" and target is None:
        _fail(
            _at(label, "action"),
            'object has missing required properties (["targetStorageClass"]): '
            'action type "transition" requires targetStorageClass "archive"',
        )
    if action == "expire" and target is not None:
        _fail(
            _at(label, "action.targetStorageClass"),
            'targetStorageClass can only be specified when action type is "transition"',
        )

    return Rule(
        priority=priority,
        description=description,
        tag_status=tag_status,
        tag_prefixes=prefixes,
        tag_patterns=patterns,
        storage_class=storage_class,
        count_type=count_type,
        count_number=count_number,
        action=action,
        target_storage_class=target,
    )


def _check_rule_set(rules: Sequence[Rule]) -> None:
    """The checks that involve several rules; `rules` are in document order."""

    def label(i: int) -> str:
        return f"rules[{i}] (rulePriority {rules[i].priority})"

    first_with: dict[int, int] = {}
    for i, rule in enumerate(rules):
        if rule.priority in first_with:
            _fail(
                _at(label(i), "rulePriority"),
                f"rulePriority {rule.priority} is already used by rules[{first_with[rule.priority]}]; "
                "rule priorities must be unique",
            )
        first_with[rule.priority] = i

    for i, rule in enumerate(rules):
        if rule.tag_status != "any":
            continue
        for j, other in enumerate(rules):
            if j != i and other.storage_class == rule.storage_class and other.priority > rule.priority:
                _fail(
                    _at(label(i), "selection.tagStatus"),
                    f'a rule with tagStatus "any" must have the highest rulePriority among the rules for '
                    f'storageClass "{rule.storage_class}", but {label(j)} is higher',
                )

    untagged: dict[str, int] = {}
    prefix_sets: dict[tuple[str, frozenset[str]], int] = {}
    for i, rule in enumerate(rules):
        if rule.tag_status == "untagged":
            if rule.storage_class in untagged:
                _fail(
                    _at(label(i), "selection.tagStatus"),
                    f'only one rule may select untagged images for storageClass "{rule.storage_class}", and '
                    f"{label(untagged[rule.storage_class])} already does",
                )
            untagged[rule.storage_class] = i
        if rule.tag_prefixes:
            key = (rule.storage_class, frozenset(rule.tag_prefixes))
            if key in prefix_sets:
                _fail(
                    _at(label(i), "selection.tagPrefixList"),
                    f"the set of tag prefixes must be unique among the rules for storageClass "
                    f'"{rule.storage_class}", and {label(prefix_sets[key])} uses the same set',
                )
            prefix_sets[key] = i


def parse_policy(text: str) -> Policy:
    """Validate a lifecycle policy document as ECR does; raise LifecyclePolicyError with the reason."""
    if not isinstance(text, str):
        raise LifecyclePolicyError(_UNMAPPABLE)
    if len(text) < MIN_TEXT_LENGTH:
        _fail("", f"policy text is too short (length: {len(text)}, required minimum: {MIN_TEXT_LENGTH})")
    if len(text) > MAX_TEXT_LENGTH:
        _fail("", f"policy text is too long (length: {len(text)}, maximum allowed: {MAX_TEXT_LENGTH})")
    doc = _object(_load(text), "", _POLICY_MEMBERS, _POLICY_MEMBERS, "")
    raw_rules = doc["rules"]
    if not isinstance(raw_rules, list):
        _wrong_type(raw_rules, "rules", "array")
    if not raw_rules:
        _fail("rules", "array is too short: must have at least 1 elements but instance has 0 elements")
    if len(raw_rules) > MAX_RULES:
        _fail(
            "rules",
            f"array is too long: must have at most {MAX_RULES} elements but instance has {len(raw_rules)} elements",
        )
    rules = [_parse_rule(value, i) for i, value in enumerate(raw_rules)]
    _check_rule_set(rules)
    return Policy(tuple(sorted(rules, key=lambda r: r.priority)))


def minify(text: str) -> str:
    """The form ECR stores and returns: the same document, same key order, without insignificant whitespace."""
    return json.dumps(json.loads(text), separators=(",", ":"))


# -- evaluation --------------------------------------------------------------------------------------


def tag_pattern_matches(pattern: str, tag: str) -> bool:
    """An anchored, case-sensitive glob where `*` matches any run of characters (and nothing else is special),
    in time linear in the tag (registry.glob)."""
    return glob_matches(pattern, tag, single=False)


def selects(rule: Rule, image: Image) -> bool:
    """Whether the rule's selection (tag status, tag lists and storage class) takes in the image.

    Each prefix or pattern of the rule must match at least one of the image's tags.
    """
    if image.storage_class != rule.storage_class:
        return False
    if rule.tag_status == "untagged":
        return not image.tags
    if rule.tag_status == "any":
        return True
    if not image.tags:
        return False
    if rule.tag_prefixes:
        return all(any(tag.startswith(prefix) for tag in image.tags) for prefix in rule.tag_prefixes)
    return all(any(tag_pattern_matches(pattern, tag) for tag in image.tags) for pattern in rule.tag_patterns)


def _count_time(image: Image) -> float:
    """The time imageCountMoreThan ranks by: the push, or the restore from archive if there was one."""
    return image.last_activated_at if image.last_activated_at is not None else image.pushed_at


def _since_time(rule: Rule, image: Image) -> float | None:
    if rule.count_type == "sinceImagePushed":
        return image.pushed_at
    if rule.count_type == "sinceImagePulled":
        # The latest of the last pull and the restore from archive; never pulled nor restored: the push.
        times = [t for t in (image.last_pulled_at, image.last_activated_at) if t is not None]
        return max(times) if times else image.pushed_at
    return image.last_archived_at  # sinceImageTransitioned; None (archive time unknown): never old enough


def _over_limit(rule: Rule, selected: list[Image], now: float) -> list[Image]:
    if rule.count_type == "imageCountMoreThan":
        youngest_first = sorted(selected, key=lambda im: (_count_time(im), im.pushed_at, im.digest), reverse=True)
        return youngest_first[rule.count_number :]
    limit = rule.count_number * DAY_SECONDS
    over = []
    for image in selected:
        since = _since_time(rule, image)
        if since is not None and now - since > limit:
            over.append(image)
    return over


def evaluate(policy: Policy, images: Sequence[Image], now: float) -> list[Action]:
    """What the policy does to the images at `now`: at most one action per image, oldest-pushed first."""
    rules = sorted(policy.rules, key=lambda r: r.priority)
    acted: dict[str, tuple[Image, Action]] = {}
    for i, rule in enumerate(rules):
        higher = rules[:i]
        for image in _over_limit(rule, [im for im in images if selects(rule, im)], now):
            if image.digest in acted or image.referenced_by_index:
                continue
            if any(selects(h, image) for h in higher):
                continue  # a higher-priority rule selects it: only that rule may act on it
            acted[image.digest] = (image, Action(image.digest, rule.priority, rule.action, rule.target_storage_class))
    return [action for _, action in sorted(acted.values(), key=lambda pair: (pair[0].pushed_at, pair[0].digest))]
