"""HTTP implementation of the rail client contract.

The classification here is the safety boundary of the whole outbox: anything
that might have reached the rail and been executed must come back AMBIGUOUS
(so the worker looks it up before re-sending), and only answers that prove the
rail did nothing may come back RETRYABLE.

A status code alone proves nothing about the rail: a proxy, load balancer or
gateway between us and the rail can answer 503, 429, 408, 409 or 404 after it
has already forwarded the request. Only an answer carrying the rail's own error
shape, a JSON object whose ``code`` is a non-empty token string (for example
``{"code": "RAIL_UNAVAILABLE", "message": "..."}``), is trusted to say what the
rail did. "Rail-shaped" below means exactly that; "bare" is anything else
(empty, HTML, plain text, JSON without such a ``code``, or an oversized body).

Dispatch (``POST /v1/payments``):

=======================  ===========================  =========  ============================
answer                   body                         outcome    code
=======================  ===========================  =========  ============================
200 / 201                the executed payment (*)     SUCCESS    (none; transaction id set)
200 / 201                anything else                AMBIGUOUS  RAIL_MALFORMED_RESPONSE
503 / 429 / 408          rail-shaped                  RETRYABLE  the rail's code
503 / 429 / 408          bare                         AMBIGUOUS  RAIL_UNCONFIRMED_<status>
409                      code REFERENCE_CONFLICT      TERMINAL   REFERENCE_CONFLICT
409                      any other rail code          AMBIGUOUS  the rail's code
409                      bare                         AMBIGUOUS  RAIL_UNCONFIRMED_409
other 4xx                rail-shaped                  TERMINAL   the rail's code
other 4xx                bare                         AMBIGUOUS  RAIL_MALFORMED_RESPONSE
other 5xx                rail-shaped                  AMBIGUOUS  the rail's code
other 5xx                bare                         AMBIGUOUS  RAIL_SERVER_ERROR
any other status         any                          AMBIGUOUS  RAIL_UNEXPECTED_STATUS
connect error/timeout    (no answer)                  RETRYABLE  RAIL_UNREACHABLE
timeout once connected   (no answer)                  AMBIGUOUS  RAIL_TIMEOUT
other transport error    (no answer)                  AMBIGUOUS  RAIL_TRANSPORT_ERROR
=======================  ===========================  =========  ============================

``RAIL_UNCONFIRMED_<status>`` names a status that would have meant "not
executed" (or "conflict") had the rail said it, but that nothing shows the
rail said; the worker looks the reference up before sending it again. A 409
with a rail code other than ``REFERENCE_CONFLICT`` (such as "a request with
this idempotency key is in progress") says the rail has seen the reference, so
it is AMBIGUOUS, never a final failure.

Lookup (``GET /v1/payments/<reference>``):

=======================  ===========================================  =========
answer                   body                                         status
=======================  ===========================================  =========
200                      the executed payment (*)                     EXECUTED
404                      rail-shaped with code NOT_FOUND              NOT_FOUND
404                      bare, or another code                        UNKNOWN
anything else            any, or no answer at all                     UNKNOWN
=======================  ===========================================  =========

(*) "The executed payment" is a JSON object whose ``reference`` equals the item's
(present, not defaulted: a cached or generic page names no payment), whose ``status``, if
given on a dispatch and always on a lookup, is ``EXECUTED``, and whose
``rail_transaction_id`` is 1-200 printable characters (``transaction_id_problem``): it is
what the ledger records as proof, so it is checked, never cleaned or cut. Anything less
leaves the item open: AMBIGUOUS (looked up before any resend) or UNKNOWN (asked again).

The shared ``httpx.AsyncClient`` ignores proxy and certificate settings from
the environment (``trust_env=False``): which intermediaries sit in front of a
payment rail is configuration, not something a stray ``HTTPS_PROXY`` decides.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Final

import httpx

from symphony import strict_json
from symphony.rails.client import (
    DispatchOutcome,
    DispatchResult,
    LookupResult,
    LookupStatus,
    transaction_id_problem,
    validate_reference,
)

# A rail's answer is a small JSON document; reading an unbounded body would let
# a misbehaving rail or proxy exhaust worker memory.
MAX_RESPONSE_BYTES: Final = 64 * 1024

# httpx timeouts apply per phase (pool, connect, write, each read), so a rail
# that trickles bytes could hold a call far beyond ``timeout``. This backstop
# caps the whole call. It is a multiple so that the phase timeouts, which
# classify more precisely (a connect timeout is RETRYABLE), normally fire first;
# when the backstop wins, AMBIGUOUS is the answer that is safe in every phase.
_BACKSTOP_FACTOR: Final = 2.0

_CODE_MAX_LENGTH: Final = 64
# Statuses that mean "refused before doing any work", but only when the rail
# itself says so (see the module docstring).
_RETRYABLE_STATUSES: Final = frozenset({408, 429, 503})
_REFERENCE_CONFLICT: Final = "REFERENCE_CONFLICT"
_NOT_FOUND: Final = "NOT_FOUND"


class HttpRailClient:
    """Rail client speaking the simulator's (and a real rail adapter's) HTTP API.

    One shared ``httpx.AsyncClient`` carries all calls so connections are
    pooled across the worker's concurrent dispatches. ``transport`` replaces the
    network for tests; ``max_connections`` is then ignored, as in httpx.
    """

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int = 64,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.supports_lookup: bool = True
        self._client = httpx.AsyncClient(
            base_url=base_url,
            transport=transport,
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
            ),
            headers={"Accept": "application/json", "User-Agent": "symphony-outbox"},
            follow_redirects=False,
            # No proxy, netrc or CA settings picked up from the environment:
            # an intermediary in front of a payment rail must be chosen, not inherited.
            trust_env=False,
            # Real timeouts are set per call; this only applies if a call path forgets.
            timeout=httpx.Timeout(10.0),
        )

    async def __aenter__(self) -> HttpRailClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close pooled connections; safe to call more than once."""
        await self._client.aclose()

    async def dispatch(
        self,
        reference: str,
        *,
        rail_type: str,
        payload: Mapping[str, Any],
        timeout: float,  # noqa: ASYNC109 - the contract's timeout, see RailClient
    ) -> DispatchResult:
        """Ask the rail to execute ``reference``; always returns a classified result."""
        validate_reference(reference)
        _validate_timeout(timeout)
        try:
            content = json.dumps(
                {"reference": reference, "rail_type": rail_type, "payload": dict(payload)},
                allow_nan=False,
                separators=(",", ":"),
            ).encode()
        except (TypeError, ValueError) as exc:
            # The payload comes from stored data, not code: retrying cannot fix
            # it, and raising would make the item a poison pill for the worker.
            return DispatchResult(
                DispatchOutcome.TERMINAL,
                code="INVALID_PAYLOAD",
                detail=f"payload is not JSON-serialisable: {exc}",
            )
        request = self._client.build_request(
            "POST",
            "/v1/payments",
            content=content,
            headers={"Content-Type": "application/json", "Idempotency-Key": reference},
            timeout=httpx.Timeout(timeout),
        )
        try:
            async with asyncio.timeout(timeout * _BACKSTOP_FACTOR):
                status, body = await self._exchange(request)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            return DispatchResult(
                DispatchOutcome.RETRYABLE,
                code="RAIL_UNREACHABLE",
                detail=_exception_detail(exc),
            )
        except httpx.TimeoutException as exc:
            return DispatchResult(
                DispatchOutcome.AMBIGUOUS, code="RAIL_TIMEOUT", detail=_exception_detail(exc)
            )
        except TimeoutError:
            return DispatchResult(
                DispatchOutcome.AMBIGUOUS,
                code="RAIL_TIMEOUT",
                detail=f"no complete answer within {timeout * _BACKSTOP_FACTOR:g}s",
            )
        except httpx.HTTPError as exc:
            return DispatchResult(
                DispatchOutcome.AMBIGUOUS,
                code="RAIL_TRANSPORT_ERROR",
                detail=_exception_detail(exc),
            )
        return _classify_dispatch(reference, status, body)

    async def lookup(self, reference: str, *, timeout: float) -> LookupResult:  # noqa: ASYNC109
        """Ask the rail whether ``reference`` was executed; UNKNOWN if it cannot say."""
        validate_reference(reference)
        _validate_timeout(timeout)
        request = self._client.build_request(
            "GET", f"/v1/payments/{reference}", timeout=httpx.Timeout(timeout)
        )
        try:
            async with asyncio.timeout(timeout * _BACKSTOP_FACTOR):
                status, body = await self._exchange(request)
        except TimeoutError:
            return LookupResult(LookupStatus.UNKNOWN, detail="lookup timed out")
        except httpx.HTTPError as exc:
            return LookupResult(LookupStatus.UNKNOWN, detail=_exception_detail(exc))
        return _classify_lookup(reference, status, body)

    async def _exchange(self, request: httpx.Request) -> tuple[int, bytes | None]:
        """Send ``request``; return the status and body, or None for an oversized body."""
        response = await self._client.send(request, stream=True)
        try:
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    return response.status_code, None
                chunks.append(chunk)
            return response.status_code, b"".join(chunks)
        finally:
            await response.aclose()


