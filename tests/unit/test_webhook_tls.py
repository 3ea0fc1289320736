"""Webhook calls over https, on loopback only: the certificate is verified against the URL's
host name and that name is sent as SNI, although the call connects to the vetted address.

Every test makes its own throwaway CA (trustme) and serves a certificate for a made-up name
(`hooks.example.test`) from 127.0.0.1. The name resolves through the event loop's resolver,
which the test replaces (no /etc/hosts, no DNS query leaves the machine): the sender's check
and anything that would resolve again at connect time both go through it, so a second lookup
shows. The receiver records the SNI name of each handshake and every call is checked with the
Standard Webhooks algorithm written in the test (tests/support/webhook_receiver.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tests.support.webhook_receiver import Receiver, verify_standard_webhook
from tests.support.webhooks import (
    LOOPBACK,
    Hooked,
    attempts_of,
    deliveries_of,
    delivery_service,
    events_of,
    hooked_participant,
    make_due,
    pay,
    retire,
    webhook_id,
)

from symphony.db import ConfigurationError, Database
from symphony.services.delivery import DeliveryConfig, DeliveryService
from symphony.webhooks import SenderLimits, UrlPolicy, WebhookSender
from symphony.webhooks.sender import tls_context

NAME = "hooks.example.test"
SRC = Path(__file__).resolve().parents[2] / "src" / "symphony"


# -- certificates, names and receivers ------------------------------------------------------


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_bundle(ca: trustme.CA, tmp_path: Path) -> Path:
    """The deployment's private-CA bundle: the test CA only."""
    path = tmp_path / "private-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


def self_signed_context(name: str) -> ssl.SSLContext:
    """A server context whose certificate names `name` but is signed by its own key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with trustme.Blob(pem).tempfile() as path:
        context.load_cert_chain(path)
    return context


@dataclass
class Names:
    """The test's resolver: `answers[name]` is the list of answers, one per lookup (the last
    one repeats). Every lookup of a listed name is counted in `asked`."""

    answers: dict[str, list[str]] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)

    def lookups(self, name: str) -> int:
        return self.asked.count(name)


@pytest.fixture
async def names(monkeypatch: pytest.MonkeyPatch) -> Names:
    table = Names()
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo

    async def resolve(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        key = host.decode() if isinstance(host, bytes) else host
        if key in table.answers:
            table.asked.append(key)
            answers = table.answers[key]
            address = answers[min(table.lookups(key) - 1, len(answers) - 1)]
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                     (address, port))]
        return await real(host, port, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", resolve)
    return table


@contextlib.asynccontextmanager
async def running(receiver: Receiver) -> AsyncIterator[Receiver]:
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


@pytest.fixture
async def receiver(ca: trustme.CA, names: Names) -> AsyncIterator[Receiver]:
    """An https receiver on 127.0.0.1 with a certificate for NAME, which resolves there."""
    names.answers[NAME] = ["127.0.0.1"]
    async with running(Receiver(tls=server_context(ca.issue_cert(NAME)),
                                host_name=NAME)) as r:
        yield r


@pytest.fixture
async def hooked(isolated_db: Database, receiver: Receiver) -> AsyncIterator[Hooked]:
    h = await hooked_participant(isolated_db, receiver)
    yield h
    await retire(isolated_db, h)


@pytest.fixture
async def service(isolated_db: Database, ca_bundle: Path) -> AsyncIterator[DeliveryService]:
    svc, sender = delivery_service(isolated_db, ca_bundle=ca_bundle)
    yield svc
    await sender.aclose()


async def drain(service: DeliveryService, cycles: int = 10) -> None:
    for _ in range(cycles):
        cycle = await service.run_once()
        if cycle.claimed == 0 and cycle.deliveries_created == 0:
            return


# -- (a) delivered over https, signed, SNI = the URL's host --------------------------------


async def test_a_delivery_over_https_is_signed_and_names_the_url_host_in_sni(
    isolated_db: Database, hooked: Hooked, receiver: Receiver, service: DeliveryService,
    names: Names,
) -> None:
    await pay(isolated_db, hooked.participant_id, 3)
    await drain(service)
    events = await events_of(isolated_db, hooked.participant_id)
    assert len(events) >= 3 and len(receiver.received) == len(events)
    for call in receiver.received:
        verify_standard_webhook(hooked.secret, call.headers, call.body)
        # The connection went to 127.0.0.1, but TLS asked for (and verified) the name.
        assert call.sni == NAME
        assert call.headers["host"] == f"{NAME}:{receiver.port}"
    assert sorted(c.headers["webhook-id"] for c in receiver.received) == sorted(
        webhook_id(e["event_id"]) for e in events)
    # One lookup per call, by the check: nothing resolved the name again to connect.
    assert names.lookups(NAME) == len(receiver.received)
    assert receiver.connections == len(receiver.received)
    rows = await deliveries_of(isolated_db, hooked.participant_id)
    assert {r["status"] for r in rows} == {"DELIVERED"}
    attempts = await attempts_of(isolated_db, hooked.participant_id)
    assert {(a["outcome"], a["http_status"], a["error_class"]) for a in attempts} == {
        ("DELIVERED", 204, None)}


# -- (b), (c) refused certificates: recorded, retried, never sent to -----------------------


async def swap_certificate(receiver: Receiver, context: ssl.SSLContext) -> None:
    """The receiver serves `context`'s certificate from now on (same address and port)."""
    await receiver.stop()
    receiver.tls = context
    await receiver.start()


