"""In-memory payment rail: idempotency, counters and failure behaviour, without HTTP.

The simulator behaves like a real rail that deduplicates by reference: the
first accepted call for a reference executes the payment, later calls with the
same request replay the stored answer. It counts executions and calls per
reference so tests can prove "executed at most once" while seeing every retry.

Failure behaviour, in the order it is applied to an accepted call:

1. ``latency_ms`` delays every dispatch, replays included.
2. Per-payment triggers in ``payload["destination"]`` (a string), counted per
   reference and applied to every call, replays included:
   ``FAIL:<CODE>`` declines every call with 422 ``<CODE>``;
   ``RETRY:<n>`` answers the first n calls 503 without executing;
   ``HANG:<n>`` makes the first n calls hang (see ``hang_mode``).
3. Random behaviour (``retryable_failure_rate``, ``terminal_failure_rate``,
   ``hang_rate``) applies only while the reference is not yet executed. A
   replay of an executed payment answers truthfully and at once: a rail that
   randomly failed replays would only add noise, and lookup must always tell
   the truth anyway.

A hang in ``after_execute`` mode executes first and then withholds the answer:
the caller times out although the payment went through, the ambiguous case the
outbox must survive. In ``before_execute`` mode the call waits first and then
executes, unless a retry executed the reference meanwhile, in which case the
late call becomes a replay. Hangs and latency end early when
:meth:`RailSimulator.interrupt_waits` is called (the server does so on stop),
and a call whose hang was cut short that way never executes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from symphony.rails.client import is_valid_reference

DEFAULT_TERMINAL_CODES = ("INSUFFICIENT_FUNDS", "ACCOUNT_CLOSED", "INVALID_DESTINATION")

_TRIGGER_PATTERN = re.compile(r"(FAIL|RETRY|HANG):(.*)", re.DOTALL)
_CODE_PATTERN = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_COUNT_PATTERN = re.compile(r"[0-9]{1,6}")

# Waits for ``seconds``; returns True when the wait was cut short.
Wait = Callable[[float], Awaitable[bool]]


class HangMode(StrEnum):
    """Whether a hanging dispatch executes before or after it stalls."""

    AFTER_EXECUTE = "after_execute"
    BEFORE_EXECUTE = "before_execute"


class RailSimBehaviour(BaseModel):
    """How the simulated rail misbehaves; replaceable at runtime."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    latency_ms: int = Field(default=0, ge=0, le=60_000)
    retryable_failure_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    terminal_failure_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    terminal_codes: tuple[str, ...] = Field(default=DEFAULT_TERMINAL_CODES, min_length=1)
    hang_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    hang_seconds: float = Field(default=30.0, ge=0.0, le=3600.0)
    hang_mode: HangMode = HangMode.AFTER_EXECUTE
    seed: int | None = None

    @field_validator("terminal_codes")
    @classmethod
    def _codes_are_tokens(cls, codes: tuple[str, ...]) -> tuple[str, ...]:
        for code in codes:
            if _CODE_PATTERN.fullmatch(code) is None:
                raise ValueError(f"terminal code {code!r} must match {_CODE_PATTERN.pattern}")
        return codes


@dataclass(frozen=True, slots=True)
class SimReply:
    """An HTTP-shaped answer: status code and JSON body."""

    status_code: int
    body: dict[str, Any]


@dataclass(slots=True)
class _Execution:
    rail_transaction_id: str
    count: int = 1


@dataclass(frozen=True, slots=True)
class _Request:
    reference: str
    rail_type: str
    payload: Mapping[str, Any]
    fingerprint: str


@dataclass(frozen=True, slots=True)
class _Trigger:
    kind: str  # FAIL, RETRY, HANG, or INVALID for a malformed trigger
    code: str = ""
    count: int = 0
    problem: str = ""


@dataclass(frozen=True, slots=True)
class _Admission:
    """Outcome of admitting a call: an immediate reply, or proceed (maybe with a hang)."""

    reply: SimReply | None
    hang_seconds: float = 0.0
    hang_mode: HangMode = HangMode.AFTER_EXECUTE
    generation: int = 0


@dataclass(slots=True)
class _State:
    fingerprints: dict[str, str] = field(default_factory=dict)
    executions: dict[str, _Execution] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    # Calls for a reference already executed, answered from the stored result: a rail that
    # did not deduplicate would have paid each of them again.
    replays: dict[str, int] = field(default_factory=dict)


def _error(status_code: int, code: str, message: str) -> SimReply:
    return SimReply(status_code, {"code": code, "message": message})


