"""The console's lifecycle page: a repository's policy in an editor, the preview of what it would do drawn on the
repository's images "as of" any time from now on, and "apply now".

    /console/lifecycle/{name}?as_of=2026-12-01           the page (ecr:GetLifecyclePolicy on the repository)
    /console/actions/lifecycle/{save,delete,apply}       POST forms (CSRF-checked)

Permissions, as the API asks them:
- the page shows the policy with `ecr:GetLifecyclePolicy`;
- the preview needs `ecr:StartLifecyclePolicyPreview` and `ecr:GetLifecyclePolicyPreview` (the two calls the
  API makes for one); it is evaluated by the lifecycle service's own planner at the chosen time, as
  `moorage lifecycle preview --as-of` does, and stores nothing;
- "Save" runs PutLifecyclePolicy (`ecr:PutLifecyclePolicy`; a refused policy is shown with ECR's message and the
  text stays in the editor), "Delete" DeleteLifecyclePolicy (`ecr:DeleteLifecyclePolicy`);
- "Apply now" runs the sweep for this repository at once, as `moorage lifecycle run --repository` does, under
  the same lock (while another sweep holds it, the page says so and nothing is done). It
  deletes images as BatchDeleteImage does and archives them as UpdateImageStorageClass does, so it needs
  `ecr:GetLifecyclePolicy` and `ecr:BatchDeleteImage`, and `ecr:UpdateImageStorageClass` too when the policy
  has a transition rule.
"""

from __future__ import annotations

import urllib.parse

import aiohttp_jinja2
from aiohttp import web

from registry import lifecycle
from registry.console.lifecycle_view import LifecycleData, Preview, rule_summary
from registry.console.views import human_size, pretty_json
from registry.errors import RegistryError
from registry.web.console.calls import call, console_url, field, parse_time, refused, repository_name, time_field
from registry.web.console.sessions import VIEWER, Viewer, checked_form, signed_in
from registry.web.context import ACCESS, IMAGES, LIFECYCLE, SWEEP_NOW

PREVIEW_ACTIONS = ("ecr:StartLifecyclePolicyPreview", "ecr:GetLifecyclePolicyPreview")
SWEEP_BUSY = (
    "A lifecycle sweep is running now (the scheduled one, or moorage lifecycle run): apply again when it is done."
)
MAX_AHEAD = 100 * 365 * 86400.0  # how far ahead "as of" may look
NOTICES = {
    "saved": "Saved the lifecycle policy.",
    "deleted": "Deleted the lifecycle policy.",
    "applied": "Applied the policy now: {expired} images expired ({bytes}), {archived} archived.",
}


def lifecycle_url(name: str, **query: object) -> str:
    return console_url("lifecycle", name, **query)


def _apply_actions(policy: lifecycle.Policy | None) -> list[str]:
    actions = ["ecr:GetLifecyclePolicy", "ecr:BatchDeleteImage"]
    if policy is not None and any(rule.action == "transition" for rule in policy.rules):
        actions.append("ecr:UpdateImageStorageClass")
    return actions


def _parsed(text: str | None) -> lifecycle.Policy | None:
    try:
        return lifecycle.parse_policy(text) if text else None
    except lifecycle.LifecyclePolicyError:  # stored before a validation rule changed
        return None


def _as_of(request: web.Request, raw: str | None) -> tuple[float, str | None]:
    """The evaluation time asked for (now without one), and what is wrong with it, if anything."""
    now = request.config_dict[ACCESS].clock()
    if not raw:
        return now, None
    when = parse_time(raw)
    if when is None:
        return now, f"“As of” {raw!r} is not a date (2026-12-01) or a date and time (2026-12-01T08:30), in UTC."
    if when < now - 60:
        return now, "“As of” must be now or later: the preview is of the images as they are now."
    return min(when, now + MAX_AHEAD), None


