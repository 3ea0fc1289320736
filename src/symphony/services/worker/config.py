"""Settings of the executor worker, read from the environment or given explicitly.

Every setting has a documented default and is validated when the config is built: a bad value
stops the worker with a `ConfigurationError` (exit code 2 from the CLI) instead of becoming a
silent default. Explicit keyword arguments win over the environment.
"""

from __future__ import annotations

import math
import os
import socket
from typing import Any, Final
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from symphony.db import ConfigurationError
from symphony.outbox import BucketRange
from symphony.repair import zombie_threshold_from_env

DEFAULT_RAIL_URL: Final = "http://127.0.0.1:8765"
MAX_WORKER_ID_LENGTH: Final = 128
# Shares of a short lease the default timeouts shrink to, leaving 40% of it to spare.
_DEFAULT_DISPATCH_SHARE: Final = 0.2
_DEFAULT_LOOKUP_SHARE: Final = 0.1
# A rail call may run past its own timeout: the HTTP client gives up on a slow answer only at
# twice the timeout, and the worker's outer bound adds a little slack on top (executor.py).
CALL_BOUND_FACTOR: Final = 2.0
CALL_BOUND_SLACK_SECONDS: Final = 0.5


# What the lease must hold beyond the calls' worst case: the completion statement, the
# scheduler's and the clocks' slack. Without it a worker finishing its calls on the last
# second of its lease could lose the item to the repair while its completion is on the wire,
# and a second worker would send it again (after a lookup that may race the first call).
LEASE_MARGIN_SHARE: Final = 0.1
LEASE_MARGIN_MIN_SECONDS: Final = 1.0


def lease_margin_seconds(lease_seconds: float) -> float:
    """The part of a lease no rail call may use."""
    return max(LEASE_MARGIN_MIN_SECONDS, LEASE_MARGIN_SHARE * lease_seconds)


def worst_case_call_seconds(dispatch_timeout: float, lookup_timeout: float) -> float:
    """The longest a lookup followed by a dispatch can keep an item in flight."""
    return (CALL_BOUND_FACTOR * (dispatch_timeout + lookup_timeout)
            + 2 * CALL_BOUND_SLACK_SECONDS)


def default_worker_id() -> str:
    """`hostname-pid`: unique per process, and says where a lease came from."""
    return f"{socket.gethostname()}-{os.getpid()}"[-MAX_WORKER_ID_LENGTH:]


