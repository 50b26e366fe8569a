"""Console sessions: sign-in and sign-out, the session cookie, the CSRF check of every form, and who the viewer
of a page is (`Viewer`, whose `can` asks the same IAM evaluation as the APIs).

The cookie holds a signed session (`KeyRing.issue_session`: the principal's name, a random session id, an
expiry), nothing secret; it is HttpOnly, SameSite=Strict, Secure when the server serves TLS, and expires with
the session (the principal's token lifetime, 12 hours at most; a registry token's own expiry when signed in
with one). A session of a principal that no longer exists is no session. Signing out ends the session on the
server too, not only in the browser: its id is kept in the metadata store's shared values until the session
would have expired (`console-signed-out/<id>`), so a copy of the cookie is refused by every worker and replica.
With `[auth] enabled = false` there is no sign-in: every visitor gets a session (for the CSRF token) and may do
what the APIs let anyone do.
"""

from __future__ import annotations

import hmac
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from registry.auth.access import AccessControl
from registry.auth.principals import Principal
from registry.auth.tokens import TokenError
from registry.console.data import ConsoleData
from registry.console.session import (
    SESSION_TTL_MAX,
    SignInLimiter,
    csrf_token,
    csrf_valid,
    new_session_id,
    same_origin,
)
from registry.web.auth import base_url, condition_keys
from registry.web.context import ACCESS, CONFIG, META
from registry.web.middleware import PRINCIPAL

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
COOKIE = "moorage_console"
VIEWER = web.RequestKey["Viewer"]("moorage.console.viewer")  # the Viewer of a signed-in request
_NEW_COOKIE = web.RequestKey[tuple[str, float]]("moorage.console.new_cookie")  # (value, max_age) for the response
_CLEAR_COOKIE = web.RequestKey("moorage.console.clear_cookie", bool)
SIGN_IN = "/console/sign-in"
HOME = "/console/repositories"
FAILED = "Sign-in failed: those credentials are not valid."  # never which half was wrong
STALE_FORM = "The form has expired or did not come from this console. Reload the page and try again."
# Every console response: no framing, no sniffing, scripts and styles from the console only, no caching of pages
# that name a principal's repositories.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

STATIC_TYPES = ("text/css", "application/javascript", "text/javascript")  # may be cached (pages may not)
SIGNED_OUT = "console-signed-out/"  # shared value name prefix: a signed-out session's id -> its expiry


@dataclass(slots=True)
class ConsoleState:
    data: ConsoleData
    limiter: SignInLimiter


