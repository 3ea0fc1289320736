"""Payment rail client contract: the protocol the outbox worker codes against.

A rail is asked to execute a payment under one stable reference (the outbox
item's id). Every retry re-sends the same reference, so a correct rail executes
a reference at most once. The result types keep the worker's decision table
small: SUCCESS and TERMINAL are final, RETRYABLE means the rail certainly did
not execute, and AMBIGUOUS means it may have, so the worker must ``lookup``
before sending again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, TypeGuard

MAX_REFERENCE_LENGTH = 200
MAX_DETAIL_LENGTH = 500
MAX_CODE_LENGTH = 64
MAX_TRANSACTION_ID_LENGTH = 200

# What a rail sends back is stored in the ledger. PostgreSQL text cannot hold NUL, and
# UTF-8 cannot encode a lone surrogate (which a JSON "\ud800" escape decodes to): either one
# would make the completion statement fail for the whole batch, so the payment the rail
# executed would never be recorded. Control characters go too (they garble logs and
# terminals); tab, newline and carriage return become spaces.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")

# RFC 3986 "unreserved" characters: they never need escaping in a path
# segment, so a reference travels byte-for-byte in headers, bodies and URLs.
_REFERENCE_PATTERN = re.compile(r"[A-Za-z0-9._~-]+")


class DispatchOutcome(StrEnum):
    """What a dispatch attempt means for the outbox item."""

    SUCCESS = "SUCCESS"
    RETRYABLE = "RETRYABLE"
    TERMINAL = "TERMINAL"
    AMBIGUOUS = "AMBIGUOUS"


def storable_text(value: object, limit: int) -> str | None:
    """`value` as text the ledger can always store: None stays None, anything else becomes a
    string without control characters or unencodable code points, at most `limit` long."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    # Lone surrogates (and anything else UTF-8 cannot carry) become U+FFFD.
    text = _SURROGATE.sub("\ufffd", text)
    text = _CONTROL.sub(lambda m: " " if m.group() in "\t\n\r" else "", text)
    if len(text) <= limit:
        return text
    return text[: max(limit - 3, 0)] + "..."


def transaction_id_problem(value: object) -> str | None:
    """Why `value` cannot be recorded as the rail's transaction id, or None when it can.

    The transaction id is what makes a payment DISPATCHED: the proof an operator reconciles
    against the rail. It is therefore checked, never cleaned: a string of 1-200 printable
    characters (no control, format, surrogate, private-use or unassigned code points, no
    whitespace but the plain space, and not at either end). The database refuses a
    DISPATCHED row without one (migration `dispatched_needs_transaction_id`); anything this
    accepts, the database stores unchanged.
    """
    if value is None:
        return "no rail_transaction_id"
    if not isinstance(value, str):
        return "rail_transaction_id is not a string"
    if not value.strip(" "):
        return "rail_transaction_id is empty"
    if len(value) > MAX_TRANSACTION_ID_LENGTH:
        return f"rail_transaction_id is longer than {MAX_TRANSACTION_ID_LENGTH} characters"
    if not value.isprintable():
        return "rail_transaction_id holds unprintable characters"
    if value != value.strip(" "):
        return "rail_transaction_id starts or ends with a space"
    return None


def bound_detail(detail: str | None) -> str | None:
    """Clip a human-readable detail so results stay small enough to log and store."""
    return storable_text(detail, MAX_DETAIL_LENGTH)


@dataclass(frozen=True, slots=True)
class DispatchResult:
    """The classified answer to one dispatch attempt; never carries secrets.

    A SUCCESS is the rail's proof of execution, so it must carry a transaction id that
    `transaction_id_problem` accepts: a SUCCESS without one is turned into AMBIGUOUS
    (`RAIL_MALFORMED_RESPONSE`) here, whoever builds it, and the worker looks the payment up
    instead of recording it DISPATCHED on no evidence.
    """

    outcome: DispatchOutcome
    code: str | None = None
    detail: str | None = None
    rail_transaction_id: str | None = None

    def __post_init__(self) -> None:
        # Enforced here rather than at every call site so no producer of a result can leak
        # an unbounded or unstorable rail answer into storage.
        if self.outcome is DispatchOutcome.SUCCESS:
            problem = transaction_id_problem(self.rail_transaction_id)
            if problem is not None:
                object.__setattr__(self, "outcome", DispatchOutcome.AMBIGUOUS)
                object.__setattr__(self, "code", "RAIL_MALFORMED_RESPONSE")
                object.__setattr__(self, "detail", f"success without proof: {problem}")
                object.__setattr__(self, "rail_transaction_id", None)
        else:
            object.__setattr__(
                self, "rail_transaction_id",
                storable_text(self.rail_transaction_id, MAX_TRANSACTION_ID_LENGTH))
        object.__setattr__(self, "code", storable_text(self.code, MAX_CODE_LENGTH))
        object.__setattr__(self, "detail", bound_detail(self.detail))


