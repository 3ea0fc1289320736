"""The request context every request passes through first: its request id, the body's bounds
(size and time), the request's time limit, and the last line of defence that turns any crash
into the error envelope.

A pure ASGI middleware rather than a Starlette `BaseHTTPMiddleware`: it sees every response
before it leaves, so even a 500 carries `X-Request-Id`.

The body is not read here. A route reads it when it needs it, after its dependencies have
authenticated the caller, so a request without a valid token is refused (401) without
waiting for a byte of its body. Reading goes through a bounded `receive`: past
`body_limit_bytes` it raises 413, and past `body_timeout_seconds` from the request's arrival
it raises 408, whether the body stalls or trickles in a byte at a time. An answer given
before the body was read whole (any refusal, or a route that never reads it) carries
`Connection: close`, so an unread body is never parsed as the next request, and a client
trickling it holds the connection no longer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from symphony.services.api.error import (
    REQUEST_ID_HEADER,
    RequestRefused,
    accept_request_id,
    error_response,
)

log = logging.getLogger("symphony.api")

_DIGITS: Final = frozenset("0123456789")
_LOGGED_PATH_CHARS: Final = 200


class _BoundedBody:
    """The request's `receive`, bounded in size and time; knows whether the body is whole."""

    def __init__(self, receive: Receive, headers: Headers, *, limit: int, deadline: float,
                 timeout_seconds: float) -> None:
        self._receive = receive
        self._limit = limit
        self._deadline = deadline
        self._timeout_seconds = timeout_seconds
        self._size = 0
        # No Content-Length and no Transfer-Encoding: HTTP/1.1 says there is no body.
        announced = headers.get("content-length")
        self.complete = "transfer-encoding" not in headers and announced in (None, "0")

    async def __call__(self) -> Message:
        if self.complete:
            return await self._receive()  # only http.disconnect is left to come
        try:
            async with asyncio.timeout_at(self._deadline):
                message = await self._receive()
        except TimeoutError:
            raise self.timed_out() from None
        if message["type"] == "http.request":
            # Counted as it streams: a client that sends no (or a false) Content-Length is
            # stopped at the limit, not after buffering whatever it sends.
            self._size += len(message.get("body", b""))
            if self._size > self._limit:
                raise _too_large(self._limit)
            if not message.get("more_body", False):
                self.complete = True
        return message

    def timed_out(self) -> RequestRefused:
        return RequestRefused(
            408, "request_body_timeout",
            f"the request body did not arrive within {self._timeout_seconds:g} s",
        )


def _too_large(limit: int) -> RequestRefused:
    return RequestRefused(413, "payload_too_large",
                          f"the request body must be at most {limit} bytes")


class RequestContextMiddleware:
    """Request id, body bounds and time limit for every HTTP request."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        body_limit_bytes: int,
        body_timeout_seconds: float,
        request_timeout_seconds: float,
        retry_after_seconds: int,
    ) -> None:
        self.app = app
        self.body_limit = body_limit_bytes
        self.body_timeout = body_timeout_seconds
        self.timeout = request_timeout_seconds
        self.retry_after = retry_after_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started_at = time.monotonic()
        headers = Headers(scope=scope)
        request_id = accept_request_id(headers.get(REQUEST_ID_HEADER))
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 0
        # The request's own time limit bounds its body too.
        body_timeout = min(self.body_timeout, self.timeout)
        body = _BoundedBody(receive, headers, limit=self.body_limit,
                            deadline=asyncio.get_running_loop().time() + body_timeout,
                            timeout_seconds=body_timeout)

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                out = MutableHeaders(scope=message)
                out[REQUEST_ID_HEADER] = request_id
                out["X-Content-Type-Options"] = "nosniff"
                if not body.complete:
                    # What is left of the body must not be read as the next request.
                    out["Connection"] = "close"
            await send(message)

        async def refuse(code: int, kind: str, message: str,
                         extra: dict[str, str] | None = None) -> None:
            response = error_response(request_id, code, kind, message, headers=extra)
            await response(scope, receive, send_with_id)

        announced = headers.get("content-length")
        if announced is not None:
            if not announced or len(announced) > 20 or not set(announced) <= _DIGITS:
                await refuse(400, "bad_request", "the Content-Length header is malformed")
                self._log(scope, state, 400, started_at)
                return
            if int(announced) > self.body_limit:
                # Refused before anything else, the body unread.
                error = _too_large(self.body_limit)
                await refuse(error.status_code, error.code, error.message)
                self._log(scope, state, 413, started_at)
                return

        try:
            async with asyncio.timeout(self.timeout) as deadline:
                await self.app(scope, body, send_with_id)
        except TimeoutError:
            if not deadline.expired():
                raise
            log.warning("request timed out", extra={"request_id": request_id})
            if status == 0 and not body.complete:
                # Still waiting for the client's own body: its slowness, not ours.
                error = body.timed_out()
                await refuse(error.status_code, error.code, error.message)
            elif status == 0:
                # The client may retry: a POST carries its Idempotency-Key, so a request that
                # did commit before the deadline is answered with the same item.
                await refuse(503, "request_timeout", "the request took too long; retry it",
                             {"Retry-After": str(self.retry_after)})
        except ClientDisconnect:
            # The client went away while its body was read: nobody is left to answer.
            self._log(scope, state, 499, started_at)
            return
        except Exception:
            log.exception("request failed", extra={"request_id": request_id})
            if status == 0:
                await refuse(500, "internal_error",
                             "the request failed; quote the request id when reporting it")
        self._log(scope, state, status or 500, started_at)

    def _log(self, scope: Scope, state: dict[str, object], status: int, started: float) -> None:
        path = str(scope.get("path", ""))[:_LOGGED_PATH_CHARS]
        log.info(
            "%s %s -> %d in %.1f ms",
            scope.get("method", "?"),
            # Decoded paths may hold control characters; a log line must stay one line.
            path.encode("unicode_escape").decode("ascii"),
            status,
            (time.monotonic() - started) * 1000,
            extra={
                "request_id": state.get("request_id"),
                "participant_id": state.get("participant_id"),
                "outbox_id": state.get("outbox_id"),
            },
        )
