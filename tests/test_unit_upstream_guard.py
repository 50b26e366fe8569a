"""Which upstreams the pull-through cache may name and which addresses it may contact: pure decisions.

No test here opens a connection: addresses such as 169.254.169.254 are inputs to the policy, and the resolver
is fed by a fake inner resolver.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
from types import SimpleNamespace

import pytest

from registry.config import ConfigError, from_dict
from registry.proxy.pullthrough import DeclaredSizes
from registry.proxy.upstream import GuardedResolver, UpstreamNotAllowed, _oci_errors
from registry.upstream_url import AllowEntry, NotAllowed, UpstreamPolicy, never_contacted, split_url

DEFAULT = UpstreamPolicy.parse(["*"])
OPERATOR = UpstreamPolicy.parse(["registry-1.docker.io", "ghcr.io", "*.example.com", "127.0.0.1:5001", "10.0.0.0/8"])

METADATA_AND_FRIENDS = [
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack instance metadata
    "169.254.170.2",  # ECS task metadata
    "fd00:ec2::254",  # AWS instance metadata over IPv6
    "100.100.100.200",  # Alibaba Cloud metadata
    "0.0.0.0",
    "0.1.2.3",
    "::",
    "224.0.0.1",
    "239.255.255.250",
    "ff02::1",
    "255.255.255.255",
    "fe80::1",
    "::ffff:169.254.169.254",  # IPv4-mapped
    "::ffff:a9fe:a9fe",
    "64:ff9b::a9fe:a9fe",  # NAT64
    "2002:a9fe:a9fe::1",  # 6to4
    "::a9fe:a9fe",  # IPv4-compatible
]


@pytest.mark.parametrize("address", METADATA_AND_FRIENDS)
@pytest.mark.parametrize(
    "entries",
    [["*"], ["*", "0.0.0.0/0", "::/0"], ["*", "169.254.0.0/15", "fd00::/8", "100.64.0.0/10", "fe80::/9", "::/1"]],
    ids=["default", "everything", "wide-networks"],
)
def test_never_contacted_whatever_the_allowlist(address: str, entries: list[str]):
    policy = UpstreamPolicy.parse(entries)
    assert never_contacted(ipaddress.ip_address(address)) is not None
    with pytest.raises(NotAllowed, match="never contacts"):
        policy.check_address("registry.example.com", 443, address)
    if ":" not in address:  # IPv6 literals are not valid rule URLs anyway
        with pytest.raises(NotAllowed, match="never contacts"):
            policy.check_url(f"http://{address}:5000")


@pytest.mark.parametrize(
    "entry", ["169.254.169.254", "169.254.0.0/16", "fd00:ec2::254", "[fd00:ec2::254]:80", "224.0.0.0/8", "0.0.0.0"]
)
def test_an_entry_that_only_names_forbidden_addresses_is_a_config_error(entry: str):
    with pytest.raises(ValueError, match="never contacted"):
        AllowEntry.parse(entry)


@pytest.mark.parametrize("entry", ["", "a b", "http://x", "10.0.0.1/8", "host:port", "host:0", "host:70000", "[::1"])
def test_bad_entries(entry: str):
    with pytest.raises(ValueError):
        AllowEntry.parse(entry)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("registry-1.docker.io", True),
        ("https://REGISTRY-1.docker.io.", True),  # case and a trailing dot don't matter
        ("ghcr.io:8443", True),  # no port in the entry: any port
        ("quay.io", False),
        ("a.example.com", True),
        ("a.b.example.com", True),
        ("example.com", False),  # *.example.com is subdomains only
        ("evil-example.com", False),
        ("http://127.0.0.1:5001", True),
        ("http://127.0.0.1:5002", False),  # the entry has a port
        ("http://127.0.0.2:5001", False),
        ("http://10.1.2.3:5000", True),
        ("http://11.1.2.3", False),  # public, but no name entry covers it
        ("http://192.168.1.1", False),
        ("http://169.254.169.254", False),
        ("ftp://ghcr.io", False),
    ],
)
def test_operator_allowlist_names(url: str, allowed: bool):
    if allowed:
        OPERATOR.check_url(url)
    else:
        with pytest.raises(NotAllowed):
            OPERATOR.check_url(url)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("registry-1.docker.io", True),
        ("http://203.0.113.1", False),  # documentation range: not global
        ("http://8.8.8.8:5000", True),
        ("http://127.0.0.1:5000", False),
        ("http://localhost:5000", True),  # a name: its addresses are checked when connecting
        ("http://10.0.0.1", False),
        ("http://172.16.0.1", False),
        ("http://192.168.0.1", False),
        ("http://100.64.0.1", False),
    ],
)
def test_default_is_public_hosts_only(url: str, allowed: bool):
    if allowed:
        DEFAULT.check_url(url)
    else:
        with pytest.raises(NotAllowed):
            DEFAULT.check_url(url)


@pytest.mark.parametrize(
    ("host", "port", "address", "policy", "allowed"),
    [
        # A name that resolves to loopback, private or shared addresses: refused unless an address entry covers them
        ("localhost", 5000, "127.0.0.1", DEFAULT, False),
        ("localhost", 5000, "::1", DEFAULT, False),
        ("registry.corp", 5000, "10.0.0.1", DEFAULT, False),
        ("registry.corp", 5000, "fd12:3456::1", DEFAULT, False),
        ("registry.corp", 5000, "::ffff:10.0.0.1", DEFAULT, False),
        ("registry.corp", 5000, "100.64.1.1", DEFAULT, False),
        ("a.example.com", 443, "10.9.9.9", OPERATOR, True),
        ("a.example.com", 443, "127.0.0.1", OPERATOR, False),
        ("a.example.com", 5001, "127.0.0.1", OPERATOR, True),
        ("a.example.com", 443, "::ffff:10.9.9.9", OPERATOR, True),
        ("ghcr.io", 443, "140.82.112.34", OPERATOR, True),
        ("quay.io", 443, "34.1.2.3", OPERATOR, False),
        ("registry-1.docker.io", 443, "44.1.2.3", DEFAULT, True),
        ("registry-1.docker.io", 443, "2600:1f18::1", DEFAULT, True),
    ],
)
def test_resolved_addresses(host: str, port: int, address: str, policy: UpstreamPolicy, allowed: bool):
    if allowed:
        policy.check_address(host, port, address)
    else:
        with pytest.raises(NotAllowed):
            policy.check_address(host, port, address)


def test_refusals_say_what_to_list():
    with pytest.raises(NotAllowed) as e:
        DEFAULT.check_url("http://127.0.0.1:5001")
    assert "allowed_upstreams" in str(e.value) and '"127.0.0.1:5001"' in str(e.value)
    with pytest.raises(NotAllowed) as e:
        OPERATOR.check_url("https://quay.io")
    assert "quay.io:443 is not in [pull_through] allowed_upstreams" in str(e.value)
    with pytest.raises(NotAllowed) as e:
        DEFAULT.check_address("localhost", 5000, "::1")
    assert '"[::1]:5000"' in str(e.value)


def test_split_url():
    assert split_url("ghcr.io") == ("https", "ghcr.io", 443)
    assert split_url("http://127.0.0.1:5001/") == ("http", "127.0.0.1", 5001)
    assert split_url("HTTP://Host.Example.") == ("http", "host.example", 80)


# -- the resolver: connect-time checks (DNS rebinding) ---------------------------------------------------------


class FakeResolver:
    """What DNS would answer: a name -> addresses (the inner resolver of a GuardedResolver)."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET):
        self.asked.append(host)
        return [
            {"hostname": host, "host": a, "port": port, "family": socket.AF_INET6 if ":" in a else socket.AF_INET}
            | {"proto": 0, "flags": 0}
            for a in self.answers[host]
        ]

    async def close(self) -> None:
        pass


