"""Runtime roles and the login principals that may switch to them.

A role is an enum, never a string from the outside: an unknown role is refused here, before
any SQL is built. Each principal is a login that holds no privilege of its own and may
`SET ROLE` only to the runtime roles listed for it (granted WITH INHERIT FALSE, SET TRUE).
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    """The five runtime roles. Values are the PostgreSQL role names (part of the contract)."""

    CONTROL = "symphony_control"
    INGEST = "symphony_ingest"
    EXECUTOR = "symphony_executor"
    READONLY = "symphony_readonly"
    AUDITOR = "symphony_auditor"


class Principal(StrEnum):
    """Login principals, one per service. Values are the PostgreSQL login role names."""

    CONTROL = "symphony_control_svc"
    INGEST = "symphony_ingest_svc"
    EXECUTOR = "symphony_executor_svc"
    READER = "symphony_reader_svc"


PRINCIPAL_FOR_ROLE: dict[Role, Principal] = {
    Role.CONTROL: Principal.CONTROL,
    Role.INGEST: Principal.INGEST,
    Role.EXECUTOR: Principal.EXECUTOR,
    Role.READONLY: Principal.READER,
    Role.AUDITOR: Principal.READER,
}

OWNER_ROLE = "symphony_owner"
