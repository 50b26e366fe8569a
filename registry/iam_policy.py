"""IAM-style policy documents: parsing and evaluation. Pure functions, no I/O, no clock.

Evaluation follows IAM's logic for a principal and a resource in one account: an applicable Deny in any
policy wins; otherwise an applicable Allow in an identity-based or a resource-based (repository) policy
allows; otherwise the request is implicitly denied. Globs (`*`, `?`) match across `/`, as IAM's do; actions
match case-insensitively, resources case-sensitively. Policy variables (`${aws:username}`) are not
substituted: they match literally.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from registry import glob as _glob
from registry import jsonsafe

VERSIONS = ("2012-10-17", "2008-10-17")
_STATEMENT_KEYS = frozenset(
    {"Sid", "Effect", "Principal", "NotPrincipal", "Action", "NotAction", "Resource", "NotResource", "Condition"}
)
_ACTION_RE = re.compile(r"\*|[a-z0-9-]+:[a-z0-9*?]+", re.IGNORECASE)
_ACCOUNT_RE = re.compile(r"\d{12}")
_OPERATOR_RE = re.compile(r"(?:(ForAnyValue|ForAllValues):)?([A-Za-z]+?)(IfExists)?")


class PolicyError(ValueError):
    """A malformed policy document; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class Statement:
    sid: str | None
    effect: str  # "Allow" | "Deny"
    principals: tuple[str, ...] | None = None  # None: no Principal element
    not_principals: tuple[str, ...] | None = None
    actions: tuple[str, ...] | None = None
    not_actions: tuple[str, ...] | None = None
    resources: tuple[str, ...] | None = None
    not_resources: tuple[str, ...] | None = None
    # operator -> lower-cased condition key -> values, e.g. {"IpAddress": {"aws:sourceip": ("10.0.0.0/8",)}}
    conditions: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, slots=True)
class Policy:
    version: str
    statements: tuple[Statement, ...]


@dataclass(frozen=True, slots=True)
class RequestContext:
    principal_arn: str | None  # None: anonymous
    account_id: str
    action: str  # e.g. "ecr:BatchGetImage"
    resource: str  # an ARN
    condition_keys: Mapping[str, str | list[str]] = field(default_factory=dict, hash=False)


class Decision(Enum):
    ALLOW = "allow"
    EXPLICIT_DENY = "explicit deny"
    IMPLICIT_DENY = "implicit deny"


@dataclass(frozen=True, slots=True)
class Evaluation:
    decision: Decision
    reason: str
    matched_sid: str | None = None

    @property
    def allowed(self) -> bool:
        return self.decision is Decision.ALLOW


# -- globs -------------------------------------------------------------------------------------------


def glob_matches(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    """IAM's `*` and `?` wildcards, anchored, in time linear in the value (registry.glob)."""
    return _glob.glob_matches(pattern, value, ignore_case=ignore_case)


def action_matches(pattern: str, action: str) -> bool:
    return glob_matches(pattern, action, ignore_case=True)


def resource_matches(pattern: str, arn: str) -> bool:
    return glob_matches(pattern, arn)


def _arn_matches(pattern: str, arn: str) -> bool:
    """ArnLike/ArnEquals: the six colon-separated parts are matched one by one (a bare * matches any ARN)."""
    if pattern == "*":
        return True
    want, got = pattern.split(":", 5), arn.split(":", 5)
    return len(want) == len(got) == 6 and all(glob_matches(w, g) for w, g in zip(want, got, strict=True))


def _account_of(arn: str) -> str | None:
    parts = arn.split(":")
    return parts[4] if len(parts) > 5 and parts[0] == "arn" else None


def is_account_root(pattern: str) -> bool:
    """`arn:aws:iam::<account>:root` (what a bare account id in a Principal stands for)."""
    return pattern.startswith("arn:") and pattern.endswith(":root") and pattern.split(":")[2] == "iam"


def principal_matches(pattern: str, principal_arn: str | None) -> bool:
    """`*` matches everyone, anonymous included; an account's root ARN matches every principal of that account."""
    if pattern == "*":
        return True
    if principal_arn is None:
        return False
    if pattern == principal_arn:
        return True
    if is_account_root(pattern):
        return _account_of(pattern) == _account_of(principal_arn) and principal_arn.startswith("arn:")
    return False


def names_principal(statement: Statement, principal_arn: str | None) -> bool:
    """Whether a resource-based statement grants to the principal itself: by `*`, by its own ARN or through
    NotPrincipal, rather than only through its account's root. A grant to an account trusts the account;
    its principals still need an identity-based policy that allows the action, as in IAM."""
    if statement.principals is None:
        return True
    return any(p == "*" or (p == principal_arn and not is_account_root(p)) for p in statement.principals)


# -- parsing -----------------------------------------------------------------------------------------


def _strings(value: Any, where: str) -> tuple[str, ...]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) and v for v in values):
        raise PolicyError(f"{where} must be a non-empty string or a non-empty list of strings")
    return tuple(values)


