"""The one wildcard matcher (registry/glob.py): semantics against a reference, and linear time on patterns that
make a backtracking matcher take minutes."""

from __future__ import annotations

import random
import re
import time

import pytest

from registry.glob import compile_glob, glob_matches


def reference(pattern: str, value: str, *, single: bool = True, ignore_case: bool = False) -> bool:
    """The obvious regular expression: right, and exponential on adversarial input (so: small inputs only)."""
    body = "".join(".*" if c == "*" else "." if c == "?" and single else re.escape(c) for c in pattern)
    return re.fullmatch(body, value, re.DOTALL | (re.IGNORECASE if ignore_case else 0)) is not None


@pytest.mark.parametrize(
    ("pattern", "value", "matches"),
    [
        ("", "", True),
        ("", "a", False),
        ("*", "", True),
        ("*", "anything/at:all", True),
        ("**", "", True),
        ("a", "a", True),
        ("a", "ab", False),
        ("?", "", False),
        ("?", "x", True),
        ("?", "xy", False),
        ("a*", "a", True),
        ("a*", "ba", False),
        ("*a", "ba", True),
        ("*a", "ab", False),
        ("a*a", "a", False),  # the first and last segment may not share a character
        ("a*a", "aa", True),
        ("a*b*c", "abc", True),
        ("a*b*c", "aXbYc", True),
        ("a*b*c", "acb", False),
        ("a*b*c", "abcbc", True),
        ("*ab*ab*", "abab", True),
        ("*ab*ab*", "aba", False),
        ("*a?c*", "xxabcxx", True),
        ("*a?c*", "xxacxx", False),
        ("*?*", "", False),
        ("*?*", "z", True),
        ("team-a/*", "team-a/app", True),
        ("team-a/*", "team-a", False),
        ("team-a/*a*a*a*a*a*a*a*b", "team-a/" + "a" * 53, False),
        ("team-a/*a*a*a*a*a*a*a*b", "team-a/" + "a" * 52 + "b", True),
        ("a.b", "aXb", False),  # regex metacharacters are literal
        ("[ab]", "a", False),
        ("[ab]", "[ab]", True),
        ("ecr:Get?ownload*", "ecr:GetDownloadUrlForLayer", True),
        ("ecr:Get?ownload*", "ecr:GetDDownloadUrlForLayer", False),
        ("a\nb*", "a\nbc", True),
    ],
)
def test_semantics(pattern: str, value: str, matches: bool) -> None:
    assert glob_matches(pattern, value) is matches
    if pattern.count("*") < 4:  # the reference would take seconds
        assert reference(pattern, value) is matches


def test_question_mark_is_literal_without_single() -> None:
    assert glob_matches("v?", "v?", single=False)
    assert not glob_matches("v?", "v1", single=False)
    assert glob_matches("*?*", "a?b", single=False)
    assert not glob_matches("*?*", "ab", single=False)


def test_ignore_case() -> None:
    assert glob_matches("ECR:batch*", "ecr:BatchGetImage", ignore_case=True)
    assert not glob_matches("ECR:batch*", "ecr:BatchGetImage")
    assert glob_matches("ecr:get?OWNLOAD*", "ecr:GetDownloadUrlForLayer", ignore_case=True)


@pytest.mark.parametrize("alphabet", ["abc", "abé"], ids=["ascii", "non-ascii"])  # bitmasks; Shift-And
def test_agrees_with_the_reference_on_random_inputs(alphabet: str) -> None:
    rng = random.Random(11)
    for _ in range(4000):
        pattern = "".join(rng.choice("ab*?") for _ in range(rng.randint(0, 8)))
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 10)))
        single = rng.random() < 0.7
        assert glob_matches(pattern, value, single=single) is reference(pattern, value, single=single), (
            pattern,
            value,
            single,
        )


# -- time --------------------------------------------------------------------------------------------

ADVERSARIAL = [
    # (pattern, text): each takes a backtracking matcher from seconds to far longer than a test run
    ("team-a/" + "*a" * 7 + "*b", "team-a/" + "a" * 53),
    ("*a" * 20 + "*b", "a" * 128),  # a 41-character tag-mutability exclusion filter against a 128-character tag
    ("*a" * 4 + "*b", "a" * 128),  # a lifecycle tag pattern at ECR's limit of four wildcards
    ("*a?" * 30 + "*b", "a" * 300),  # `?` inside the segments
    ("*" + "a" * 200 + "*b", "a" * 5000),  # a long segment that almost matches everywhere
    ("*" + "a?" * 100 + "*b", "a" * 5000),
    ("*a" * 1000 + "*b", "a" * 5000),
    ("?" * 400 + "*b", "a" * 5000),
]


