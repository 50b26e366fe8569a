"""The console's operations pages over plain HTTP (no browser): forged and unauthorised POSTs refused with nothing
changed, what a rule from the configuration file says, the last upstream failure, garbage collection's last run,
and the answers to bad input."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator

import pytest
import requests

from tests.console.conftest import AUDITOR_KEY, AUDITOR_SECRET, SECRET_PASSWORD, Fixture, sign_in_session
from tests.console.test_http import csrf_of
from tests.helpers import hold_in_child
from tests.oci import Client, make_image
from tests.server import AUTH_OFF, MoorageServer, ecr_client, login_password, moorage_cli

POLICY_REPO = "ops/guarded"
RULE = "ops-rule"
LIFECYCLE = json.dumps(
    {
        "rules": [
            {
                "rulePriority": 1,
                "description": "keep two",
                "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 2},
                "action": {"type": "expire"},
            }
        ]
    }
)
REPOSITORY_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Sid": "Keep", "Effect": "Allow", "Principal": "*", "Action": "ecr:BatchGetImage"}],
    }
)


def post(session: requests.Session, url: str, path: str, data: dict[str, str]) -> requests.Response:
    return session.post(f"{url}{path}", data=data, headers={"Origin": url}, allow_redirects=False, timeout=30)


def snapshot(console: Fixture) -> tuple[object, ...]:
    """What the forged requests would change: the rules, the repository's policies and images."""
    ecr = ecr_client(console.server)
    rules = sorted(
        (r["ecrRepositoryPrefix"], r.get("credentialArn"))
        for r in ecr.describe_pull_through_cache_rules()["pullThroughCacheRules"]
    )
    lifecycle = ecr.get_lifecycle_policy(repositoryName=POLICY_REPO)["lifecyclePolicyText"]
    policy = ecr.get_repository_policy(repositoryName=POLICY_REPO)["policyText"]
    images = sorted(d["imageDigest"] for d in ecr.describe_images(repositoryName=POLICY_REPO)["imageDetails"])
    return rules, lifecycle, policy, images


@pytest.fixture(scope="module")
def guarded(console: Fixture) -> Iterator[None]:
    """A repository with three images, a lifecycle policy and a repository policy, and an API-created rule."""
    ecr = ecr_client(console.server)
    client = Client(console.url, ("AWS", login_password(console.server)))
    for tag in ("a", "b", "c"):
        client.push_image(POLICY_REPO, tag, make_image(n_layers=1))
    ecr.put_lifecycle_policy(repositoryName=POLICY_REPO, lifecyclePolicyText=LIFECYCLE)
    ecr.set_repository_policy(repositoryName=POLICY_REPO, policyText=REPOSITORY_POLICY)
    ecr.create_pull_through_cache_rule(ecrRepositoryPrefix=RULE, upstreamRegistryUrl="http://127.0.0.1:9")
    yield
    ecr.delete_pull_through_cache_rule(ecrRepositoryPrefix=RULE)


FORMS: list[tuple[str, Callable[[str], dict[str, str]]]] = [
    ("/console/actions/pull-through/create", lambda c: {"csrf": c, "prefix": "forged", "upstream_url": "quay.io"}),
    ("/console/actions/pull-through/update", lambda c: {"csrf": c, "prefix": RULE, "credential_arn": ""}),
    ("/console/actions/pull-through/delete", lambda c: {"csrf": c, "prefix": RULE}),
    ("/console/actions/lifecycle/save", lambda c: {"csrf": c, "repository": POLICY_REPO, "policy": "{}", "do": "save"}),
    ("/console/actions/lifecycle/delete", lambda c: {"csrf": c, "repository": POLICY_REPO}),
    ("/console/actions/lifecycle/apply", lambda c: {"csrf": c, "repository": POLICY_REPO}),
    ("/console/actions/policy/save", lambda c: {"csrf": c, "repository": POLICY_REPO, "policy": "{}"}),
    ("/console/actions/policy/delete", lambda c: {"csrf": c, "repository": POLICY_REPO}),
]


