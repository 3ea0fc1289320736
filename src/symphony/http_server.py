"""An ASGI app served by uvicorn on the caller's asyncio loop: the HTTP API and the rail
simulator are both one of these.

`start()` binds (port 0 picks a free port, see `url`) and returns once requests are accepted;
`stop()` lets in-flight requests finish for a short grace period. Both tolerate repeats. It
never touches process signals or the logging configuration: the process that embeds it (a
command, `symphony run`, a test) owns those.

A client is outside input, bounded in time and size before any application code runs
(`ConnectionLimits`): the request head (request line and headers) must arrive whole within
`header_timeout_seconds` of the connection opening (or of the first byte of the next request
on a kept-alive connection) and within `max_header_bytes`, else the connection is closed; an
idle kept-alive connection is closed after `keep_alive_seconds`; at most `max_connections`
connections are served at once (kept below the process's file-descriptor limit), a request
over it is answered 503 and its connection closed. A request whose framing is ambiguous,
`Content-Length` and `Transfer-Encoding` both (RFC 9112 section 6.3), is answered 400 and its
connection closed: nothing sent behind it on that connection is read as a request. Bounding
the body is the application's (the API reads it under a deadline after authentication).
uvicorn's HTTP/1.1 protocol is always the h11 one, so these rules do not depend on which
optional parser happens to be installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Self, cast

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("symphony.http")

_STARTUP_TIMEOUT_SECONDS: Final = 10.0
_STARTUP_POLL_SECONDS: Final = 0.005
# File descriptors kept free of client connections: the database pool, the listening socket,
# the event loop's own, log files, and connections on their way to a 503.
FD_RESERVE: Final = 64
_MIN_CONNECTIONS: Final = 8
_BACKLOG: Final = 128


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What one client may hold of the server before any application code runs.

    max_connections: connections served at once; a request arriving while as many are open
        is answered 503 (`Connection: close`). Lowered at start to the file-descriptor limit
        (`ulimit -n`) minus `FD_RESERVE`, so the process never runs out of descriptors first.
    keep_alive_seconds: an idle kept-alive connection is closed after this long.
    header_timeout_seconds: the request head must arrive whole within this long of the
        connection opening, or of the first byte of the next request; else the connection is
        closed (a client trickling its headers holds nothing for longer).
    max_header_bytes: the largest request head (h11's incomplete-event size); a larger one is
        answered 400 and closed.
    """

    max_connections: int = 1000
    keep_alive_seconds: int = 5
    header_timeout_seconds: float = 10.0
    max_header_bytes: int = 16 * 1024


class _LingeringTransport:
    """The connection's transport, whose `close()` first half-closes: the answer is flushed
    and followed by FIN, and whatever the client still sends is read and dropped for at most
    `LINGER_SECONDS` before the socket closes. Closing a socket with unread data makes the
    kernel answer RST, and a client still sending its body (refused as too large, or
    unauthenticated, before it was read) would lose the answer it was sent."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop,
                 may_linger: Callable[[], bool]) -> None:
        self._transport = transport
        self._loop = loop
        self._may_linger = may_linger
        self.lingering = False
        self.no_linger = False
        self._timer: asyncio.TimerHandle | None = None

    def close(self) -> None:
        transport = self._transport
        if self.lingering or self.no_linger or transport.is_closing() or (
            not transport.can_write_eof() or not self._may_linger()
        ):
            self.forget()
            transport.close()
            return
        self.lingering = True
        transport.write_eof()
        # Reading goes on (flow control may have paused it) so that the client's bytes are
        # consumed rather than left to turn the close into a reset.
        transport.resume_reading()
        self._timer = self._loop.call_later(LINGER_SECONDS, self.close)

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def forget(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


LINGER_SECONDS: Final = 2.0


class _GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a deadline on the request head, which uvicorn lacks (its
    keep-alive timer starts only after a first response and stops at any byte received),
    and a lingering close (`_LingeringTransport`)."""

    head_timeout_seconds: float = 10.0  # set per server by _protocol_class
    _head_timer: asyncio.TimerHandle | None = None
    _lingering: _LingeringTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._lingering = _LingeringTransport(transport, self.loop, self._below_the_limit)
        super().connection_made(cast(asyncio.Transport, self._lingering))
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        if self._lingering is not None and self._lingering.lingering:
            return  # answered and closing: the rest is dropped unread
        super().data_received(data)
        # A head still incomplete (IDLE) runs against the clock from its first byte; once
        # whole, the request is the application's to bound.
        if self.conn.their_state is h11.IDLE:
            if self._head_timer is None:
                self._arm_head_timer()
        else:
            self._cancel_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        if self._lingering is not None:
            self._lingering.forget()
            self._lingering.no_linger = True
        super().connection_lost(exc)

    def shutdown(self) -> None:
        # The server is stopping: no lingering, so that the stop is not held up by clients.
        if self._lingering is not None:
            self._lingering.no_linger = True
        super().shutdown()

    def _below_the_limit(self) -> bool:
        # At the connection limit a descriptor is worth more than a courtesy: no lingering.
        limit = self.limit_concurrency
        return limit is None or len(self.connections) < limit

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.head_timeout_seconds, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def _protocol_class(limits: ConnectionLimits) -> type[H11Protocol]:
    return type("GuardedH11Protocol", (_GuardedH11Protocol,),
                {"head_timeout_seconds": limits.header_timeout_seconds})