async def _page(
    request: web.Request,
    name: str,
    *,
    editor: str | None = None,  # the editor's text when it is not the saved policy
    previewing_editor: bool = False,
    as_of_raw: str | None = None,
    error: str | None = None,
    status: int = 200,
) -> web.StreamResponse:
    viewer: Viewer = request[VIEWER]
    images = request.config_dict[IMAGES]
    repo = await images.repository(name)
    viewer.check("ecr:GetLifecyclePolicy", name, repo.policy)
    saved = repo.lifecycle_policy
    can = {
        "put": viewer.can("ecr:PutLifecyclePolicy", name, repo.policy),
        "delete": viewer.can("ecr:DeleteLifecyclePolicy", name, repo.policy),
        "preview": all(viewer.can(action, name, repo.policy) for action in PREVIEW_ACTIONS),
        "apply": bool(saved)
        and all(viewer.can(action, name, repo.policy) for action in _apply_actions(_parsed(saved))),
    }
    as_of, as_of_error = _as_of(request, as_of_raw)
    shown = editor if previewing_editor else saved
    policy = _parsed(shown)
    preview: Preview | None = None
    if can["preview"] and policy is not None and not (error and previewing_editor):
        preview = await LifecycleData(request.config_dict[LIFECYCLE]).preview(name, policy, as_of)
    notice = NOTICES.get(request.query.get("notice", ""))
    return aiohttp_jinja2.render_template(
        "lifecycle.html",
        request,
        {
            "viewer": viewer,
            "name": name,
            "saved": saved,
            "evaluated_at": repo.lifecycle_evaluated_at,
            "editor": editor if editor is not None else pretty_json(saved),
            "previewing_editor": previewing_editor,
            "preview": preview,
            "rules": policy.rules if policy else (),
            "summary": rule_summary,
            "as_of_value": time_field(as_of),
            "as_of_error": as_of_error,
            "error": error,
            "can": can,
            "notice": notice.format(**{k: request.query.get(k, "?") for k in ("expired", "archived", "bytes")})
            if notice
            else None,
        },
        status=status,
    )


@signed_in
async def lifecycle_page(request: web.Request) -> web.StreamResponse:
    name = repository_name(request.match_info["name"])
    return await _page(request, name, as_of_raw=request.query.get("as_of"))


@signed_in
async def save_policy(request: web.Request) -> web.StreamResponse:
    viewer: Viewer = request[VIEWER]
    form = await checked_form(request)
    name = repository_name(field(form, "repository"))
    text = field(form, "policy", required=False)
    as_of_raw = field(form, "as_of", required=False)
    if form.get("do") == "preview":
        policy = await images_policy(request, name)
        for action in PREVIEW_ACTIONS:
            viewer.check(action, name, policy)
        try:
            lifecycle.parse_policy(text)
        except lifecycle.LifecyclePolicyError as e:
            return await _page(
                request, name, editor=text, previewing_editor=True, error=lifecycle.error_message(e), status=400
            )
        return await _page(request, name, editor=text, previewing_editor=True, as_of_raw=as_of_raw)
    try:
        await call(request, viewer, "PutLifecyclePolicy", {"repositoryName": name, "lifecyclePolicyText": text}, name)
    except RegistryError as e:
        if not refused(e):
            raise
        return await _page(request, name, editor=text, error=e.message, status=400)
    raise web.HTTPSeeOther(lifecycle_url(name, notice="saved"))


async def images_policy(request: web.Request, name: str) -> str | None:
    return await request.config_dict[IMAGES].policy_of(name)


@signed_in
async def delete_policy(request: web.Request) -> web.StreamResponse:
    viewer: Viewer = request[VIEWER]
    form = await checked_form(request)
    name = repository_name(field(form, "repository"))
    try:
        await call(request, viewer, "DeleteLifecyclePolicy", {"repositoryName": name}, name)
    except RegistryError as e:
        if not refused(e):
            raise
        return await _page(request, name, error=e.message, status=400)
    raise web.HTTPSeeOther(lifecycle_url(name, notice="deleted"))


@signed_in
async def apply_now(request: web.Request) -> web.StreamResponse:
    viewer: Viewer = request[VIEWER]
    form = await checked_form(request)
    name = repository_name(field(form, "repository"))
    repo = await request.config_dict[IMAGES].repository(name)
    for action in _apply_actions(_parsed(repo.lifecycle_policy)):
        viewer.check(action, name, repo.policy)
    if not repo.lifecycle_policy:
        return await _page(request, name, error="The repository has no lifecycle policy to apply.", status=400)
    reports = await request.config_dict[SWEEP_NOW](name)
    if reports is None:
        return await _page(request, name, error=SWEEP_BUSY, status=409)
    expired = sum(len(report.expired) for report in reports)
    archived = sum(len(report.transitioned) for report in reports)
    freed = sum(report.bytes for report in reports)
    query = {"notice": "applied", "expired": expired, "archived": archived, "bytes": human_size(freed)}
    raise web.HTTPSeeOther(f"{lifecycle_url(name)}?{urllib.parse.urlencode(query)}")


def add_routes(console: web.Application) -> None:
    console.router.add_get("/lifecycle/{name:.+}", lifecycle_page)
    console.router.add_post("/actions/lifecycle/save", save_policy)
    console.router.add_post("/actions/lifecycle/delete", delete_policy)
    console.router.add_post("/actions/lifecycle/apply", apply_now)
