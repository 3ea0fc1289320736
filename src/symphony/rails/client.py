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

# RFC 3986 "unreserved" characters: they never need escaping in a path
# segment, so a reference travels byte-for-byte in headers, bodies and URLs.
_REFERENCE_PATTERN = re.compile(r"[A-Za-z0-9._~-]+")


class DispatchOutcome(StrEnum):
    """What a dispatch attempt means for the outbox item."""

    SUCCESS = "SUCCESS"
    RETRYABLE = "RETRYABLE"
    TERMINAL = "TERMINAL"
    AMBIGUOUS = "AMBIGUOUS"


def bound_detail(detail: str | None) -> str | None:
    """Clip a human-readable detail so results stay small enough to log and store."""
    if detail is None or len(detail) <= MAX_DETAIL_LENGTH:
        return detail
    return detail[: MAX_DETAIL_LENGTH - 3] + "..."


@dataclass(frozen=True, slots=True)
class DispatchResult:
    """The classified answer to one dispatch attempt; never carries secrets."""

    outcome: DispatchOutcome
    code: str | None = None
    detail: str | None = None
    rail_transaction_id: str | None = None

    def __post_init__(self) -> None:
        # Enforced here rather than at every call site so no producer of a
        # result can leak an unbounded rail response body into storage.
        object.__setattr__(self, "detail", bound_detail(self.detail))


class LookupStatus(StrEnum):
    """What the rail knows about a reference."""

    EXECUTED = "EXECUTED"
    NOT_FOUND = "NOT_FOUND"
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True, slots=True)
class LookupResult:
    """The rail's answer to "did you execute this reference?"."""

    status: LookupStatus
    rail_transaction_id: str | None = None
    detail: str | None = None

    def __post_init__(self) -> None:
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