class RailSimulator:
    """State and behaviour of the simulated rail; the HTTP app is a thin shell around it.

    All state changes happen in synchronous sections under one lock, so two
    simultaneous calls with the same reference execute it once. ``wait``
    replaces the real clock in tests.
    """

    def __init__(self, behaviour: RailSimBehaviour | None = None, *, wait: Wait | None = None):
        self._behaviour = behaviour or RailSimBehaviour()
        self._rng = random.Random(self._behaviour.seed)
        self._wait: Wait = wait or self._interruptible_wait
        self._state = _State()
        # Global, not per reference: critical sections never await, so
        # contention is negligible, and a later await added inside one stays safe.
        self._lock = asyncio.Lock()
        self._interrupt = asyncio.Event()
        # Bumped on reset so calls admitted before it cannot execute into the new state.
        self._generation = 0
        # Never reset, so transaction ids stay unique across resets.
        self._transaction_counter = 0
        self._in_flight = 0

    @property
    def behaviour(self) -> RailSimBehaviour:
        return self._behaviour

    def set_behaviour(self, behaviour: RailSimBehaviour) -> None:
        """Replace the behaviour; a seeded behaviour restarts its random sequence."""
        self._behaviour = behaviour
        self._rng = random.Random(behaviour.seed)

    def reset(self) -> None:
        """Forget every payment and counter; keep the behaviour, restart its random sequence."""
        self._state = _State()
        self._generation += 1
        self._rng = random.Random(self._behaviour.seed)

    def interrupt_waits(self) -> None:
        """End every current and future latency or hang at once (used when stopping)."""
        self._interrupt.set()

    def resume_waits(self) -> None:
        """Let latency and hangs take their configured time again."""
        self._interrupt = asyncio.Event()

    async def dispatch(self, idempotency_key: str | None, body: object) -> SimReply:
        """Handle ``POST /v1/payments`` with the given header value and parsed JSON body."""
        request_or_error = _parse_request(idempotency_key, body)
        if isinstance(request_or_error, SimReply):
            return request_or_error
        request = request_or_error
        self._in_flight += 1
        try:
            latency = self._behaviour.latency_ms / 1000.0
            if latency > 0 and await self._wait(latency):
                return _error(503, "RAIL_UNAVAILABLE", "rail is shutting down")
            async with self._lock:
                admission = self._admit(request)
            if admission.reply is not None:
                return admission.reply
            hang_before = admission.hang_mode is HangMode.BEFORE_EXECUTE
            if (
                admission.hang_seconds > 0
                and hang_before
                and await self._wait(admission.hang_seconds)
            ):
                return _error(503, "RAIL_UNAVAILABLE", "rail is shutting down")
            async with self._lock:
                reply = self._execute(request, admission.generation)
            if admission.hang_seconds > 0 and admission.hang_mode is HangMode.AFTER_EXECUTE:
                await self._wait(admission.hang_seconds)
            return reply
        finally:
            self._in_flight -= 1

    def lookup(self, reference: str) -> SimReply:
        """Handle ``GET /v1/payments/{reference}``: always the truth about execution."""
        execution = self._state.executions.get(reference)
        if execution is None:
            return _error(404, "NOT_FOUND", "no payment executed under this reference")
        return SimReply(
            200,
            {
                "reference": reference,
                "status": "EXECUTED",
                "rail_transaction_id": execution.rail_transaction_id,
            },
        )

    def stats(self) -> dict[str, Any]:
        """Counters for tests and demos; ``in_flight`` counts dispatches not yet answered,
        ``replays`` the dispatches of an executed reference answered from its stored result."""
        executions = {ref: e.count for ref, e in self._state.executions.items()}
        calls = dict(self._state.calls)
        return {
            "executions": executions,
            "calls": calls,
            "total_executions": sum(executions.values()),
            "total_calls": sum(calls.values()),
            "max_executions_per_reference": max(executions.values(), default=0),
            "replays": dict(self._state.replays),
            "total_replays": sum(self._state.replays.values()),
            "in_flight": self._in_flight,
        }

    def execution_count(self, reference: str) -> int:
        execution = self._state.executions.get(reference)
        return 0 if execution is None else execution.count

    def call_count(self, reference: str) -> int:
        return self._state.calls.get(reference, 0)

    def _admit(self, request: _Request) -> _Admission:
        state = self._state
        reference = request.reference
        call_number = state.calls.get(reference, 0) + 1
        state.calls[reference] = call_number

        # Bound at the first call, not the first execution: a retry that
        # changes the payment is a caller bug whether or not it went through.
        bound = state.fingerprints.setdefault(reference, request.fingerprint)
        if bound != request.fingerprint:
            return _Admission(
                _error(409, "REFERENCE_CONFLICT", "reference already used for a different payment")
            )

        behaviour = self._behaviour
        trigger = _parse_trigger(request.payload.get("destination"))
        if trigger is not None:
            if trigger.kind == "INVALID":
                return _Admission(_error(400, "INVALID_TRIGGER", trigger.problem))
            if trigger.kind == "FAIL":
                return _Admission(_error(422, trigger.code, "declined by destination trigger"))
            if trigger.kind == "RETRY" and call_number <= trigger.count:
                return _Admission(_error(503, "RAIL_UNAVAILABLE", "temporarily unavailable"))
            if trigger.kind == "HANG" and call_number <= trigger.count:
                return _Admission(
                    None, behaviour.hang_seconds, behaviour.hang_mode, self._generation
                )

        if reference in state.executions:
            return _Admission(None, generation=self._generation)

        # Always four draws per fresh call, so the sequence of outcomes for a
        # given seed does not depend on which rates are configured.
        retry_draw, terminal_draw, hang_draw, code_draw = (self._rng.random() for _ in range(4))
        if retry_draw < behaviour.retryable_failure_rate:
            return _Admission(_error(503, "RAIL_UNAVAILABLE", "temporarily unavailable"))
        if terminal_draw < behaviour.terminal_failure_rate:
            codes = behaviour.terminal_codes
            code = codes[min(int(code_draw * len(codes)), len(codes) - 1)]
            return _Admission(_error(422, code, "declined by the rail"))
        if hang_draw < behaviour.hang_rate:
            return _Admission(None, behaviour.hang_seconds, behaviour.hang_mode, self._generation)
        return _Admission(None, generation=self._generation)

    def _execute(self, request: _Request, generation: int) -> SimReply:
        if generation != self._generation:
            return _error(503, "RAIL_UNAVAILABLE", "rail state was reset during the call")
        reference = request.reference
        execution = self._state.executions.get(reference)
        if execution is not None:
            self._state.replays[reference] = self._state.replays.get(reference, 0) + 1
            return SimReply(
                200,
                {
                    "reference": reference,
                    "status": "EXECUTED",
                    "rail_transaction_id": execution.rail_transaction_id,
                    "replayed": True,
                },
            )
        self._transaction_counter += 1
        execution = _Execution(rail_transaction_id=f"rtx-{self._transaction_counter:08d}")
        self._state.executions[reference] = execution
        return SimReply(
            201,
            {
                "reference": reference,
                "status": "EXECUTED",
                "rail_transaction_id": execution.rail_transaction_id,
                "replayed": False,
            },
        )

    async def _interruptible_wait(self, seconds: float) -> bool:
        interrupt = self._interrupt
        if interrupt.is_set():
            return True
        try:
            async with asyncio.timeout(seconds):
                await interrupt.wait()
        except TimeoutError:
            return False
        return True


