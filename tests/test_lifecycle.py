"""Lifecycle policy acceptance tests: ECR's documented examples, previews, the scheduled sweep, the offline
`moorage lifecycle` commands, the archive storage class, index protection and repository creation templates.

Images get their ages by rewriting `manifests.pushed_at` in `<data_dir>/moorage.db` after the push (real data:
the evaluator reads the database; the server notices another writer within about a second). Clients are boto3,
the AWS CLI, the `moorage` CLI and plain HTTP for the /v2 API; no mocks.
"""

from __future__ import annotations

import contextlib
import copy
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.helpers import wait_for
from tests.oci import (
    ALL_MANIFEST_TYPES,
    OCI_INDEX,
    Client,
    Image,
    assert_pulls,
    canonical,
    descriptor,
    digest_of,
    error_codes,
    make_image,
)
from tests.server import AUTH_OFF, MoorageServer, aws_cli, ecr_client
from tests.server import moorage_json as moorage
from tests.upstreams import DistributionRegistry
from tests.upstreams import push_image as upstream_push

MakeServer = Callable[..., MoorageServer]
HOUR = 3600.0
DAY = 86400.0
SWEEP_EVERY_SECOND = AUTH_OFF + '[lifecycle]\nevaluation_interval = "1s"\n'
POLICY_ERROR_PREFIX = (
    "Invalid parameter at 'LifecyclePolicyText' failed to satisfy constraint: 'Lifecycle policy validation failure:"
)

# The acceptance cases of docs/ecr-reference.md §5.5, verbatim (ages in hours). One substitution: L8's tag
# "git hash" is written "git-hash" (a space is not a valid OCI tag; the rules never match it either way).
CASES_JSON = r"""
[
{"id":"L1","images":[{"id":"I1","tags":["prod"],"pushedHoursAgo":480.0},{"id":"I2","tags":["production-team1"],"pushedHoursAgo":360.0},{"id":"I3","tags":["prod1"],"pushedHoursAgo":72.0},{"id":"X","tags":["dev"],"pushedHoursAgo":720.0}],"policy":{"rules":[{"rulePriority":1,"selection":{"tagStatus":"tagged","countType":"sinceImagePushed","countNumber":14,"tagPatternList":["prod*"],"countUnit":"days"},"action":{"type":"expire"}}]},"expectExpired":["I1","I2"]},
{"id":"L2","images":[{"id":"U1","tags":[],"pushedHoursAgo":72.0},{"id":"U2","tags":[],"pushedHoursAgo":48.0},{"id":"T","tags":["v1"],"pushedHoursAgo":120.0}],"policy":{"rules":[{"rulePriority":1,"selection":{"tagStatus":"untagged","countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]},"expectExpired":["U1"]},
{"id":"L3","images":[{"id":"A","tags":["beta-1","prod-1"],"pushedHoursAgo":240.0},{"id":"B","tags":["beta-2","prod-2"],"pushedHoursAgo":216.0},{"id":"C","tags":["beta-3"],"pushedHoursAgo":192.0}],"policy":{"rules":[{"rulePriority":1,"selection":{"tagStatus":"tagged","countType":"imageCountMoreThan","countNumber":1,"tagPatternList":["prod*"]},"action":{"type":"expire"}},{"rulePriority":2,"selection":{"tagStatus":"tagged","countType":"imageCountMoreThan","countNumber":1,"tagPatternList":["beta*"]},"action":{"type":"expire"}}]},"expectExpired":["A"]},
{"id":"L3p","images":[{"id":"A","tags":["beta-1","prod-1"],"pushedHoursAgo":240.0},{"id":"B","tags":["beta-2","prod-2"],"pushedHoursAgo":216.0},{"id":"C","tags":["beta-3"],"pushedHoursAgo":192.0}],"policy":{"rules":[{"rulePriority":1,"selection":{"tagStatus":"tagged","countType":"imageCountMoreThan","countNumber":1,"tagPrefixList":["prod"]},"action":{"type":"expire"}},{"rulePriority":2,"selection":{"tagStatus":"tagged","countType":"imageCountMoreThan","countNumber":1,"tagPrefixList":["beta"]},"action":{"type":"expire"}}]},"expectExpired":["A"]},
{"id":"L4","images":[{"id":"A","tags":["beta-1","prod-1"],"pushedHoursAgo":240.0},{"id":"B","tags":["beta-2","prod-2"],"pushedHoursAgo":216.0},{"id":"C","tags":["beta-3"],"pushedHoursAgo":192.0}],"policy":{"rules":[{"rulePriority":1,"selection":{"tagStatus":"tagged","countType":"imageCountMoreThan","countNumber":1,"tagPatternList":["beta*"]},"action":{"type":"expire"}},{"rulePriority":2,"selection":{"tagStatus":"tagged","countType":"imageCountMoreThan","countNumber":1,"tagPatternList":["prod*"]},"action":{"type":"expire"}}]},"expectExpired":["A","B"]},
{"id":"L5","images":[{"id":"A","tags":["alpha-1"],"pushedHoursAgo":288.0},{"id":"B","tags":["beta-1"],"pushedHoursAgo":264.0},{"id":"C","tags":["alpha-2","beta-2"],"pushedHoursAgo":240.0},{"id":"D","tags":["alpha-3"],"pushedHoursAgo":96.0},{"id":"E","tags":["beta-3"],"pushedHoursAgo":72.0},{"id":"F","tags":["alpha-4","beta-4"],"pushedHoursAgo":48.0}],"policy":{"rules":[{"rulePriority":1,"selection":{"tagStatus":"tagged","countType":"sinceImagePushed","countNumber":5,"tagPatternList":["alpha*","beta*"],"countUnit":"days"},"action":{"type":"expire"}}]},"expectExpired":["C"]},
{"id":"L6","images":[{"id":"A","tags":["alpha-1","beta-1","gamma-1"],"pushedHoursAgo":240.0},{"id":"B","tags":["alpha-2","beta-2"],"pushedHoursAgo":216.0},{"id":"C","tags":["alpha-3","beta-3","gamma-2"],"pushedHoursAgo":192.0}],"policy":{"rules":[{"rulePriority":1,"selection":{"tagStatus":"tagged","countType":"imageCountMoreThan","countNumber":1,"tagPatternList":["alpha*","beta*"]},"action":{"type":"expire"}}]},"expectExpired":["A","B"]},
{"id":"L7","images":[{"id":"A","tags":["alpha-1"],"pushedHoursAgo":96.0},{"id":"B","tags":["beta-1"],"pushedHoursAgo":72.0},{"id":"C","tags":[],"pushedHoursAgo":48.0},{"id":"D","tags":["alpha-2"],"pushedHoursAgo":24.0}],"policy":{"rules":[{"rulePriority":1,"selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]},"expectExpired":["A","B","C"]},
{"id":"L8","images":[{"id":"A","tags":["alpha-1","beta-1"],"pushedHoursAgo":96.0},{"id":"B","tags":[],"pushedHoursAgo":72.0},{"id":"C","tags":["alpha-2"],"pushedHoursAgo":48.0},{"id":"D","tags":["git-hash"],"pushedHoursAgo":18.0},{"id":"E","tags":[],"pushedHoursAgo":12.0}],"policy":{"rules":[{"rulePriority":1,"selection":{"tagStatus":"tagged","countType":"imageCountMoreThan","countNumber":1,"tagPatternList":["alpha*"]},"action":{"type":"expire"}},{"rulePriority":2,"selection":{"tagStatus":"untagged","countType":"sinceImagePushed","countNumber":1,"countUnit":"days"},"action":{"type":"expire"}},{"rulePriority":3,"selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]},"expectExpired":["A","B","D"]}
]
"""