def _validate_timeout(timeout: float) -> None:
    if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a positive finite number of seconds, got {timeout!r}")


def _exception_detail(exc: BaseException) -> str:
    # Only the exception type and its message: httpx messages name the failure,
    # never request headers or bodies.
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _json_object(body: bytes | None) -> dict[str, Any] | None:
    if not body:
        return None
    try:
        # Strict: an answer that two readers could read differently (a member named twice,
        # say) proves nothing, so it counts as no document at all.
        # Its free text is cleaned where it is parsed (rails.client.storable_text).
        parsed = strict_json.loads(body, max_depth=None, storable=False)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _rail_code(document: Mapping[str, Any] | None) -> str | None:
    """The rail's error code, if it is a plausible machine-readable token."""
    if document is None:
        return None
    code = document.get("code")
    if (
        isinstance(code, str)
        and 0 < len(code) <= _CODE_MAX_LENGTH
        and all(ch.isascii() and (ch.isalnum() or ch in "_.:-") for ch in code)
    ):
        return code
    return None


def _rail_message(status: int, document: Mapping[str, Any] | None) -> str:
    message = document.get("message") if document is not None else None
    if isinstance(message, str) and message:
        return f"HTTP {status}: {message}"
    return f"HTTP {status}"


def _classify_dispatch(reference: str, status: int, body: bytes | None) -> DispatchResult:
    document = _json_object(body)
    if status in (200, 201):
        return _classify_success(reference, status, body, document)
    code = _rail_code(document)
    if status in _RETRYABLE_STATUSES:
        if code is None:
            # A proxy or load balancer answers these too, possibly after it
            # forwarded the request to the rail: nothing proves "not executed".
            return _unconfirmed(status)
        # The rail itself says it refused before doing any work.
        return DispatchResult(
            DispatchOutcome.RETRYABLE, code=code, detail=_rail_message(status, document)
        )
    if 500 <= status <= 599:
        return DispatchResult(
            DispatchOutcome.AMBIGUOUS,
            code=code or "RAIL_SERVER_ERROR",
            detail=_rail_message(status, document),
        )
    if status == 409 and code != _REFERENCE_CONFLICT:
        # Only the rail's "reference reused for a different payment" is final.
        # Any other conflict (e.g. "a request with this key is in progress")
        # means the rail has seen the reference and may be executing it.
        if code is None:
            return _unconfirmed(status)
        return DispatchResult(
            DispatchOutcome.AMBIGUOUS, code=code, detail=_rail_message(status, document)
        )
    if 400 <= status <= 499:
        if code is None:
            # A 4xx without the rail's error shape is likely a proxy or a
            # misrouted URL, not the rail declining the payment; failing the
            # payment for good on that evidence would be wrong.
            return DispatchResult(
                DispatchOutcome.AMBIGUOUS,
                code="RAIL_MALFORMED_RESPONSE",
                detail=f"HTTP {status} without a rail error body",
            )
        return DispatchResult(
            DispatchOutcome.TERMINAL, code=code, detail=_rail_message(status, document)
        )
    return DispatchResult(
        DispatchOutcome.AMBIGUOUS,
        code="RAIL_UNEXPECTED_STATUS",
        detail=f"HTTP {status}",
    )


