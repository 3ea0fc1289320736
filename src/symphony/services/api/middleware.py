"""The request context every request passes through first: its request id, the body limit,
the time limit, and the last line of defence that turns any crash into the error envelope.

A pure ASGI middleware rather than a Starlette `BaseHTTPMiddleware`: it reads the body once
(refusing it past the limit, whether the client announced its size or not), hands the buffered
body to the app, and sees every response before it leaves, so even a 500 carries
`X-Request-Id`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from symphony.services.api.error import REQUEST_ID_HEADER, accept_request_id, error_response

log = logging.getLogger("symphony.api")

_DIGITS: Final = frozenset("0123456789")
_LOGGED_PATH_CHARS: Final = 200


class _TooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


class RequestContextMiddleware:
    """Request id, body limit and time limit for every HTTP request."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        body_limit_bytes: int,
        request_timeout_seconds: float,
        retry_after_seconds: int,
    ) -> None:
        self.app = app
        self.body_limit = body_limit_bytes
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

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                out = MutableHeaders(scope=message)
                out[REQUEST_ID_HEADER] = request_id
                out["X-Content-Type-Options"] = "nosniff"
            await send(message)

        async def refuse(code: int, kind: str, message: str,
                         extra: dict[str, str] | None = None) -> None:
            response = error_response(request_id, code, kind, message, headers=extra)
            await response(scope, receive, send_with_id)

        try:
            body = await self._read_body(headers, receive)
        except _TooLarge:
            await refuse(413, "payload_too_large",
                         f"the request body must be at most {self.body_limit} bytes")
            self._log(scope, state, 413, started_at)
            return
        except _Disconnected:
            return
        except ValueError:
            await refuse(400, "bad_request", "the Content-Length header is malformed")
            self._log(scope, state, 400, started_at)
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        try:
            async with asyncio.timeout(self.timeout) as deadline:
                await self.app(scope, replay, send_with_id)
        except TimeoutError:
            if not deadline.expired():
                raise
            log.warning("request timed out", extra={"request_id": request_id})
            if status == 0:
                # The client may retry: a POST carries its Idempotency-Key, so a request that
                # did commit before the deadline is answered with the same item.
                await refuse(503, "request_timeout", "the request took too long; retry it",
                             {"Retry-After": str(self.retry_after)})
        except Exception:
            log.exception("request failed", extra={"request_id": request_id})
            if status == 0:
                await refuse(500, "internal_error",
                             "the request failed; quote the request id when reporting it")
        self._log(scope, state, status or 500, started_at)

    async def _read_body(self, headers: Headers, receive: Receive) -> bytes:
        announced = headers.get("content-length")
        if announced is not None:
            if not announced or len(announced) > 20 or not set(announced) <= _DIGITS:
                raise ValueError("malformed Content-Length")
            if int(announced) > self.body_limit:
                raise _TooLarge
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            # Counted as it streams: a client that sends no (or a false) Content-Length is
            # stopped at the limit, not after buffering whatever it sends.
            if size > self.body_limit:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

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