def _prefix_variant(case: dict[str, Any], new_id: str) -> dict[str, Any]:
    """L9: the 2023 documentation's tagPrefixList form of a tagPatternList case ("alpha*" -> "alpha")."""
    out = copy.deepcopy(case)
    out["id"] = new_id
    for rule in out["policy"]["rules"]:
        sel = rule["selection"]
        if "tagPatternList" in sel:
            sel["tagPrefixList"] = [p.rstrip("*") for p in sel.pop("tagPatternList")]
    return out


def _cases() -> list[dict[str, Any]]:
    cases = json.loads(CASES_JSON)
    by_id = {c["id"]: c for c in cases}
    cases.append(_prefix_variant(by_id["L5"], "L9-L5"))
    cases.append(_prefix_variant(by_id["L6"], "L9-L6"))
    return cases


CASES = _cases()
_seq = iter(range(10**6))


def repo_name(stem: str) -> str:
    return f"lc/{stem.lower()}-{next(_seq)}"


# -- helpers -----------------------------------------------------------------------------------------------


def push_tagged(client: Client, repo: str, image: Image, tags: list[str]) -> str:
    """Blobs, then one manifest PUT by digest carrying every tag (`?tag=` parameters); untagged if none."""
    for blob in image.blobs:
        client.push_blob(repo, blob)
    r = client.put(
        f"/v2/{repo}/manifests/{image.digest}",
        data=image.manifest,
        headers={"Content-Type": image.media_type},
        params=[("tag", t) for t in tags],
    )
    assert r.status_code == 201, (r.status_code, r.text)
    assert r.headers["Docker-Content-Digest"] == image.digest
    return image.digest


def seed_pushed_at(srv: MoorageServer, repo: str, digest: str, hours_ago: float, now: float) -> float:
    """Make the image look pushed `hours_ago` hours before `now` (rewrites the database row)."""
    when = now - hours_ago * HOUR
    with contextlib.closing(sqlite3.connect(srv.data_dir / "moorage.db", timeout=30)) as db, db:
        cur = db.execute(
            "UPDATE manifests SET pushed_at = ? WHERE digest = ? "
            "AND repository_id = (SELECT id FROM repositories WHERE name = ?)",
            (when, digest, repo),
        )
        assert cur.rowcount == 1, (repo, digest)
    return when


def image_digests(ecr: Any, repo: str) -> set[str]:
    return {i["imageDigest"] for i in ecr.list_images(repositoryName=repo)["imageIds"]}


def describe(ecr: Any, repo: str) -> dict[str, dict[str, Any]]:
    return {d["imageDigest"]: d for d in ecr.describe_images(repositoryName=repo)["imageDetails"]}


def code_of(e: pytest.ExceptionInfo[ClientError]) -> str:
    return e.value.response["Error"]["Code"]


def minified(policy: dict[str, Any]) -> str:
    return json.dumps(policy, separators=(",", ":"))


def pretty(policy: dict[str, Any]) -> str:
    """The policy as a user writes it (indented), so that minification is observable."""
    return json.dumps(policy, indent=2)


def poll_preview(ecr: Any, repo: str, timeout: float = 15.0) -> dict[str, Any]:
    """GetLifecyclePolicyPreview until it is COMPLETE; every status seen before must be IN_PROGRESS."""

    def complete() -> dict[str, Any] | None:
        out = ecr.get_lifecycle_policy_preview(repositoryName=repo)
        assert out["status"] in ("IN_PROGRESS", "COMPLETE"), out
        return out if out["status"] == "COMPLETE" else None

    return wait_for(complete, timeout, f"the lifecycle preview of {repo}")