@pytest.mark.parametrize(("pattern", "text"), ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_adversarial_patterns_match_in_linear_time(pattern: str, text: str) -> None:
    g = compile_glob(pattern)
    started = time.perf_counter()
    assert not g.matches(text)
    assert g.matches(text[:-1] + "b")
    elapsed = time.perf_counter() - started
    assert elapsed < 0.25, f"{elapsed:.3f}s for {pattern[:40]!r} on {len(text)} characters"


def test_time_grows_linearly_with_the_text() -> None:
    """Doubling the text about doubles the time (a backtracking matcher's grows as a power of the stars)."""
    g = compile_glob("*a?" * 8 + "*b")

    def best(n: int) -> float:
        text = "a" * n
        times = []
        for _ in range(5):
            started = time.perf_counter()
            g.matches(text)
            times.append(time.perf_counter() - started)
        return min(times)

    small, large = best(20_000), best(80_000)
    assert large < small * 12, (small, large)  # 4x the text: ~4x the time, with a generous margin


# -- every user of wildcards goes through it ----------------------------------------------------------


def _elapsed(fn: object, *args: object, repeat: int = 1) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        fn(*args)  # type: ignore[operator]
    return time.perf_counter() - started


def test_iam_resource_glob_is_fast() -> None:
    from registry.iam_policy import resource_matches

    arn = "arn:aws:ecr:us-east-1:000000000000:repository/team-a/" + "a" * 53
    pattern = "arn:aws:ecr:us-east-1:000000000000:repository/team-a/" + "*a" * 7 + "*b"
    assert _elapsed(resource_matches, pattern, arn) < 0.05  # a regex: minutes


def test_lifecycle_tag_pattern_is_fast() -> None:
    from registry.lifecycle import tag_pattern_matches

    # ECR's most: four wildcards, a 128-character tag; a regex takes ~12 ms a tag, this ~3 us.
    assert _elapsed(tag_pattern_matches, "*a*a*a*b", "a" * 128, repeat=50) < 0.1


def test_mutability_exclusion_filter_is_fast() -> None:
    from registry.service.images import tag_is_immutable
    from storage.records import RepositorySettings

    settings = RepositorySettings("IMMUTABLE_WITH_EXCLUSION", ("*a" * 20 + "*b",))
    started = time.perf_counter()
    assert tag_is_immutable(settings, "a" * 128)  # a regex: longer than anyone would wait
    assert not tag_is_immutable(settings, "a" * 127 + "b")
    assert time.perf_counter() - started < 0.05


def test_pathological_policy_evaluates_within_a_millisecond_or_so() -> None:
    """A repository policy near ECR's 10,240-character limit, written to be slow (68 `?` patterns that almost
    match, none matching), against the longest names: evaluated in well under a millisecond (~0.6 ms here)."""
    import json

    from registry import iam_policy as policy

    resource = "arn:aws:ecr:*:*:repository/*" + "a?" * 60 + "c*"
    like = "arn:aws:iam::*" + "a?" * 60 + "c*"
    allow = {"Effect": "Allow", "Principal": "*", "Action": "ecr:*", "Resource": [resource] * 34}
    deny = {
        "Effect": "Deny",
        "Principal": "*",
        "Action": "ecr:*",
        "Condition": {"StringLike": {"aws:PrincipalArn": [like] * 34}},
    }
    text = json.dumps({"Version": "2012-10-17", "Statement": [allow, deny]})
    assert len(text) <= 10240, len(text)
    repo = policy.parse_policy(text, resource_policy=True)
    ctx = policy.RequestContext(
        "arn:aws:iam::000000000000:user/" + "a" * 64,
        "000000000000",
        "ecr:BatchGetImage",
        "arn:aws:ecr:us-east-1:000000000000:repository/" + "a" * 256,
    )
    assert policy.evaluate(ctx, [], [repo]).decision is policy.Decision.IMPLICIT_DENY  # patterns compiled once
    best = min(_elapsed(policy.evaluate, ctx, [], [repo]) for _ in range(5))
    assert best < 0.005, f"{best * 1000:.2f} ms"  # a generous bound, for a busy machine