def _principals(value: Any, where: str) -> tuple[str, ...]:
    if value == "*":
        return ("*",)
    if not isinstance(value, dict) or not value:
        raise PolicyError(f'{where} must be "*" or an object such as {{"AWS": [...]}}')
    out: list[str] = []
    for kind, names in value.items():
        for name in _strings(names, f"{where}.{kind}"):
            if kind == "AWS":
                if name != "*" and not _ACCOUNT_RE.fullmatch(name) and not name.startswith("arn:"):
                    raise PolicyError(f"{where}.AWS must hold account ids, ARNs or *, not {name!r}")
                out.append(f"arn:aws:iam::{name}:root" if _ACCOUNT_RE.fullmatch(name) else name)
            elif kind in ("Service", "Federated"):
                out.append(f"{kind.lower()}:{name}")
            else:
                raise PolicyError(f"{where} has an unsupported principal type {kind!r} (AWS, Service, Federated)")
    return tuple(out)


def _condition_value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise PolicyError(f"{where} values must be strings, numbers or booleans")


def _parse_date(value: str) -> datetime | None:
    try:
        parsed = datetime.fromtimestamp(float(value), UTC)
    except (ValueError, OverflowError, OSError):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _parse_number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _check_value(base: str, value: str, where: str) -> None:
    if base.startswith("Numeric") and _parse_number(value) is None:
        raise PolicyError(f"{where}: {value!r} is not a number")
    if base.startswith("Date") and _parse_date(value) is None:
        raise PolicyError(f"{where}: {value!r} is not an ISO 8601 date or epoch seconds")
    if base in ("Bool", "Null") and value.lower() not in ("true", "false"):
        raise PolicyError(f"{where}: {value!r} is not true or false")
    if base.endswith("IpAddress"):
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise PolicyError(f"{where}: {value!r} is not an IP address or CIDR block") from None


def _conditions(value: Any, where: str) -> dict[str, dict[str, tuple[str, ...]]]:
    if not isinstance(value, dict):
        raise PolicyError(f"{where} must be an object of operators")
    out: dict[str, dict[str, tuple[str, ...]]] = {}
    for operator, block in value.items():
        m = _OPERATOR_RE.fullmatch(operator)
        base = m.group(2) if m else ""
        if m is None or base not in _OPERATORS or (base == "Null" and (m.group(1) or m.group(3))):
            raise PolicyError(f"{where} has an unknown condition operator {operator!r}")
        if not isinstance(block, dict) or not block:
            raise PolicyError(f"{where}.{operator} must be a non-empty object of condition keys")
        keys: dict[str, tuple[str, ...]] = {}
        for key, raw in block.items():
            raws = raw if isinstance(raw, list) else [raw]
            if not raws:
                raise PolicyError(f"{where}.{operator}.{key} must not be empty")
            values = tuple(_condition_value(v, f"{where}.{operator}.{key}") for v in raws)
            for v in values:
                _check_value(base, v, f"{where}.{operator}.{key}")
            keys[key.lower()] = keys.get(key.lower(), ()) + values
        out[operator] = keys
    return out


