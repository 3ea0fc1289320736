"""Errors that leave the database boundary, and the translation of driver errors into them.

A driver error can carry SQL text, table names and parameter values; none of that may reach a
client or a log line read by someone without access to the database. Every failure therefore
leaves `symphony.db` as a `SymphonyError` with:

* a stable public `code` and a fixed public message chosen here, never copied from the server;
* the `sqlstate`, an `incident_id` that ties the public error to the full detail in the log,
  and a `context` label naming the operation;
* the original exception as `__cause__`, for code that must look deeper (tests, debugging).

Translation is by SQLSTATE and constraint name only, never by message text.

What is logged of a driver error is `describe_error`'s account of it, never the error's own
text: PostgreSQL's DETAIL and CONTEXT quote the statement's data (`CONTEXT: JSON data, line 1:
...NWBK 6016 1331 9268 19","metadata"...`, `DETAIL: Failing row contains (...)`, `Key
(...)=(...)`), and the primary message of a data error quotes the value it could not read
(`invalid input syntax for type uuid: "..."`). The account holds the SQLSTATE, the names the
server reports (constraint, schema, table, column, type: identifiers, not data), the error's
position in the statement, the PL/pgSQL frames of its CONTEXT (function, line, statement kind),
and the primary message only outside the classes that quote values (22 data exception, 23
integrity constraint violation). `format_exception` renders a traceback the same way, for the
driver errors chained under a `SymphonyError`.
"""

from __future__ import annotations

import logging
import re
import traceback
import uuid
from dataclasses import dataclass
from typing import ClassVar

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors

log = logging.getLogger("symphony.db")


class SymphonyError(Exception):
    """Base of every error raised by Symphony. The message is safe to show to a client."""

    default_code: ClassVar[str] = "INTERNAL_ERROR"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        sqlstate: str | None = None,
        context: str = "",
        incident_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.sqlstate = sqlstate
        self.context = context
        self.incident_id = incident_id or uuid.uuid4().hex

    def __str__(self) -> str:
        return f"[{self.code}] {self.message} (incident {self.incident_id})"

    def as_dict(self) -> dict[str, str | None]:
        """The public, machine-readable form (for `--json` output and API bodies)."""
        return {
            "code": self.code,
            "message": self.message,
            "sqlstate": self.sqlstate,
            "context": self.context,
            "incident_id": self.incident_id,
        }


class ConfigurationError(SymphonyError):
    """A setting is missing or malformed; the process should not start."""

    default_code = "CONFIGURATION_ERROR"


class TransientDatabaseError(SymphonyError):
    """Nothing was written, and the same statement may well succeed a little later.

    The base of the failures a caller that must not lose what it holds (the worker holding a
    rail's answer) retries: the database unreachable (`DatabaseUnavailableError`), or a
    statement cancelled for its lock or statement timeout (`QueryTimeoutError`: 55P03,
    57014), e.g. while a long maintenance statement holds a lock it needs.
    """

    default_code = "DATABASE_BUSY"


class DatabaseUnavailableError(TransientDatabaseError):
    """The server cannot be reached, or the connection broke."""

    default_code = "DATABASE_UNAVAILABLE"


class UnsupportedServerError(SymphonyError):
    """The server is older than PostgreSQL 15 (the oldest the tests run on)."""

    default_code = "UNSUPPORTED_SERVER"


class MigrationError(SymphonyError):
    """A migration cannot be applied, or an applied one was changed."""

    default_code = "MIGRATION_ERROR"


class RoleError(SymphonyError):
    """Unknown role, nested transaction, or a connection whose role could not be verified."""

    default_code = "ROLE_ERROR"


class PermissionDeniedError(SymphonyError):
    """The role lacks the privilege (42501) — the least-privilege design doing its job."""

    default_code = "PERMISSION_DENIED"


class InvalidRequestError(SymphonyError):
    """The database refused the input (validation in the outbox functions)."""

    default_code = "INVALID_REQUEST"


