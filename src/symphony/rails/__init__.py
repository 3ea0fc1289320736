"""Payment rails: the client contract the outbox worker uses and its HTTP implementation."""

from __future__ import annotations

from symphony.rails.client import (
    MAX_DETAIL_LENGTH,
    MAX_REFERENCE_LENGTH,
    DispatchOutcome,
    DispatchResult,
    LookupResult,
    LookupStatus,
    RailClient,
    is_valid_reference,
    transaction_id_problem,
    validate_reference,
)
from symphony.rails.http import HttpRailClient

__all__ = [
    "MAX_DETAIL_LENGTH",
    "MAX_REFERENCE_LENGTH",
    "DispatchOutcome",
    "DispatchResult",
    "HttpRailClient",
    "LookupResult",
    "LookupStatus",
    "RailClient",
    "is_valid_reference",
    "transaction_id_problem",
    "validate_reference",
]