class WorkerConfig(BaseSettings):
    """How one executor worker claims, dispatches and stops.

    worker_id: written into every lease and ledger row (default `hostname-pid`).
    batch_size: most items claimed per cycle (default 64).
    max_concurrency: most rail calls in flight at once (default 32).
    dispatch_timeout_seconds: bound of one dispatch call (default 10).
    lookup_timeout_seconds: bound of one "did you execute it?" call (default 5).
        At their worst (each may take twice its timeout) they must end a margin before the
        lease does (10% of it, at least 1 s). When neither is set and the defaults do not fit
        a short lease, they become 20% and 10% of the lease.
    poll_interval_seconds: longest sleep between cycles when no notification arrives
        (default 1.0); notifications wake the worker sooner.
    lease_seconds: how long a claimed item stays leased. It is the zombie threshold
        (`ZOMBIE_THRESHOLD_SECONDS`, default 120), so an item is repaired exactly when the
        worker that leased it can no longer be trusted to finish it.
    shutdown_grace_seconds: on stop, how long in-flight dispatches may still finish and be
        recorded (default 15); the rest stay leased for the zombie repair.
    rail_url: base URL of the payment rail (default the simulator on 127.0.0.1:8765).
    checkpoint_interval_minutes: `SYMPHONY_CHECKPOINT_INTERVAL_MINUTES`, take a ledger
        checkpoint this often when the worker's database handle can become the control role
        (`symphony run`, or `symphony worker` in embedded/admin mode; a worker on its own
        executor DSN cannot and takes none). Default 60; 0 turns it off.
    metrics_port: serve Prometheus metrics on 127.0.0.1 at this port (default: off).
    heartbeat_seconds: how often the worker records its heartbeat (one small upsert, off the
        claim and dispatch path; default 5). The fleet counts it stale after three missed
        heartbeats (at least 15 s).
    buckets: `SYMPHONY_WORKER_BUCKETS=FROM-TO` (such as `0-63`, or one bucket `7`): claim,
        complete and repair only items whose routing bucket (0-255, one per participant) is
        in the range, so a fleet can split the buckets. Default: unset, every bucket (one
        worker, or workers that share the whole queue).
    """

    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    worker_id: str = Field(
        default_factory=default_worker_id, min_length=1, max_length=MAX_WORKER_ID_LENGTH,
        validation_alias="SYMPHONY_WORKER_ID",
    )
    batch_size: int = Field(default=64, ge=1, le=10_000, validation_alias="SYMPHONY_BATCH_SIZE")
    max_concurrency: int = Field(
        default=32, ge=1, le=1_024, validation_alias="SYMPHONY_MAX_CONCURRENCY"
    )
    dispatch_timeout_seconds: float = Field(
        default=10.0, gt=0, le=3_600, validation_alias="SYMPHONY_DISPATCH_TIMEOUT_SECONDS"
    )
    lookup_timeout_seconds: float = Field(
        default=5.0, gt=0, le=3_600, validation_alias="SYMPHONY_LOOKUP_TIMEOUT_SECONDS"
    )
    poll_interval_seconds: float = Field(
        default=1.0, gt=0, le=3_600, validation_alias="SYMPHONY_POLL_INTERVAL_SECONDS"
    )
    # Not read under its own name: ZOMBIE_THRESHOLD_SECONDS is the one knob for both the lease
    # and the repair, so the two can never disagree.
    lease_seconds: int = Field(default_factory=zombie_threshold_from_env, ge=1, le=86_400)
    shutdown_grace_seconds: float = Field(
        default=15.0, ge=0, le=3_600, validation_alias="SYMPHONY_SHUTDOWN_GRACE_SECONDS"
    )
    rail_url: str = Field(default=DEFAULT_RAIL_URL, validation_alias="SYMPHONY_RAIL_URL")
    checkpoint_interval_minutes: float = Field(
        default=60.0, ge=0, le=10_080, validation_alias="SYMPHONY_CHECKPOINT_INTERVAL_MINUTES"
    )
    metrics_port: int | None = Field(
        default=None, ge=0, le=65_535, validation_alias="SYMPHONY_METRICS_PORT"
    )
    buckets: BucketRange | None = Field(default=None, validation_alias="SYMPHONY_WORKER_BUCKETS")
    heartbeat_seconds: float = Field(
        default=5.0, ge=0.5, le=600, validation_alias="SYMPHONY_WORKER_HEARTBEAT_SECONDS"
    )

    @property
    def heartbeat_stale_after_seconds(self) -> int:
        """When the fleet counts this worker stale: three missed heartbeats, at least 15 s."""
        return min(3600, max(15, math.ceil(3 * self.heartbeat_seconds)))

    @field_validator("buckets", mode="before")
    @classmethod
    def _bucket_range(cls, value: object) -> object:
        if isinstance(value, str):
            return None if not value.strip() else BucketRange.parse(value)
        # The settings source reads a lone number ("7") as JSON: one bucket.
        if isinstance(value, int) and not isinstance(value, bool):
            return BucketRange(value, value)
        return value

    @field_validator("rail_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _calls_fit_in_the_lease(self) -> WorkerConfig:
        # A lookup followed by a dispatch, at their worst (see worst_case_call_seconds), must end
        # inside the lease; otherwise the repair could hand the item to another worker while
        # this one is still talking to the rail, and that worker's lookup would race the call.
        budget = self.lease_seconds - lease_margin_seconds(self.lease_seconds)
        worst = worst_case_call_seconds(self.dispatch_timeout_seconds,
                                        self.lookup_timeout_seconds)
        if worst <= budget:
            return self
        # Default timeouts under a short lease (tests, demos) shrink to fit rather than refuse
        # a value nobody wrote; explicit ones are the operator's and are never changed.
        dispatch, lookup = self.dispatch_timeout_seconds, self.lookup_timeout_seconds
        if "dispatch_timeout_seconds" not in self.model_fields_set:
            dispatch = min(dispatch, round(self.lease_seconds * _DEFAULT_DISPATCH_SHARE, 3))
        if "lookup_timeout_seconds" not in self.model_fields_set:
            lookup = min(lookup, round(self.lease_seconds * _DEFAULT_LOOKUP_SHARE, 3))
        if worst_case_call_seconds(dispatch, lookup) <= budget:
            # A frozen model: its own validator is the one place that may still settle a field.
            object.__setattr__(self, "dispatch_timeout_seconds", dispatch)
            object.__setattr__(self, "lookup_timeout_seconds", lookup)
            return self
        raise ValueError(
            f"dispatch timeout ({dispatch:g}s) and lookup timeout ({lookup:g}s) can keep an "
            f"item in flight for up to {worst_case_call_seconds(dispatch, lookup):g}s "
            f"(each call may take twice its timeout), which must end "
            f"{lease_margin_seconds(self.lease_seconds):g}s before the lease does "
            f"(ZOMBIE_THRESHOLD_SECONDS = {self.lease_seconds}s)"
        )

    @classmethod
    def load(cls, **overrides: Any) -> WorkerConfig:
        """The config from the environment and `overrides`; a bad value is a
        `ConfigurationError` naming the setting, never a pydantic traceback."""
        explicit = {name: value for name, value in overrides.items() if value is not None}
        try:
            return cls(**explicit)
        except ValidationError as exc:
            raise ConfigurationError(
                "invalid worker setting: " + _describe(exc), code="INVALID_WORKER_CONFIG"
            ) from None


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        message = error["msg"].removeprefix("Value error, ")
        where = ".".join(str(part) for part in error["loc"])
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)