_AMBIGUOUS_FRAMING: Final = b"both Content-Length and Transfer-Encoding: refused (RFC 9112 6.3)"


class _FramingGuard:
    """Refuses a request that carries both Content-Length and Transfer-Encoding before the
    application sees it. h11 would frame it by Transfer-Encoding and keep the connection, so
    a front end framing it by Content-Length would see another request boundary than ours
    (request smuggling). `Connection: close` makes h11 close after the answer, unread."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            names = {name.lower() for name, _ in scope["headers"]}
            if b"content-length" in names and b"transfer-encoding" in names:
                await send({"type": "http.response.start", "status": 400, "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(_AMBIGUOUS_FRAMING)).encode()),
                    (b"connection", b"close"),
                ]})
                await send({"type": "http.response.body", "body": _AMBIGUOUS_FRAMING})
                return
        await self.app(scope, receive, send)


def connection_budget(wanted: int) -> int:
    """`wanted`, lowered so that connections cannot exhaust the process's file descriptors
    (the soft `RLIMIT_NOFILE` minus `FD_RESERVE`, never under a handful)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(_MIN_CONNECTIONS, min(wanted, soft - FD_RESERVE))


class _EmbeddedUvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The host process owns SIGINT/SIGTERM; uvicorn would swallow them and re-raise them
        # later.
        yield


class EmbeddedHttpServer:
    """`app` on `host:port`; subclasses hook into the start and the stop."""

    name = "http"

    def __init__(
        self,
        app: Any,
        *,
        host: str,
        port: int,
        graceful_shutdown_seconds: int,
        server_header: bool = True,
        limits: ConnectionLimits | None = None,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.limits = limits if limits is not None else ConnectionLimits()
        self._graceful_shutdown_seconds = graceful_shutdown_seconds
        self._server_header = server_header
        self._server: _EmbeddedUvicorn | None = None
        self._task: asyncio.Task[None] | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """Base URL with the port actually bound; only while running."""
        if self._url is None:
            raise RuntimeError(f"the {self.name} server is not running")
        return self._url

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def _before_serve(self) -> None:
        """Called once the socket is bound, before the first request can arrive."""

    def _before_stop(self) -> None:
        """Called when a stop begins, before uvicorn is told to exit."""

    async def start(self) -> None:
        """Bind and serve; returns once requests are accepted. A no-op while running."""
        if self.running:
            return
        # Bound here rather than inside uvicorn, so "port in use" is an OSError for the
        # caller instead of a sys.exit inside a task.
        sock = _bind(self.host, self.port)
        port = sock.getsockname()[1]
        limits = self.limits
        max_connections = connection_budget(limits.max_connections)
        if max_connections < limits.max_connections:
            log.warning("the %s server serves at most %d connections at once (not %d): the "
                        "file-descriptor limit (ulimit -n) leaves no room for more",
                        self.name, max_connections, limits.max_connections)
        server = _EmbeddedUvicorn(uvicorn.Config(
            _FramingGuard(self.app),
            host=self.host,
            port=port,
            http=_protocol_class(limits),
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            server_header=self._server_header,
            timeout_graceful_shutdown=self._graceful_shutdown_seconds,
            limit_concurrency=max_connections,
            # Both the kernel's listen queue and how many connections asyncio accepts per
            # wake-up; when accept() fails for want of descriptors, asyncio retries a second
            # later but first logs once per slot of this (CPython 3.11-3.12), so uvicorn's
            # 2048 made thousands of log records a second at the limit.
            backlog=_BACKLOG,
            timeout_keep_alive=limits.keep_alive_seconds,
            h11_max_incomplete_event_size=limits.max_header_bytes,
        ))
        self._before_serve()
        task = asyncio.create_task(server.serve(sockets=[sock]), name=self.name)
        try:
            async with asyncio.timeout(_STARTUP_TIMEOUT_SECONDS):
                while not server.started:
                    if task.done():
                        break
                    await asyncio.sleep(_STARTUP_POLL_SECONDS)
        except TimeoutError:
            server.should_exit = True
            await asyncio.gather(task, return_exceptions=True)
            sock.close()
            raise RuntimeError(f"the {self.name} server did not start in time") from None
        if task.done():
            sock.close()
            exc = task.exception() if not task.cancelled() else None
            raise RuntimeError(f"the {self.name} server exited during start-up") from exc
        self._server, self._task = server, task
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._url = f"http://{host}:{port}"

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (briefly). A no-op when stopped."""
        server, task = self._server, self._task
        self._server = self._task = None
        self._url = None
        if server is None or task is None:
            return
        self._before_stop()
        server.should_exit = True
        await asyncio.gather(task, return_exceptions=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


def _bind(host: str, port: int) -> socket.socket:
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.create_server(address[:2], family=family)
    # Inherited by every accepted connection. asyncio sets TCP_NODELAY itself only on sockets
    # whose proto is IPPROTO_TCP, and socket.create_server makes them with proto 0: without
    # it, every answer on a kept-alive connection waited ~40 ms (Nagle's algorithm holding
    # the body back until the client's delayed ACK of the headers).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock
