"""AWS Signature Version 4 verification, header form: pure functions, no I/O, no clock (`now` is an argument).

The canonical request is built the way botocore builds it for every service but S3: the path has its dot
segments and repeated slashes removed and is percent-encoded once more (so `%20` is signed as `%2520`),
the query is decoded and re-encoded with only RFC 3986 unreserved characters left bare, and the signed
headers are lower-cased, sorted and their values trimmed. Errors are `SigV4Error`s carrying AWS's error code
and message text; the caller turns them into wire errors.

A signature binds the operation, not just the body: `Host`, the date header, `Content-Type` and every
`X-Amz-*` header sent (`X-Amz-Target` names the operation) must be among the signed headers, so a captured
request cannot be replayed as another operation. Only long-term access keys exist here, so a request that
carries a session token (`X-Amz-Security-Token`) is refused as AWS refuses a token that is not valid.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import quote, unquote

ALGORITHM = "AWS4-HMAC-SHA256"
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

MISSING_TOKEN = "MissingAuthenticationTokenException"
INCOMPLETE = "IncompleteSignatureException"
INVALID = "InvalidSignatureException"
UNRECOGNIZED = "UnrecognizedClientException"

INVALID_TOKEN = "The security token included in the request is invalid."
# Besides Host and the date header, these must be signed whenever they are sent; so must every x-amz-* header.
MUST_SIGN = ("content-type",)
SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret "
    "Access Key and signing method. Consult the service documentation for details."
)


class SigV4Error(Exception):
    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


@dataclass(frozen=True, slots=True)
class AuthorizationHeader:
    access_key_id: str
    date: str  # yyyymmdd of the credential scope
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


# -- parsing -----------------------------------------------------------------------------------------


def parse_authorization(value: str | None) -> AuthorizationHeader:
    """Parse `AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/ecr/aws4_request, SignedHeaders=..., Signature=..`."""
    if value is None or not value.strip():
        raise SigV4Error(MISSING_TOKEN, "Missing Authentication Token")
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise SigV4Error(INCOMPLETE, f"Unsupported Authorization algorithm '{algorithm[:40]}'; expected {ALGORITHM}.")
    params: dict[str, str] = {}
    for part in rest.split(","):
        key, sep, val = part.strip().partition("=")
        if sep:
            params[key.strip()] = val.strip()
    missing = [k for k in ("Credential", "SignedHeaders", "Signature") if not params.get(k)]
    if missing:
        raise SigV4Error(
            INCOMPLETE,
            " ".join(f"Authorization header requires '{k}' parameter." for k in missing)
            + f" Authorization={value[:200]}",
        )
    scope = params["Credential"].split("/")
    if len(scope) != 5:
        raise SigV4Error(
            INCOMPLETE,
            f"Credential should have 5 slash-separated parts (key/date/region/service/aws4_request), not {len(scope)}.",
        )
    access_key_id, date, region, service, terminator = scope
    if terminator != "aws4_request":
        raise SigV4Error(
            INCOMPLETE, f"Credential should be scoped with a valid terminator: 'aws4_request', not '{terminator}'."
        )
    if not access_key_id or not region or not service:
        raise SigV4Error(INCOMPLETE, "Credential has an empty access key id, region or service.")
    if len(date) != 8 or not date.isdigit():
        raise SigV4Error(INCOMPLETE, f"Credential date must be yyyymmdd, not '{date}'.")
    signed = tuple(h.strip().lower() for h in params["SignedHeaders"].split(";") if h.strip())
    return AuthorizationHeader(access_key_id, date, region, service, signed, params["Signature"])


# -- canonical request -------------------------------------------------------------------------------


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4, plus the collapsing of repeated slashes that AWS services expect (as botocore does)."""
    out: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if out:
                out.pop()
        elif segment and segment != ".":
            out.append(segment)
    first = "/" if path.startswith("/") else ""
    last = "/" if path.endswith("/") and out else ""
    return first + "/".join(out) + last


def canonical_uri(raw_path: str, *, double_encode: bool = True) -> str:
    """The canonical URI of the path as received (still percent-encoded, without the query string).

    Non-S3 services (ECR included) normalise the path and encode it once more; S3 (`double_encode=False`)
    signs the path exactly as sent.
    """
    if not raw_path:
        return "/"
    if not double_encode:
        return raw_path
    return quote(_remove_dot_segments(raw_path), safe="/~") or "/"


def canonical_query(raw_query: str) -> str:
    pairs = []
    for part in raw_query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((quote(unquote(name), safe="-_.~"), quote(unquote(value), safe="-_.~")))
    return "&".join(f"{n}={v}" for n, v in sorted(pairs))


