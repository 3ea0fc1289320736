"""The database boundary: the only package that talks to PostgreSQL.

Everything else uses this API — `Database.transaction(Role.X)`, `Database.fetch_all(...)`
with a query *name*, `Database.listen(...)` — and receives sanitized `SymphonyError`s.
"""

from __future__ import annotations

from symphony.db.bootstrap import BootstrapResult, bootstrap
from symphony.db.config import DSN_VARIABLE, DatabaseSettings
from symphony.db.database import Database, Listener, Row, Transaction, check_role, check_service
from symphony.db.error import (
    ConfigurationError,
    ConflictError,
    DatabaseUnavailableError,
    IdempotencyConflictError,
    InvalidRequestError,
    InvariantViolationError,
    LeaseFencedError,
    MigrationError,
    NotFoundError,
    ParticipantNotActiveError,
    PermissionDeniedError,
    QueryTimeoutError,
    RoleError,
    SymphonyError,
    TransientDatabaseError,
    UnsupportedServerError,
    describe_error,
    format_exception,
    refusal,
)
from symphony.db.migration import MigrationReport, SchemaStatus, migrate, pending_migrations
from symphony.db.role import Principal, Role, Service
from symphony.db.server import EmbeddedServer, Endpoint, resolve_endpoint

PENDING_CHANNEL = "symphony_outbox_pending"

__all__ = [
    "DSN_VARIABLE",
    "PENDING_CHANNEL",
    "BootstrapResult",
    "ConfigurationError",
    "ConflictError",
    "Database",
    "DatabaseSettings",
    "DatabaseUnavailableError",
    "EmbeddedServer",
    "Endpoint",
    "IdempotencyConflictError",
    "InvalidRequestError",
    "InvariantViolationError",
    "LeaseFencedError",
    "Listener",
    "MigrationError",
    "MigrationReport",
    "NotFoundError",
    "ParticipantNotActiveError",
    "PermissionDeniedError",
    "Principal",
    "QueryTimeoutError",
    "Role",
    "RoleError",
    "Row",
    "SchemaStatus",
    "Service",
    "SymphonyError",
    "Transaction",
    "TransientDatabaseError",
    "UnsupportedServerError",
    "bootstrap",
    "check_role",
    "check_service",
    "describe_error",
    "format_exception",
    "migrate",
    "pending_migrations",
    "refusal",
    "resolve_endpoint",
]
