"""The console's permissions page: a repository's policy (view, edit, delete) and "who can pull / push".

    /console/permissions/{name}?principal=NAME           the page
    /console/actions/policy/{save,delete}                POST forms (CSRF-checked)

The page needs `ecr:GetRepositoryPolicy` on the repository: it shows the policy, and the answer for any
principal of the directory is what that policy and the principal's identity policies decide, which whoever may
read the policy is trusted to work out (no secret is shown: names, actions and the deciding statement's Sid).
Saving runs SetRepositoryPolicy (`ecr:SetRepositoryPolicy`; a refused document is shown with the API's message
and stays in the editor), deleting DeleteRepositoryPolicy (`ecr:DeleteRepositoryPolicy`).
"""

from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web

from registry.console.permissions import PULL_NEEDS, who_can
from registry.console.views import pretty_json
from registry.errors import RegistryError
from registry.web.console.calls import call, console_url, field, refused, repository_name
from registry.web.console.sessions import VIEWER, Viewer, checked_form, signed_in
from registry.web.context import ACCESS, IMAGES

NOTICES = {"saved": "Saved the repository policy.", "deleted": "Deleted the repository policy."}
MAX_PRINCIPAL = 128


def permissions_url(name: str, **query: object) -> str:
    return console_url("permissions", name, **query)


async def _page(
    request: web.Request,
    name: str,
    *,
    who: str | None = None,
    editor: str | None = None,
    error: str | None = None,
    status: int = 200,
) -> web.StreamResponse:
    viewer: Viewer = request[VIEWER]
    repo = await request.config_dict[IMAGES].repository(name)
    viewer.check("ecr:GetRepositoryPolicy", name, repo.policy)
    access = request.config_dict[ACCESS]
    names = sorted(access.directory.by_name) if access.enabled else []
    chosen = who if who is not None else (viewer.principal.name if viewer.principal else "")
    answer, who_error = None, None
    if chosen and len(chosen) <= MAX_PRINCIPAL and chosen in access.directory.by_name:
        answer = who_can(access, access.directory.by_name[chosen], name, repo.policy, viewer.keys)
    elif chosen:
        who_error = "There is no such principal in the directory."
    notice = NOTICES.get(request.query.get("notice", ""))
    return aiohttp_jinja2.render_template(
        "permissions.html",
        request,
        {
            "viewer": viewer,
            "name": name,
            "policy": repo.policy,
            "editor": editor if editor is not None else pretty_json(repo.policy),
            "principals": names,
            "chosen": chosen,
            "answer": answer,
            "who_error": who_error,
            "pull_needs": PULL_NEEDS,
            "auth": access.enabled,
            "can": {
                "set": viewer.can("ecr:SetRepositoryPolicy", name, repo.policy),
                "delete": viewer.can("ecr:DeleteRepositoryPolicy", name, repo.policy),
            },
            "error": error,
            "notice": notice,
        },
        status=status,
    )


@signed_in
async def permissions_page(request: web.Request) -> web.StreamResponse:
    name = repository_name(request.match_info["name"])
    return await _page(request, name, who=request.query.get("principal"))


@signed_in
async def save_policy(request: web.Request) -> web.StreamResponse:
    viewer: Viewer = request[VIEWER]
    form = await checked_form(request)
    name = repository_name(field(form, "repository"))
    text = field(form, "policy", required=False)
    try:
        await call(request, viewer, "SetRepositoryPolicy", {"repositoryName": name, "policyText": text}, name)
    except RegistryError as e:
        if not refused(e):
            raise
        return await _page(request, name, editor=text, error=e.message, status=400)
    raise web.HTTPSeeOther(permissions_url(name, notice="saved"))


@signed_in
async def delete_policy(request: web.Request) -> web.StreamResponse:
    viewer: Viewer = request[VIEWER]
    form = await checked_form(request)
    name = repository_name(field(form, "repository"))
    try:
        await call(request, viewer, "DeleteRepositoryPolicy", {"repositoryName": name}, name)
    except RegistryError as e:
        if not refused(e):
            raise
        return await _page(request, name, error=e.message, status=400)
    raise web.HTTPSeeOther(permissions_url(name, notice="deleted"))


def add_routes(console: web.Application) -> None:
    console.router.add_get("/permissions/{name:.+}", permissions_page)
    console.router.add_post("/actions/policy/save", save_policy)
    console.router.add_post("/actions/policy/delete", delete_policy)