def next_sweep(ecr: Any, *repos: str, timeout: float = 15.0) -> None:
    """Wait until a sweep that started after this call has been applied to each of `repos` (their policies'
    lastEvaluatedAt passes the call's time): what the test checks next holds after a sweep, not after a
    sleep that may have seen none."""
    mark = time.time()

    def swept() -> bool:
        return all(ecr.get_lifecycle_policy(repositoryName=r)["lastEvaluatedAt"].timestamp() > mark for r in repos)

    wait_for(swept, timeout, f"a lifecycle sweep of {', '.join(repos)} after {mark:.3f}")


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Seeded:
    """A documented case pushed into a repository: per image id, the image, its tags and its seeded push time."""

    case: dict[str, Any]
    repo: str
    images: dict[str, Image] = field(default_factory=dict)
    tags: dict[str, list[str]] = field(default_factory=dict)
    pushed_at: dict[str, float] = field(default_factory=dict)

    def digest(self, image_id: str) -> str:
        return self.images[image_id].digest

    def ids_of(self, digests: set[str]) -> set[str]:
        by_digest = {img.digest: i for i, img in self.images.items()}
        return {by_digest.get(d, d) for d in digests}

    @property
    def expired(self) -> set[str]:
        return set(self.case["expectExpired"])

    @property
    def kept(self) -> set[str]:
        return set(self.images) - self.expired


def seed_case(srv: MoorageServer, client: Client, case: dict[str, Any]) -> Seeded:
    s = Seeded(case, repo_name(case["id"]))
    for spec in case["images"]:  # pushed in document order; every image distinct
        image = make_image(1, 256)
        push_tagged(client, s.repo, image, spec["tags"])
        s.images[spec["id"]], s.tags[spec["id"]] = image, spec["tags"]
    now = time.time()
    for spec in case["images"]:
        s.pushed_at[spec["id"]] = seed_pushed_at(srv, s.repo, s.digest(spec["id"]), spec["pushedHoursAgo"], now)
    return s


# The rule expected to act on each expired image (priority 1 unless listed).
EXPECTED_RULE = {"L8": {"A": 1, "B": 2, "D": 3}}