@pytest.mark.parametrize(
    ("served", "error_class"),
    [
        ("another_name", "tls_certificate_name_mismatch"),
        ("another_ca", "tls_certificate_invalid"),
        ("self_signed", "tls_certificate_invalid"),
    ],
)
async def test_a_refused_certificate_is_a_recorded_attempt_and_the_delivery_is_retried(
    isolated_db: Database, hooked: Hooked, receiver: Receiver, service: DeliveryService,
    ca: trustme.CA, served: str, error_class: str,
) -> None:
    good = receiver.tls
    assert good is not None
    bad = {
        # Issued by the trusted CA, but for another host.
        "another_name": lambda: server_context(ca.issue_cert("other.example.test")),
        # The right name, from a CA the deployment does not trust.
        "another_ca": lambda: server_context(trustme.CA().issue_cert(NAME)),
        # The right name, signed by its own key.
        "self_signed": lambda: self_signed_context(NAME),
    }[served]()
    await swap_certificate(receiver, bad)
    await pay(isolated_db, hooked.participant_id)
    await drain(service, cycles=2)
    # The handshake asked for the URL's host, and the call stopped there: nothing was sent.
    assert receiver.sni_names and set(receiver.sni_names) == {NAME}
    assert receiver.received == []
    attempts = await attempts_of(isolated_db, hooked.participant_id)
    assert attempts
    assert {(a["outcome"], a["http_status"], a["error_class"]) for a in attempts} == {
        ("RETRY", None, error_class)}
    rows = await deliveries_of(isolated_db, hooked.participant_id)
    assert {r["status"] for r in rows} == {"PENDING"}
    waits = seconds_until_due(rows)
    assert all(w > 2 for w in waits), waits  # scheduled later (5 s +-20%), not dropped
    # The endpoint fixes its certificate: the same deliveries go through, same webhook-id.
    await swap_certificate(receiver, good)
    await make_due(isolated_db, hooked.participant_id)
    await drain(service)
    rows = await deliveries_of(isolated_db, hooked.participant_id)
    assert {(r["status"], r["attempt_count"]) for r in rows} == {("DELIVERED", 2)}
    for call in receiver.received:
        verify_standard_webhook(hooked.secret, call.headers, call.body)
        assert call.sni == NAME


def seconds_until_due(rows: list[dict[str, Any]]) -> list[float]:
    now = dt.datetime.now(dt.UTC)
    return [(r["next_attempt_at"] - now).total_seconds() for r in rows]