def resolve(policy: UpstreamPolicy, answers: dict[str, list[str]], host: str, port: int = 443) -> list[str]:
    guard = GuardedResolver(policy, FakeResolver(answers))  # type: ignore[arg-type]
    return [r["host"] for r in asyncio.run(guard.resolve(host, port))]


def test_a_public_name_rebound_to_metadata_is_refused():
    answers = {"registry.example.com": ["169.254.169.254"]}
    with pytest.raises(UpstreamNotAllowed, match="never contacts"):
        resolve(DEFAULT, answers, "registry.example.com")
    answers = {"registry.example.com": ["fd00:ec2::254"]}
    with pytest.raises(UpstreamNotAllowed, match="never contacts"):
        resolve(UpstreamPolicy.parse(["*", "fd00::/8"]), answers, "registry.example.com")


def test_a_public_name_rebound_to_loopback_or_private_is_refused():
    for address in ("127.0.0.1", "10.0.0.1", "::1", "192.168.1.10"):
        with pytest.raises(UpstreamNotAllowed, match="allowed_upstreams"):
            resolve(DEFAULT, {"registry.example.com": [address]}, "registry.example.com")


def test_only_allowed_addresses_are_returned():
    answers = {"registry.example.com": ["169.254.169.254", "93.184.216.34", "10.0.0.1", "2606:2800:220:1::1"]}
    assert resolve(DEFAULT, answers, "registry.example.com") == ["93.184.216.34", "2606:2800:220:1::1"]


def test_a_name_not_allowed_is_never_resolved():
    fake = FakeResolver({"quay.io": ["34.1.2.3"]})
    guard = GuardedResolver(OPERATOR, fake)  # type: ignore[arg-type]
    with pytest.raises(UpstreamNotAllowed):
        asyncio.run(guard.resolve("quay.io", 443))
    assert fake.asked == []


def test_listed_private_addresses_resolve():
    policy = UpstreamPolicy.parse(["registry.corp", "10.0.0.0/8"])
    assert resolve(policy, {"registry.corp": ["10.1.1.1"]}, "registry.corp", 5000) == ["10.1.1.1"]
    assert resolve(UpstreamPolicy.parse(["localhost", "127.0.0.1"]), {"localhost": ["127.0.0.1"]}, "localhost") == [
        "127.0.0.1"
    ]


def test_resolver_remembers_whether_a_host_is_public():
    guard = GuardedResolver(
        UpstreamPolicy.parse(["*", "10.0.0.0/8"]), FakeResolver({"a": ["10.0.0.1"], "b": ["8.8.8.8"]})
    )  # type: ignore[arg-type]
    asyncio.run(guard.resolve("a", 443))
    asyncio.run(guard.resolve("b", 443))
    assert not guard.is_public("a") and guard.is_public("b")
    assert not guard.is_public("never-resolved") and not guard.is_public("127.0.0.1") and guard.is_public("8.8.8.8")


def test_error_bodies_only_give_oci_codes():
    body = b'{"errors":[{"code":"DENIED","message":"secret internal detail"},{"code":"<b>","message":"x"}]}'
    assert _oci_errors(body, with_messages=False) == "DENIED"
    assert _oci_errors(body, with_messages=True) == "DENIED: secret internal detail"
    assert _oci_errors(b"root:x:0:0:root:/root:/bin/bash", with_messages=True) == ""
    assert _oci_errors(b'{"secret": "value"}', with_messages=True) == ""


# -- configuration -------------------------------------------------------------------------------------------


def _config(allowed: list[str] | None, url: str) -> dict:
    pull: dict = {"rules": [{"ecr_repository_prefix": "hub", "upstream_registry_url": url}]}
    if allowed is not None:
        pull["allowed_upstreams"] = allowed
    return {"pull_through": pull}


def test_config_rules_are_held_to_the_allowlist():
    assert from_dict(_config(None, "registry-1.docker.io")).pull_through.allowed_upstreams == ("*",)
    from_dict(_config(["127.0.0.1:5001"], "http://127.0.0.1:5001"))
    for allowed, url in [
        (None, "http://127.0.0.1:5001"),
        (None, "http://169.254.169.254"),
        (["*", "0.0.0.0/0"], "http://169.254.169.254"),
        (["ghcr.io"], "quay.io"),
        (["127.0.0.1:5001"], "http://127.0.0.1:5000"),
    ]:
        with pytest.raises(ConfigError, match=r"pull_through.rules\[0\].upstream_registry_url"):
            from_dict(_config(allowed, url))


def test_config_allowlist_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"pull_through\.allowed_upstreams.*never contacted"):
        from_dict({"pull_through": {"allowed_upstreams": ["169.254.169.254"]}})
    with pytest.raises(ConfigError, match=r"pull_through\.allowed_upstreams.*array of strings"):
        from_dict({"pull_through": {"allowed_upstreams": "*"}})
    with pytest.raises(ConfigError, match=r"pull_through\.allowed_upstreams"):
        from_dict({"pull_through": {"allowed_upstreams": ["*", 5]}})


def test_blob_download_timeout():
    assert from_dict({}).pull_through.blob_download_timeout == 900
    assert from_dict({"pull_through": {"blob_download_timeout": "2m"}}).pull_through.blob_download_timeout == 120


# -- what cached manifests declare blobs to weigh (the bound of a blob download) --------------------------------


class _Images:
    """iter_images and get_manifest over a list, counting the manifests read."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, str, bytes]] = []  # (image id, digest, body)
        self.reads = 0

    def add(self, image_id: int, layer_sizes: dict[str, int]) -> None:
        doc = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": "sha256:" + "c" * 64,
                "size": 2,
            },
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": n}
                for d, n in layer_sizes.items()
            ],
        }
        self.rows.append((image_id, f"sha256:{image_id:064x}", json.dumps(doc).encode()))

    async def iter_images(self, repository: str, after_id: int = 0):  # type: ignore[no-untyped-def]
        for image_id, digest, _ in sorted(self.rows):
            if image_id > after_id:
                yield SimpleNamespace(
                    id=image_id, digest=digest, media_type="application/vnd.oci.image.manifest.v1+json"
                )

    async def get_manifest(self, repository: str, digest: str):  # type: ignore[no-untyped-def]
        self.reads += 1
        body = next(b for _, d, b in self.rows if d == digest)
        return SimpleNamespace(body=body, media_type="application/vnd.oci.image.manifest.v1+json")


def test_declared_sizes_are_read_incrementally():
    images = _Images()
    for i in range(1, 101):
        images.add(i, {f"sha256:{i:064x}": i})
    declared = DeclaredSizes(images, images)  # type: ignore[arg-type]

    async def scenario() -> None:
        assert await declared.size("r", f"sha256:{100:064x}") == 100 and images.reads == 100
        assert await declared.size("r", f"sha256:{7:064x}") == 7 and images.reads == 100  # remembered
        images.add(101, {f"sha256:{101:064x}": 101})
        assert await declared.size("r", f"sha256:{101:064x}") == 101 and images.reads == 101  # only the new one
        # An id reused after deletions (below the last one read): found by reading everything again.
        images.rows = [row for row in images.rows if row[0] != 50]
        images.add(50, {"sha256:" + "e" * 64: 5000})
        assert await declared.size("r", "sha256:" + "e" * 64) == 5000
        assert await declared.size("r", "sha256:" + "f" * 64) is None  # no manifest lists it

    asyncio.run(scenario())
