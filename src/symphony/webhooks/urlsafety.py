"""Webhook URLs are outside input: which ones a delivery may call, judged by class.

An endpoint URL is refused, each refusal with its own code, when:

* it is not `https://` (`url_scheme_not_allowed`); `http://` only to loopback, and only where
  the setting `SYMPHONY_WEBHOOK_ALLOW_LOOPBACK` allows it (development and tests: it is
  refused in production);
* it is malformed, names no host, carries credentials or a fragment (`url_invalid`,
  `url_has_credentials`);
* its host does not resolve (`url_host_unresolvable`);
* any address it resolves to is not a public unicast address: loopback, private (RFC 1918),
  link-local, CGNAT (100.64.0.0/10), unique-local IPv6 (fc00::/7), multicast, unspecified,
  reserved or special-purpose, and the cloud metadata addresses (each class its own code);
  IPv6 forms that embed an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64, 6to4) are
  judged by that IPv4 address. An operator's allowlist (`SYMPHONY_WEBHOOK_ALLOWED_NETWORKS`,
  CIDR blocks) admits addresses inside it.

The check runs at registration and again before every call, on the addresses the call then
connects to: the sender connects to the vetted address itself (the Host header and TLS SNI
name the host), so a DNS answer that changes between the check and the call (rebinding)
cannot redirect it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import SplitResult, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_LENGTH: Final = 2048

# Cloud metadata services, refused under their own code (most are link-local too).
METADATA_ADDRESSES: Final[frozenset[IPAddress]] = frozenset(
    ipaddress.ip_address(a) for a in (
        "169.254.169.254",   # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle
        "169.254.170.2",     # AWS ECS task metadata
        "169.254.169.123",   # AWS time sync
        "100.100.100.200",   # Alibaba Cloud
        "192.0.0.192",       # Oracle Cloud (legacy)
        "fd00:ec2::254",     # AWS IPv6
        "fd00:ec2::23",      # AWS IPv6 DNS
    )
)

_CGNAT: Final = ipaddress.ip_network("100.64.0.0/10")
_PRIVATE: Final = tuple(ipaddress.ip_network(n) for n in
                        ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_UNIQUE_LOCAL: Final = ipaddress.ip_network("fc00::/7")
_NAT64: Final = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_SIX_TO_FOUR: Final = ipaddress.ip_network("2002::/16")
_IPV4_COMPATIBLE: Final = ipaddress.ip_network("::/96")


class UrlRefused(Exception):
    """The URL may not be called. `code` says why (stable, lowercase)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class UrlPolicy:
    """allow_loopback: http:// and loopback addresses are admitted (development and tests
    only). allowed_networks: addresses inside these are admitted whatever their class."""

    allow_loopback: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()

    def admits(self, address: IPAddress) -> bool:
        return any(address in network for network in self.allowed_networks
                   if address.version == network.version)


@dataclass(frozen=True, slots=True)
class Target:
    """A URL that passed the checks, with the addresses a call may connect to."""

    url: str
    scheme: str
    host: str
    port: int
    path: str
    addresses: tuple[IPAddress, ...]

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def parse_url(url: str, policy: UrlPolicy) -> SplitResult:
    """The URL's parts, or UrlRefused for a malformed one or a scheme the policy refuses."""
    if not isinstance(url, str) or not 10 <= len(url) <= MAX_URL_LENGTH:
        raise UrlRefused("url_invalid", f"url must be 10-{MAX_URL_LENGTH} characters")
    if any(not "!" <= ch <= "~" for ch in url):
        raise UrlRefused("url_invalid", "url must be printable ASCII without spaces")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UrlRefused("url_invalid", "url is not a valid URL") from None
    if parts.scheme not in ("https", "http"):
        raise UrlRefused("url_scheme_not_allowed", "url must be https://")
    if parts.scheme == "http" and not policy.allow_loopback:
        raise UrlRefused("url_scheme_not_allowed",
                         "url must be https:// (http:// only to loopback in development)")
    if not parts.hostname:
        raise UrlRefused("url_invalid", "url must name a host")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise UrlRefused("url_has_credentials", "url must not carry credentials")
    if parts.fragment or url.endswith("#"):
        raise UrlRefused("url_invalid", "url must not have a fragment")
    if port == 0:
        raise UrlRefused("url_invalid", "url port must be 1-65535")
    return parts


