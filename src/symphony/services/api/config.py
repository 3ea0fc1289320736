"""Settings of the HTTP API, read from the environment or given explicitly.

Every setting has a documented default and is validated when the config is built: a bad value
is a `ConfigurationError` naming the setting (exit code 2 from the CLI), never a silent
default. Explicit keyword arguments win over the environment.

| variable | meaning | default |
|---|---|---|
| `SYMPHONY_API_HOST` | interface to bind | `127.0.0.1` |
| `SYMPHONY_API_PORT` | port to bind; 0 picks a free one | `8080` |
| `SYMPHONY_API_BODY_LIMIT_BYTES` | largest request body accepted (413 above it) | `65536` |
| `SYMPHONY_API_REQUEST_TIMEOUT_SECONDS` | bound of one request (503 after it) | `15` |
| `SYMPHONY_API_AUTH_CACHE_SECONDS` | how long a verified token is trusted without asking the database again; a revoked token is refused at most this long after the revocation (0: ask every time) | `2` |
| `SYMPHONY_API_RETRY_AFTER_SECONDS` | `Retry-After` of a 503 | `2` |
"""

from __future__ import annotations

from typing import Any, Final

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from symphony.db import ConfigurationError

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
    request_timeout_seconds: bound of one request (default 15, above the database's
        statement timeout); a request past it gets 503 with Retry-After.
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
    request_timeout_seconds: float = Field(default=15.0, gt=0, le=600)
    auth_cache_seconds: float = Field(default=2.0, ge=0, le=MAX_AUTH_CACHE_SECONDS)
    retry_after_seconds: int = Field(default=2, ge=1, le=3_600)

    @field_validator("host")
    @classmethod
    def _plain_host(cls, value: str) -> str:
        if any(ch.isspace() or ch in "/[]@" for ch in value):
            raise ValueError("must be a host name or an IP address, nothing else")
        return value

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