CONSOLE = web.AppKey("console", ConsoleState)


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is looking at a page, and what IAM lets them do (evaluated now, as for every API request)."""

    principal: Principal | None  # None with auth off
    session_id: str
    expires_at: float
    access: AccessControl
    keys: Mapping[str, str]  # the request's condition keys (aws:SourceIp, ...)

    @property
    def name(self) -> str:
        return self.principal.name if self.principal else "anonymous"

    @property
    def auth(self) -> bool:
        return self.access.enabled

    @property
    def csrf(self) -> str:
        return csrf_token(self.session_id)

    def can(self, action: str, repository: str | None = None, policy: str | None = None) -> bool:
        return self.access.allowed(self.principal, [action], repository, policy, self.keys)

    def check(self, action: str, repository: str | None = None, policy: str | None = None) -> None:
        """403 (Denied, with IAM's words) unless `action` is allowed."""
        self.access.check(self.principal, [action], repository, policy_text=policy, condition_keys=self.keys)


def page_headers(response: web.StreamResponse) -> None:
    for name, value in PAGE_HEADERS.items():
        response.headers.setdefault(name, value)
    if not response.headers.get("Content-Type", "").startswith(STATIC_TYPES):
        response.headers.setdefault("Cache-Control", "no-store")


async def _viewer(request: web.Request) -> Viewer | None:
    """The request's session, if it carries a valid one (not expired, not signed out). With auth off, a new one
    if it does not."""
    access = request.config_dict[ACCESS]
    now = access.clock()
    token = request.cookies.get(COOKIE)
    claims = None
    if token:
        try:
            claims = access.keyring.verify_session(token, now)
        except TokenError:
            claims = None
    if not access.enabled:
        if claims is None:
            session_id = new_session_id()
            value, expires_at = access.keyring.issue_session("", session_id, now, SESSION_TTL_MAX)
            request[_NEW_COOKIE] = (value, expires_at - now)
            return Viewer(None, session_id, expires_at, access, condition_keys(request, None))
        return Viewer(None, claims.session or "", claims.expires_at, access, condition_keys(request, None))
    if claims is None or not claims.principal:
        return None
    if await request.config_dict[META].get_value(SIGNED_OUT + (claims.session or "")) is not None:
        return None
    principal = access.directory.by_name.get(claims.principal)
    if principal is None:
        return None
    request[PRINCIPAL] = principal  # the access log names who did what
    return Viewer(principal, claims.session or "", claims.expires_at, access, condition_keys(request, principal))


def signed_in(handler: Handler) -> Handler:
    """A page or action for a signed-in viewer: without a session, a page leads to the sign-in (and back), an
    action is refused."""

    async def wrapper(request: web.Request) -> web.StreamResponse:
        viewer = await _viewer(request)
        if viewer is None:
            if request.method in ("GET", "HEAD"):
                raise web.HTTPFound(f"{SIGN_IN}?{urllib.parse.urlencode({'next': request.path_qs})}")
            raise web.HTTPForbidden(reason="Sign in first.")
        request[VIEWER] = viewer
        return await handler(request)

    return wrapper


def finish(request: web.Request, response: web.StreamResponse) -> None:
    """Set or clear the session cookie on the way out."""
    secure = request.secure
    if (new := request.get(_NEW_COOKIE)) is not None:
        value, max_age = new
        response.set_cookie(
            COOKIE, value, max_age=int(max_age), path="/", httponly=True, samesite="Strict", secure=secure or None
        )
    elif request.get(_CLEAR_COOKIE):
        response.del_cookie(COOKIE, path="/", httponly=True, samesite="Strict", secure=secure or None)


def _origins(request: web.Request) -> set[str]:
    return {f"{request.scheme}://{request.host}", base_url(request)}


async def checked_form(request: web.Request) -> Mapping[str, Any]:
    """The form of a state-changing POST, when it carries the session's CSRF token and comes from the console's
    own origin; otherwise 403, and nothing is done."""
    viewer: Viewer = request[VIEWER]
    if not same_origin(request.headers.get("Origin"), request.headers.get("Referer"), _origins(request)):
        raise web.HTTPForbidden(reason=STALE_FORM)
    form = await request.post()
    token = form.get("csrf")
    if not csrf_valid(viewer.session_id, token if isinstance(token, str) else None):
        raise web.HTTPForbidden(reason=STALE_FORM)
    return form


def safe_next(value: object) -> str:
    """Where to go after signing in: a console path only (never another site, nor `//host`)."""
    if isinstance(value, str) and value.startswith("/console/") and "\\" not in value and not value.startswith("//"):
        return value
    return HOME


# -- sign-in and sign-out ------------------------------------------------------------------------------


async def sign_in_page(request: web.Request) -> web.StreamResponse:
    if not request.config_dict[ACCESS].enabled or await _viewer(request) is not None:
        raise web.HTTPFound(safe_next(request.query.get("next")))
    return _sign_in_form(request, safe_next(request.query.get("next")))


def _sign_in_form(request: web.Request, next_url: str, error: str | None = None, status: int = 200) -> web.Response:
    return aiohttp_jinja2.render_template(
        "sign_in.html", request, {"viewer": None, "next": next_url, "error": error}, status=status
    )


async def sign_in(request: web.Request) -> web.StreamResponse:
    access = request.config_dict[ACCESS]
    if not access.enabled:
        raise web.HTTPSeeOther(HOME)
    if not same_origin(request.headers.get("Origin"), request.headers.get("Referer"), _origins(request)):
        raise web.HTTPForbidden(reason=STALE_FORM)
    form = await request.post()
    next_url = safe_next(form.get("next"))
    limiter = request.app[CONSOLE].limiter
    address, now = request.remote or "", access.clock()
    wait = limiter.retry_after(address, now)
    if wait:
        response = _sign_in_form(
            request, next_url, f"Too many failed sign-ins from your address; try again in {int(wait)} seconds.", 429
        )
        response.headers["Retry-After"] = str(int(wait))
        return response
    found = _authenticate(request, form, now)
    if found is None:
        limiter.failed(address, now)
        return _sign_in_form(request, next_url, FAILED, 401)
    principal, expires_at = found
    value, expires_at = access.keyring.issue_session(principal.name, new_session_id(), now, expires_at - now)
    request[_NEW_COOKIE] = (value, expires_at - now)
    request[PRINCIPAL] = principal
    raise web.HTTPSeeOther(next_url)


def _authenticate(request: web.Request, form: Mapping[str, Any], now: float) -> tuple[Principal, float] | None:
    """The principal the form's credentials name and when its session must end; None if they name nobody.
    A registry token (the docker-login password) ends the session when it expires; access keys after
    `[auth] token_ttl` (12 hours at most). An anonymous token names nobody."""
    access = request.config_dict[ACCESS]
    ttl = min(request.config_dict[CONFIG].auth.token_ttl, SESSION_TTL_MAX)
    token = str(form.get("token") or "").strip()
    if token:
        try:
            claims = access.keyring.verify(token, now)
        except TokenError:
            return None
        principal = access.directory.by_name.get(claims.principal) if not claims.anonymous else None
        return (principal, min(claims.expires_at, now + SESSION_TTL_MAX)) if principal else None
    key_id = str(form.get("access_key_id") or "").strip()
    secret = str(form.get("secret_access_key") or "")
    principal = access.directory.by_access_key.get(key_id)
    expected = principal.secret_access_key.reveal() if principal else "\0" * 40  # compared all the same
    if not hmac.compare_digest(expected.encode(), secret.encode()) or principal is None or not secret:
        return None
    return principal, now + ttl


@signed_in
async def sign_out(request: web.Request) -> web.StreamResponse:
    await checked_form(request)
    viewer: Viewer = request[VIEWER]
    if viewer.principal is not None:
        meta, now = request.config_dict[META], request.config_dict[ACCESS].clock()
        await meta.put_value(SIGNED_OUT + viewer.session_id, str(int(viewer.expires_at)).encode())
        for name, value in (await meta.values(SIGNED_OUT)).items():  # forget those that have expired since
            if _expiry(value) < now:
                await meta.delete_value(name)
    request[_CLEAR_COOKIE] = True
    raise web.HTTPSeeOther(SIGN_IN)


def _expiry(value: bytes) -> float:
    try:
        return float(value.decode())
    except (UnicodeDecodeError, ValueError):
        return 0.0


def add_routes(console: web.Application) -> None:
    console.router.add_get("/sign-in", sign_in_page)
    console.router.add_post("/sign-in", sign_in)
    console.router.add_post("/sign-out", sign_out)