def _statement(obj: Any, where: str, resource_policy: bool) -> Statement:
    if not isinstance(obj, dict):
        raise PolicyError(f"{where} must be an object")
    if unknown := sorted(set(obj) - _STATEMENT_KEYS):
        raise PolicyError(f"{where} has unknown element(s): {', '.join(unknown)}")
    sid = obj.get("Sid")
    if sid is not None and not isinstance(sid, str):
        raise PolicyError(f"{where}.Sid must be a string")
    effect = obj.get("Effect")
    if effect not in ("Allow", "Deny"):
        raise PolicyError(f"{where}.Effect must be Allow or Deny")
    if ("Action" in obj) == ("NotAction" in obj):
        raise PolicyError(f"{where} must have exactly one of Action or NotAction")
    for name in ("Action", "NotAction"):
        for action in _strings(obj[name], f"{where}.{name}") if name in obj else ():
            if not _ACTION_RE.fullmatch(action):
                raise PolicyError(f"{where}.{name}: {action!r} is not * or service:Action")
    if "Resource" in obj and "NotResource" in obj:
        raise PolicyError(f"{where} must not have both Resource and NotResource")
    if "Principal" in obj and "NotPrincipal" in obj:
        raise PolicyError(f"{where} must not have both Principal and NotPrincipal")
    has_principal = "Principal" in obj or "NotPrincipal" in obj
    if resource_policy and not has_principal:
        raise PolicyError(f"{where} must have a Principal or NotPrincipal in a resource-based policy")
    if not resource_policy:
        if has_principal:
            kind = "Principal" if "Principal" in obj else "NotPrincipal"
            raise PolicyError(f"{where}.{kind} is not allowed in an identity-based policy")
        if "Resource" not in obj and "NotResource" not in obj:
            raise PolicyError(f"{where} must have a Resource or NotResource in an identity-based policy")
    for name in ("Resource", "NotResource"):
        for resource in _strings(obj[name], f"{where}.{name}") if name in obj else ():
            if resource != "*" and not (resource.startswith("arn:") and resource.count(":") >= 5):
                raise PolicyError(f"{where}.{name}: {resource!r} is not * or an ARN")

    def opt(name: str, parse: Callable[[Any, str], tuple[str, ...]] = _strings) -> tuple[str, ...] | None:
        return parse(obj[name], f"{where}.{name}") if name in obj else None

    return Statement(
        sid=sid,
        effect=effect,
        principals=opt("Principal", _principals),
        not_principals=opt("NotPrincipal", _principals),
        actions=opt("Action"),
        not_actions=opt("NotAction"),
        resources=opt("Resource"),
        not_resources=opt("NotResource"),
        conditions=_conditions(obj["Condition"], f"{where}.Condition") if "Condition" in obj else {},
    )


def parse_policy(text: str | bytes | dict[str, Any], *, resource_policy: bool = False) -> Policy:
    """Parse and validate a policy; `resource_policy` for repository policies (Principal required,
    Resource optional), else an identity-based policy (Resource required, no Principal)."""
    if isinstance(text, dict):
        doc: Any = text
    else:
        try:
            doc = jsonsafe.loads(text)
        except (UnicodeDecodeError, ValueError) as e:
            raise PolicyError(f"policy is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise PolicyError("policy must be a JSON object")
    if unknown := sorted(set(doc) - {"Version", "Id", "Statement"}):
        raise PolicyError(f"policy has unknown element(s): {', '.join(unknown)}")
    version = doc.get("Version", "2008-10-17")
    if version not in VERSIONS:
        raise PolicyError(f"Version must be {' or '.join(VERSIONS)}, not {version!r}")
    if "Statement" not in doc:
        raise PolicyError("policy must have a Statement")
    raw = doc["Statement"]
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list):
        raise PolicyError("Statement must be an object or a list of objects")
    statements = tuple(_statement(s, f"Statement[{i}]", resource_policy) for i, s in enumerate(raw))
    return Policy(version, statements)