def _header_items(headers: Mapping[str, str] | Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    return list(headers.items()) if isinstance(headers, Mapping) else list(headers)


def canonical_request(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Mapping[str, str] | Sequence[tuple[str, str]],
    signed_headers: Sequence[str],
    payload_sha256: str,
    *,
    double_encode_path: bool = True,
) -> str:
    names = sorted({h.lower() for h in signed_headers})
    values: dict[str, list[str]] = {name: [] for name in names}
    for name, value in _header_items(headers):
        if (lname := name.lower()) in values:
            values[lname].append(" ".join(value.split()))
    lines = [
        method.upper(),
        canonical_uri(raw_path, double_encode=double_encode_path),
        canonical_query(raw_query),
        *(f"{name}:{','.join(values[name])}" for name in names),
        "",
        ";".join(names),
        payload_sha256,
    ]
    return "\n".join(lines)


# -- signing -----------------------------------------------------------------------------------------


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def string_to_sign(amz_date: str, scope: str, canonical_request: str) -> str:
    return "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()])


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = _hmac(f"AWS4{secret}".encode(), date)
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    return key


def sign(secret: str, amz_date: str, region: str, service: str, canonical_request: str) -> str:
    date = amz_date[:8]
    sts = string_to_sign(amz_date, f"{date}/{region}/{service}/aws4_request", canonical_request)
    return hmac.new(signing_key(secret, date, region, service), sts.encode(), hashlib.sha256).hexdigest()


# -- verification ------------------------------------------------------------------------------------


def _first(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    return next((v for k, v in headers if k.lower() == name), None)


def _check_signed(headers: Sequence[tuple[str, str]], signed: Sequence[str]) -> None:
    """Every x-amz-* header sent, and those of MUST_SIGN, must be signed."""
    signed_set = set(signed)
    for name, _ in headers:
        lname = name.lower()
        if (lname.startswith("x-amz-") or lname in MUST_SIGN) and lname not in signed_set:
            shown = "-".join(part.capitalize() for part in lname.split("-"))
            raise SigV4Error(INCOMPLETE, f"'{shown}' must be a 'SignedHeader' in the AWS Authorization.")


def _request_time(headers: Sequence[tuple[str, str]], authorization: str) -> tuple[datetime, str]:
    """The request's signing time and the header it came from (X-Amz-Date wins over Date)."""
    if (value := _first(headers, "x-amz-date")) is not None:
        try:
            return datetime.strptime(value.strip(), AMZ_DATE_FORMAT).replace(tzinfo=UTC), "x-amz-date"
        except ValueError:
            raise SigV4Error(
                INCOMPLETE, f"Date must be in ISO-8601 'basic format'. Got '{value[:40]}'. See ISO 8601."
            ) from None
    if (value := _first(headers, "date")) is not None:
        try:
            parsed = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            raise SigV4Error(INCOMPLETE, f"Date header is not an HTTP date: '{value[:40]}'.") from None
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC), "date"
    raise SigV4Error(
        INCOMPLETE,
        "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. "
        f"Authorization={authorization[:200]}",
    )


def _check_skew(signed_at: datetime, now: datetime, max_skew: timedelta) -> None:
    minutes = f"{int(max_skew.total_seconds() // 60)} min."
    fmt = AMZ_DATE_FORMAT
    if now - signed_at > max_skew:
        raise SigV4Error(
            INVALID,
            f"Signature expired: {signed_at:{fmt}} is now earlier than {now - max_skew:{fmt}} "
            f"({now:{fmt}} - {minutes})",
        )
    if signed_at - now > max_skew:
        raise SigV4Error(
            INVALID,
            f"Signature not yet current: {signed_at:{fmt}} is still later than {now + max_skew:{fmt}} "
            f"({now:{fmt}} + {minutes})",
        )


def verify(
    *,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: list[tuple[str, str]],
    body_sha256: str,
    secret_for: Callable[[str], str | None],
    now: datetime,
    max_skew: timedelta = timedelta(minutes=15),
    service: str | None = "ecr",
    region: str | None = None,
) -> AuthorizationHeader:
    """Check a request's SigV4 Authorization header; return it parsed, or raise SigV4Error.

    `raw_path` is the path as received (percent-encoded, no query string); `body_sha256` the hex SHA-256 of
    the body as received. With `region`, the credential must be scoped to it (a request signed for another
    region is refused, as AWS refuses it).
    """
    raw_auth = _first(headers, "authorization") or ""
    auth = parse_authorization(raw_auth)
    if service is not None and auth.service != service:
        raise SigV4Error(INVALID, f"Credential should be scoped to correct service: '{service}'.")
    if region is not None and auth.region != region:
        raise SigV4Error(INVALID, f"Credential should be scoped to a valid region, not '{auth.region[:40]}'.")
    signed_at, date_header = _request_time(headers, raw_auth)
    if "host" not in auth.signed_headers:
        raise SigV4Error(INCOMPLETE, "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.")
    if date_header not in auth.signed_headers:
        shown = "X-Amz-Date" if date_header == "x-amz-date" else "Date"
        raise SigV4Error(INCOMPLETE, f"'{shown}' must be a 'SignedHeader' in the AWS Authorization.")
    _check_signed(headers, auth.signed_headers)
    amz_date = f"{signed_at:{AMZ_DATE_FORMAT}}"
    if auth.date != amz_date[:8]:
        raise SigV4Error(
            INVALID,
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
            f"'{auth.date}' != '{amz_date[:8]}', from '{amz_date}'.",
        )
    _check_skew(signed_at, now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC), max_skew)
    secret = secret_for(auth.access_key_id)
    if secret is None or _first(headers, "x-amz-security-token") is not None:
        raise SigV4Error(UNRECOGNIZED, INVALID_TOKEN)
    request = canonical_request(method, raw_path, raw_query, headers, auth.signed_headers, body_sha256)
    expected = sign(secret, amz_date, auth.region, auth.service, request)
    if not hmac.compare_digest(expected.encode(), auth.signature.encode()):
        raise SigV4Error(INVALID, SIGNATURE_MISMATCH)
    return auth
