"""Test-only escape hatches: SQL with no role, and probes into pooled connections.

This module refuses to import unless `SYMPHONY_ENV=test`. It is excluded from the production
wheel, and the guardrails allow importing it only from `tests/**` and `src/symphony/db/tests/**`.
Tests use it to put the database into states no runtime role can reach (a lease in the past, a
hand-written ledger row) and to look at what a pooled connection carries.
"""

from __future__ import annotations

import os

if os.environ.get("SYMPHONY_ENV") != "test":
    raise ImportError(
        "symphony.db.test_only is available only to tests: it runs SQL with no role. "
        "Set SYMPHONY_ENV=test (the test suite does) — production code must use symphony.db."
    )

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from symphony.db.database import Database, Row, check_role
from symphony.db.error import translate
from symphony.db.role import OWNER_ROLE, Principal, Role

Params = Mapping[str, Any] | Sequence[Any] | None


async def query_no_role(admin_dsn: str, statement: str, params: Params = None) -> list[Row]:
    """Run `statement` as the admin with no role switch, in its own committed transaction."""
    async with await psycopg.AsyncConnection.connect(
        admin_dsn, autocommit=True, row_factory=dict_row
    ) as conn:
        try:
            async with conn.transaction():
                cur = await conn.execute(statement, params)
                return list(await cur.fetchall()) if cur.description else []
        except psycopg.Error as exc:
            raise translate(exc, "test-only:no-role") from exc


async def statements_no_role(
    admin_dsn: str, statements: Sequence[tuple[str, Params]]
) -> list[Row]:
    """Run several statements as the admin in one transaction; rows of the last one."""
    async with await psycopg.AsyncConnection.connect(
        admin_dsn, autocommit=True, row_factory=dict_row
    ) as conn:
        try:
            rows: list[Row] = []
            async with conn.transaction():
                for statement, params in statements:
                    cur = await conn.execute(statement, params)
                    rows = list(await cur.fetchall()) if cur.description else []
            return rows
        except psycopg.Error as exc:
            raise translate(exc, "test-only:no-role") from exc


async def query_as_owner(admin_dsn: str, statement: str, params: Params = None) -> list[Row]:
    """Run `statement` as the schema owner (the admin switches to it for this transaction).

    Shows what the database itself refuses even to the owner of the tables (I3, I5, I7).
    """
    async with await psycopg.AsyncConnection.connect(
        admin_dsn, autocommit=True, row_factory=dict_row
    ) as conn:
        try:
            async with conn.transaction():
                await conn.execute(sql.SQL("SET LOCAL ROLE {}").format(
                    sql.Identifier(OWNER_ROLE)))
                cur = await conn.execute(statement, params)
                return list(await cur.fetchall()) if cur.description else []
        except psycopg.Error as exc:
            raise translate(exc, "test-only:owner") from exc


async def execute_as_role(
    db: Database, role: Role, statement: str, params: Params = None
) -> list[Row]:
    """Run arbitrary SQL through the real path (principal, SET LOCAL ROLE) as `role`.

    Errors come back translated, exactly as from the production API.
    """
    async with db.transaction(role, label="test-only") as tx:
        try:
            cur = await tx.connection.execute(statement, params)
            return list(await cur.fetchall()) if cur.description else []
        except psycopg.Error as exc:
            raise translate(exc, "test-only") from exc


async def switch_role_as_principal(db: Database, principal: Principal, role_name: str) -> str:
    """Log in as `principal` and try to become `role_name`; returns current_user on success."""
    conninfo = db.login_dsn(principal)
    try:
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
            await conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role_name)))
            row = await (await conn.execute("SELECT current_user")).fetchone()
            return str(row[0]) if row else ""
    except psycopg.Error as exc:
        raise translate(exc, "test-only:switch-role") from exc


@dataclass(frozen=True, slots=True)
class ConnectionIdentity:
    current_user: str
    session_user: str
    backend_pid: int
    idle_on_checkout: bool = True


async def pooled_identity(db: Database, principal: Principal) -> ConnectionIdentity:
    """Borrow a connection from `principal`'s pool and report who it runs as, with no role."""
    pool = await db._pool(principal)
    async with pool.connection() as conn:
        idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        cur = await conn.execute(
            "SELECT current_user AS cu, session_user AS su, pg_backend_pid() AS pid"
        )
        row = await cur.fetchone()
    assert row is not None
    return ConnectionIdentity(str(row["cu"]), str(row["su"]), int(row["pid"]), idle)


async def plant_session_role(db: Database, principal: Principal, role: Role) -> int:
    """Leave a session-level role on a pooled connection (what a careless caller would do).

    Returns the backend pid, so a test can see whether the pool's reset cleaned it up.
    """
    check_role(role)
    pool = await db._pool(principal)
    async with pool.connection() as conn:
        await conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role.value)))
        cur = await conn.execute("SELECT pg_backend_pid() AS pid")
        row = await cur.fetchone()
    assert row is not None
    return int(row["pid"])


async def break_pooled_connection_during_use(db: Database, principal: Principal) -> int:
    """Terminate the backend of a borrowed connection, then return it to the pool.

    The reset cannot run on a dead connection; the pool must discard it. Returns its pid.
    """
    pool = await db._pool(principal)
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT pg_backend_pid() AS pid")
        row = await cur.fetchone()
        assert row is not None
        pid = int(row["pid"])
        assert db.endpoint is not None, "needs a Database opened with the admin DSN"
        await query_no_role(db.endpoint.admin_dsn, "SELECT pg_terminate_backend(%s)", (pid,))
    return pid


def pool_size(db: Database, principal: Principal) -> int:
    """Connections the principal's pool holds now."""
    pool = db._pools.get(principal)
    return 0 if pool is None else int(pool.get_stats().get("pool_size", 0))


async def create_database(admin_dsn: str, name: str, *, template: str | None = None) -> str:
    """Create a database on the admin's server — empty, or a copy of `template` (a migrated
    database nobody is connected to: copying costs far less than migrating); returns the
    admin DSN to it."""
    async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as conn:
        await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))
        if template is None:
            await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        else:
            await conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)))
    return psycopg.conninfo.make_conninfo(admin_dsn, dbname=name)


async def drop_database(admin_dsn: str, name: str) -> None:
    """Drop a database created by `create_database` (connections to it are terminated)."""
    async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as conn:
        await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


async def settle_pool(db: Database, principal: Principal) -> None:
    """Wait until every connection of `principal`'s pool is back in it: with a reset callback
    the pool returns connections in a background task."""
    import asyncio

    pool = await db._pool(principal)
    for _ in range(500):
        stats = pool.get_stats()
        if stats.get("pool_available", 0) >= stats.get("pool_size", 0) > 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the pool's connections did not come back")


def reset_checks_run() -> int:
    """How many times the pools' reset callback has run its RESET ROLE check so far."""
    from symphony.db import database

    return database._RESET_CHECKS[0]