def address_problem(address: IPAddress, policy: UrlPolicy) -> UrlRefused | None:
    """Why a call may not connect to `address`, or None when it may."""
    if policy.admits(address):
        return None
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        problem = address_problem(embedded, policy)
        if problem is not None:
            return problem
        # A public IPv4 address in an IPv6 wrapper: judged as that address.
        return None
    if address in METADATA_ADDRESSES:
        return UrlRefused("address_metadata", "the URL resolves to a cloud metadata address")
    if address.is_loopback:
        if policy.allow_loopback:
            return None
        return UrlRefused("address_loopback", "the URL resolves to a loopback address")
    if address.is_unspecified:
        return UrlRefused("address_unspecified", "the URL resolves to an unspecified address")
    if address.is_multicast:
        return UrlRefused("address_multicast", "the URL resolves to a multicast address")
    if address.is_link_local:
        return UrlRefused("address_link_local", "the URL resolves to a link-local address")
    if address.version == 4 and address in _CGNAT:
        return UrlRefused("address_cgnat", "the URL resolves to a carrier-grade NAT address")
    if address.version == 6 and address in _UNIQUE_LOCAL:
        return UrlRefused("address_unique_local",
                          "the URL resolves to a unique-local IPv6 address")
    if address.version == 4 and any(address in network for network in _PRIVATE):
        return UrlRefused("address_private", "the URL resolves to a private address")
    # Everything else that is not public unicast: reserved, documentation, benchmarking,
    # protocol assignments, broadcast (Python's registry of special-purpose addresses).
    if address.is_reserved or address.is_private or not address.is_global:
        return UrlRefused("address_reserved",
                          "the URL resolves to a reserved or special-purpose address")
    return None


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if address.version != 6:
        return None
    assert isinstance(address, ipaddress.IPv6Address)
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    packed = address.packed
    if any(address in network for network in _NAT64) or (
            address in _IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(packed[-4:])
    return None


def vet_addresses(addresses: Sequence[IPAddress], policy: UrlPolicy) -> None:
    """Every address must be callable: one bad answer refuses the whole host (a resolver
    could hand the bad one to the next call)."""
    if not addresses:
        raise UrlRefused("url_host_unresolvable", "the URL's host has no address")
    for address in addresses:
        problem = address_problem(address, policy)
        if problem is not None:
            raise problem


async def resolve(host: str, port: int, timeout: float) -> tuple[IPAddress, ...]:  # noqa: ASYNC109
    """The host's addresses (an IP literal is its own), within `timeout` seconds."""
    literal = _literal(host)
    if literal is not None:
        return (literal,)
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP),
            timeout,
        )
    except (OSError, UnicodeError, TimeoutError):
        raise UrlRefused("url_host_unresolvable", "the URL's host does not resolve") from None
    found: list[IPAddress] = []
    for info in infos:
        text = str(info[4][0]).split("%", 1)[0]
        address = ipaddress.ip_address(text)
        if address not in found:
            found.append(address)
    return tuple(found)


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


async def check_url(url: str, policy: UrlPolicy, *, dns_timeout: float = 5.0) -> Target:
    """Parse, resolve and vet `url`; the Target to connect to, or UrlRefused."""
    parts = parse_url(url, policy)
    host = parts.hostname
    assert host is not None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = await resolve(host, port, dns_timeout)
    vet_addresses(addresses, policy)
    if parts.scheme == "http" and not all(a.is_loopback for a in addresses):
        raise UrlRefused("url_scheme_not_allowed",
                         "http:// is allowed only to loopback; use https://")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(url=url, scheme=parts.scheme, host=host, port=port, path=path,
                  addresses=addresses)


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """`10.1.0.0/16, fd12::/64` -> networks; ValueError names a bad entry."""
    networks: list[IPNetwork] = []
    for item in text.replace(";", ",").split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"not a network in CIDR form: {item[:60]!r}") from None
    return tuple(networks)