def test_forged_and_unauthorised_posts_change_nothing(console: Fixture, guarded: None) -> None:
    url = console.url
    before = snapshot(console)
    assert len(before[3]) == 3  # applying the policy would expire one
    admin, auditor = sign_in_session(url), sign_in_session(url, AUDITOR_KEY, AUDITOR_SECRET)
    admin_csrf, auditor_csrf = csrf_of(admin, url), csrf_of(auditor, url)
    for path, form in FORMS:
        no_token = post(admin, url, path, {k: v for k, v in form(admin_csrf).items() if k != "csrf"})
        assert no_token.status_code == 403, (path, no_token.text[:500])
        wrong_token = post(admin, url, path, form(auditor_csrf))  # another session's token
        assert wrong_token.status_code == 403, path
        cross_site = admin.post(
            f"{url}{path}", data=form(admin_csrf), headers={"Origin": "http://evil.example"}, allow_redirects=False
        )
        assert cross_site.status_code == 403, path
        lacking = post(auditor, url, path, form(auditor_csrf))  # a valid form, but no permission for it
        assert lacking.status_code == 403, (path, lacking.text[:500])
        assert "not authorized to perform" in lacking.text, path
    anonymous = requests.post(f"{url}{FORMS[0][0]}", data=FORMS[0][1]("x"), headers={"Origin": url}, timeout=10)
    assert anonymous.status_code == 403
    assert snapshot(console) == before


def test_read_only_pages_for_an_auditor(console: Fixture, guarded: None) -> None:
    url = console.url
    auditor = sign_in_session(url, AUDITOR_KEY, AUDITOR_SECRET)
    for path in (
        "/console/pull-through",
        f"/console/pull-through/rules/{RULE}",
        f"/console/lifecycle/{POLICY_REPO}",
        f"/console/permissions/{POLICY_REPO}",
        "/console/storage",
    ):
        page = auditor.get(f"{url}{path}", timeout=30)
        assert page.status_code == 200, (path, page.text[:500])
        forms = re.findall(r'<form method="post" action="([^"]+)"', page.text)
        assert forms == ["/console/sign-out"], (path, forms)  # no create, edit, validate, delete or apply
        assert "<textarea" not in page.text, path
    lifecycle = auditor.get(f"{url}/console/lifecycle/{POLICY_REPO}", timeout=30).text
    assert "keep two" in lifecycle and 'id="preview"' not in lifecycle  # may read the policy, not preview it


def test_a_rule_from_the_configuration_file_is_read_only(console: Fixture) -> None:
    url = console.url
    admin = sign_in_session(url)
    page = admin.get(f"{url}/console/pull-through/rules/declared", timeout=30)
    assert page.status_code == 200
    assert "is declared in the configuration file" in page.text
    assert 'id="delete-rule"' not in page.text and 'id="edit-rule"' not in page.text
    listing = admin.get(f"{url}/console/pull-through", timeout=30).text
    assert re.search(r'data-prefix="declared".*?config file', listing, re.S)
    refused = post(
        admin, url, "/console/actions/pull-through/delete", {"csrf": csrf_of(admin, url), "prefix": "declared"}
    )
    assert refused.status_code == 400 and "read-only through the API" in refused.text
    prefixes = {
        r["ecrRepositoryPrefix"]
        for r in ecr_client(console.server).describe_pull_through_cache_rules()["pullThroughCacheRules"]
    }
    assert "declared" in prefixes