class IdempotencyConflictError(SymphonyError):
    """An idempotency key was reused with a different request (I1)."""

    default_code = "IDEMPOTENCY_KEY_REUSED"


class ParticipantNotActiveError(SymphonyError):
    """The participant is not registered, or was revoked: it may not submit payments."""

    default_code = "PARTICIPANT_NOT_ACTIVE"


class NotFoundError(SymphonyError):
    """The participant or token named does not exist."""

    default_code = "NOT_FOUND"


class ConflictError(SymphonyError):
    """The thing to create exists already."""

    default_code = "CONFLICT"


class LeaseFencedError(SymphonyError):
    """A completion was attempted with a stale or foreign lease token (I9)."""

    default_code = "LEASE_NOT_HELD"


class InvariantViolationError(SymphonyError):
    """A ledger rule refused a write: append-only, legal transitions, one terminal row."""

    default_code = "INVARIANT_VIOLATION"


class QueryTimeoutError(TransientDatabaseError):
    """A statement ran past its timeout, or waited past the lock timeout, and was cancelled
    (its transaction rolled back: nothing of it was written)."""

    default_code = "QUERY_TIMEOUT"


@dataclass(frozen=True, slots=True)
class _Mapping:
    kind: type[SymphonyError]
    code: str
    message: str