# -- conditions --------------------------------------------------------------------------------------


def _string_equals(want: str, got: str) -> bool:
    return want == got


def _numeric(compare: Callable[[float, float], bool]) -> Callable[[str, str], bool]:
    def match(want: str, got: str) -> bool:
        w, g = _parse_number(want), _parse_number(got)
        return w is not None and g is not None and compare(g, w)

    return match


def _date(compare: Callable[[datetime, datetime], bool]) -> Callable[[str, str], bool]:
    def match(want: str, got: str) -> bool:
        w, g = _parse_date(want), _parse_date(got)
        return w is not None and g is not None and compare(g, w)

    return match


def _in_network(want: str, got: str) -> bool:
    try:
        return ipaddress.ip_address(got.strip()) in ipaddress.ip_network(want, strict=False)
    except ValueError:
        return False


# positive base operator -> its test of one (policy value, context value) pair
_POSITIVE: dict[str, Callable[[str, str], bool]] = {
    "StringEquals": _string_equals,
    "StringEqualsIgnoreCase": lambda w, g: w.casefold() == g.casefold(),
    "StringLike": glob_matches,
    "Bool": lambda w, g: w.lower() == g.lower(),
    "IpAddress": _in_network,
    "ArnEquals": _arn_matches,
    "ArnLike": _arn_matches,
    "NumericEquals": _numeric(lambda g, w: g == w),
    "NumericLessThan": _numeric(lambda g, w: g < w),
    "NumericLessThanEquals": _numeric(lambda g, w: g <= w),
    "NumericGreaterThan": _numeric(lambda g, w: g > w),
    "NumericGreaterThanEquals": _numeric(lambda g, w: g >= w),
    "DateEquals": _date(lambda g, w: g == w),
    "DateLessThan": _date(lambda g, w: g < w),
    "DateLessThanEquals": _date(lambda g, w: g <= w),
    "DateGreaterThan": _date(lambda g, w: g > w),
    "DateGreaterThanEquals": _date(lambda g, w: g >= w),
}
_NEGATED = {
    "StringNotEquals": "StringEquals",
    "StringNotEqualsIgnoreCase": "StringEqualsIgnoreCase",
    "StringNotLike": "StringLike",
    "NotIpAddress": "IpAddress",
    "ArnNotEquals": "ArnEquals",
    "ArnNotLike": "ArnLike",
    "NumericNotEquals": "NumericEquals",
    "DateNotEquals": "DateEquals",
}
_OPERATORS = set(_POSITIVE) | set(_NEGATED) | {"Null"}


def _context_values(ctx: RequestContext) -> dict[str, list[str]]:
    """The request's condition keys, lower-cased, with aws:PrincipalArn/PrincipalAccount/ResourceAccount implied."""
    values: dict[str, list[str]] = {"aws:resourceaccount": [ctx.account_id]}
    if ctx.principal_arn is not None:
        values["aws:principalarn"] = [ctx.principal_arn]
        if (account := _account_of(ctx.principal_arn)) is not None:
            values["aws:principalaccount"] = [account]
    for key, value in ctx.condition_keys.items():
        values[key.lower()] = [value] if isinstance(value, str) else list(value)
    return values


def condition_holds(operator: str, key: str, wanted: tuple[str, ...], context: Mapping[str, list[str]]) -> bool:
    m = _OPERATOR_RE.fullmatch(operator)
    if m is None:
        raise PolicyError(f"unknown condition operator {operator!r}")
    qualifier, base, if_exists = m.groups()
    got = context.get(key.lower())
    if base == "Null":  # "true": the key must be absent; "false": present
        return any((w.lower() == "true") == (not got) for w in wanted)
    negated = base in _NEGATED
    test = _POSITIVE[_NEGATED.get(base, base)]

    def one(value: str) -> bool:
        return any(test(w, value) for w in wanted) != negated

    if not got:
        if if_exists or qualifier == "ForAllValues":
            return True
        return negated and qualifier is None
    if qualifier == "ForAllValues":
        return all(one(v) for v in got)
    if qualifier == "ForAnyValue" or not negated:
        return any(one(v) for v in got)
    return all(one(v) for v in got)  # a negated operator on a single-valued key: no value may match