# -- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    """A server with the default 24h evaluation interval: policies are only previewed, never applied."""
    srv = MoorageServer(tmp_path_factory.mktemp("lifecycle-plain") / "data", AUTH_OFF).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def sweeping(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    """A server that applies every lifecycle policy once a second."""
    srv = MoorageServer(tmp_path_factory.mktemp("lifecycle-sweep") / "data", SWEEP_EVERY_SECOND).start()
    yield srv
    srv.stop()


# == 1. the documented cases: preview and scheduled sweep =================================================


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_preview_matches_documented_case(plain: MoorageServer, case: dict[str, Any]):
    ecr, client = ecr_client(plain), Client(plain.url)
    s = seed_case(plain, client, case)
    policy = case["policy"]

    put = ecr.put_lifecycle_policy(repositoryName=s.repo, lifecyclePolicyText=pretty(policy))
    assert put["lifecyclePolicyText"] == minified(policy), "Put returns the minified text"
    assert put["repositoryName"] == s.repo and put["registryId"] == "000000000000"
    got = ecr.get_lifecycle_policy(repositoryName=s.repo)
    assert got["lifecyclePolicyText"] == minified(policy)
    assert got["lastEvaluatedAt"].timestamp() == 0, "never evaluated yet: epoch 0"

    started = ecr.start_lifecycle_policy_preview(repositoryName=s.repo)  # the stored policy
    assert started["status"] == "IN_PROGRESS" and started["lifecyclePolicyText"] == minified(policy)
    out = poll_preview(ecr, s.repo)
    assert out["status"] == "COMPLETE", out
    assert out["lifecyclePolicyText"] == minified(policy)

    results = {r["imageDigest"]: r for r in out["previewResults"]}
    assert s.ids_of(set(results)) == s.expired, f"{case['id']}: preview expires {s.ids_of(set(results))}"
    assert out["summary"]["expiringImageTotalCount"] == len(s.expired)
    rules = EXPECTED_RULE.get(case["id"], {})
    for image_id in s.expired:
        r = results[s.digest(image_id)]
        assert r["action"]["type"] == "EXPIRE", r
        assert r["appliedRulePriority"] == rules.get(image_id, 1), (image_id, r)
        assert sorted(r.get("imageTags", [])) == sorted(s.tags[image_id]), (image_id, r)
        assert abs(r["imagePushedAt"].timestamp() - s.pushed_at[image_id]) < 0.01, (image_id, r)

    # A preview acts on nothing.
    assert image_digests(ecr, s.repo) == {img.digest for img in s.images.values()}


def test_scheduled_sweep_applies_every_documented_case(sweeping: MoorageServer):
    ecr, client = ecr_client(sweeping), Client(sweeping.url)
    seeded = [seed_case(sweeping, client, case) for case in CASES]
    put_at = time.time()
    for s in seeded:  # ages first, then the policy: the sweep never sees an image at its real age
        ecr.put_lifecycle_policy(repositoryName=s.repo, lifecyclePolicyText=pretty(s.case["policy"]))

    def remaining() -> dict[str, set[str]]:
        return {s.case["id"]: s.ids_of(image_digests(ecr, s.repo)) for s in seeded}

    expected = {s.case["id"]: s.kept for s in seeded}
    wait_for(lambda: remaining() == expected, 10, "every case's outcome", details=lambda: str(remaining()))
    for _ in range(2):  # two more sweeps change nothing: every outcome is stable
        next_sweep(ecr, *(s.repo for s in seeded))
        assert remaining() == expected

    for s in seeded:
        details = describe(ecr, s.repo)
        for image_id in s.kept:
            d = details[s.digest(image_id)]
            assert sorted(d.get("imageTags", [])) == sorted(s.tags[image_id])
            assert d["imageStatus"] == "ACTIVE"
            for ref in [s.digest(image_id), *s.tags[image_id]]:
                assert_pulls(client, s.repo, ref, s.images[image_id])
        for image_id in s.expired:
            for ref in [s.digest(image_id), *s.tags[image_id]]:
                r = client.get(f"/v2/{s.repo}/manifests/{ref}", headers={"Accept": ALL_MANIFEST_TYPES})
                assert r.status_code == 404 and error_codes(r) == ["MANIFEST_UNKNOWN"], (s.case["id"], ref)
        evaluated = ecr.get_lifecycle_policy(repositoryName=s.repo)["lastEvaluatedAt"].timestamp()
        assert evaluated >= put_at - 1, (s.case["id"], evaluated)


def test_preview_with_the_aws_cli(plain: MoorageServer):
    case = next(c for c in CASES if c["id"] == "L8")
    s = seed_case(plain, Client(plain.url), case)
    put = json.loads(
        aws_cli(
            plain, "ecr", "put-lifecycle-policy", "--repository-name", s.repo,
            "--lifecycle-policy-text", pretty(case["policy"]),
        ).stdout
    )  # fmt: skip
    assert put["lifecyclePolicyText"] == minified(case["policy"]) and put["repositoryName"] == s.repo
    started = json.loads(aws_cli(plain, "ecr", "start-lifecycle-policy-preview", "--repository-name", s.repo).stdout)
    assert started["status"] == "IN_PROGRESS"

    def preview() -> dict[str, Any]:
        out = json.loads(aws_cli(plain, "ecr", "get-lifecycle-policy-preview", "--repository-name", s.repo).stdout)
        return out if out["status"] == "COMPLETE" else {}

    out = wait_for(preview, 15, "the preview to complete", interval=0.2)
    got = {r["imageDigest"]: (r["appliedRulePriority"], r["action"]["type"]) for r in out["previewResults"]}
    assert got == {s.digest("A"): (1, "EXPIRE"), s.digest("B"): (2, "EXPIRE"), s.digest("D"): (3, "EXPIRE")}
    assert out["summary"]["expiringImageTotalCount"] == 3


# == 2. API errors =========================================================================================

PADDING = "a description long enough that every policy below passes the API's 100-character minimum length"


def _rule(priority: int = 1, action: dict[str, Any] | None = None, **selection: Any) -> dict[str, Any]:
    sel = {"tagStatus": "untagged", "countType": "imageCountMoreThan", "countNumber": 3, **selection}
    return {"rulePriority": priority, "description": PADDING, "selection": sel, "action": action or {"type": "expire"}}


INVALID_POLICIES = {
    "bad JSON": ('{"rules": [{"rulePriority": 1, ' + " " * 100, "Could not map policyString into LifecyclePolicy"),
    "unknown member": (json.dumps({"rules": [{**_rule(), "foo": 1}]}), '["foo"]'),
    "countNumber 0": (json.dumps({"rules": [_rule(countNumber=0)]}), "minimum: 1, found: 0"),
    "five wildcards": (
        json.dumps({"rules": [_rule(tagStatus="tagged", tagPatternList=["a*b*c*d*e*f"])]}),
        "tagPatternList",
    ),
    "sinceImagePulled with expire": (
        json.dumps({"rules": [_rule(tagStatus="any", countType="sinceImagePulled", countUnit="days")]}),
        "sinceImagePulled",
    ),
    "any not last": (
        json.dumps({"rules": [_rule(1, tagStatus="any"), _rule(2, tagStatus="tagged", tagPrefixList=["v"])]}),
        "any",
    ),
    "duplicate priority": (
        json.dumps({"rules": [_rule(1), _rule(1, tagStatus="tagged", tagPrefixList=["v"])]}),
        "rulePriority",
    ),
    "countUnit with imageCountMoreThan": (json.dumps({"rules": [_rule(countUnit="days")]}), "countUnit"),
    "null member": (json.dumps({"rules": [{**_rule(), "description": None}]}), "matched 0 out of 2"),
    "missing rules": (json.dumps({"ruleset": [_rule()]}), "ruleset"),
}


@pytest.mark.parametrize("what", list(INVALID_POLICIES))
def test_malformed_policy_is_rejected(plain: MoorageServer, what: str):
    ecr = ecr_client(plain)
    repo = repo_name("invalid")
    ecr.create_repository(repositoryName=repo)
    text, hint = INVALID_POLICIES[what]
    assert len(text) >= 100
    for call in (
        lambda: ecr.put_lifecycle_policy(repositoryName=repo, lifecyclePolicyText=text),
        lambda: ecr.start_lifecycle_policy_preview(repositoryName=repo, lifecyclePolicyText=text),
    ):
        with pytest.raises(ClientError) as e:
            call()
        assert code_of(e) == "InvalidParameterException", e.value.response
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        message = e.value.response["Error"]["Message"]
        assert message.startswith(POLICY_ERROR_PREFIX), message
        assert hint in message, (hint, message)
    with pytest.raises(ClientError) as e:
        ecr.get_lifecycle_policy(repositoryName=repo)
    assert code_of(e) == "LifecyclePolicyNotFoundException", "a rejected policy was stored"


def test_policy_api_errors_and_round_trip(plain: MoorageServer):
    ecr = ecr_client(plain)
    repo = repo_name("api")
    ecr.create_repository(repositoryName=repo)
    for call in (ecr.get_lifecycle_policy, ecr.delete_lifecycle_policy, ecr.start_lifecycle_policy_preview):
        with pytest.raises(ClientError) as e:
            call(repositoryName=repo)
        assert code_of(e) == "LifecyclePolicyNotFoundException", call
        assert repo in e.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as e:
        ecr.get_lifecycle_policy_preview(repositoryName=repo)
    assert code_of(e) == "LifecyclePolicyPreviewNotFoundException"
    with pytest.raises(ClientError) as e:
        ecr.put_lifecycle_policy(repositoryName=repo + "-missing", lifecyclePolicyText=pretty({"rules": [_rule()]}))
    assert code_of(e) == "RepositoryNotFoundException"

    # Four wildcards per pattern is the documented maximum, and accepted.
    ok = {"rules": [_rule(tagStatus="tagged", tagPatternList=["*test*1*2*3", "test*1*2*3*"])]}
    assert ecr.put_lifecycle_policy(repositoryName=repo, lifecyclePolicyText=pretty(ok))["lifecyclePolicyText"] == (
        minified(ok)
    )
    # A preview of a text that is not stored leaves the stored policy alone.
    other = {"rules": [_rule(countNumber=9)]}
    started = ecr.start_lifecycle_policy_preview(repositoryName=repo, lifecyclePolicyText=pretty(other))
    assert started["status"] == "IN_PROGRESS"
    waiter = ecr.get_waiter("lifecycle_policy_preview_complete")
    waiter.wait(repositoryName=repo, WaiterConfig={"Delay": 1, "MaxAttempts": 15})
    done = ecr.get_lifecycle_policy_preview(repositoryName=repo)
    assert done["status"] == "COMPLETE" and done["previewResults"] == []
    assert done["summary"]["expiringImageTotalCount"] == 0
    assert ecr.get_lifecycle_policy(repositoryName=repo)["lifecyclePolicyText"] == minified(ok)

    deleted = ecr.delete_lifecycle_policy(repositoryName=repo)
    assert deleted["lifecyclePolicyText"] == minified(ok) and deleted["repositoryName"] == repo
    with pytest.raises(ClientError) as e:
        ecr.get_lifecycle_policy(repositoryName=repo)
    assert code_of(e) == "LifecyclePolicyNotFoundException"


# == 3. the moorage CLI on a live data dir ==================================================================


def test_cli_preview_as_of_and_run_on_a_live_server(make_server: MakeServer):
    srv = make_server()
    ecr, client = ecr_client(srv), Client(srv.url)
    repo = repo_name("cli")
    images = {tag: make_image(1, 512) for tag in ("old-1", "old-2", "new")}
    for tag, image in images.items():
        push_tagged(client, repo, image, [tag])
    now = time.time()
    for tag in ("old-1", "old-2"):
        seed_pushed_at(srv, repo, images[tag].digest, 48, now)  # 2 days old
    policy = {"rules": [_rule(tagStatus="any", countType="sinceImagePushed", countUnit="days", countNumber=7)]}
    ecr.put_lifecycle_policy(repositoryName=repo, lifecyclePolicyText=pretty(policy))

    today = moorage(srv, "lifecycle", "preview", "--repository", repo)
    assert today["repository"] == repo and today["expired"] == [] and today["transitioned"] == []
    assert today["lifecyclePolicyText"] == minified(policy)
    next_week = moorage(srv, "lifecycle", "preview", "--repository", repo, "--as-of", iso(now + 6 * DAY))
    assert next_week["asOf"] == iso(now + 6 * DAY)
    listed = {e["imageDigest"]: e for e in next_week["expired"]}
    assert set(listed) == {images["old-1"].digest, images["old-2"].digest}, next_week
    for tag in ("old-1", "old-2"):
        e = listed[images[tag].digest]
        assert e["imageTags"] == [tag] and e["action"] == "expire" and e["appliedRulePriority"] == 1
        assert e["imagePushedAt"] == iso(now - 48 * HOUR)

    # Nine days later the old ones are due; a dry run reports them and changes nothing.
    for tag in ("old-1", "old-2"):
        seed_pushed_at(srv, repo, images[tag].digest, 9 * 24, now)
    assert_pulls(client, repo, "old-1", images["old-1"])  # now in the server's caches
    dry = moorage(srv, "lifecycle", "run", "--dry-run")
    (report,) = [r for r in dry if r["repository"] == repo]
    assert {e["imageDigest"] for e in report["expired"]} == {images["old-1"].digest, images["old-2"].digest}
    assert image_digests(ecr, repo) == {img.digest for img in images.values()}
    assert ecr.get_lifecycle_policy(repositoryName=repo)["lastEvaluatedAt"].timestamp() == 0
    assert_pulls(client, repo, "old-1", images["old-1"])

    ran = moorage(srv, "lifecycle", "run", "--repository", repo)
    assert [r["repository"] for r in ran] == [repo]
    assert {e["imageDigest"] for e in ran[0]["expired"]} == {images["old-1"].digest, images["old-2"].digest}
    assert image_digests(ecr, repo) == {images["new"].digest}
    # The server notices the other writer: the cached tag goes away within ~2 s.
    wait_for(
        lambda: client.get(f"/v2/{repo}/manifests/old-1").status_code == 404,
        2.5,
        "the server to stop serving a tag that `moorage lifecycle run` expired",
    )
    assert client.get(f"/v2/{repo}/manifests/{images['old-2'].digest}").status_code == 404
    assert_pulls(client, repo, "new", images["new"])
    assert ecr.get_lifecycle_policy(repositoryName=repo)["lastEvaluatedAt"].timestamp() > now - 1
    assert moorage(srv, "lifecycle", "run", "--repository", repo)[0]["expired"] == []  # nothing left to do


# == 4. the archive storage class ==========================================================================

TRANSITION = {"type": "transition", "targetStorageClass": "archive"}


def test_archive_transition_refused_pulls_and_restore(sweeping: MoorageServer):
    ecr, client = ecr_client(sweeping), Client(sweeping.url)

    # (a) sinceImagePushed -> archive.
    by_push = repo_name("archive-pushed")
    old, fresh = make_image(1, 512), make_image(1, 512)
    push_tagged(client, by_push, old, ["old"])
    push_tagged(client, by_push, fresh, ["fresh"])
    old_at = seed_pushed_at(sweeping, by_push, old.digest, 30 * 24, time.time())
    policy = {
        "rules": [
            _rule(tagStatus="any", countType="sinceImagePushed", countUnit="days", countNumber=14, action=TRANSITION)
        ]
    }
    started = ecr.start_lifecycle_policy_preview(repositoryName=by_push, lifecyclePolicyText=pretty(policy))
    assert started["status"] == "IN_PROGRESS"
    preview = poll_preview(ecr, by_push)
    assert [(r["imageDigest"], r["action"]) for r in preview["previewResults"]] == [
        (old.digest, {"type": "TRANSITION", "targetStorageClass": "ARCHIVE"})
    ]
    assert preview["summary"]["expiringImageTotalCount"] == 0
    assert preview["summary"]["transitioningImageTotalCounts"] == [
        {"targetStorageClass": "ARCHIVE", "imageTotalCount": 1}
    ]
    put_at = time.time()
    ecr.put_lifecycle_policy(repositoryName=by_push, lifecyclePolicyText=pretty(policy))
    wait_for(lambda: describe(ecr, by_push)[old.digest]["imageStatus"] == "ARCHIVED", 10, "the old image archived")
    details = describe(ecr, by_push)
    assert details[fresh.digest]["imageStatus"] == "ACTIVE" and "lastArchivedAt" not in details[fresh.digest]
    assert details[old.digest]["lastArchivedAt"].timestamp() >= put_at - 1
    assert details[old.digest]["imagePushedAt"].timestamp() == pytest.approx(old_at, abs=0.01)
    assert image_digests(ecr, by_push) == {old.digest, fresh.digest}, "archiving is not expiring"

    for ref in ("old", old.digest):
        r = client.get(f"/v2/{by_push}/manifests/{ref}", headers={"Accept": ALL_MANIFEST_TYPES})
        assert r.status_code == 404 and error_codes(r) == ["MANIFEST_UNKNOWN"], (ref, r.status_code, r.text)
        assert "archived" in r.json()["errors"][0]["message"]
    got = ecr.batch_get_image(repositoryName=by_push, imageIds=[{"imageTag": "old"}, {"imageTag": "fresh"}])
    assert [i["imageId"]["imageDigest"] for i in got["images"]] == [fresh.digest]
    (failure,) = got["failures"]
    assert failure["imageId"] == {"imageTag": "old"} and failure["failureCode"] == "ImageInaccessible", failure
    assert_pulls(client, by_push, "fresh", fresh)

    ecr.delete_lifecycle_policy(repositoryName=by_push)  # else the next sweep archives it again
    restored_at = time.time()
    restored = ecr.update_image_storage_class(
        repositoryName=by_push, imageId={"imageTag": "old"}, targetStorageClass="STANDARD"
    )
    assert restored["imageStatus"] == "ACTIVE" and restored["imageId"]["imageDigest"] == old.digest  # at once
    assert describe(ecr, by_push)[old.digest]["imageStatus"] == "ACTIVE"
    assert_pulls(client, by_push, "old", old)
    assert describe(ecr, by_push)[old.digest]["lastActivatedAt"].timestamp() >= restored_at - 1


def seed_archived_at(srv: MoorageServer, repo: str, digest: str, days_ago: float) -> None:
    with contextlib.closing(sqlite3.connect(srv.data_dir / "moorage.db", timeout=30)) as db, db:
        cur = db.execute(
            "UPDATE manifests SET last_archived_at = ? WHERE digest = ? AND storage_class = 'ARCHIVE' "
            "AND repository_id = (SELECT id FROM repositories WHERE name = ?)",
            (time.time() - days_ago * DAY, digest, repo),
        )
        assert cur.rowcount == 1, (repo, digest)


def test_archived_images_expire_after_their_time_in_archive(sweeping: MoorageServer):
    """The documented combination: P1 archives standard images pushed over 30 days ago; P2 (also `any`, legal
    because it selects the archive class) expires images archived over 90 days ago."""
    ecr, client = ecr_client(sweeping), Client(sweeping.url)
    repo = repo_name("archive-expire")
    images = {tag: make_image(1, 256) for tag in ("long", "recent", "active", "fresh")}
    for tag, image in images.items():
        push_tagged(client, repo, image, [tag])
    now = time.time()
    for tag, days in (("long", 200), ("recent", 200), ("active", 40)):
        seed_pushed_at(sweeping, repo, images[tag].digest, days * 24, now)
    for tag, days in (("long", 100), ("recent", 10)):
        ecr.update_image_storage_class(repositoryName=repo, imageId={"imageTag": tag}, targetStorageClass="ARCHIVE")
        seed_archived_at(sweeping, repo, images[tag].digest, days)
    archive = _rule(1, tagStatus="any", countType="sinceImagePushed", countUnit="days", countNumber=30)
    archive["action"] = TRANSITION
    expire = _rule(2, tagStatus="any", countType="sinceImageTransitioned", countUnit="days", countNumber=90)
    expire["selection"]["storageClass"] = "archive"
    policy = {"rules": [archive, expire]}
    ecr.start_lifecycle_policy_preview(repositoryName=repo, lifecyclePolicyText=pretty(policy))
    preview = {r["imageDigest"]: r for r in poll_preview(ecr, repo)["previewResults"]}
    assert set(preview) == {images["long"].digest, images["active"].digest}, preview
    assert preview[images["long"].digest]["action"] == {"type": "EXPIRE"}
    assert preview[images["long"].digest]["appliedRulePriority"] == 2
    assert preview[images["active"].digest]["action"] == {"type": "TRANSITION", "targetStorageClass": "ARCHIVE"}
    assert preview[images["active"].digest]["appliedRulePriority"] == 1

    ecr.put_lifecycle_policy(repositoryName=repo, lifecyclePolicyText=pretty(policy))

    def status() -> dict[str, str]:
        d = describe(ecr, repo)
        return {tag: d[img.digest]["imageStatus"] if img.digest in d else "GONE" for tag, img in images.items()}

    expected = {"long": "GONE", "recent": "ARCHIVED", "active": "ARCHIVED", "fresh": "ACTIVE"}
    wait_for(lambda: status() == expected, 10, "the sweep's outcome", details=lambda: str(status()))
    next_sweep(ecr, repo)  # the image archived just now is not expired by the next sweep
    assert status() == expected
    assert_pulls(client, repo, "fresh", images["fresh"])


def test_since_image_pulled_uses_recorded_pull_times(sweeping: MoorageServer):
    ecr, client = ecr_client(sweeping), Client(sweeping.url)
    repo = repo_name("archive-pulled")
    images = {tag: make_image(1, 512) for tag in ("pulled", "never", "fresh")}
    for tag, image in images.items():
        push_tagged(client, repo, image, [tag])
    assert_pulls(client, repo, "pulled", images["pulled"])
    pulled_at = time.time()

    # Pull times are flushed to the database every few seconds; DescribeImages then shows them.
    wait_for(lambda: "lastRecordedPullTime" in describe(ecr, repo)[images["pulled"].digest], 10, "the pull time")
    details = describe(ecr, repo)
    assert abs(details[images["pulled"].digest]["lastRecordedPullTime"].timestamp() - pulled_at) < 5
    assert "lastRecordedPullTime" not in details[images["never"].digest]
    assert "lastRecordedPullTime" not in details[images["fresh"].digest]

    now = time.time()
    for tag in ("pulled", "never"):
        seed_pushed_at(sweeping, repo, images[tag].digest, 30 * 24, now)  # both pushed a month ago
    policy = {
        "rules": [
            _rule(tagStatus="any", countType="sinceImagePulled", countUnit="days", countNumber=7, action=TRANSITION)
        ]
    }
    ecr.put_lifecycle_policy(repositoryName=repo, lifecyclePolicyText=pretty(policy))

    def status() -> dict[str, str]:
        d = describe(ecr, repo)
        return {tag: d[img.digest]["imageStatus"] for tag, img in images.items()}

    expected = {"pulled": "ACTIVE", "never": "ARCHIVED", "fresh": "ACTIVE"}
    wait_for(lambda: status() == expected, 10, "the sweep's outcome", details=lambda: str(status()))
    next_sweep(ecr, repo)
    assert status() == expected, "a recently pulled image (or a fresh one) was archived"

    # Restored and not pulled since: the restore counts as activity, so the next sweeps leave it alone.
    ecr.update_image_storage_class(
        repositoryName=repo, imageId={"imageDigest": images["never"].digest}, targetStorageClass="STANDARD"
    )
    for _ in range(2):
        next_sweep(ecr, repo)
        assert status() == {"pulled": "ACTIVE", "never": "ACTIVE", "fresh": "ACTIVE"}
    for tag, image in images.items():
        assert_pulls(client, repo, tag, image)


# == 5. images an index references ==========================================================================


def make_index(children: list[tuple[Image, str]]) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            descriptor(img.media_type, img.manifest, platform={"architecture": arch, "os": "linux"})
            for img, arch in children
        ],
    }
    return canonical(doc)