# SQLSTATEs of class SY are raised by this product's own SQL (see the migrations).
_BY_SQLSTATE: dict[str, _Mapping] = {
    "SY011": _Mapping(InvalidRequestError, "INVALID_INSTRUCTION_ID",
                      "instruction_id must be 1-128 letters, digits, '.', '_', ':' or '-'"),
    "SY012": _Mapping(InvalidRequestError, "INVALID_IDEMPOTENCY_KEY",
                      "idempotency_key must be 1-255 printable ASCII characters"),
    "SY013": _Mapping(InvalidRequestError, "INVALID_PARTICIPANT_ID",
                      "participant_id must be 1-64 letters, digits, '.', '_', ':' or '-'"),
    "SY014": _Mapping(InvalidRequestError, "UNKNOWN_RAIL_TYPE",
                      "rail_type is not a known, enabled payment rail"),
    "SY015": _Mapping(InvalidRequestError, "INVALID_PAYLOAD", "payload must be a JSON object"),
    "SY016": _Mapping(InvalidRequestError, "INVALID_AMOUNT",
                      "payload.amount must be a decimal string (e.g. \"12.50\"), positive, "
                      "with at most 15 integer digits and 8 decimals"),
    "SY017": _Mapping(InvalidRequestError, "INVALID_CURRENCY",
                      "payload.currency must be a 3-letter ISO 4217 code"),
    "SY018": _Mapping(InvalidRequestError, "INVALID_DESTINATION",
                      "payload.destination must be a non-empty string of at most 256 characters"),
    "SY019": _Mapping(InvalidRequestError, "PAYLOAD_TOO_LARGE",
                      "payload must be at most 16384 bytes"),
    "SY020": _Mapping(InvalidRequestError, "INVALID_WORKER_ID",
                      "worker_id must be 1-128 characters"),
    "SY021": _Mapping(InvalidRequestError, "INVALID_BATCH_SIZE",
                      "batch size or limit is out of range"),
    "SY022": _Mapping(InvalidRequestError, "INVALID_LEASE",
                      "a lease must be between 1 second and the database's zombie threshold "
                      "(a repair threshold between 1 and 86400 seconds)"),
    "SY023": _Mapping(InvalidRequestError, "INVALID_COMPLETION_BATCH",
                      "every completion argument must have one element per item"),
    "SY024": _Mapping(InvalidRequestError, "INVALID_OUTCOME",
                      "a completion needs an outbox_id, a lease token and an outcome of "
                      "DISPATCHED, RETRYABLE or FAILED"),
    "SY025": _Mapping(InvalidRequestError, "DUPLICATE_COMPLETION",
                      "an item may be completed once per batch"),
    "SY026": _Mapping(InvalidRequestError, "INVALID_BUCKET_RANGE",
                      "a bucket range is FROM-TO with 0 <= FROM <= TO <= 255"),
    "SY030": _Mapping(ParticipantNotActiveError, "PARTICIPANT_NOT_ACTIVE",
                      "the participant is not registered or not active"),
    "SY031": _Mapping(InvalidRequestError, "INVALID_CURSOR",
                      "the cursor is not one of the caller's payments"),
    "SY032": _Mapping(InvalidRequestError, "INVALID_STATE_FILTER",
                      "state must be PENDING, DISPATCHING, RETRYABLE, DISPATCHED, FAILED or "
                      "CANCELED"),
    "SY033": _Mapping(ConflictError, "PARTICIPANT_EXISTS",
                      "a participant with this id exists already"),
    "SY034": _Mapping(NotFoundError, "UNKNOWN_PARTICIPANT", "no participant with this id"),
    "SY035": _Mapping(InvalidRequestError, "INVALID_DISPLAY_NAME",
                      "display_name must be 1-200 characters without control characters"),
    "SY036": _Mapping(InvalidRequestError, "INVALID_TOKEN_REQUEST",
                      "a token is PARTICIPANT (with a participant) or OPERATOR (without), with "
                      "a label of at most 200 characters"),
    "SY037": _Mapping(NotFoundError, "UNKNOWN_TOKEN", "no token with this id"),
    "SY038": _Mapping(InvariantViolationError, "ACCESS_FORWARD_ONLY",
                      "participants and tokens can only be revoked, never restored or changed"),
    "22P05": _Mapping(InvalidRequestError, "INVALID_CHARACTER",
                      "the request holds a character that cannot be stored (such as U+0000)"),
    # statement_too_complex / stack depth limit exceeded: in practice a request nested so deep
    # (a JSON payload) that the server's parser gives up before any function runs.
    "54001": _Mapping(InvalidRequestError, "PAYLOAD_TOO_COMPLEX",
                      "the request is nested too deeply to be processed"),
    "SY040": _Mapping(InvalidRequestError, "NOT_UNDER_REVIEW",
                      "the outbox item is not under review"),
    "SY041": _Mapping(InvalidRequestError, "INVALID_REVIEW_DECISION",
                      "a review decision needs DISPATCHED (with the rail's transaction id), "
                      "FAILED or RETRY, the operator's name and a reason"),
    "SY050": _Mapping(InvalidRequestError, "CHECKPOINT_NEEDS_READ_COMMITTED",
                      "a ledger checkpoint must be taken in a READ COMMITTED transaction"),
    # Operator actions (the operators migration).
    "SY060": _Mapping(PermissionDeniedError, "OPERATOR_TOKEN_INVALID",
                      "the acting token is not a live operator token"),
    "SY061": _Mapping(PermissionDeniedError, "INSUFFICIENT_SCOPE",
                      "only an operator token of OPERATOR scope may act (this one may read)"),
    "SY062": _Mapping(ConflictError, "ALREADY_REVOKED",
                      "the participant or token is already revoked"),
    "SY063": _Mapping(InvalidRequestError, "INVALID_ACTION_REASON",
                      "an operator action needs a reason of 1-500 printable characters"),
    "SY064": _Mapping(InvalidRequestError, "INVALID_HEARTBEAT",
                      "a heartbeat needs a version, a start time, an in-flight count >= 0 and "
                      "a staleness of 1-3600 s"),
    # Webhooks (SY070-SY077).
    "SY070": _Mapping(InvalidRequestError, "INVALID_WEBHOOK_URL",
                      "url must be an http(s) URL of at most 2048 printable characters"),
    "SY071": _Mapping(InvalidRequestError, "INVALID_EVENT_TYPES",
                      "event_types must be 1-5 distinct known event types"),
    "SY072": _Mapping(ConflictError, "TOO_MANY_WEBHOOK_ENDPOINTS",
                      "a participant may have at most 16 webhook endpoints"),
    "SY073": _Mapping(NotFoundError, "UNKNOWN_WEBHOOK_ENDPOINT",
                      "no webhook endpoint with this id"),
    "SY074": _Mapping(InvalidRequestError, "INVALID_WEBHOOK_REQUEST",
                      "the webhook request is malformed"),
    "SY075": _Mapping(ConflictError, "WEBHOOK_ENDPOINT_DELETED",
                      "the webhook endpoint was deleted"),
    "SY076": _Mapping(NotFoundError, "UNKNOWN_WEBHOOK_DELIVERY",
                      "no webhook delivery with this id"),
    "SY077": _Mapping(LeaseFencedError, "DELIVERY_LEASE_NOT_HELD",
                      "the lease on this webhook delivery is no longer held by the caller"),
    "SY080": _Mapping(InvalidRequestError, "INVALID_EVENT_CURSOR",
                      "after must be an event sequence number, 0 or more"),
    "SY081": _Mapping(InvalidRequestError, "INVALID_EVENT_TYPE",
                      "type must be payment.created, payment.dispatched, payment.failed, "
                      "payment.canceled or payment.under_review"),
    "SY082": _Mapping(NotFoundError, "PAYMENT_NOT_FOUND", "no such payment"),
    "SY083": _Mapping(InvalidRequestError, "INVALID_CANCEL_REQUEST",
                      "a cancel names the payment, and the operator (1-64 letters, digits, "
                      "'.', '_', '@', ':' or '-') where one cancels; a reason is 1-500 "
                      "printable characters"),
    "SY100": _Mapping(IdempotencyConflictError, "IDEMPOTENCY_KEY_REUSED",
                      "the idempotency key was already used with a different request"),
    "SY200": _Mapping(LeaseFencedError, "LEASE_NOT_HELD",
                      "the lease on this outbox item is no longer held by the caller"),
    "SY300": _Mapping(InvariantViolationError, "ILLEGAL_TRANSITION",
                      "the ledger refused an illegal state transition"),
    "SY301": _Mapping(InvariantViolationError, "ATTEMPT_SEQUENCE_VIOLATION",
                      "attempt numbers must continue without gaps and never decrease"),
    "SY302": _Mapping(InvariantViolationError, "PENDING_LEDGER_MISMATCH",
                      "an item must be pending exactly while it has no terminal ledger row"),
    "SY303": _Mapping(InvariantViolationError, "ITEM_IDENTITY_CHANGED",
                      "a pending item keeps its identity"),
    "P0001": _Mapping(InvariantViolationError, "HISTORY_IS_APPEND_ONLY",
                      "the history is append-only: rows cannot be changed or removed"),
    "42501": _Mapping(PermissionDeniedError, "PERMISSION_DENIED",
                      "the role is not allowed to perform this operation"),
    "57014": _Mapping(QueryTimeoutError, "QUERY_TIMEOUT",
                      "the database operation took too long and was cancelled"),
    "55P03": _Mapping(QueryTimeoutError, "LOCK_TIMEOUT",
                      "the database operation waited too long for a lock"),
    "25P03": _Mapping(QueryTimeoutError, "IDLE_IN_TRANSACTION_TIMEOUT",
                      "the transaction stayed idle too long and was ended"),
    # read_only_sql_transaction: the server takes no writes (default_transaction_read_only,
    # a standby after a failover, a disk-full guard). Nothing was written; retry later.
    "25006": _Mapping(DatabaseUnavailableError, "DATABASE_READ_ONLY",
                      "the database accepts no writes at the moment; nothing was written"),
    "28P01": _Mapping(DatabaseUnavailableError, "AUTHENTICATION_FAILED",
                      "the database refused the service's credentials"),
    "28000": _Mapping(DatabaseUnavailableError, "AUTHENTICATION_FAILED",
                      "the database refused the service's credentials"),
}