class LookupStatus(StrEnum):
    """What the rail knows about a reference."""

    EXECUTED = "EXECUTED"
    NOT_FOUND = "NOT_FOUND"
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True, slots=True)
class LookupResult:
    """The rail's answer to "did you execute this reference?".

    EXECUTED settles a payment without a second send, so, like a dispatch SUCCESS, it must
    carry a transaction id that `transaction_id_problem` accepts: without one it is UNKNOWN
    (the item stays open and is asked about again), whoever builds the result.
    """

    status: LookupStatus
    rail_transaction_id: str | None = None
    detail: str | None = None

    def __post_init__(self) -> None:
        if self.status is LookupStatus.EXECUTED:
            problem = transaction_id_problem(self.rail_transaction_id)
            if problem is not None:
                object.__setattr__(self, "status", LookupStatus.UNKNOWN)
                object.__setattr__(self, "detail", f"EXECUTED without proof: {problem}")
                object.__setattr__(self, "rail_transaction_id", None)
        else:
            object.__setattr__(
                self, "rail_transaction_id",
                storable_text(self.rail_transaction_id, MAX_TRANSACTION_ID_LENGTH))
        object.__setattr__(self, "detail", bound_detail(self.detail))


class RailClient(Protocol):
    """A payment rail as seen by the outbox worker.

    ``dispatch`` and ``lookup`` never raise for anything the rail does (errors,
    timeouts, garbage responses); they return a classified result. They raise
    ``ValueError`` only for programmer errors such as an invalid reference.
    Cancelling a call propagates ``CancelledError``; the caller must then treat
    the attempt as ambiguous.

    ``timeout`` is a parameter rather than left to an outer ``asyncio.timeout``
    because only the client can tell a timeout before the request reached the
    rail (RETRYABLE) from one after (AMBIGUOUS).
    """

    supports_lookup: bool

    async def dispatch(
        self,
        reference: str,
        *,
        rail_type: str,
        payload: Mapping[str, Any],
        timeout: float,  # noqa: ASYNC109 - see class docstring
    ) -> DispatchResult: ...

    async def lookup(self, reference: str, *, timeout: float) -> LookupResult:  # noqa: ASYNC109
        """Return UNKNOWN when lookup is unsupported or the rail cannot be reached."""
        ...

    async def aclose(self) -> None: ...


def validate_reference(reference: str) -> str:
    """Return ``reference`` unchanged, or raise ``ValueError`` if it cannot be sent as-is.

    A reference must be 1..200 URL-unreserved characters and not a dot segment
    ("." or ".."), which URL normalisation would silently rewrite.
    """
    if not isinstance(reference, str):
        raise ValueError(f"reference must be a str, not {type(reference).__name__}")
    if not reference:
        raise ValueError("reference must not be empty")
    if len(reference) > MAX_REFERENCE_LENGTH:
        raise ValueError(f"reference longer than {MAX_REFERENCE_LENGTH} characters")
    if _REFERENCE_PATTERN.fullmatch(reference) is None:
        raise ValueError("reference may only contain A-Z a-z 0-9 . _ ~ -")
    if reference in (".", ".."):
        raise ValueError("reference must not be a dot segment")
    return reference


def is_valid_reference(reference: object) -> TypeGuard[str]:
    """Say whether ``reference`` would pass :func:`validate_reference`."""
    if not isinstance(reference, str):
        return False
    try:
        validate_reference(reference)
    except ValueError:
        return False
    return True
