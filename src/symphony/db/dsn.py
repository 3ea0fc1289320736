"""Checking and showing PostgreSQL DSNs without ever echoing the password they may hold."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import conninfo as pg_conninfo

from symphony.db.error import ConfigurationError


def dsn_problem(url: str, variable: str) -> str | None:
    """What is wrong with `url` as a PostgreSQL DSN, or None. Never quotes the value."""
    if not url.strip():
        return f"{variable} is set but empty"
    try:
        parts = pg_conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return (f"{variable} is not a valid PostgreSQL URL or connection string "
                "(expected postgresql://user:password@host:port/dbname)")
    if "://" in url and not url.startswith(("postgresql://", "postgres://")):
        return f"{variable} must use the postgresql:// scheme"
    port = str(parts.get("port") or "")
    if port and not all(p.isdigit() and 0 < int(p) < 65536 for p in port.split(",")):
        return f"{variable} has an invalid port: expected a number from 1 to 65535"
    return None


def parse_dsn(url: str, variable: str, *, code: str = "INVALID_DATABASE_URL") -> dict[str, Any]:
    """Validate a DSN (a clear ConfigurationError if malformed); its parts."""
    problem = dsn_problem(url, variable)
    if problem is not None:
        raise ConfigurationError(problem, code=code)
    return pg_conninfo.conninfo_to_dict(url)


def dsn_user(url: str) -> str | None:
    """The login a DSN names, if it names one (else libpq picks PGUSER or the OS user)."""
    user = pg_conninfo.conninfo_to_dict(url).get("user")
    return str(user) if user else None


def server_key(parts: dict[str, Any]) -> str:
    """A stable name of the server a DSN points at (roles are cluster-wide)."""
    return f"{parts.get('host') or 'localhost'}:{parts.get('port') or 5432}"


def describe_dsn(url: str) -> str:
    """The DSN with the password masked, for showing to people."""
    parts = pg_conninfo.conninfo_to_dict(url)
    if parts.get("password"):
        parts["password"] = "***"
    return pg_conninfo.make_conninfo(
        "", **{k: str(v) for k, v in parts.items() if v is not None}
    )


def dsn_location(url: str) -> str:
    """host:port/dbname of a DSN, for a log line (no user, no password)."""
    parts = pg_conninfo.conninfo_to_dict(url)
    return f"{server_key(parts)}/{parts.get('dbname') or ''}"


def with_options(url: str, **options: str) -> str:
    """`url` with connection parameters set; a server `options` string is appended to the
    DSN's own instead of replacing it."""
    extra = options.pop("options", None)
    if extra:
        own = pg_conninfo.conninfo_to_dict(url).get("options")
        options["options"] = f"{own} {extra}" if own else extra
    return pg_conninfo.make_conninfo(url, **options)
