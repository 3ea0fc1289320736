"""URL safety (SSRF) by class: every address of each refused range is refused with that
range's code (sampled across the whole range with `ipaddress`, not one example), IPv6 forms
that embed an IPv4 address are judged by it, the allowlist admits, and the sender connects to
the address it vetted, never to a second DNS answer."""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from tests.support.webhook_receiver import Receiver

from symphony.db import ConfigurationError
from symphony.webhooks import UrlPolicy, UrlRefused, WebhookSender, WebhookSettings, check_url
from symphony.webhooks.urlsafety import address_problem, parse_url

STRICT = UrlPolicy()
LOOPBACK = UrlPolicy(allow_loopback=True)

# Each refused class, its code, and the ranges that make it up.
CLASSES: dict[str, list[str]] = {
    "address_loopback": ["127.0.0.0/8", "::1/128"],
    "address_private": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"],
    "address_link_local": ["169.254.0.0/16", "fe80::/10"],
    "address_cgnat": ["100.64.0.0/10"],
    "address_unique_local": ["fc00::/7"],
    "address_multicast": ["224.0.0.0/4", "ff00::/8"],
    "address_reserved": ["240.0.0.0/4", "2001:db8::/32", "192.0.0.0/29", "198.18.0.0/15"],
    "address_unspecified": ["0.0.0.0/32", "::/128"],
}
METADATA = ["169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200"]
PUBLIC = ["1.1.1.1", "8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "2001:4860:4860::8888"]


def sample(network: str, count: int = 64) -> Iterator[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The first, the last and `count` random addresses of `network`."""
    net = ipaddress.ip_network(network)
    rng = random.Random(network)
    yield net.network_address
    yield net.broadcast_address
    for _ in range(count):
        yield net.network_address + rng.randrange(net.num_addresses)


def _is_metadata(address: Any) -> bool:
    # Metadata addresses inside a class answer with their own, more precise code.
    return address in {ipaddress.ip_address(m) for m in METADATA}


@pytest.mark.parametrize("code", sorted(CLASSES))
def test_every_address_of_a_refused_class_is_refused_with_its_code(code: str) -> None:
    for network in CLASSES[code]:
        for address in sample(network):
            problem = address_problem(address, STRICT)
            assert problem is not None, address
            expected = "address_metadata" if _is_metadata(address) else code
            assert problem.code == expected, (address, problem.code)


@pytest.mark.parametrize("code", ["address_private", "address_loopback", "address_link_local",
                                  "address_cgnat", "address_metadata"])
def test_ipv4_addresses_wrapped_in_ipv6_are_judged_as_ipv4(code: str) -> None:
    networks = CLASSES.get(code, []) or ["169.254.169.254/32"]
    for network in networks:
        if ipaddress.ip_network(network).version != 4:
            continue
        for v4 in sample(network, 16):
            packed = int(v4)
            forms = [
                ipaddress.IPv6Address((0xFFFF << 32) | packed),                   # ::ffff:a.b.c.d
                ipaddress.IPv6Address((0x64FF9B << 96) | packed),                  # NAT64
                ipaddress.IPv6Address((0x2002 << 112) | (packed << 80)),           # 6to4
            ]
            if packed > 1:
                forms.append(ipaddress.IPv6Address(packed))                        # ::a.b.c.d
            for wrapped in forms:
                problem = address_problem(wrapped, STRICT)
                assert problem is not None, (v4, wrapped)
                assert problem.code == address_problem(v4, STRICT).code, (wrapped,)  # type: ignore[union-attr]


@pytest.mark.parametrize("address", METADATA)
def test_cloud_metadata_addresses_have_their_own_code(address: str) -> None:
    problem = address_problem(ipaddress.ip_address(address), STRICT)
    assert problem is not None and problem.code == "address_metadata"
    # Even where loopback is allowed for development.
    assert address_problem(ipaddress.ip_address(address), LOOPBACK) is not None


@pytest.mark.parametrize("address", PUBLIC)
def test_public_unicast_addresses_pass(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address), STRICT) is None
    wrapped = ipaddress.ip_address(address)
    if wrapped.version == 4:
        assert address_problem(ipaddress.IPv6Address((0xFFFF << 32) | int(wrapped)), STRICT) is None


def test_the_allowlist_admits_its_networks_only() -> None:
    policy = UrlPolicy(allowed_networks=(ipaddress.ip_network("10.20.0.0/16"),))
    for address in sample("10.20.0.0/16", 32):
        assert address_problem(address, policy) is None
    assert address_problem(ipaddress.ip_address("10.21.0.1"), policy) is not None
    assert address_problem(ipaddress.ip_address("192.168.1.1"), policy) is not None


def test_loopback_is_admitted_only_by_the_development_setting() -> None:
    for address in sample("127.0.0.0/8", 16):
        assert address_problem(address, STRICT).code == "address_loopback"  # type: ignore[union-attr]
        assert address_problem(address, LOOPBACK) is None
    # The setting admits loopback, not private networks.
    assert address_problem(ipaddress.ip_address("10.0.0.1"), LOOPBACK) is not None


@pytest.mark.parametrize(("url", "code"), [
    ("http://hooks.example.com/x", "url_scheme_not_allowed"),
    ("ftp://hooks.example.com/x", "url_scheme_not_allowed"),
    ("https://user:pw@hooks.example.com/x", "url_has_credentials"),
    ("https://hooks.example.com/x#frag", "url_invalid"),
    ("https:///no-host", "url_invalid"),
    ("https://hooks.example.com:99999/x", "url_invalid"),
    ("https://hooks.example.com/a b", "url_invalid"),
    ("https://hooks.example.com/\u00e9", "url_invalid"),
    ("https://x", "url_invalid"),
    ("https://hooks.example.com/" + "a" * 2100, "url_invalid"),
])
def test_malformed_or_unsafe_urls_are_refused_with_a_code(url: str, code: str) -> None:
    with pytest.raises(UrlRefused) as info:
        parse_url(url, STRICT)
    assert info.value.code == code


async def test_http_is_allowed_only_to_loopback_even_with_the_setting() -> None:
    await check_url("http://127.0.0.1:9/hooks", LOOPBACK)
    with pytest.raises(UrlRefused) as info:
        await check_url("http://1.1.1.1/hooks", LOOPBACK)
    assert info.value.code == "url_scheme_not_allowed"


async def test_names_are_judged_by_what_they_resolve_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A resolver of the test's own: no DNS query leaves the machine.
    answers = {"private.example": "10.9.8.7", "meta.example": "169.254.169.254",
               "public.example": "93.184.216.34", "mixed.example": None}
    loop = asyncio.get_running_loop()

    async def resolver(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "mixed.example":  # one public answer and one private: refused
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
                    (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.168.1.5", port))]
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "unknown")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], port))]

    monkeypatch.setattr(loop, "getaddrinfo", resolver)
    for host, code in (("private.example", "address_private"),
                       ("meta.example", "address_metadata"),
                       ("mixed.example", "address_private"),
                       ("nowhere.example", "url_host_unresolvable")):
        with pytest.raises(UrlRefused) as info:
            await check_url(f"https://{host}/hooks", STRICT)
        assert info.value.code == code, host
    target = await check_url("https://public.example:8443/hooks?x=1", STRICT)
    assert target.addresses == (ipaddress.ip_address("93.184.216.34"),)
    assert target.host_header == "public.example:8443" and target.path == "/hooks?x=1"


def test_the_loopback_setting_is_refused_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYMPHONY_ENV", "production")
    with pytest.raises(ConfigurationError) as info:
        WebhookSettings.load(allow_loopback=True)
    assert info.value.code == "INVALID_WEBHOOK_CONFIG"
    monkeypatch.setenv("SYMPHONY_ENV", "development")
    assert WebhookSettings.load(allow_loopback=True).policy.allow_loopback


def test_the_allowlist_setting_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYMPHONY_WEBHOOK_ALLOWED_NETWORKS", "10.1.0.0/16, fd12::/64")
    assert len(WebhookSettings.load().allowed_networks) == 2
    monkeypatch.setenv("SYMPHONY_WEBHOOK_ALLOWED_NETWORKS", "10.1.0.0/16, nonsense")
    with pytest.raises(ConfigurationError):
        WebhookSettings.load()


# -- DNS rebinding: the call goes to the vetted address ------------------------------------


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


async def test_the_sender_connects_to_the_address_it_vetted_not_to_a_second_answer(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A rebinding resolver: loopback (allowed here) first, a metadata address afterwards.
    answers = ["127.0.0.1", "169.254.169.254"]
    asked: list[str] = []
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo

    async def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "rebind.example":
            asked.append(host)
            address = answers[min(len(asked) - 1, 1)]
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]
        return await real(host, port, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", rebinding)
    sender = WebhookSender(LOOPBACK)
    try:
        result = await sender.send(f"http://rebind.example:{receiver.port}/hooks",
                                   {"content-type": "application/json"}, b"{}")
    finally:
        await sender.aclose()
    assert result.ok, result
    # Resolved once, by the check; the connection used the vetted address.
    assert asked == ["rebind.example"]
    assert receiver.received[0].headers["host"] == f"rebind.example:{receiver.port}"
    # The next call resolves again and is refused on the new answer: checked per call.
    sender = WebhookSender(LOOPBACK)
    try:
        result = await sender.send(f"http://rebind.example:{receiver.port}/hooks", {}, b"{}")
    finally:
        await sender.aclose()
    assert not result.ok and result.error_class == "address_metadata"
    assert len(receiver.received) == 1