# -- evaluation --------------------------------------------------------------------------------------


def statement_applies(
    statement: Statement, ctx: RequestContext, context: Mapping[str, list[str]] | None = None
) -> bool:
    """Whether a statement covers this request: principal (when it names one), action, resource, conditions."""
    if statement.principals is not None and not any(
        principal_matches(p, ctx.principal_arn) for p in statement.principals
    ):
        return False
    if statement.not_principals is not None and any(
        principal_matches(p, ctx.principal_arn) for p in statement.not_principals
    ):
        return False
    if statement.actions is not None and not any(action_matches(a, ctx.action) for a in statement.actions):
        return False
    if statement.not_actions is not None and any(action_matches(a, ctx.action) for a in statement.not_actions):
        return False
    if statement.resources is not None and not any(resource_matches(r, ctx.resource) for r in statement.resources):
        return False
    if statement.not_resources is not None and any(resource_matches(r, ctx.resource) for r in statement.not_resources):
        return False
    if context is None:
        context = _context_values(ctx)
    return all(
        condition_holds(operator, key, values, context)
        for operator, block in statement.conditions.items()
        for key, values in block.items()
    )


def evaluate(
    ctx: RequestContext, identity_policies: Sequence[Policy], resource_policies: Sequence[Policy]
) -> Evaluation:
    """IAM's decision for one request.

    An applicable Deny anywhere wins. Otherwise, within the resource's account an Allow in an identity-based
    policy is enough, and so is an Allow in the repository policy that names the principal (or `*`); one that
    names only the principal's account delegates to the account's identity policies and allows nothing by
    itself. A principal of another account needs both: the repository policy must trust it (by name or by
    account) and its identity-based policy must allow.
    """
    context = _context_values(ctx)
    identity: list[Statement] = []
    if ctx.principal_arn is not None:  # anonymous callers have no identity
        identity = [
            statement
            for policy in identity_policies
            for statement in policy.statements
            if statement_applies(statement, ctx, context)
        ]
    resource = [
        statement
        for policy in resource_policies
        for statement in policy.statements
        if statement_applies(statement, ctx, context)
    ]
    for kind, statements in (("an identity-based", identity), ("a resource-based", resource)):
        for statement in statements:
            if statement.effect == "Deny":
                return Evaluation(Decision.EXPLICIT_DENY, f"with an explicit deny in {kind} policy", statement.sid)
    identity_allow = identity[0] if identity else None  # every applicable statement allows by now
    account = _account_of(ctx.principal_arn) if ctx.principal_arn is not None else None
    if account is not None and account != ctx.account_id:
        if identity_allow is None:
            return Evaluation(Decision.IMPLICIT_DENY, f"no identity-based policy allows the {ctx.action} action")
        if not resource:
            return Evaluation(Decision.IMPLICIT_DENY, f"no resource-based policy allows the {ctx.action} action")
        return Evaluation(Decision.ALLOW, "allowed by an identity-based and a resource-based policy", resource[0].sid)
    if identity_allow is not None:
        return Evaluation(Decision.ALLOW, "allowed by an identity-based policy", identity_allow.sid)
    direct = next((statement for statement in resource if names_principal(statement, ctx.principal_arn)), None)
    if direct is not None:
        return Evaluation(Decision.ALLOW, "allowed by a resource-based policy", direct.sid)
    return Evaluation(Decision.IMPLICIT_DENY, f"no identity-based policy allows the {ctx.action} action")


def access_denied_message(ctx: RequestContext, evaluation: Evaluation) -> str:
    """AWS's AccessDeniedException text for a denied request."""
    user = ctx.principal_arn or "anonymous"
    joiner = " " if evaluation.reason.startswith("with ") else " because "
    return (
        f"User: {user} is not authorized to perform: {ctx.action} on resource: {ctx.resource}"
        f"{joiner}{evaluation.reason}"
    )