# Unique violations are told apart by the constraint (index) that fired.
_BY_CONSTRAINT: dict[str, _Mapping] = {
    "payment_outbox_attempts_one_dispatched_idx": _Mapping(
        InvariantViolationError, "DUPLICATE_DISPATCHED",
        "an outbox item can be dispatched only once"),
    "payment_outbox_attempts_one_terminal_idx": _Mapping(
        InvariantViolationError, "DUPLICATE_TERMINAL",
        "an outbox item can reach a terminal state only once"),
    "payment_outbox_attempts_outbox_attempt_no_key": _Mapping(
        InvariantViolationError, "ATTEMPT_SEQUENCE_VIOLATION",
        "attempt numbers must continue without gaps and never decrease"),
    "payment_outbox_pending_pkey": _Mapping(
        InvariantViolationError, "DUPLICATE_PENDING",
        "an outbox item can be pending only once"),
    "payment_outbox_attempts_dispatched_transaction_id": _Mapping(
        InvariantViolationError, "DISPATCHED_WITHOUT_TRANSACTION_ID",
        "a payment is recorded DISPATCHED only with the rail's transaction id (1-200 "
        "characters, not blank, without control characters)"),
    "payment_outbox_attempts_append_only": _Mapping(
        InvariantViolationError, "HISTORY_IS_APPEND_ONLY",
        "the attempt ledger is append-only: rows cannot be changed or removed"),
    # Refusals that share a SQLSTATE with a broader rule but say something more precise.
    "enqueue_payload_currency_known": _Mapping(
        InvalidRequestError, "INVALID_CURRENCY",
        "payload.currency is not a currency payments can be made in"),
    "enqueue_payload_amount_minor_units": _Mapping(
        InvalidRequestError, "INVALID_AMOUNT",
        "payload.amount has more decimals than the currency has minor units"),
    "enqueue_payload_destination_characters": _Mapping(
        InvalidRequestError, "INVALID_DESTINATION",
        "payload.destination must not contain control, format (such as bidirectional or "
        "zero-width), line or paragraph separator, private-use or unassigned characters"),
    "enqueue_payload_depth": _Mapping(
        InvalidRequestError, "PAYLOAD_TOO_COMPLEX",
        "payload must not be nested deeper than 32 levels"),
    "enqueue_payload_metadata": _Mapping(
        InvalidRequestError, "INVALID_METADATA",
        "payload.metadata must be an object of at most 20 keys (1-40 characters) with string "
        "values of at most 500 characters"),
    "participants_append_only": _Mapping(
        InvariantViolationError, "HISTORY_IS_APPEND_ONLY",
        "participants are never removed"),
    "api_tokens_append_only": _Mapping(
        InvariantViolationError, "HISTORY_IS_APPEND_ONLY",
        "tokens are never removed, only revoked"),
    "webhook_delivery_attempts_append_only": _Mapping(
        InvariantViolationError, "HISTORY_IS_APPEND_ONLY",
        "webhook delivery attempts are append-only: rows cannot be changed or removed"),
    "rotate_webhook_endpoint_secret_overlap": _Mapping(
        InvalidRequestError, "INVALID_OVERLAP",
        "the overlap of a secret rotation is 0 to 604800 seconds (7 days)"),
    "set_webhook_endpoint_enabled_reason": _Mapping(
        InvalidRequestError, "INVALID_REASON",
        "a reason of 1-500 characters without control characters is required"),
    "create_webhook_endpoint_description": _Mapping(
        InvalidRequestError, "INVALID_DESCRIPTION",
        "description must be at most 200 characters without control characters"),
    "payment_instruction_registry_append_only": _Mapping(
        InvariantViolationError, "HISTORY_IS_APPEND_ONLY",
        "the idempotency registry is append-only: rows cannot be changed or removed"),
}