def test_images_an_index_references_are_kept_while_it_lives(sweeping: MoorageServer):
    ecr, client = ecr_client(sweeping), Client(sweeping.url)
    repo = repo_name("index")
    amd, arm = make_image(1, 512, platform="amd64"), make_image(1, 512, platform="arm64")
    stray = make_image(1, 512)
    for child in (amd, arm):
        push_tagged(client, repo, child, [])
    push_tagged(client, repo, stray, ["stray"])
    index = make_index([(amd, "amd64"), (arm, "arm64")])
    client.push_manifest(repo, "multi", index, OCI_INDEX)
    now = time.time()
    seed_pushed_at(sweeping, repo, amd.digest, 72, now)
    seed_pushed_at(sweeping, repo, arm.digest, 72, now)
    seed_pushed_at(sweeping, repo, stray.digest, 120, now)
    seed_pushed_at(sweeping, repo, digest_of(index), 24, now)
    policy = {"rules": [_rule(tagStatus="any", countNumber=1)]}  # keep only the newest image: the index

    ecr.start_lifecycle_policy_preview(repositoryName=repo, lifecyclePolicyText=pretty(policy))
    preview = poll_preview(ecr, repo)
    assert [r["imageDigest"] for r in preview["previewResults"]] == [stray.digest], preview["previewResults"]

    ecr.put_lifecycle_policy(repositoryName=repo, lifecyclePolicyText=pretty(policy))
    wait_for(lambda: stray.digest not in image_digests(ecr, repo), 10, "the stray image to expire")
    next_sweep(ecr, repo)  # and the next sweep leaves the index's children alone
    assert image_digests(ecr, repo) == {digest_of(index), amd.digest, arm.digest}
    r = client.get(f"/v2/{repo}/manifests/multi", headers={"Accept": ALL_MANIFEST_TYPES})
    assert r.status_code == 200 and r.content == index
    assert_pulls(client, repo, amd.digest, amd)
    assert_pulls(client, repo, arm.digest, arm)

    # Once the index is gone its children are ordinary images: the policy keeps one of them.
    ecr.batch_delete_image(repositoryName=repo, imageIds=[{"imageTag": "multi"}])
    wait_for(
        lambda: len(image_digests(ecr, repo)) == 1, 10, "one image left", details=lambda: str(image_digests(ecr, repo))
    )
    assert image_digests(ecr, repo) <= {amd.digest, arm.digest}