def _parse_request(idempotency_key: str | None, body: object) -> _Request | SimReply:
    if not isinstance(body, dict):
        return _error(400, "INVALID_REQUEST", "body must be a JSON object")
    reference = body.get("reference")
    rail_type = body.get("rail_type")
    payload = body.get("payload")
    if not is_valid_reference(reference):
        return _error(400, "INVALID_REFERENCE", "reference must be 1-200 URL-safe characters")
    if not idempotency_key:
        return _error(400, "MISSING_IDEMPOTENCY_KEY", "Idempotency-Key header is required")
    if idempotency_key != reference:
        return _error(400, "IDEMPOTENCY_KEY_MISMATCH", "Idempotency-Key must equal reference")
    if not isinstance(rail_type, str) or not rail_type:
        return _error(400, "INVALID_REQUEST", "rail_type must be a non-empty string")
    if not isinstance(payload, dict):
        return _error(400, "INVALID_REQUEST", "payload must be a JSON object")
    canonical = json.dumps(
        {"rail_type": rail_type, "payload": payload}, sort_keys=True, separators=(",", ":")
    )
    return _Request(
        reference=reference,
        rail_type=rail_type,
        payload=payload,
        fingerprint=hashlib.sha256(canonical.encode()).hexdigest(),
    )


def _parse_trigger(destination: object) -> _Trigger | None:
    if not isinstance(destination, str):
        return None
    match = _TRIGGER_PATTERN.match(destination)
    if match is None:
        return None
    kind, argument = match.group(1), match.group(2)
    if kind == "FAIL":
        if _CODE_PATTERN.fullmatch(argument) is None:
            return _Trigger(
                "INVALID", problem=f"FAIL:<CODE> needs a code matching {_CODE_PATTERN.pattern}"
            )
        return _Trigger("FAIL", code=argument)
    if _COUNT_PATTERN.fullmatch(argument) is None:
        return _Trigger("INVALID", problem=f"{kind}:<n> needs a whole number of calls")
    return _Trigger(kind, count=int(argument))