_CONNECTION_CLASSES = ("08", "57P")


def translate(exc: BaseException, context: str) -> SymphonyError:
    """Turn a driver (or pool) exception into a sanitized `SymphonyError`.

    The full detail — message, SQLSTATE, constraint, server detail — is logged under the
    incident id; the returned error carries only the fixed public text.
    """
    if isinstance(exc, SymphonyError):
        return exc
    incident_id = uuid.uuid4().hex
    sqlstate: str | None = None
    constraint: str | None = None
    if isinstance(exc, psycopg.Error):
        sqlstate = exc.sqlstate
        diag = exc.diag
        constraint = diag.constraint_name
    mapping = (_BY_CONSTRAINT.get(constraint) if constraint else None) or (
        _BY_SQLSTATE.get(sqlstate) if sqlstate else None
    )
    if mapping is None:
        mapping = _fallback(exc, sqlstate)
    level = logging.WARNING if mapping.kind in _EXPECTED else logging.ERROR
    log.log(
        level,
        "database error: incident=%s context=%s code=%s %s",
        incident_id, context, mapping.code, describe_error(exc),
        extra={"incident_id": incident_id},
    )
    err = mapping.kind(
        mapping.message,
        code=mapping.code,
        sqlstate=sqlstate,
        context=context,
        incident_id=incident_id,
    )
    err.__cause__ = exc
    return err