# == 6. repository creation templates ========================================================================

ROLE = "arn:aws:iam::000000000000:role/ecr-repository-templates"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DistributionRegistry]:
    reg = DistributionRegistry(tmp_path_factory.mktemp("lifecycle-upstream")).start()
    yield reg
    reg.stop()


def repository(ecr: Any, name: str) -> dict[str, Any]:
    return ecr.describe_repositories(repositoryNames=[name])["repositories"][0]


def resource_tags(ecr: Any, name: str) -> dict[str, str]:
    arn = repository(ecr, name)["repositoryArn"]
    return {t["Key"]: t["Value"] for t in ecr.list_tags_for_resource(resourceArn=arn)["tags"]}


def test_pull_through_template_applies_to_cache_repositories(make_server: MakeServer, upstream: DistributionRegistry):
    srv = make_server(AUTH_OFF + '[pull_through]\nallowed_upstreams = ["127.0.0.1"]\n')
    ecr, client = ecr_client(srv), Client(srv.url)
    policy = {"rules": [_rule(tagStatus="any", countType="sinceImagePushed", countUnit="days", countNumber=30)]}
    created = ecr.create_repository_creation_template(
        prefix="cache",
        description="pull-through repositories",
        appliedFor=["PULL_THROUGH_CACHE"],
        lifecyclePolicy=pretty(policy),
        imageTagMutability="IMMUTABLE",
        resourceTags=[{"Key": "team", "Value": "platform"}],
        customRoleArn=ROLE,
    )
    t = created["repositoryCreationTemplate"]
    assert created["registryId"] == "000000000000"
    assert t["prefix"] == "cache" and t["appliedFor"] == ["PULL_THROUGH_CACHE"]
    assert t["imageTagMutability"] == "IMMUTABLE" and t["resourceTags"] == [{"Key": "team", "Value": "platform"}]
    assert json.loads(t["lifecyclePolicy"]) == policy and t["customRoleArn"] == ROLE
    with pytest.raises(ClientError) as e:
        ecr.create_repository_creation_template(prefix="cache", appliedFor=["PULL_THROUGH_CACHE"])
    assert code_of(e) == "TemplateAlreadyExistsException"
    with pytest.raises(ClientError) as e:
        ecr.create_repository_creation_template(
            prefix="bad", appliedFor=["PULL_THROUGH_CACHE"], lifecyclePolicy=INVALID_POLICIES["countNumber 0"][0]
        )
    assert code_of(e) == "InvalidParameterException"
    assert e.value.response["Error"]["Message"].startswith(POLICY_ERROR_PREFIX)

    ecr.create_pull_through_cache_rule(ecrRepositoryPrefix="cache", upstreamRegistryUrl=upstream.url)
    image = make_image(2, 1024)
    up_repo = f"team/templated-{next(_seq)}"
    upstream_push(upstream.url, up_repo, "v1", image.manifest, image.media_type, image.blobs)
    cache_repo = f"cache/{up_repo}"
    assert_pulls(client, cache_repo, "v1", image)  # the first pull creates the cache repository

    assert ecr.get_lifecycle_policy(repositoryName=cache_repo)["lifecyclePolicyText"] == minified(policy)
    assert repository(ecr, cache_repo)["imageTagMutability"] == "IMMUTABLE"
    assert resource_tags(ecr, cache_repo) == {"team": "platform"}

    # Templates apply once, at creation: updating one changes no existing repository.
    updated = ecr.update_repository_creation_template(
        prefix="cache", imageTagMutability="MUTABLE", description="updated"
    )["repositoryCreationTemplate"]
    assert updated["imageTagMutability"] == "MUTABLE" and updated["description"] == "updated"
    assert json.loads(updated["lifecyclePolicy"]) == policy, "an update keeps the members it does not name"
    (described,) = ecr.describe_repository_creation_templates(prefixes=["cache"])["repositoryCreationTemplates"]
    assert described["imageTagMutability"] == "MUTABLE" and described["description"] == "updated"
    assert repository(ecr, cache_repo)["imageTagMutability"] == "IMMUTABLE"
    with pytest.raises(ClientError) as e:
        ecr.update_repository_creation_template(prefix="nothing-here", description="x")
    assert code_of(e) == "TemplateNotFoundException"


