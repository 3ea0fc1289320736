"""Settings of the webhook delivery service, read from the environment or given explicitly.

Every setting has a documented default and is validated when the config is built: a bad value
stops the service with a `ConfigurationError` (exit code 2 from the CLI), never a silent
default. Explicit keyword arguments win over the environment.
"""

from __future__ import annotations

import os
import socket
import ssl
from pathlib import Path
from typing import Any, Final

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from symphony.db import ConfigurationError
from symphony.webhooks import RetrySchedule, SenderLimits
from symphony.webhooks.sender import tls_context

MAX_WORKER_ID_LENGTH: Final = 128
# What the lease must hold beyond a call's worst case (the completion, clocks, scheduling).
LEASE_MARGIN_SECONDS: Final = 5.0


def default_worker_id() -> str:
    return f"delivery-{socket.gethostname()}-{os.getpid()}"[-MAX_WORKER_ID_LENGTH:]


class DeliveryConfig(BaseSettings):
    """How one delivery service fans out, claims, calls and retries.

    worker_id: written into every lease and attempt (default `delivery-hostname-pid`).
    batch_size: most deliveries claimed per cycle (default 32).
    max_concurrency: most calls in flight at once (default 16).
    lease_seconds: how long a claimed delivery is this service's (default 60); must exceed
        the call's overall deadline by 5 s. A service killed mid-call loses the lease after
        it, and the delivery is sent again with the same webhook-id.
    connect_timeout_seconds / read_timeout_seconds: per-call deadlines (defaults 5 and 10).
    total_timeout_seconds: the whole call, DNS to answer (default 15).
    poll_interval_seconds: the longest sleep between cycles (default 1.0).
    fan_out_endpoint_limit / fan_out_event_limit: bounds of one fan-out statement
        (defaults 100 endpoints, 500 events each).
    failing_after_failures: consecutive failed attempts after which an endpoint is marked
        failing (default 10; a delivery that runs out of attempts marks it at once).
    max_attempts / backoff_base_seconds: the retry schedule (defaults 13 attempts, 5 s base,
        x4 per attempt, capped at 12 h, +-20% jitter: about three days).
    health_interval_seconds: how often the endpoint-health gauges are read from the
        database (default 10; the read counts every delivery, so not every cycle).
    metrics_port: serve Prometheus metrics on 127.0.0.1 at this port (default: off).
    ca_bundle: a PEM file of CA certificates trusted besides the public roots, for endpoints
        whose certificates a private CA issued (default: none). It only adds trust: the
        certificate and its host name are verified on every https call, always.
    """

    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    worker_id: str = Field(default_factory=default_worker_id, min_length=1,
                           max_length=MAX_WORKER_ID_LENGTH,
                           validation_alias="SYMPHONY_DELIVERY_WORKER_ID")
    batch_size: int = Field(default=32, ge=1, le=1000,
                            validation_alias="SYMPHONY_DELIVERY_BATCH_SIZE")
    max_concurrency: int = Field(default=16, ge=1, le=256,
                                 validation_alias="SYMPHONY_DELIVERY_CONCURRENCY")
    lease_seconds: int = Field(default=60, ge=2, le=3600,
                               validation_alias="SYMPHONY_DELIVERY_LEASE_SECONDS")
    connect_timeout_seconds: float = Field(default=5.0, gt=0, le=60,
                                           validation_alias="SYMPHONY_DELIVERY_CONNECT_TIMEOUT")
    read_timeout_seconds: float = Field(default=10.0, gt=0, le=300,
                                        validation_alias="SYMPHONY_DELIVERY_READ_TIMEOUT")
    total_timeout_seconds: float = Field(default=15.0, gt=0, le=600,
                                         validation_alias="SYMPHONY_DELIVERY_TOTAL_TIMEOUT")
    poll_interval_seconds: float = Field(default=1.0, gt=0, le=3600,
                                         validation_alias="SYMPHONY_DELIVERY_POLL_INTERVAL")
    fan_out_endpoint_limit: int = Field(default=100, ge=1, le=10_000)
    fan_out_event_limit: int = Field(default=500, ge=1, le=10_000)
    failing_after_failures: int = Field(default=10, ge=1, le=10_000,
                                        validation_alias="SYMPHONY_DELIVERY_FAILING_AFTER")
    max_attempts: int = Field(default=13, ge=1, le=100,
                              validation_alias="SYMPHONY_DELIVERY_MAX_ATTEMPTS")
    backoff_base_seconds: float = Field(default=5.0, gt=0, le=3600,
                                        validation_alias="SYMPHONY_DELIVERY_BACKOFF_BASE")
    health_interval_seconds: float = Field(default=10.0, ge=0, le=3600)
    metrics_port: int | None = Field(default=None, ge=0, le=65_535,
                                     validation_alias="SYMPHONY_DELIVERY_METRICS_PORT")
    ca_bundle: Path | None = Field(default=None, validation_alias="SYMPHONY_DELIVERY_CA_BUNDLE")

    @field_validator("ca_bundle", mode="after")
    @classmethod
    def _bundle_loads(cls, value: Path | None) -> Path | None:
        # Read now, so a wrong path or a file without a certificate stops the service at
        # start rather than failing every https call.
        if value is not None:
            try:
                tls_context(value)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"SYMPHONY_DELIVERY_CA_BUNDLE {str(value)[:200]!r} is not a "
                                 f"readable PEM file of CA certificates ({exc})") from None
        return value

    @model_validator(mode="after")
    def _call_fits_in_the_lease(self) -> DeliveryConfig:
        if self.total_timeout_seconds + LEASE_MARGIN_SECONDS > self.lease_seconds:
            raise ValueError(
                f"a call may take up to {self.total_timeout_seconds:g}s "
                f"(SYMPHONY_DELIVERY_TOTAL_TIMEOUT), which must end {LEASE_MARGIN_SECONDS:g}s "
                f"before the lease ({self.lease_seconds}s) does")
        return self

    @property
    def schedule(self) -> RetrySchedule:
        return RetrySchedule(base_seconds=self.backoff_base_seconds,
                             max_attempts=self.max_attempts)

    @property
    def limits(self) -> SenderLimits:
        return SenderLimits(connect_timeout=self.connect_timeout_seconds,
                            read_timeout=self.read_timeout_seconds,
                            total_timeout=self.total_timeout_seconds,
                            dns_timeout=min(5.0, self.total_timeout_seconds))

    @classmethod
    def load(cls, **overrides: Any) -> DeliveryConfig:
        explicit = {name: value for name, value in overrides.items() if value is not None}
        try:
            return cls(**explicit)
        except ValidationError as exc:
            problems = "; ".join(
                (".".join(str(p) for p in e["loc"]) + ": " if e["loc"] else "")
                + e["msg"].removeprefix("Value error, ")
                for e in exc.errors(include_url=False, include_input=False))
            raise ConfigurationError("invalid delivery setting: " + problems,
                                     code="INVALID_DELIVERY_CONFIG") from None