_EXPECTED: frozenset[type[SymphonyError]] = frozenset(
    {InvalidRequestError, IdempotencyConflictError, LeaseFencedError, PermissionDeniedError,
     ParticipantNotActiveError, NotFoundError, ConflictError}
)


def _fallback(exc: BaseException, sqlstate: str | None) -> _Mapping:
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return _Mapping(DatabaseUnavailableError, "POOL_EXHAUSTED",
                        "no database connection became free in time")
    if sqlstate is not None and sqlstate.startswith(_CONNECTION_CLASSES):
        return _Mapping(DatabaseUnavailableError, "DATABASE_UNAVAILABLE",
                        "the database connection failed")
    if isinstance(exc, pg_errors.IntegrityError):
        return _Mapping(InvariantViolationError, "INTEGRITY_VIOLATION",
                        "the database refused a write that breaks an integrity rule")
    if isinstance(exc, UnicodeError):
        return _Mapping(InvalidRequestError, "INVALID_TEXT_ENCODING",
                        "a text value cannot be encoded for the database")
    if isinstance(exc, pg_errors.DataError):
        return _Mapping(InvalidRequestError, "INVALID_DATA",
                        "the database refused a value of the wrong type or range")
    if isinstance(exc, (psycopg.OperationalError, OSError)) and sqlstate is None:
        return _Mapping(DatabaseUnavailableError, "DATABASE_UNAVAILABLE",
                        "the database connection failed")
    return _Mapping(SymphonyError, "DATABASE_ERROR", "the database operation failed")


def refusal(sqlstate: str, constraint: str | None, context: str) -> SymphonyError | None:
    """The error a refusal reported as data (a batch function's per-item sqlstate and
    constraint) stands for: the same class, code and message `translate` gives the raised
    form. None when the pair is not one of the mapped refusals (the caller then asks again in
    a form that raises)."""
    mapping = (_BY_CONSTRAINT.get(constraint) if constraint else None) or _BY_SQLSTATE.get(
        sqlstate)
    if mapping is None:
        return None
    incident_id = uuid.uuid4().hex
    level = logging.WARNING if mapping.kind in _EXPECTED else logging.ERROR
    log.log(level, "database refusal: incident=%s context=%s sqlstate=%s constraint=%s",
            incident_id, context, sqlstate, constraint, extra={"incident_id": incident_id})
    return mapping.kind(mapping.message, code=mapping.code, sqlstate=sqlstate, context=context,
                        incident_id=incident_id)


