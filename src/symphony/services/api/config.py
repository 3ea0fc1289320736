"""Settings of the HTTP API, read from the environment or given explicitly.

Every setting has a documented default and is validated when the config is built: a bad value
is a `ConfigurationError` naming the setting (exit code 2 from the CLI), never a silent
default. Explicit keyword arguments win over the environment.

| variable | meaning | default |
|---|---|---|
| `SYMPHONY_API_HOST` | interface to bind | `127.0.0.1` |
| `SYMPHONY_API_PORT` | port to bind; 0 picks a free one | `8080` |
| `SYMPHONY_API_BODY_LIMIT_BYTES` | largest request body accepted (413 above it) | `65536` |
| `SYMPHONY_API_BODY_TIMEOUT_SECONDS` | the whole body must arrive within this long of the request's head (408 and the connection closed after it); at most the request timeout counts | `10` |
| `SYMPHONY_API_REQUEST_TIMEOUT_SECONDS` | bound of one request (503 after it) | `15` |
| `SYMPHONY_API_HEADER_TIMEOUT_SECONDS` | the request line and headers must arrive within this long of the connection opening (or of the next request's first byte); else the connection is closed | `10` |
| `SYMPHONY_API_KEEP_ALIVE_SECONDS` | an idle kept-alive connection is closed after this long | `5` |
| `SYMPHONY_API_MAX_CONNECTIONS` | connections served at once; a request over it gets 503 and its connection is closed (lowered at start to `ulimit -n` minus 64) | `1000` |
| `SYMPHONY_API_MAX_HEADER_BYTES` | largest request line plus headers (400 and closed above it) | `16384` |
| `SYMPHONY_API_AUTH_CACHE_SECONDS` | how long a verified token is trusted without asking the database again; a revoked token is refused at most this long after the revocation (0: ask every time) | `2` |
| `SYMPHONY_API_RETRY_AFTER_SECONDS` | `Retry-After` of a 503 | `2` |
"""

from __future__ import annotations

from typing import Any, Final

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from symphony.db import ConfigurationError
from symphony.http_server import ConnectionLimits

DEFAULT_PORT: Final = 8080
DEFAULT_BODY_LIMIT_BYTES: Final = 64 * 1024
# A revocation must bite within a few seconds: the cache may never hold a token longer.
MAX_AUTH_CACHE_SECONDS: Final = 5.0


class ApiConfig(BaseSettings):
    """Where the API listens and the bounds it puts on every request.

    host: interface to bind (default 127.0.0.1, loopback only).
    port: port to bind (default 8080; 0 picks a free port, see `ApiServer.url`).
    body_limit_bytes: largest request body (default 64 KiB); larger ones get 413, whether
        announced by Content-Length or only seen while reading the stream.
    body_timeout_seconds: the whole body must arrive within this long of the request's head
        (default 10; the request timeout, if shorter, bounds it too, and a body still
        incomplete at either deadline is a 408); it is read only after authentication,
        and a body still incomplete then gets 408 and the connection is closed, however
        slowly it trickles.
    request_timeout_seconds: bound of one request (default 15, above the database's
        statement timeout); a request past it gets 503 with Retry-After.
    header_timeout_seconds: the request line and headers must arrive within this long of the
        connection opening, or of the first byte of the next request (default 10); else the
        connection is closed.
    keep_alive_seconds: an idle kept-alive connection is closed after this long (default 5).
    max_connections: connections served at once (default 1000); a request arriving while as
        many are open gets 503 and its connection is closed. Lowered at start to the
        file-descriptor limit minus 64 (`symphony.http_server.FD_RESERVE`).
    max_header_bytes: the largest request line plus headers (default 16 KiB); above it, 400
        and the connection is closed.
    auth_cache_seconds: how long a verified token is reused without a database round trip
        (default 2, at most 5, 0 disables the cache). It bounds how long a revoked token
        still works.
    retry_after_seconds: the Retry-After of a 503 (default 2).
    """

    model_config = SettingsConfigDict(
        extra="ignore", frozen=True, populate_by_name=True, env_prefix="SYMPHONY_API_"
    )

    host: str = Field(default="127.0.0.1", min_length=1, max_length=255)
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65_535)
    body_limit_bytes: int = Field(default=DEFAULT_BODY_LIMIT_BYTES, ge=1_024, le=16 * 1024**2)
    body_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    request_timeout_seconds: float = Field(default=15.0, gt=0, le=600)
    header_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    keep_alive_seconds: int = Field(default=5, ge=1, le=600)
    max_connections: int = Field(default=1000, ge=8, le=100_000)
    max_header_bytes: int = Field(default=16 * 1024, ge=1_024, le=1024**2)
    auth_cache_seconds: float = Field(default=2.0, ge=0, le=MAX_AUTH_CACHE_SECONDS)
    retry_after_seconds: int = Field(default=2, ge=1, le=3_600)

    @field_validator("host")
    @classmethod
    def _plain_host(cls, value: str) -> str:
        if any(ch.isspace() or ch in "/[]@" for ch in value):
            raise ValueError("must be a host name or an IP address, nothing else")
        return value

    def connection_limits(self) -> ConnectionLimits:
        """The embedded server's share of these settings."""
        return ConnectionLimits(
            max_connections=self.max_connections,
            keep_alive_seconds=self.keep_alive_seconds,
            header_timeout_seconds=self.header_timeout_seconds,
            max_header_bytes=self.max_header_bytes,
        )

    @classmethod
    def load(cls, **overrides: Any) -> ApiConfig:
        """The config from the environment and `overrides` (None means "not given"); a bad
        value is a `ConfigurationError` naming the setting, never a pydantic traceback."""
        explicit = {name: value for name, value in overrides.items() if value is not None}
        try:
            return cls(**explicit)
        except ValidationError as exc:
            problems = []
            for error in exc.errors(include_url=False, include_input=False):
                where = ".".join(str(part) for part in error["loc"])
                message = error["msg"].removeprefix("Value error, ")
                problems.append(f"{where}: {message}" if where else message)
            raise ConfigurationError(
                "invalid API setting: " + "; ".join(problems), code="INVALID_API_CONFIG"
            ) from None
