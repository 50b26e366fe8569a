"""Upstream registry URLs: their syntax, and which hosts and addresses Moorage may contact (pure; the caller
resolves names).

The configuration checks `[pull_through]` rules and `allowed_upstreams` with it at start, the ECR API checks the
rules it is given, and the pull-through cache checks every URL it follows and every address it connects to.

`[pull_through] allowed_upstreams` is a list of entries, each optionally with a port (`host:port`,
`[v6]:port`; no port means any port):
  - a host name, exact (`ghcr.io`) or a glob (`*.example.com`, `*`): which names a rule, a redirect or a token
    realm may name. A name may only reach public addresses.
  - an IP address or a CIDR network (`127.0.0.1:5001`, `10.0.0.0/8`, `fd12::/16`): those addresses may be
    contacted, whether named literally or reached through a name. Loopback, private, shared (CGNAT) and other
    non-public addresses are contacted only when an entry like this covers them.
The default, `["*"]`, is any public host. Whatever the list says, Moorage never contacts link-local addresses
(169.254.0.0/16, fe80::/10, where cloud instance metadata lives), the metadata addresses below, unspecified
(0.0.0.0/8, ::), multicast or reserved addresses, also when embedded in an IPv6 address (::ffff:a.b.c.d,
64:ff9b::a.b.c.d, 2002:AABB:CCDD::).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

# An upstream registry as a rule names it: a host, optionally with a scheme and a port (no path).
UPSTREAM_URL = re.compile(r"(?:https?://)?[A-Za-z0-9.-]+(?::\d+)?")
UPSTREAM_URL_SHAPE = "a registry host, optionally with a scheme and port"


def is_upstream_url(url: str) -> bool:
    """Whether `url` is shaped as an upstream registry URL (a trailing slash is not: strip it first)."""
    return UPSTREAM_URL.fullmatch(url) is not None


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

NEVER_CONTACTED: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), why)
    for net, why in (
        ("0.0.0.0/8", "an unspecified address"),
        ("169.254.0.0/16", "a link-local address (cloud instance metadata lives at 169.254.169.254)"),
        ("224.0.0.0/4", "a multicast address"),
        ("240.0.0.0/4", "a reserved or broadcast address"),
        ("100.100.100.200/32", "a cloud instance metadata address"),  # Alibaba Cloud
        ("168.63.129.16/32", "a cloud platform address"),  # Azure WireServer
        ("::/128", "an unspecified address"),
        ("fe80::/10", "a link-local address"),
        ("ff00::/8", "a multicast address"),
        ("fd00:ec2::254/128", "a cloud instance metadata address"),  # AWS IMDS over IPv6
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_V4_COMPATIBLE = ipaddress.ip_network("::/96")
_HOST_PATTERN = re.compile(r"[a-z0-9*?]([a-z0-9*?.-]*[a-z0-9*?])?")
DEFAULT_ALLOWED_UPSTREAMS = ("*",)


class NotAllowed(ValueError):
    """An upstream host or address the allowlist does not permit; the message says why and what to list."""


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{text!r} is not a port")
    return int(text)


def _ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, NAT64 or 6to4), if any."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or (ip in _V4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def never_contacted(ip: IPAddress) -> str | None:
    """Why an address is never contacted, whatever the allowlist (None: it may be, if allowed)."""
    for candidate in (ip, embedded_ipv4(ip)):
        if candidate is None:
            continue
        for net, why in NEVER_CONTACTED:
            if candidate.version == net.version and candidate in net:
                return why
    return None


def _kind(ip: IPAddress) -> str:
    if ip.is_loopback:
        return "loopback"
    if ip.is_private:
        return "private"
    if isinstance(ip, ipaddress.IPv4Address) and ip in ipaddress.ip_network("100.64.0.0/10"):
        return "shared (carrier-grade NAT)"
    return "non-public"


def is_public(ip: IPAddress) -> bool:
    v4 = embedded_ipv4(ip)
    return ip.is_global and (v4 is None or v4.is_global)


@dataclass(frozen=True, slots=True)
class AllowEntry:
    text: str
    port: int | None
    pattern: str | None = None  # a host name or glob, lower case
    network: IPNetwork | None = None

    @classmethod
    def parse(cls, text: str) -> AllowEntry:
        entry = text.strip().lower()
        port: int | None = None
        if entry.startswith("["):  # [v6] or [v6]:port or [v6/len]:port
            host, closed, rest = entry[1:].partition("]")
            if not closed or (rest and not rest.startswith(":")):
                raise ValueError(f"{text!r}: expected [IPV6]:PORT")
            port = _port(rest[1:]) if rest else None
        elif entry.count(":") == 1:
            host, _, port_text = entry.partition(":")
            port = _port(port_text)
        else:
            host = entry
        host = host.rstrip(".") if host != "." else host
        if not host:
            raise ValueError(f"{text!r}: no host")
        if re.fullmatch(r"[0-9a-f:.]+(/\d+)?", host) and (":" in host or "/" in host or _ip(host) is not None):
            try:
                network = ipaddress.ip_network(host)
            except ValueError as e:
                raise ValueError(f"{text!r}: not an IP address or network ({e})") from None
            for denied, why in NEVER_CONTACTED:
                if network.version == denied.version and network.subnet_of(denied):  # type: ignore[arg-type]
                    raise ValueError(f"{text!r} is {why}, which is never contacted")
            return cls(text, port, network=network)
        if not _HOST_PATTERN.fullmatch(host):
            raise ValueError(f"{text!r}: expected a host name, a glob such as *.example.com, an IP address or a CIDR")
        return cls(text, port, pattern=host)

    def names(self, host: str, port: int) -> bool:
        return self.pattern is not None and self._port_ok(port) and fnmatch.fnmatchcase(host, self.pattern)

    def covers(self, ip: IPAddress, port: int) -> bool:
        if self.network is None or not self._port_ok(port):
            return False
        return any(
            c is not None and c.version == self.network.version and c in self.network for c in (ip, embedded_ipv4(ip))
        )

    def _port_ok(self, port: int) -> bool:
        return self.port is None or self.port == port


def normalize_host(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host[:-1] if host.endswith(".") and len(host) > 1 else host


def split_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an upstream URL; a URL without a scheme is https."""
    parts = urlsplit(url if "://" in url else f"https://{url}")
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise NotAllowed(f"{url}: only http and https upstreams are supported")
    try:
        port = parts.port
    except ValueError:
        raise NotAllowed(f"{url}: not a valid port") from None
    host = normalize_host(parts.hostname or "")
    if not host:
        raise NotAllowed(f"{url}: no host")
    return scheme, host, port or (443 if scheme == "https" else 80)


@dataclass(frozen=True, slots=True)
class UpstreamPolicy:
    """Which upstream hosts may be named and which addresses contacted (pure: the caller resolves names)."""

    entries: tuple[AllowEntry, ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> UpstreamPolicy:
        return cls(tuple(AllowEntry.parse(entry) for entry in entries))

    def _named(self, host: str, port: int) -> bool:
        return any(entry.names(host, port) for entry in self.entries)

    def _covered(self, ip: IPAddress, port: int) -> bool:
        return any(entry.covers(ip, port) for entry in self.entries)

    def check_host(self, host: str, port: int) -> None:
        """Raise NotAllowed unless `host` (a name or an IP address) may be an upstream on `port`. For a name,
        the addresses it resolves to are checked with `check_address` when connecting."""
        host = normalize_host(host)
        ip = _ip(host)
        if ip is not None:
            self.check_address(host, port, ip)
            return
        if not self._named(host, port):
            raise NotAllowed(
                f"{host}:{port} is not in [pull_through] allowed_upstreams ({self._listed()}): add it (or a glob "
                "such as *.example.com) to allow it"
            )

    def check_address(self, host: str, port: int, address: str | IPAddress) -> None:
        """Raise NotAllowed unless Moorage may connect to `address` on `port`, which `host` resolved to."""
        host = normalize_host(host)
        ip = address if not isinstance(address, str) else _ip(normalize_host(address).split("%", 1)[0])
        if ip is None:
            raise NotAllowed(f"{host} resolved to {address!r}, which is not an IP address")
        shown = host if host == str(ip) else f"{host} ({ip})"
        why = never_contacted(ip)
        if why is not None:
            raise NotAllowed(f"{shown} is {why}; Moorage never contacts it")
        if self._covered(ip, port):
            return
        if not is_public(ip):
            raise NotAllowed(
                f"{shown} is a {_kind(embedded_ipv4(ip) or ip)} address: list it (or a network that contains it) "
                f'in [pull_through] allowed_upstreams, such as "{_with_port(ip, port)}" or "{_network_hint(ip)}", '
                "to allow it"
            )
        if not self._named(host, port):
            raise NotAllowed(f"{host}:{port} is not in [pull_through] allowed_upstreams ({self._listed()})")

    def check_url(self, url: str) -> tuple[str, str, int]:
        """(scheme, host, port) of `url` if it may be an upstream (or a redirect or token realm); else NotAllowed."""
        scheme, host, port = split_url(url)
        try:
            self.check_host(host, port)
        except NotAllowed as e:
            raise NotAllowed(f"{url} is not an allowed upstream: {e}") from None
        return scheme, host, port

    def _listed(self) -> str:
        return ", ".join(entry.text for entry in self.entries) or "empty"


def _with_port(ip: IPAddress, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _network_hint(ip: IPAddress) -> str:
    v4 = embedded_ipv4(ip) or ip
    if isinstance(v4, ipaddress.IPv4Address):
        return "127.0.0.0/8" if v4.is_loopback else str(ipaddress.ip_network(f"{v4}/24", strict=False))
    return "::1" if v4.is_loopback else str(ipaddress.ip_network(f"{v4}/64", strict=False))