async def test_without_the_ca_bundle_a_private_ca_is_not_trusted(
    isolated_db: Database, hooked: Hooked, receiver: Receiver
) -> None:
    # The production default: public roots only. The private CA is trusted only when the
    # deployment names its bundle.
    svc, sender = delivery_service(isolated_db)
    try:
        await pay(isolated_db, hooked.participant_id)
        await drain(svc, cycles=2)
    finally:
        await sender.aclose()
    assert receiver.received == []
    attempts = await attempts_of(isolated_db, hooked.participant_id)
    assert attempts and {(a["outcome"], a["error_class"]) for a in attempts} == {
        ("RETRY", "tls_certificate_invalid")}


# -- (d) DNS rebinding over https -----------------------------------------------------------


async def test_rebinding_to_loopback_is_refused_over_https(
    isolated_db: Database, ca: trustme.CA, ca_bundle: Path, names: Names
) -> None:
    """A name that answers an admitted address for the check and loopback afterwards.

    The admitted address stands in for a public one so that nothing leaves the machine: it
    is 127.0.0.2, admitted by the allowlist, while loopback itself (127.0.0.1, where the
    "internal" service listens, with a certificate the sender would accept) is refused. A
    sender that resolved again to connect would reach the internal service."""
    cert = ca.issue_cert(NAME)
    async with running(Receiver(tls=server_context(cert), host_name=NAME)) as internal, \
            running(Receiver(tls=server_context(cert), host_name=NAME, address="127.0.0.2",
                             port=internal.port)) as public:
        names.answers[NAME] = ["127.0.0.2", "127.0.0.1"]
        policy = UrlPolicy(allow_loopback=False,
                           allowed_networks=(ipaddress.ip_network("127.0.0.2/32"),))
        hooked = await hooked_participant(isolated_db, public)
        # One delivery per cycle: the first call is alone with the first answer.
        svc, sender = delivery_service(isolated_db, policy=policy, ca_bundle=ca_bundle,
                                       batch_size=1)
        try:
            await pay(isolated_db, hooked.participant_id, 2)
            events = await events_of(isolated_db, hooked.participant_id)
            assert len(events) >= 2
            await svc.run_once()
            # The first call: checked on 127.0.0.2 and connected there, SNI = the name.
            assert len(public.received) == 1 and public.received[0].sni == NAME
            verify_standard_webhook(hooked.secret, public.received[0].headers,
                                    public.received[0].body)
            assert names.lookups(NAME) == 1
            # The rest: the name now answers loopback, which the check refuses.
            await drain(svc)
        finally:
            await sender.aclose()
            await retire(isolated_db, hooked)
        assert internal.connections == 0 and internal.sni_names == []
        assert len(public.received) == 1
        assert names.lookups(NAME) == len(events)
        attempts = await attempts_of(isolated_db, hooked.participant_id)
        assert sorted((a["outcome"], a["error_class"]) for a in attempts) == sorted(
            [("DELIVERED", None)] + [("RETRY", "address_loopback")] * (len(events) - 1))


async def test_two_names_on_one_address_each_get_their_own_verified_connection(
    ca: trustme.CA, ca_bundle: Path, names: Names
) -> None:
    """The connection pool knows a connection by address and port only: a reused one would
    carry the first name's TLS session to the second name. Each call connects afresh."""
    first, second = "a.example.test", "b.example.test"
    names.answers[first] = names.answers[second] = ["127.0.0.1"]
    sender = WebhookSender(LOOPBACK, ca_bundle=ca_bundle)
    context = server_context(ca.issue_cert(first, second))
    try:
        async with running(Receiver(tls=context, keep_alive=True)) as r:
            order = [first, second, first, second]
            for host in order:
                result = await sender.send(f"https://{host}:{r.port}/hooks", {}, b"{}")
                assert result.ok, result
            results = await asyncio.gather(*(
                sender.send(f"https://{host}:{r.port}/hooks", {}, b"{}") for host in order))
            assert all(result.ok for result in results), results
    finally:
        await sender.aclose()
    assert r.connections == len(r.received) == 2 * len(order)
    assert all(c.sni == c.headers["host"].split(":")[0] for c in r.received)


