"""The console sign-in's pure part: session ids, the CSRF token each session's forms carry, the same-origin
check that goes with it, and the limiter of failed sign-ins.

A session is a signed cookie (`registry.auth.tokens.KeyRing.issue_session`) naming the principal and a random
session id. Every state-changing form carries the session's CSRF token, derived from that id: a page served to
the session has it, another site cannot read it (the cookie is HttpOnly, and the pages are same-origin only), and
another session's token does not fit. A POST must also come from the console's own origin (its `Origin`, or its
`Referer` when a browser sends no Origin): SameSite=Strict alone does not stop a sibling subdomain or an old
browser.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

SESSION_TTL_MAX = 12 * 3600.0  # never longer than a registry token
LIMIT_FAILURES = 10  # failed sign-ins per address within LIMIT_WINDOW, then refused until the window moves on
LIMIT_WINDOW = 300.0
LIMIT_ADDRESSES = 10000  # addresses remembered (the oldest are forgotten first)


def new_session_id() -> str:
    return secrets.token_urlsafe(24)


def csrf_token(session_id: str) -> str:
    """The CSRF token of a session: a hash of its id (the id itself never appears in a page)."""
    return hashlib.sha256(b"moorage console csrf\0" + session_id.encode()).hexdigest()


def csrf_valid(session_id: str, presented: str | None) -> bool:
    if not presented:
        return False
    return hmac.compare_digest(csrf_token(session_id).encode(), presented.encode())


def same_origin(origin: str | None, referer: str | None, allowed: set[str]) -> bool:
    """Whether a POST comes from one of the `allowed` origins (scheme://host[:port]): its Origin header, or
    without one its Referer's origin. Neither (or Origin "null"): refused."""
    if origin:
        return origin.rstrip("/") in allowed
    if referer:
        parts = urlsplit(referer)
        return f"{parts.scheme}://{parts.netloc}" in allowed
    return False


class SignInLimiter:
    """Failed sign-ins per remote address in a sliding window (in memory, per process: a brake on guessing, not
    an account lockout, which would let anyone lock the admin out). A success does not reset the count: whoever
    holds one principal's keys must not be able to guess another's faster."""

    def __init__(
        self, failures: int = LIMIT_FAILURES, window: float = LIMIT_WINDOW, addresses: int = LIMIT_ADDRESSES
    ) -> None:
        self.failures = failures
        self.window = window
        self.addresses = addresses
        self._seen: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()

    def _recent(self, address: str, now: float) -> collections.deque[float]:
        times = self._seen.get(address)
        if times is None:
            return collections.deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._seen[address]
        return times

    def retry_after(self, address: str, now: float) -> float:
        """Seconds until `address` may try again (0: it may now)."""
        times = self._recent(address, now)
        if len(times) < self.failures:
            return 0.0
        return max(times[-self.failures] + self.window - now, 1.0)

    def failed(self, address: str, now: float) -> None:
        times = self._recent(address, now)
        self._seen[address] = times
        self._seen.move_to_end(address)
        times.append(now)
        while len(times) > self.failures:
            times.popleft()
        while len(self._seen) > self.addresses:
            self._seen.popitem(last=False)