# SQLSTATE classes whose primary message may quote the value the server refused: 22 (data
# exception: 'invalid input syntax for type uuid: "..."') and 23 (integrity constraint
# violation; its DETAIL holds the row, never logged anyway).
_QUOTING_CLASSES = ("22", "23")
# A PL/pgSQL frame of a CONTEXT: the function's signature (types only), a line number and the
# kind of statement. Every other CONTEXT line ("JSON data, line 1: ...", "SQL statement ...",
# "unnamed portal parameter $5 = '...'") may quote data and is dropped.
_PLPGSQL_FRAME = re.compile(
    r"^PL/pgSQL function [\w.]+\([\w ,.\[\]\"]*\) line \d+ at [A-Za-z][A-Za-z ]{0,40}$")
_MAX_FRAMES = 5


def describe_error(exc: BaseException) -> str:
    """What may be logged of `exc` (see the module docstring): `key=value` fields, no data."""
    fields: list[tuple[str, object]] = [("type", type(exc).__name__)]
    if isinstance(exc, psycopg.Error):
        diag = exc.diag
        sqlstate = exc.sqlstate
        fields += [
            ("sqlstate", sqlstate),
            ("constraint", diag.constraint_name),
            ("schema", diag.schema_name),
            ("table", diag.table_name),
            ("column", diag.column_name),
            ("datatype", diag.datatype_name),
            ("position", diag.statement_position or diag.internal_position),
        ]
        frames = [line.strip() for line in (diag.context or "").splitlines()
                  if _PLPGSQL_FRAME.match(line.strip())]
        if frames:
            fields.append(("where", " < ".join(frames[:_MAX_FRAMES])))
        if sqlstate is None:
            # Raised by the driver itself (a connection failure, a parameter it cannot send):
            # its own words, which name hosts and rules, never a parameter's value.
            fields.append(("message", str(exc).splitlines()[0] if str(exc) else ""))
        elif not sqlstate.startswith(_QUOTING_CLASSES):
            fields.append(("message", diag.message_primary))
    elif isinstance(exc, UnicodeError):
        # Not str(exc): it quotes the character that could not be encoded.
        reason = getattr(exc, "reason", "")
        start = getattr(exc, "start", None)
        fields += [("reason", reason), ("position", start)]
    elif isinstance(exc, psycopg_pool.PoolTimeout | OSError | TimeoutError):
        fields.append(("message", str(exc)))
    return " ".join(f"{name}={_field(value)}" for name, value in fields if value is not None)


def _field(value: object) -> str:
    text = " ".join(str(value).split())  # one line
    return text if text and " " not in text and "=" not in text else repr(text)


def format_exception(exc: BaseException) -> str:
    """A traceback of `exc` and its chain in which no driver error speaks for itself: each
    exception of the chain is shown as `describe_error` describes it when it is a driver
    error (or a text encoding error), as itself otherwise. For log handlers."""
    chain: list[tuple[BaseException, str]] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    link = ""
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append((current, link))
        if current.__cause__ is not None:
            link = "\nThe above exception was the direct cause of the following exception:\n\n"
            current = current.__cause__
        elif current.__context__ is not None and not current.__suppress_context__:
            link = ("\nDuring handling of the above exception, another exception "
                    "occurred:\n\n")
            current = current.__context__
        else:
            current = None
    parts: list[str] = []
    for item, link in reversed(chain):
        if item.__traceback__ is not None:
            parts.append("Traceback (most recent call last):\n")
            parts.extend(traceback.format_tb(item.__traceback__))
        kind = type(item)
        name = kind.__qualname__ if kind.__module__ == "builtins" else (
            f"{kind.__module__}.{kind.__qualname__}")
        if isinstance(item, psycopg.Error | UnicodeError):
            parts.append(f"{name}: {describe_error(item)}\n")
        else:
            parts.append("".join(traceback.format_exception_only(item)))
        if isinstance(item, BaseExceptionGroup):  # a task group's failures, each rendered so
            for number, sub in enumerate(item.exceptions, 1):
                inner = format_exception(sub).replace("\n", "\n  | ")
                parts.append(f"  +---------------- {number} ----------------\n  | {inner}\n")
        parts.append(link)
    return "".join(parts).rstrip("\n")
