"""SigV4 verification against AWS's published vectors, botocore's old suite, and botocore itself."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone

import pytest

from registry.auth import sigv4
from registry.auth.sigv4 import INCOMPLETE, INVALID, MISSING_TOKEN, UNRECOGNIZED, SigV4Error

EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

# AWS SigV4 test suite (aws-sig-v4-test-suite): region us-east-1, service "service".
SUITE_KEY, SUITE_SECRET = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
SUITE_DATE = "20150830T123600Z"
SUITE_NOW = datetime(2015, 8, 30, 12, 36, tzinfo=UTC)

# S3's documentation examples: region us-east-1, service s3.
S3_KEY, S3_SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
S3_DATE, S3_HOST = "20130524T000000Z", "examplebucket.s3.amazonaws.com"

# botocore's older suite: Date header rather than X-Amz-Date, service "host".
OLD_DATE_HEADER = "Mon, 09 Sep 2011 23:36:00 GMT"
OLD_NOW = datetime(2011, 9, 9, 23, 36, tzinfo=UTC)


def _authorization(key: str, amz_date: str, region: str, service: str, signed: str, signature: str) -> str:
    return (
        f"AWS4-HMAC-SHA256 Credential={key}/{amz_date[:8]}/{region}/{service}/aws4_request, "
        f"SignedHeaders={signed}, Signature={signature}"
    )


def _suite_headers(signature: str, *, signed: str = "host;x-amz-date", **overrides: str) -> list[tuple[str, str]]:
    fields = {
        "Host": "example.amazonaws.com",
        "X-Amz-Date": SUITE_DATE,
        "Authorization": _authorization(SUITE_KEY, SUITE_DATE, "us-east-1", "service", signed, signature),
    }
    fields.update(overrides)
    return [(k, v) for k, v in fields.items() if v]


def _suite_secret(key: str) -> str | None:
    return SUITE_SECRET if key == SUITE_KEY else None


# -- the AWS test suite ------------------------------------------------------------------------------

SUITE = [
    ("get-vanilla", "GET", "/", "", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
    (
        "get-vanilla-query-order-key-case",
        "GET",
        "/",
        "Param2=value2&Param1=value1",
        "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
    ),
    ("post-vanilla", "POST", "/", "", "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
]


@pytest.mark.parametrize(("name", "method", "path", "query", "signature"), SUITE, ids=[s[0] for s in SUITE])
def test_aws_suite_signature(name: str, method: str, path: str, query: str, signature: str) -> None:
    headers = [("Host", "example.amazonaws.com"), ("X-Amz-Date", SUITE_DATE)]
    request = sigv4.canonical_request(method, path, query, headers, ["host", "x-amz-date"], EMPTY)
    assert sigv4.sign(SUITE_SECRET, SUITE_DATE, "us-east-1", "service", request) == signature


@pytest.mark.parametrize(("name", "method", "path", "query", "signature"), SUITE, ids=[s[0] for s in SUITE])
def test_aws_suite_verifies(name: str, method: str, path: str, query: str, signature: str) -> None:
    auth = sigv4.verify(
        method=method,
        raw_path=path,
        raw_query=query,
        headers=_suite_headers(signature),
        body_sha256=EMPTY,
        secret_for=_suite_secret,
        now=SUITE_NOW,
        service="service",
    )
    assert auth == sigv4.AuthorizationHeader(
        SUITE_KEY, "20150830", "us-east-1", "service", ("host", "x-amz-date"), signature
    )


def test_get_vanilla_intermediate_steps() -> None:
    headers = {"Host": "example.amazonaws.com", "X-Amz-Date": SUITE_DATE}
    request = sigv4.canonical_request("GET", "/", "", headers, ["host", "x-amz-date"], EMPTY)
    assert request == (f"GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:{SUITE_DATE}\n\nhost;x-amz-date\n{EMPTY}")
    sts = sigv4.string_to_sign(SUITE_DATE, "20150830/us-east-1/service/aws4_request", request)
    assert sts.splitlines() == [
        "AWS4-HMAC-SHA256",
        SUITE_DATE,
        "20150830/us-east-1/service/aws4_request",
        "bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63",
    ]


# -- S3's documentation examples (S3 signs the path as sent) ----------------------------------------

S3_VECTORS = [
    (
        "get-object-range",
        "GET",
        "/test.txt",
        "",
        [("Range", "bytes=0-9"), ("x-amz-content-sha256", EMPTY)],
        "host;range;x-amz-content-sha256;x-amz-date",
        EMPTY,
        "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
    ),
    (
        "get-bucket-lifecycle",
        "GET",
        "/",
        "lifecycle",
        [("x-amz-content-sha256", EMPTY)],
        "host;x-amz-content-sha256;x-amz-date",
        EMPTY,
        "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543",
    ),
    (
        "list-objects",
        "GET",
        "/",
        "max-keys=2&prefix=J",
        [("x-amz-content-sha256", EMPTY)],
        "host;x-amz-content-sha256;x-amz-date",
        EMPTY,
        "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
    ),
    (
        "put-object",
        "PUT",
        "/test%24file.text",
        "",
        [
            ("Date", "Fri, 24 May 2013 00:00:00 GMT"),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ("x-amz-content-sha256", hashlib.sha256(b"Welcome to Amazon S3.").hexdigest()),
        ],
        "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class",
        "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072",
        "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd",
    ),
]


@pytest.mark.parametrize(
    ("name", "method", "path", "query", "extra", "signed", "payload", "signature"),
    S3_VECTORS,
    ids=[v[0] for v in S3_VECTORS],
)
def test_s3_documentation_vectors(
    name: str,
    method: str,
    path: str,
    query: str,
    extra: list[tuple[str, str]],
    signed: str,
    payload: str,
    signature: str,
) -> None:
    headers = [("Host", S3_HOST), ("x-amz-date", S3_DATE), *extra]
    request = sigv4.canonical_request(
        method, path, query, headers, signed.split(";"), payload, double_encode_path=False
    )
    assert sigv4.sign(S3_SECRET, S3_DATE, "us-east-1", "s3", request) == signature


def test_s3_put_canonical_request_keeps_the_path_as_sent() -> None:
    _, method, path, query, extra, signed, payload, _ = S3_VECTORS[3]
    headers = [("Host", S3_HOST), ("x-amz-date", S3_DATE), *extra]
    request = sigv4.canonical_request(
        method, path, query, headers, signed.split(";"), payload, double_encode_path=False
    )
    assert request.splitlines()[:3] == ["PUT", "/test%24file.text", ""]


# -- botocore's older suite: the path is encoded once more, the Date header is signed ----------------

OLD_SUITE = [
    ("get-space", "/%20/foo", "/%2520/foo", "2be9e587d1ee1f0fd02128724b86b4358ba3630d39f493b6e06610a19a50779e"),
    ("get-utf8", "/%E1%88%B4", "/%25E1%2588%25B4", "57b1eb3df3b16a8479c0097b66c0b261cfd65b829419a3f2c3d05319722490b8"),
]


@pytest.mark.parametrize(("name", "path", "uri", "signature"), OLD_SUITE, ids=[v[0] for v in OLD_SUITE])
def test_botocore_old_suite(name: str, path: str, uri: str, signature: str) -> None:
    headers = [("Date", OLD_DATE_HEADER), ("Host", "host.foo.com")]
    request = sigv4.canonical_request("GET", path, "", headers, ["date", "host"], EMPTY)
    assert request == f"GET\n{uri}\n\ndate:{OLD_DATE_HEADER}\nhost:host.foo.com\n\ndate;host\n{EMPTY}"
    assert sigv4.string_to_sign("20110909T233600Z", "20110909/us-east-1/host/aws4_request", request).split("\n")[1] == (
        "20110909T233600Z"
    )
    assert sigv4.sign(SUITE_SECRET, "20110909T233600Z", "us-east-1", "host", request) == signature
    auth = _authorization(SUITE_KEY, "20110909T233600Z", "us-east-1", "host", "date;host", signature)
    verified = sigv4.verify(
        method="GET",
        raw_path=path,
        raw_query="",
        headers=[*headers, ("Authorization", auth)],
        body_sha256=EMPTY,
        secret_for=_suite_secret,
        now=OLD_NOW + timedelta(minutes=3),
        service="host",
    )
    assert verified.signed_headers == ("date", "host")


# -- canonical pieces --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("", "/"),
        ("/", "/"),
        ("/%20/foo", "/%2520/foo"),
        ("/%E1%88%B4", "/%25E1%2588%25B4"),
        ("/~user/a-b_c.d", "/~user/a-b_c.d"),
        ("/foo/../bar", "/bar"),
        ("/a/./b", "/a/b"),
        ("//a//b/", "/a/b/"),
        ("/some/prefix/", "/some/prefix/"),
        ("/a:b", "/a%3Ab"),
    ],
)
def test_canonical_uri(raw: str, canonical: str) -> None:
    assert sigv4.canonical_uri(raw) == canonical


def test_canonical_uri_s3_is_the_path_as_sent() -> None:
    assert sigv4.canonical_uri("/test%24file.text", double_encode=False) == "/test%24file.text"
    assert sigv4.canonical_uri("/a/../b", double_encode=False) == "/a/../b"


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("", ""),
        ("a", "a="),
        ("a=", "a="),
        ("Param2=value2&Param1=value1", "Param1=value1&Param2=value2"),
        ("b=2&a=z&a=y", "a=y&a=z&b=2"),
        ("max-keys=2&prefix=J", "max-keys=2&prefix=J"),
        ("k=a%20b", "k=a%20b"),
        ("k=a+b", "k=a%2Bb"),
        ("k=%7E~", "k=~~"),
        ("k=/", "k=%2F"),
        ("k=%2f", "k=%2F"),
        ("k=%E1%88%B4", "k=%E1%88%B4"),
        ("a=1&&b=2", "a=1&b=2"),
        ("Z=1&a=1", "Z=1&a=1"),
    ],
)
def test_canonical_query(raw: str, canonical: str) -> None:
    assert sigv4.canonical_query(raw) == canonical


def test_canonical_headers_join_repeats_and_trim() -> None:
    headers = [("My-Header1", "  a   b   c  "), ("X-Multi", "one"), ("x-multi", " two "), ("Unsigned", "x")]
    request = sigv4.canonical_request("GET", "/", "", headers, ["x-multi", "my-header1"], EMPTY)
    assert request.splitlines()[3:7] == ["my-header1:a b c", "x-multi:one,two", "", "my-header1;x-multi"]


# -- parsing the Authorization header ----------------------------------------------------------------


def test_parse_authorization() -> None:
    value = (
        "AWS4-HMAC-SHA256 Credential=AKID/20240102/eu-west-2/ecr/aws4_request,"
        "SignedHeaders=host;x-amz-date;x-amz-security-token,  Signature=abc"
    )
    assert sigv4.parse_authorization(value) == sigv4.AuthorizationHeader(
        "AKID", "20240102", "eu-west-2", "ecr", ("host", "x-amz-date", "x-amz-security-token"), "abc"
    )


@pytest.mark.parametrize(
    ("value", "code", "fragment"),
    [
        (None, MISSING_TOKEN, "Missing Authentication Token"),
        ("", MISSING_TOKEN, "Missing Authentication Token"),
        ("Basic dXNlcjpwYXNz", INCOMPLETE, "'Basic'"),
        (
            "AWS4-HMAC-SHA512 Credential=A/20150830/r/s/aws4_request, SignedHeaders=host, Signature=x",
            INCOMPLETE,
            "SHA512",
        ),
        ("AWS4-HMAC-SHA256 SignedHeaders=host, Signature=x", INCOMPLETE, "requires 'Credential' parameter"),
        ("AWS4-HMAC-SHA256 Credential=A/20150830/r/s/aws4_request, Signature=x", INCOMPLETE, "'SignedHeaders'"),
        ("AWS4-HMAC-SHA256 Credential=A/20150830/r/s/aws4_request, SignedHeaders=host", INCOMPLETE, "'Signature'"),
        ("AWS4-HMAC-SHA256 Credential=A/20150830/r/s, SignedHeaders=host, Signature=x", INCOMPLETE, "not 4"),
        (
            "AWS4-HMAC-SHA256 Credential=A/20150830/r/s/x/aws4_request, SignedHeaders=h, Signature=x",
            INCOMPLETE,
            "not 6",
        ),
        ("AWS4-HMAC-SHA256 Credential=A/20150830/r/s/aws5_request, SignedHeaders=h, Signature=x", INCOMPLETE, "aws5"),
        ("AWS4-HMAC-SHA256 Credential=A/2015-08-30/r/s/aws4_request, SignedHeaders=h, Signature=x", INCOMPLETE, "yyyy"),
    ],
)
def test_parse_authorization_errors(value: str | None, code: str, fragment: str) -> None:
    with pytest.raises(SigV4Error) as e:
        sigv4.parse_authorization(value)
    assert e.value.code == code
    assert fragment in e.value.message


# -- verify's checks, on the get-vanilla vector ------------------------------------------------------

VANILLA = SUITE[0][4]


def _verify_vanilla(headers: list[tuple[str, str]], *, now: datetime = SUITE_NOW, **kw: object) -> None:
    args: dict[str, object] = {
        "method": "GET",
        "raw_path": "/",
        "raw_query": "",
        "headers": headers,
        "body_sha256": EMPTY,
        "secret_for": _suite_secret,
        "now": now,
        "service": "service",
    }
    args.update(kw)
    sigv4.verify(**args)  # type: ignore[arg-type]


def _expect(code: str, message: str, headers: list[tuple[str, str]], **kw: object) -> None:
    with pytest.raises(SigV4Error) as e:
        _verify_vanilla(headers, **kw)
    assert e.value.code == code
    assert e.value.message == message


@pytest.mark.parametrize(
    ("now", "message"),
    [
        (
            datetime(2015, 8, 30, 12, 56, tzinfo=UTC),
            "Signature expired: 20150830T123600Z is now earlier than 20150830T124100Z (20150830T125600Z - 15 min.)",
        ),
        (
            SUITE_NOW + timedelta(minutes=16),
            "Signature expired: 20150830T123600Z is now earlier than 20150830T123700Z (20150830T125200Z - 15 min.)",
        ),
        (
            SUITE_NOW - timedelta(minutes=16),
            "Signature not yet current: 20150830T123600Z is still later than 20150830T123500Z "
            "(20150830T122000Z + 15 min.)",
        ),
    ],
)
def test_clock_skew_rejected(now: datetime, message: str) -> None:
    _expect(INVALID, message, _suite_headers(VANILLA), now=now)


@pytest.mark.parametrize(
    "now",
    [
        SUITE_NOW + timedelta(minutes=14),
        SUITE_NOW - timedelta(minutes=14),
        SUITE_NOW + timedelta(minutes=15),
        datetime(2015, 8, 30, 14, 46, tzinfo=timezone(timedelta(hours=2))),  # 12:46Z, in another zone
    ],
)
def test_clock_skew_accepted(now: datetime) -> None:
    _verify_vanilla(_suite_headers(VANILLA), now=now)


def test_verify_checks() -> None:
    mismatch = sigv4.SIGNATURE_MISMATCH
    _expect(MISSING_TOKEN, "Missing Authentication Token", _suite_headers(VANILLA, Authorization=""))
    _expect(
        UNRECOGNIZED,
        "The security token included in the request is invalid.",
        _suite_headers(VANILLA),
        secret_for=lambda key: None,
    )
    _expect(INVALID, mismatch, _suite_headers(VANILLA), secret_for=lambda key: SUITE_SECRET + "x")
    _expect(INVALID, mismatch, _suite_headers("0" * 64))
    _expect(INVALID, mismatch, _suite_headers(VANILLA.upper()))
    _expect(INVALID, mismatch, _suite_headers("é" * 64))
    _expect(INVALID, mismatch, _suite_headers(VANILLA), body_sha256=hashlib.sha256(b"x").hexdigest())
    _expect(INVALID, mismatch, _suite_headers(VANILLA, Host="evil.example.com"))
    _expect(INVALID, mismatch, _suite_headers(VANILLA), raw_query="a=b")
    _expect(INVALID, mismatch, _suite_headers(VANILLA), method="POST")
    _expect(INVALID, "Credential should be scoped to correct service: 'ecr'.", _suite_headers(VANILLA), service="ecr")
    _expect(
        INCOMPLETE,
        "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
        _suite_headers(VANILLA, signed="x-amz-date"),
    )
    _expect(
        INCOMPLETE,
        "'X-Amz-Date' must be a 'SignedHeader' in the AWS Authorization.",
        _suite_headers(VANILLA, signed="host"),
    )
    _expect(
        INVALID,
        "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
        "'20150830' != '20150831', from '20150831T000100Z'.",
        _suite_headers(VANILLA, **{"X-Amz-Date": "20150831T000100Z"}),
        now=datetime(2015, 8, 31, 0, 1, tzinfo=UTC),
    )
    with pytest.raises(SigV4Error) as e:
        _verify_vanilla(_suite_headers(VANILLA, **{"X-Amz-Date": ""}))
    assert e.value.code == INCOMPLETE
    assert "either a 'X-Amz-Date' or a 'Date' header" in e.value.message
    with pytest.raises(SigV4Error) as e:
        _verify_vanilla(_suite_headers(VANILLA, **{"X-Amz-Date": "2015-08-30T12:36:00Z"}))
    assert e.value.code == INCOMPLETE
    assert "ISO-8601 'basic format'" in e.value.message


def test_service_none_accepts_any_and_region_is_not_enforced() -> None:
    _verify_vanilla(_suite_headers(VANILLA), service=None)


def test_header_names_are_case_insensitive() -> None:
    headers = [(k.upper(), v) for k, v in _suite_headers(VANILLA)]
    _verify_vanilla(headers)


def test_unsigned_headers_do_not_matter() -> None:
    _verify_vanilla([*_suite_headers(VANILLA), ("User-Agent", "curl"), ("Content-Length", "0")])


# -- end to end: requests signed by botocore --------------------------------------------------------

ECR_KEY, ECR_SECRET = "AKIAMOORAGEEXAMPLE01", "moorage/secret+key/EXAMPLE"
TARGET = "AmazonEC2ContainerRegistry_V20150921.DescribeRepositories"


def _botocore_signed(
    url: str, body: bytes, *, token: str | None = None, headers: dict[str, str] | None = None
) -> list[tuple[str, str]]:
    pytest.importorskip("botocore")
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(
        method="POST",
        url=url,
        data=body,
        headers={
            "X-Amz-Target": TARGET,
            "Content-Type": "application/x-amz-json-1.1",
            "User-Agent": "Boto3/1.0 test",
            **(headers or {}),
        },
    )
    SigV4Auth(Credentials(ECR_KEY, ECR_SECRET, token), "ecr", "us-west-2").add_auth(request)
    host = url.split("/")[2]
    return [("Host", host), *request.headers.items(), ("Content-Length", str(len(body)))]


def _verify_boto(
    headers: list[tuple[str, str]], body: bytes, *, path: str = "/", query: str = "", **kw: object
) -> sigv4.AuthorizationHeader:
    signed_at = datetime.strptime(dict(headers)["X-Amz-Date"], sigv4.AMZ_DATE_FORMAT).replace(tzinfo=UTC)
    args: dict[str, object] = {
        "method": "POST",
        "raw_path": path,
        "raw_query": query,
        "headers": headers,
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "secret_for": {ECR_KEY: ECR_SECRET}.get,
        "now": signed_at + timedelta(seconds=2),
    }
    args.update(kw)
    return sigv4.verify(**args)  # type: ignore[arg-type]


BODY = b'{"repositoryNames": ["team/app"], "maxResults": 10}'


@pytest.mark.parametrize(
    ("url", "path", "query"),
    [
        ("https://api.ecr.us-west-2.amazonaws.com/", "/", ""),
        ("http://localhost:5000/", "/", ""),
        ("http://127.0.0.1:5000/some/prefix", "/some/prefix", ""),
        ("http://127.0.0.1:5000/some/prefix/", "/some/prefix/", ""),
        ("http://127.0.0.1:5000/some/pre%20fix/", "/some/pre%20fix/", ""),
        ("http://127.0.0.1:5000/?b=2&a=x%2Fy", "/", "b=2&a=x%2Fy"),
    ],
)
def test_botocore_signed_requests_verify(url: str, path: str, query: str) -> None:
    headers = _botocore_signed(url, BODY)
    auth = _verify_boto(headers, BODY, path=path, query=query)
    assert (auth.access_key_id, auth.region, auth.service) == (ECR_KEY, "us-west-2", "ecr")
    assert "host" in auth.signed_headers and "x-amz-target" in auth.signed_headers
    assert "user-agent" not in auth.signed_headers


def test_session_token_with_long_term_keys_is_refused() -> None:
    """botocore signs X-Amz-Security-Token; but only long-term keys exist here, so any token is not valid."""
    headers = _botocore_signed("http://localhost:5000/", BODY, token="FQoGZXIvYXdzE//session+token=")
    assert "x-amz-security-token" in dict((k.lower(), v) for k, v in headers)["authorization"]
    with pytest.raises(SigV4Error) as e:
        _verify_boto(headers, BODY)
    assert (e.value.code, e.value.message) == (UNRECOGNIZED, "The security token included in the request is invalid.")


def _signed_only(names: list[str], extra: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    """A request with a correct signature over only `names` (lower-case), carrying `extra` headers too."""
    amz_date = "20240102T030405Z"
    headers = [
        ("Host", "localhost:5000"),
        ("X-Amz-Date", amz_date),
        ("X-Amz-Target", TARGET),
        ("Content-Type", "application/x-amz-json-1.1"),
        *(extra or []),
    ]
    request = sigv4.canonical_request("POST", "/", "", headers, names, EMPTY)
    signature = sigv4.sign(ECR_SECRET, amz_date, "us-west-2", "ecr", request)
    return [
        *headers,
        ("Authorization", _authorization(ECR_KEY, amz_date, "us-west-2", "ecr", ";".join(names), signature)),
    ]


def _verify_at(headers: list[tuple[str, str]], **kw: object) -> sigv4.AuthorizationHeader:
    args: dict[str, object] = {
        "method": "POST",
        "raw_path": "/",
        "raw_query": "",
        "headers": headers,
        "body_sha256": EMPTY,
        "secret_for": {ECR_KEY: ECR_SECRET}.get,
        "now": datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
    }
    args.update(kw)
    return sigv4.verify(**args)  # type: ignore[arg-type]


ALL_SIGNED = ["content-type", "host", "x-amz-date", "x-amz-target"]


@pytest.mark.parametrize(
    ("signed", "extra", "shown"),
    [
        (["content-type", "host", "x-amz-date"], [], "X-Amz-Target"),
        (["host", "x-amz-date", "x-amz-target"], [], "Content-Type"),
        (ALL_SIGNED, [("X-Amz-Anything", "1")], "X-Amz-Anything"),
        (ALL_SIGNED, [("x-amz-content-sha256", EMPTY)], "X-Amz-Content-Sha256"),
    ],
)
def test_operation_headers_must_be_signed(signed: list[str], extra: list[tuple[str, str]], shown: str) -> None:
    """A valid signature that leaves the operation (X-Amz-Target), Content-Type or any x-amz-* header out is
    refused: otherwise a captured request could be replayed as another operation."""
    with pytest.raises(SigV4Error) as e:
        _verify_at(_signed_only(signed, extra))
    assert (e.value.code, e.value.message) == (
        INCOMPLETE,
        f"'{shown}' must be a 'SignedHeader' in the AWS Authorization.",
    )


def test_headers_outside_x_amz_need_not_be_signed() -> None:
    extra = [("User-Agent", "curl"), ("X-Amzn-Trace-Id", "Root=1-abc"), ("Amz-Sdk-Request", "attempt=1")]
    assert _verify_at(_signed_only(ALL_SIGNED, extra)).signed_headers == tuple(ALL_SIGNED)


def test_region_must_be_the_registrys() -> None:
    headers = _signed_only(ALL_SIGNED)
    assert _verify_at(headers, region="us-west-2").region == "us-west-2"
    with pytest.raises(SigV4Error) as e:
        _verify_at(headers, region="eu-central-1")
    assert (e.value.code, e.value.message) == (
        INVALID,
        "Credential should be scoped to a valid region, not 'us-west-2'.",
    )


def _with(headers: list[tuple[str, str]], name: str, value: str) -> list[tuple[str, str]]:
    return [(k, value if k == name else v) for k, v in headers]


MINUTE = timedelta(minutes=1)
BOTO_NEGATIVE = [
    ("wrong secret", {"secret_for": lambda key: "not-the-secret"}, None, INVALID),
    ("unknown key", {"secret_for": {}.get}, None, UNRECOGNIZED),
    ("tampered body", {"body_sha256": hashlib.sha256(BODY + b" ").hexdigest()}, None, INVALID),
    ("tampered signed header", {}, ("X-Amz-Target", TARGET.replace("Describe", "Delete")), INVALID),
    ("other host", {}, ("Host", "localhost:5001"), INVALID),
    ("other content type", {}, ("Content-Type", "application/json"), INVALID),
    ("other path", {"raw_path": "/other"}, None, INVALID),
    ("added query", {"raw_query": "x=1"}, None, INVALID),
    ("16 min late", {"now": 16 * MINUTE}, None, INVALID),
    ("16 min early", {"now": -16 * MINUTE}, None, INVALID),
    ("wrong service", {"service": "ecr-public"}, None, INVALID),
    ("bad algorithm", {}, ("Authorization", "AWS4-HMAC-SHA1 Credential=x"), INCOMPLETE),
]


@pytest.mark.parametrize(("name", "kw", "header", "code"), BOTO_NEGATIVE, ids=[c[0] for c in BOTO_NEGATIVE])
def test_botocore_negative_cases(name: str, kw: dict[str, object], header: tuple[str, str] | None, code: str) -> None:
    headers = _botocore_signed("http://localhost:5000/", BODY)
    if header is not None:
        headers = _with(headers, *header)
    kw = dict(kw)
    if isinstance(kw.get("now"), timedelta):
        signed_at = datetime.strptime(dict(headers)["X-Amz-Date"], sigv4.AMZ_DATE_FORMAT).replace(tzinfo=UTC)
        kw["now"] = signed_at + kw["now"]  # type: ignore[operator]
    with pytest.raises(SigV4Error) as e:
        _verify_boto(headers, BODY, **kw)
    assert e.value.code == code


@pytest.mark.parametrize("minutes", [14, -14, 15, -15])
def test_botocore_skew_within_limit_accepted(minutes: int) -> None:
    headers = _botocore_signed("http://localhost:5000/", BODY)
    signed_at = datetime.strptime(dict(headers)["X-Amz-Date"], sigv4.AMZ_DATE_FORMAT).replace(tzinfo=UTC)
    _verify_boto(headers, BODY, now=signed_at + minutes * MINUTE)


def test_botocore_skew_messages() -> None:
    headers = _botocore_signed("http://localhost:5000/", BODY)
    amz_date = dict(headers)["X-Amz-Date"]
    signed_at = datetime.strptime(amz_date, sigv4.AMZ_DATE_FORMAT).replace(tzinfo=UTC)
    fmt = sigv4.AMZ_DATE_FORMAT
    late, early = signed_at + timedelta(minutes=16), signed_at - timedelta(minutes=16)
    with pytest.raises(SigV4Error) as e:
        _verify_boto(headers, BODY, now=late)
    assert e.value.message == (
        f"Signature expired: {amz_date} is now earlier than {signed_at + timedelta(minutes=1):{fmt}} "
        f"({late:{fmt}} - 15 min.)"
    )
    with pytest.raises(SigV4Error) as e:
        _verify_boto(headers, BODY, now=early)
    assert e.value.message == (
        f"Signature not yet current: {amz_date} is still later than {signed_at - timedelta(minutes=1):{fmt}} "
        f"({early:{fmt}} + 15 min.)"
    )


def test_host_not_signed_is_rejected_even_with_a_valid_signature() -> None:
    # A client that signs only x-amz-date: the signature itself is right, but host must be covered.
    amz_date = "20240102T030405Z"
    headers = [("Host", "localhost:5000"), ("X-Amz-Date", amz_date), ("X-Amz-Target", TARGET)]
    request = sigv4.canonical_request("POST", "/", "", headers, ["x-amz-date", "x-amz-target"], EMPTY)
    signature = sigv4.sign(ECR_SECRET, amz_date, "us-west-2", "ecr", request)
    auth = _authorization(ECR_KEY, amz_date, "us-west-2", "ecr", "x-amz-date;x-amz-target", signature)
    with pytest.raises(SigV4Error) as e:
        sigv4.verify(
            method="POST",
            raw_path="/",
            raw_query="",
            headers=[*headers, ("Authorization", auth)],
            body_sha256=EMPTY,
            secret_for={ECR_KEY: ECR_SECRET}.get,
            now=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        )
    assert (e.value.code, e.value.message) == (
        INCOMPLETE,
        "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
    )