def _unconfirmed(status: int) -> DispatchResult:
    return DispatchResult(
        DispatchOutcome.AMBIGUOUS,
        code=f"RAIL_UNCONFIRMED_{status}",
        detail=f"HTTP {status} without a rail error body; the request may have reached the rail",
    )


def _classify_success(
    reference: str, status: int, body: bytes | None, document: Mapping[str, Any] | None
) -> DispatchResult:
    def malformed(why: str) -> DispatchResult:
        return DispatchResult(
            DispatchOutcome.AMBIGUOUS,
            code="RAIL_MALFORMED_RESPONSE",
            detail=f"HTTP {status}: {why}",
        )

    if document is None:
        return malformed("body too large" if body is None else "body is not a JSON object")
    if document.get("reference") != reference:
        # An answer for another payment, or for none (a cached or generic page), must never
        # confirm this one.
        return malformed("answer does not name this payment's reference")
    transaction_id = document.get("rail_transaction_id")
    problem = transaction_id_problem(transaction_id)
    if problem is not None:
        return malformed(problem)
    if document.get("status", "EXECUTED") != "EXECUTED":
        return malformed(f"unexpected status {str(document.get('status'))[:40]!r}")
    return DispatchResult(
        DispatchOutcome.SUCCESS,
        detail="replayed" if document.get("replayed") is True else None,
        rail_transaction_id=transaction_id,
    )


def _classify_lookup(reference: str, status: int, body: bytes | None) -> LookupResult:
    document = _json_object(body)
    if status == 404:
        # A bare 404 is a wrong URL or a load balancer's default page, not the
        # rail saying it never executed the reference.
        if _rail_code(document) == _NOT_FOUND:
            return LookupResult(LookupStatus.NOT_FOUND)
        return LookupResult(LookupStatus.UNKNOWN, detail="HTTP 404 without the rail's NOT_FOUND")
    if status != 200:
        return LookupResult(LookupStatus.UNKNOWN, detail=f"HTTP {status}")
    if document is None:
        return LookupResult(LookupStatus.UNKNOWN, detail="malformed lookup answer")
    if document.get("reference") != reference:
        # Only an answer about this payment says anything about it: a generic or cached page
        # ("EXECUTED" and nothing else) would otherwise confirm every payment looked up.
        return LookupResult(
            LookupStatus.UNKNOWN, detail="answer does not name this payment's reference")
    if document.get("status") != "EXECUTED":
        return LookupResult(
            LookupStatus.UNKNOWN,
            detail=f"rail status {str(document.get('status'))[:40]!r}",
        )
    transaction_id = document.get("rail_transaction_id")
    problem = transaction_id_problem(transaction_id)
    if problem is not None or not isinstance(transaction_id, str):
        return LookupResult(LookupStatus.UNKNOWN, detail=f"EXECUTED without proof: {problem}")
    return LookupResult(LookupStatus.EXECUTED, rail_transaction_id=transaction_id)