def test_create_on_push_templates(make_server: MakeServer):
    srv = make_server()
    ecr, client = ecr_client(srv), Client(srv.url)
    specific = {"rules": [_rule(countNumber=5)]}
    fallback = {"rules": [_rule(countNumber=50)]}
    ecr.create_repository_creation_template(
        prefix="pushed",
        appliedFor=["CREATE_ON_PUSH"],
        lifecyclePolicy=pretty(specific),
        imageTagMutability="IMMUTABLE",
        resourceTags=[{"Key": "origin", "Value": "push"}],
        customRoleArn=ROLE,
    )
    ecr.create_repository_creation_template(
        prefix="ROOT", appliedFor=["CREATE_ON_PUSH"], lifecyclePolicy=pretty(fallback)
    )
    ecr.create_repository_creation_template(
        prefix="cacheonly", appliedFor=["PULL_THROUGH_CACHE"], lifecyclePolicy=pretty(specific)
    )
    prefixes = [t["prefix"] for t in ecr.describe_repository_creation_templates()["repositoryCreationTemplates"]]
    assert sorted(prefixes) == ["ROOT", "cacheonly", "pushed"]

    first = make_image(1, 256)
    client.push_image("pushed/app", "v1", first)  # the push creates the repository
    assert ecr.get_lifecycle_policy(repositoryName="pushed/app")["lifecyclePolicyText"] == minified(specific)
    assert repository(ecr, "pushed/app")["imageTagMutability"] == "IMMUTABLE"
    assert resource_tags(ecr, "pushed/app") == {"origin": "push"}
    second = make_image(1, 256)
    for blob in second.blobs:
        client.push_blob("pushed/app", blob)
    r = client.put("/v2/pushed/app/manifests/v1", data=second.manifest, headers={"Content-Type": second.media_type})
    assert r.status_code == 400 and error_codes(r) == ["TAG_INVALID"], "the template's IMMUTABLE was not applied"

    # The most specific template wins; ROOT covers the rest; a PULL_THROUGH_CACHE-only one never applies to pushes.
    for name in ("other/app", "cacheonly/app"):
        client.push_image(name, "v1", make_image(1, 256))
        assert ecr.get_lifecycle_policy(repositoryName=name)["lifecyclePolicyText"] == minified(fallback), name
        assert repository(ecr, name)["imageTagMutability"] == "MUTABLE"
        assert resource_tags(ecr, name) == {}
    # CreateRepository is not a creation by push: no template.
    ecr.create_repository(repositoryName="pushed/by-api")
    with pytest.raises(ClientError) as e:
        ecr.get_lifecycle_policy(repositoryName="pushed/by-api")
    assert code_of(e) == "LifecyclePolicyNotFoundException"

    deleted = ecr.delete_repository_creation_template(prefix="pushed")["repositoryCreationTemplate"]
    assert deleted["prefix"] == "pushed" and json.loads(deleted["lifecyclePolicy"]) == specific
    with pytest.raises(ClientError) as e:
        ecr.delete_repository_creation_template(prefix="pushed")
    assert code_of(e) == "TemplateNotFoundException"
    client.push_image("pushed/later", "v1", make_image(1, 256))
    assert ecr.get_lifecycle_policy(repositoryName="pushed/later")["lifecyclePolicyText"] == minified(fallback)
    assert repository(ecr, "pushed/later")["imageTagMutability"] == "MUTABLE"