# -- the bounds hold over https as over http ------------------------------------------------


@pytest.fixture
async def tls_sender(ca_bundle: Path) -> AsyncIterator[WebhookSender]:
    sender = WebhookSender(LOOPBACK, SenderLimits(connect_timeout=1.0, read_timeout=1.0,
                                                  total_timeout=5.0),
                           ca_bundle=ca_bundle)
    yield sender
    await sender.aclose()


async def test_a_ten_megabyte_answer_over_https_is_not_read(
    receiver: Receiver, tls_sender: WebhookSender
) -> None:
    receiver.mode = "huge"
    result = await tls_sender.send(receiver.url, {}, b"{}")
    assert result.ok and result.http_status == 200
    assert result.excerpt is not None and len(result.excerpt) <= 256
    await asyncio.sleep(0.2)  # let the receiver notice the closed connection
    assert receiver.huge_bytes_sent < 10 * 1024 * 1024


async def test_an_https_receiver_that_never_answers_hits_the_read_deadline(
    receiver: Receiver, tls_sender: WebhookSender
) -> None:
    receiver.mode = "hang"
    started = time.monotonic()
    result = await tls_sender.send(receiver.url, {}, b"{}")
    assert (result.ok, result.error_class) == (False, "timeout")
    assert len(receiver.received) == 1  # the request arrived over TLS; the answer never did
    assert time.monotonic() - started < 4


async def test_a_handshake_that_never_completes_hits_the_connect_deadline(
    tls_sender: WebhookSender, names: Names
) -> None:
    # Accepts the TCP connection and never says a word of TLS.
    stalled: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stalled.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    names.answers[NAME] = ["127.0.0.1"]
    started = time.monotonic()
    try:
        result = await tls_sender.send(f"https://{NAME}:{port}/hooks", {}, b"{}")
    finally:
        for writer in stalled:
            writer.close()
        server.close()
    assert (result.ok, result.error_class) == (False, "connect_timeout")
    assert len(stalled) == 1
    assert time.monotonic() - started < 4


# -- verification cannot be switched off ----------------------------------------------------


def test_the_client_context_always_verifies_the_certificate_and_its_name(
    ca_bundle: Path,
) -> None:
    for context in (tls_context(), tls_context(ca_bundle)):
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.check_hostname is True
        assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    # The bundle adds to the public roots; it does not replace them.
    assert len(tls_context(ca_bundle).get_ca_certs()) == len(tls_context().get_ca_certs()) + 1


def test_a_ca_bundle_that_is_not_a_pem_of_certificates_stops_the_service(
    tmp_path: Path,
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    for path in (junk, tmp_path / "missing.pem"):
        with pytest.raises(ConfigurationError) as refused:
            DeliveryConfig.load(ca_bundle=path)
        assert refused.value.code == "INVALID_DELIVERY_CONFIG"
        assert "SYMPHONY_DELIVERY_CA_BUNDLE" in str(refused.value)


def test_the_bundle_is_read_from_its_setting(
    ca_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYMPHONY_DELIVERY_CA_BUNDLE", str(ca_bundle))
    assert DeliveryConfig.load().ca_bundle == ca_bundle


_DISABLING: tuple[re.Pattern[str], ...] = tuple(re.compile(p) for p in (
    r"verify\s*=\s*False",
    r"CERT_NONE",
    r"CERT_OPTIONAL",
    r"check_hostname\s*=\s*False",
    r"_create_unverified_context",
))


def _python_files() -> Iterator[Path]:
    yield from sorted(SRC.rglob("*.py"))


def test_nothing_in_the_product_switches_certificate_verification_off() -> None:
    offending = [f"{path.relative_to(SRC)}:{n}: {line.strip()}"
                 for path in _python_files()
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if any(p.search(line) for p in _DISABLING)]
    assert offending == []
