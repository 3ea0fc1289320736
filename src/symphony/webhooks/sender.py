"""One webhook call: vetted address, pinned connection, no redirects, bounded in time and size.

The sender resolves the endpoint's host, vets every address (`urlsafety`), and connects to
the first vetted address itself: the request goes to `scheme://<address>:<port>/path` with
the Host header and the TLS SNI name (and so the certificate check) set to the host. Nothing
resolves the name again between the check and the connection, so a DNS answer that changes
in between (rebinding) cannot move the call to another address.

Bounds: a connect deadline, a read deadline, and an overall deadline on the whole call;
redirects are never followed (a 3xx is a failed attempt, `redirect_not_followed`); the answer's
body is streamed and at most `excerpt_bytes` of it are read before the connection is closed,
so a 10 MB answer costs no more than a short one. Keep-alive is off: every call connects
afresh, so a TLS session verified for one host is never reused for another host that shares
its address (the connection pool knows a connection by address and port, not by SNI name).

TLS: the certificate must chain to a trusted root and name the URL's host (checked against
the SNI name, never against the address connected to). The roots are the public ones httpx
ships (certifi) plus, for endpoints behind a private CA, the PEM bundle the operator
configures (`ca_bundle`). Verification cannot be switched off: no setting or argument does
it, and `tls_context` refuses a context that would not verify. A refused certificate is a
failed attempt like any other (retried on the schedule): `tls_certificate_name_mismatch`
(valid, but for another name), `tls_certificate_invalid` (untrusted issuer, self-signed,
expired), `tls_error` (any other handshake failure).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx

from symphony.webhooks.urlsafety import Target, UrlPolicy, UrlRefused, check_url

log = logging.getLogger("symphony.delivery.sender")

USER_AGENT: Final = "Symphony-Webhooks/1"
EXCERPT_CHARS: Final = 256
# OpenSSL's verify codes for a certificate that is valid but names another host or address.
_NAME_MISMATCH_CODES: Final = frozenset({62, 64})  # X509_V_ERR_HOSTNAME/IP_ADDRESS_MISMATCH


@dataclass(frozen=True, slots=True)
class SendResult:
    """What one call did. `ok` only for a 2xx; `error_class` names any failure."""

    ok: bool
    http_status: int | None
    latency_ms: int
    error_class: str | None
    excerpt: str | None


@dataclass(frozen=True, slots=True)
class SenderLimits:
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    total_timeout: float = 15.0
    dns_timeout: float = 5.0
    excerpt_bytes: int = 1024


def tls_context(ca_bundle: Path | None = None) -> ssl.SSLContext:
    """The client context of every https call: public roots plus `ca_bundle`'s CAs (a PEM
    file), TLS 1.2 or later, the certificate and its host name always verified.

    OSError or ssl.SSLError when the bundle cannot be read or holds no certificate."""
    context = httpx.create_ssl_context(verify=True, trust_env=False)
    if ca_bundle is not None:
        context.load_verify_locations(cafile=str(ca_bundle))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if context.verify_mode != ssl.CERT_REQUIRED or not context.check_hostname:
        raise ssl.SSLError("a webhook call must verify the certificate and its host name")
    return context


class WebhookSender:
    """Sends signed bodies to vetted endpoints. One instance per service; `aclose()` ends it.

    ca_bundle: a PEM file of CAs trusted besides the public roots (endpoints behind a
    private CA)."""

    def __init__(
        self, policy: UrlPolicy, limits: SenderLimits | None = None, *,
        ca_bundle: Path | None = None,
    ) -> None:
        self.policy = policy
        self.limits = limits or SenderLimits()
        lim = self.limits
        self._client = httpx.AsyncClient(
            verify=tls_context(ca_bundle),
            follow_redirects=False,
            trust_env=False,  # never through a proxy, nor a CA file, from the environment
            timeout=httpx.Timeout(connect=lim.connect_timeout, read=lim.read_timeout,
                                  write=lim.read_timeout, pool=lim.connect_timeout),
            limits=httpx.Limits(max_keepalive_connections=0, max_connections=256),
            headers={"user-agent": USER_AGENT},
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(self, url: str, headers: dict[str, str], body: bytes) -> SendResult:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.limits.total_timeout):
                target = await check_url(url, self.policy, dns_timeout=self.limits.dns_timeout)
                return await self._call(target, headers, body, started)
        except UrlRefused as refused:
            return _failed(started, refused.code)
        except TimeoutError:
            return _failed(started, "timeout")

    async def _call(
        self, target: Target, headers: dict[str, str], body: bytes, started: float
    ) -> SendResult:
        address = target.addresses[0]
        host = f"[{address}]" if address.version == 6 else str(address)
        pinned = f"{target.scheme}://{host}:{target.port}{target.path}"
        request = self._client.build_request(
            "POST", pinned, content=body, headers={**headers, "host": target.host_header},
            extensions={"sni_hostname": target.host} if target.scheme == "https" else {},
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.ConnectTimeout:
            return _failed(started, "connect_timeout")
        except httpx.TimeoutException:
            return _failed(started, "timeout")
        except httpx.ConnectError as exc:
            return _failed(started, _connect_error_class(exc))
        except httpx.HTTPError:
            return _failed(started, "protocol_error")
        try:
            excerpt = await self._excerpt(response)
        except httpx.TimeoutException:
            excerpt = None
        except httpx.HTTPError:
            excerpt = None
        finally:
            await response.aclose()
        status = response.status_code
        latency = _ms(started)
        if 200 <= status < 300:
            return SendResult(True, status, latency, None, excerpt)
        if 300 <= status < 400:
            error = "redirect_not_followed"
        elif status >= 500:
            error = "http_5xx"
        else:
            error = "http_4xx"
        return SendResult(False, status, latency, error, excerpt)

    async def _excerpt(self, response: httpx.Response) -> str | None:
        """At most `excerpt_bytes` of the body, then stop reading (the connection closes)."""
        cap = self.limits.excerpt_bytes
        got = bytearray()
        async for chunk in response.aiter_raw():
            got.extend(chunk[: cap - len(got)])
            if len(got) >= cap:
                break
        return sanitize_excerpt(bytes(got))


def sanitize_excerpt(raw: bytes) -> str | None:
    """Printable ASCII only, whitespace runs folded, at most EXCERPT_CHARS characters."""
    if not raw:
        return None
    text = raw.decode("ascii", errors="replace")
    cleaned = "".join(ch if " " <= ch <= "~" else " " for ch in text)
    folded = " ".join(cleaned.split())
    return folded[:EXCERPT_CHARS] or None


def _connect_error_class(exc: BaseException) -> str:
    """What failed while connecting: the certificate, another part of TLS, or the TCP
    connection (httpx wraps the ssl module's error; its cause says which)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            if seen.verify_code in _NAME_MISMATCH_CODES:
                return "tls_certificate_name_mismatch"
            return "tls_certificate_invalid"
        if isinstance(seen, ssl.SSLError):
            return "tls_error"
        seen = seen.__cause__ or seen.__context__
    return "connect_error"


def _ms(started: float) -> int:
    return max(0, int((time.monotonic() - started) * 1000))


def _failed(started: float, error_class: str) -> SendResult:
    return SendResult(False, None, _ms(started), error_class, None)