def test_credentials_are_named_never_shown(console: Fixture, guarded: None) -> None:
    url = console.url
    admin = sign_in_session(url)
    csrf = csrf_of(admin, url)
    page = admin.get(f"{url}/console/pull-through/rules/{RULE}", timeout=30).text
    arn = re.search(r'<option value="(arn:aws:secretsmanager:[^"]+console-test)"', page)
    assert arn, page[:3000]
    saved = post(
        admin,
        url,
        "/console/actions/pull-through/update",
        {"csrf": csrf, "prefix": RULE, "credential_arn": arn.group(1)},
    )
    assert saved.status_code == 303 and "notice=updated" in saved.headers["Location"]
    rules = ecr_client(console.server).describe_pull_through_cache_rules(ecrRepositoryPrefixes=[RULE])
    assert rules["pullThroughCacheRules"][0]["credentialArn"] == arn.group(1)
    for path in (f"/console/pull-through/rules/{RULE}", "/console/pull-through"):
        assert SECRET_PASSWORD not in admin.get(f"{url}{path}", timeout=30).text
    bad = post(
        admin, url, "/console/actions/pull-through/update", {"csrf": csrf, "prefix": RULE, "credential_arn": "arn:nope"}
    )
    assert bad.status_code == 400 and "credentialArn" in bad.text  # the API's own validation, on the form


def test_a_failed_pull_through_the_rule_is_its_last_upstream_failure(console: Fixture, guarded: None) -> None:
    url = console.url
    admin = sign_in_session(url)
    assert "none" in re.search(
        r'id="last-failure">(.*?)</dd>', admin.get(f"{url}/console/pull-through/rules/{RULE}").text
    ).group(1)
    token = ecr_client(console.server).get_authorization_token()["authorizationData"][0]["authorizationToken"]
    pulled = requests.get(f"{url}/v2/{RULE}/app/manifests/1.0", headers={"Authorization": f"Basic {token}"}, timeout=30)
    assert pulled.status_code >= 500, pulled.text  # the upstream is a closed port
    page = admin.get(f"{url}/console/pull-through/rules/{RULE}", timeout=30).text
    message = re.search(r'id="last-failure-message">([^<]*)<', page)
    assert message and "127.0.0.1:9" in message.group(1), page[:4000]
    assert re.search(rf'data-prefix="{RULE}".*?badge bad', admin.get(f"{url}/console/pull-through").text, re.S)


def test_storage_page_shows_the_last_garbage_collection(console: Fixture) -> None:
    url = console.url
    admin = sign_in_session(url)
    srv = console.server
    p = moorage_cli("gc", "--config", srv.config_path, "--data-dir", srv.data_dir, timeout=60)
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    page = admin.get(f"{url}/console/storage", timeout=30).text
    freed = re.search(r'id="gc-freed" data-blobs="(\d+)" data-bytes="(\d+)"', page)
    assert freed and (int(freed.group(1)), int(freed.group(2))) == (report["blobsRemoved"], report["bytesFreed"])
    assert 'id="ready"' in page and "per minute" in page


def test_bad_input_is_answered_on_the_page(console: Fixture, guarded: None) -> None:
    url = console.url
    admin = sign_in_session(url)
    past = admin.get(f"{url}/console/lifecycle/{POLICY_REPO}?as_of=2001-01-01", timeout=30)
    assert past.status_code == 200 and "must be now or later" in past.text
    garbled = admin.get(f"{url}/console/lifecycle/{POLICY_REPO}?as_of=soon", timeout=30)
    assert "is not a date" in garbled.text
    nobody = admin.get(f"{url}/console/permissions/{POLICY_REPO}?principal=nobody", timeout=30)
    assert nobody.status_code == 200 and 'id="who-error"' in nobody.text
    missing = admin.get(f"{url}/console/lifecycle/no/such/repository", timeout=30)
    assert missing.status_code == 404
    bad_rule = post(
        admin,
        url,
        "/console/actions/pull-through/create",
        {"csrf": csrf_of(admin, url), "prefix": "evil", "upstream_url": "http://169.254.169.254"},
    )
    assert bad_rule.status_code == 400 and 'id="form-error"' in bad_rule.text and "not supported here" in bad_rule.text
    bad_policy = post(
        admin,
        url,
        "/console/actions/policy/save",
        {"csrf": csrf_of(admin, url), "repository": POLICY_REPO, "policy": '{"Statement": 5}'},
    )
    assert bad_policy.status_code == 400 and "Invalid repository policy provided" in bad_policy.text
    assert "{&#34;Statement&#34;: 5}" in bad_policy.text or "{&quot;Statement&quot;: 5}" in bad_policy.text


