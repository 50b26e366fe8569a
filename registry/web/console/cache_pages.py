"""The console's pull-through cache pages: the rules with their counters and cache repositories, and creating,
editing, validating and deleting a rule.

    /console/pull-through                             every rule (ecr:DescribePullThroughCacheRules)
    /console/pull-through/rules/{prefix}              one rule and its cache repositories
    /console/actions/pull-through/{create,update,validate,delete}    POST forms (CSRF-checked)

Each action runs the ECR operation of the same name through `calls.call` (the same checks, service method and
messages as the API), so it needs `ecr:CreatePullThroughCacheRule`, `ecr:UpdatePullThroughCacheRule` (which
changes the credential only, as in ECR), `ecr:ValidatePullThroughCacheRule` or `ecr:DeletePullThroughCacheRule`
on `*`. Rules declared in the configuration file are read-only (the page says why, in the service's words).
Cache repositories are listed by name only where the viewer may `ecr:DescribeRepositories` them.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from registry.console.cache import CacheData, RuleRow
from registry.errors import RegistryError
from registry.naming import normalize_prefix
from registry.web.console.calls import call, field, refused
from registry.web.console.sessions import VIEWER, Viewer, checked_form, signed_in
from registry.web.context import CONFIG, IMAGES, META, PULL_THROUGH, RULES

LIST = "/console/pull-through"
ACTIONS = ("Create", "Update", "Validate", "Delete")
NOTICES = {
    "created": "Created the rule {prefix}.",
    "updated": "Saved the rule {prefix}'s credential.",
    "deleted": "Deleted the rule {prefix}; the repositories it cached stay.",
}


def rule_url(prefix: str, **query: object) -> str:
    url = f"{LIST}/rules/{urllib.parse.quote(prefix, safe='/')}"
    return url + ("?" + urllib.parse.urlencode(query) if query else "")


def _data(request: web.Request) -> CacheData:
    config = request.config_dict[CONFIG]
    return CacheData(request.config_dict[PULL_THROUGH], request.config_dict[META], config.registry.account_id)


async def _rows(request: web.Request, viewer: Viewer) -> list[RuleRow]:
    images = request.config_dict[IMAGES]

    async def visible(name: str) -> bool:
        return viewer.can("ecr:DescribeRepositories", name, await images.policy_of(name))

    return await _data(request).rules(visible)


def _can(viewer: Viewer) -> dict[str, bool]:
    # "edit", not "update": a template's `can.update` would be the dict's method
    names = {"Create": "create", "Update": "edit", "Validate": "validate", "Delete": "delete"}
    return {names[action]: viewer.can(f"ecr:{action}PullThroughCacheRule") for action in ACTIONS}


async def _list_page(
    request: web.Request, error: str | None = None, form: dict[str, str] | None = None, status: int = 200
) -> web.StreamResponse:
    viewer: Viewer = request[VIEWER]
    viewer.check("ecr:DescribePullThroughCacheRules")
    notice = NOTICES.get(request.query.get("notice", ""))
    return aiohttp_jinja2.render_template(
        "pull_through.html",
        request,
        {
            "viewer": viewer,
            "rows": await _rows(request, viewer),
            "can": _can(viewer),
            "secrets": _data(request).secret_arns(),
            "max_cache_bytes": request.config_dict[CONFIG].pull_through.max_cache_bytes,
            "notice": notice.format(prefix=request.query.get("prefix", "")) if notice else None,
            "error": error,
            "form": form or {},
            "rule_url": rule_url,
        },
        status=status,
    )


@signed_in
async def rules_page(request: web.Request) -> web.StreamResponse:
    return await _list_page(request)


async def _rule_page(
    request: web.Request,
    prefix: str,
    *,
    error: str | None = None,
    validation: dict[str, Any] | None = None,
    status: int = 200,
) -> web.StreamResponse:
    viewer: Viewer = request[VIEWER]
    viewer.check("ecr:DescribePullThroughCacheRules")
    row = next((row for row in await _rows(request, viewer) if row.rule.prefix == prefix), None)
    if row is None:
        raise web.HTTPNotFound()
    notice = NOTICES.get(request.query.get("notice", ""))
    return aiohttp_jinja2.render_template(
        "pull_through_rule.html",
        request,
        {
            "viewer": viewer,
            "row": row,
            "can": _can(viewer),
            "read_only": request.config_dict[RULES].read_only(prefix),
            "secrets": _data(request).secret_arns(),
            "notice": notice.format(prefix=prefix) if notice else None,
            "error": error,
            "validation": validation,
            "rule_url": rule_url,
        },
        status=status,
    )


@signed_in
async def rule_page(request: web.Request) -> web.StreamResponse:
    return await _rule_page(request, normalize_prefix(request.match_info["prefix"]))


# -- actions ---------------------------------------------------------------------------------------------


@signed_in
async def create_rule(request: web.Request) -> web.StreamResponse:
    viewer: Viewer = request[VIEWER]
    form = await checked_form(request)
    values = {
        name: field(form, name, required=False).strip()
        for name in ("prefix", "upstream_url", "upstream_prefix", "credential_arn")
    }
    params: dict[str, Any] = {
        "ecrRepositoryPrefix": values["prefix"],
        "upstreamRegistryUrl": values["upstream_url"],
    }
    if values["upstream_prefix"]:
        params["upstreamRepositoryPrefix"] = values["upstream_prefix"]
    if values["credential_arn"]:
        params["credentialArn"] = values["credential_arn"]
    try:
        created = await call(request, viewer, "CreatePullThroughCacheRule", params)
    except RegistryError as e:
        if not refused(e):
            raise
        return await _list_page(request, error=e.message, form=values, status=400)
    raise web.HTTPSeeOther(rule_url(created["ecrRepositoryPrefix"], notice="created"))


async def _rule_action(request: web.Request) -> tuple[Viewer, dict[str, str], str]:
    viewer: Viewer = request[VIEWER]
    form = await checked_form(request)
    values = {"prefix": field(form, "prefix"), "credential_arn": field(form, "credential_arn", required=False)}
    return viewer, values, normalize_prefix(values["prefix"])


@signed_in
async def update_rule(request: web.Request) -> web.StreamResponse:
    viewer, values, prefix = await _rule_action(request)
    params = {"ecrRepositoryPrefix": prefix}
    if values["credential_arn"]:
        params["credentialArn"] = values["credential_arn"]
    try:
        await call(request, viewer, "UpdatePullThroughCacheRule", params)
    except RegistryError as e:
        if not refused(e):
            raise
        return await _rule_page(request, prefix, error=e.message, status=400)
    raise web.HTTPSeeOther(rule_url(prefix, notice="updated"))


@signed_in
async def validate_rule(request: web.Request) -> web.StreamResponse:
    viewer, _, prefix = await _rule_action(request)
    try:
        result = await call(request, viewer, "ValidatePullThroughCacheRule", {"ecrRepositoryPrefix": prefix})
    except RegistryError as e:
        if not refused(e):
            raise
        return await _rule_page(request, prefix, error=e.message, status=400)
    return await _rule_page(request, prefix, validation=result)


@signed_in
async def delete_rule(request: web.Request) -> web.StreamResponse:
    viewer, _, prefix = await _rule_action(request)
    try:
        await call(request, viewer, "DeletePullThroughCacheRule", {"ecrRepositoryPrefix": prefix})
    except RegistryError as e:
        if not refused(e):
            raise
        return await _rule_page(request, prefix, error=e.message, status=400)
    raise web.HTTPSeeOther(f"{LIST}?{urllib.parse.urlencode({'notice': 'deleted', 'prefix': prefix})}")


def add_routes(console: web.Application) -> None:
    console.router.add_get("/pull-through", rules_page)
    console.router.add_get("/pull-through/rules/{prefix:.+}", rule_page)
    console.router.add_post("/actions/pull-through/create", create_rule)
    console.router.add_post("/actions/pull-through/update", update_rule)
    console.router.add_post("/actions/pull-through/validate", validate_rule)
    console.router.add_post("/actions/pull-through/delete", delete_rule)