def test_with_auth_off_every_page_answers_and_anyone_may_act(make_server: Callable[..., MoorageServer]) -> None:
    srv = make_server(AUTH_OFF)
    ecr_client(srv).create_repository(repositoryName="open/app")
    session = requests.Session()
    for path in (
        "/console/pull-through",
        "/console/lifecycle/open/app",
        "/console/permissions/open/app",
        "/console/storage",
    ):
        page = session.get(f"{srv.url}{path}", timeout=30)
        assert page.status_code == 200, (path, page.text[:500])
    assert 'id="auth-off"' in session.get(f"{srv.url}/console/permissions/open/app", timeout=30).text
    lifecycle_page = session.get(f"{srv.url}/console/lifecycle/open/app", timeout=30).text
    csrf = re.search(r'name="csrf" value="([^"]+)"', lifecycle_page).group(1)  # no sign-out form to take it from
    saved = post(
        session,
        srv.url,
        "/console/actions/lifecycle/save",
        {"csrf": csrf, "repository": "open/app", "policy": LIFECYCLE, "do": "save"},
    )
    assert saved.status_code == 303, saved.text[:500]
    stored = ecr_client(srv).get_lifecycle_policy(repositoryName="open/app")["lifecyclePolicyText"]
    assert json.loads(stored) == json.loads(LIFECYCLE)


def test_apply_now_waits_for_no_sweep_and_says_so(console: Fixture, guarded: None) -> None:
    """ "Apply now" takes the lock the scheduled sweep and `moorage lifecycle run` take: while another process
    holds it, the page says a sweep is running and nothing is expired."""
    url = console.url
    admin = sign_in_session(url)
    before = snapshot(console)
    holder = hold_in_child(console.server.data_dir / "moorage.locks", "job lifecycle")
    try:
        busy = post(
            admin, url, "/console/actions/lifecycle/apply", {"csrf": csrf_of(admin, url), "repository": POLICY_REPO}
        )
    finally:
        holder.kill()
        holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()
    assert busy.status_code == 409 and "A lifecycle sweep is running now" in busy.text
    assert snapshot(console) == before


def test_previewing_the_editors_text_marks_what_it_would_archive_and_saves_nothing(
    console: Fixture, guarded: None
) -> None:
    url = console.url
    admin = sign_in_session(url)
    before = snapshot(console)
    archive = json.dumps(
        {
            "rules": [
                {
                    "rulePriority": 1,
                    "description": "archive the old",
                    "selection": {
                        "tagStatus": "any",
                        "countType": "sinceImagePushed",
                        "countUnit": "days",
                        "countNumber": 1,
                    },
                    "action": {"type": "transition", "targetStorageClass": "archive"},
                }
            ]
        }
    )
    form = {"csrf": csrf_of(admin, url), "repository": POLICY_REPO, "policy": archive, "do": "preview"}
    now = post(admin, url, "/console/actions/lifecycle/save", form).text
    assert re.search(r'id="preview-summary" data-expiring="0" data-archiving="0"', now), now[:3000]
    later = post(admin, url, "/console/actions/lifecycle/save", {**form, "as_of": "2100-01-01"}).text
    images = len(before[3])
    assert re.search(rf'id="preview-summary" data-expiring="0" data-archiving="{images}"', later), later[:3000]
    assert "the text in the editor" in later
    rows = re.findall(r'<tr class="plan-transition" data-digest="[^"]+" data-action="transition" data-rule="1">', later)
    assert len(rows) == images and later.count("archive the old") >= images
    assert snapshot(console) == before  # previewed, not saved
