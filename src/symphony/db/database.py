"""The database API every other package uses: queries and transactions as a role, LISTEN.

How a transaction runs, in three round trips for a one-statement transaction:

    BEGIN; SET LOCAL ROLE <role>; SELECT current_user     -- one simple-protocol message
    <the caller's statements>                               -- one round trip each
    COMMIT

The role lives only as long as the transaction (`SET LOCAL`), `current_user` is checked before
the caller's first statement runs, and transactions do not nest. When a connection goes back
to its pool a reset callback runs `RESET ROLE` and checks that the connection is roleless
again (one more message); a connection that fails that check is discarded, never reused.

Each runtime role is reached through its own login principal's pool, so a service never holds
a connection that could become another service's role.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, LiteralString

import psycopg
import psycopg_pool
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow, dict_row

from symphony.db.config import DatabaseSettings
from symphony.db.credential import CredentialStore, provision_principals
from symphony.db.error import (
    DatabaseUnavailableError,
    MigrationError,
    RoleError,
    SymphonyError,
    translate,
)
from symphony.db.migration import pending_migrations
from symphony.db.query import get_query
from symphony.db.role import PRINCIPAL_FOR_ROLE, Principal, Role
from symphony.db.server import EmbeddedServer, Endpoint, resolve_endpoint

log = logging.getLogger("symphony.db")

Row = dict[str, Any]
Params = Mapping[str, Any] | Sequence[Any] | None

_CHANNEL = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_CURRENT_USER: LiteralString = "SELECT current_user AS role"
# One simple-protocol message (no parameters): two results, the second one read.
_RESET_AND_CHECK: LiteralString = "RESET ROLE; SELECT current_user = session_user AS roleless"
_COMMIT: LiteralString = "COMMIT"
_ROLLBACK: LiteralString = "ROLLBACK"

# What running a statement can raise besides SymphonyError: the driver's errors, and a
# parameter the driver cannot encode (a lone surrogate in a str is no UTF-8), which psycopg
# raises as a bare UnicodeEncodeError before anything reaches the server.
_DRIVER_ERRORS: tuple[type[Exception], ...] = (psycopg.Error, UnicodeError)

# The role of the transaction open in this task, if any: transactions do not nest.
_ACTIVE_ROLE: contextvars.ContextVar[Role | None] = contextvars.ContextVar(
    "symphony_active_role", default=None
)


def check_role(role: object) -> Role:
    """Accept only a `Role`; anything else is refused before any SQL is built."""
    if isinstance(role, Role):
        return role
    raise RoleError(
        f"unknown role {role!r}: use one of {', '.join(r.name for r in Role)} from "
        "symphony.db.Role",
        code="UNKNOWN_ROLE",
        context="role-check",
    )


_BEGIN: dict[bool, sql.SQL] = {
    False: sql.SQL("BEGIN"),
    # One snapshot for every statement, and no writes: what an auditor's report needs.
    True: sql.SQL("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"),
}


def _begin_as(role: Role, *, snapshot: bool = False) -> sql.Composed:
    """BEGIN, switch to `role` for this transaction only, and report current_user — sent as
    one message, so the role switch costs no round trip of its own."""
    return sql.SQL("{}; SET LOCAL ROLE {}; SELECT current_user AS role").format(
        _BEGIN[snapshot], sql.Identifier(role.value)
    )


class Transaction:
    """Statements inside one transaction as one role. Obtained from `Database.transaction`."""

    def __init__(
        self, conn: psycopg.AsyncConnection[DictRow], role: Role, context: str
    ) -> None:
        self._conn = conn
        self.role = role
        self.context = context
        self._closed = False

    def _statement(self, query: str) -> LiteralString:
        if self._closed:
            raise SymphonyError(
                "the transaction has ended; open a new one",
                code="TRANSACTION_CLOSED", context=self.context,
            )
        return get_query(query).sql

    async def fetch_all(self, query: str, params: Params = None) -> list[Row]:
        """Run the named query; all rows as dicts."""
        statement = self._statement(query)
        try:
            cur = await self._conn.execute(statement, params)
            return list(await cur.fetchall())
        except _DRIVER_ERRORS as exc:
            raise translate(exc, f"{self.context}:{query}") from exc

    async def fetch_one(self, query: str, params: Params = None) -> Row | None:
        """Run the named query; the first row, or None."""
        statement = self._statement(query)
        try:
            cur = await self._conn.execute(statement, params)
            return await cur.fetchone()
        except _DRIVER_ERRORS as exc:
            raise translate(exc, f"{self.context}:{query}") from exc

    async def execute(self, query: str, params: Params = None) -> int:
        """Run the named query for its effect; the number of rows it touched."""
        statement = self._statement(query)
        try:
            cur = await self._conn.execute(statement, params)
            return cur.rowcount
        except _DRIVER_ERRORS as exc:
            raise translate(exc, f"{self.context}:{query}") from exc

    @property
    def connection(self) -> psycopg.AsyncConnection[DictRow]:
        """The underlying connection, for `symphony.db` itself and its test-only helpers."""
        return self._conn


class Listener:
    """A dedicated connection listening on one channel as one role."""

    def __init__(self, conn: psycopg.AsyncConnection[DictRow], channel: str) -> None:
        self._conn = conn
        self.channel = channel

    async def wait(self, timeout: float) -> bool:  # noqa: ASYNC109 - handed to the driver
        """Wait up to `timeout` seconds for a notification; True if one (or more) came."""
        try:
            got = False
            async for _ in self._conn.notifies(timeout=timeout, stop_after=1):
                got = True
            if got:
                # Drain what queued up meanwhile: one wake-up serves them all.
                async for _ in self._conn.notifies(timeout=0.0):
                    pass
            return got
        except psycopg.Error as exc:
            raise translate(exc, f"listen:{self.channel}") from exc


@dataclass(frozen=True, slots=True)
class _Connect:
    principal: Principal
    conninfo: str


class Database:
    """Pools per principal, and the only way the rest of Symphony reaches PostgreSQL."""

    def __init__(
        self,
        settings: DatabaseSettings,
        endpoint: Endpoint,
        passwords: Mapping[Principal, str],
        *,
        embedded: EmbeddedServer | None = None,
    ) -> None:
        self.settings = settings
        self.endpoint = endpoint
        self._passwords = dict(passwords)
        self._embedded = embedded
        self._pools: dict[Principal, psycopg_pool.AsyncConnectionPool[Any]] = {}
        self._pool_lock = asyncio.Lock()
        self._closed = False

    # -- construction -------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        settings: DatabaseSettings | None = None,
        *,
        require_migrated: bool = True,
        embedded: EmbeddedServer | None = None,
    ) -> Database:
        """Resolve the server, make sure principals have passwords, and return a Database.

        With `require_migrated`, a schema behind this code is a clear error ("run symphony
        migrate") rather than a failure on the first query.
        """
        settings = settings or DatabaseSettings()
        endpoint, server = await resolve_endpoint(settings, embedded=embedded)
        if require_migrated:
            missing = await pending_migrations(endpoint.admin_dsn)
            if missing:
                raise MigrationError(
                    f"the database schema is behind this code ({len(missing)} migration(s) "
                    "not applied, first "
                    f"{missing[0]}): run `symphony migrate`",
                    code="MIGRATIONS_PENDING",
                )
        store = CredentialStore(settings.credentials_file)
        passwords = store.load(endpoint.server_key)
        if set(passwords) != set(Principal):
            passwords = await provision_principals(endpoint.admin_dsn, store, endpoint.server_key)
        return cls(settings, endpoint, passwords, embedded=server)

    async def close(self) -> None:
        """Close every pool. Safe to call more than once."""
        self._closed = True
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            await pool.close()

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the API ------------------------------------------------------------------------------

    @asynccontextmanager
    async def transaction(
        self, role: Role, *, label: str | None = None, snapshot: bool = False
    ) -> AsyncIterator[Transaction]:
        """A transaction as `role`; commits when the block ends, rolls back on an exception.

        `snapshot=True` makes it a read-only REPEATABLE READ transaction: every statement
        sees the same state of the database (for reports that must add up).
        """
        role = check_role(role)
        context = label or f"transaction:{role.name.lower()}"
        if _ACTIVE_ROLE.get() is not None:
            raise RoleError(
                "a transaction is already open in this task; transactions do not nest",
                code="NESTED_TRANSACTION",
                context=context,
            )
        token = _ACTIVE_ROLE.set(role)
        try:
            pool = await self._pool(PRINCIPAL_FOR_ROLE[role])
            async with pool.connection() as conn:
                await _begin(conn, role, context, snapshot=snapshot)
                tx = Transaction(conn, role, context)
                try:
                    yield tx
                except BaseException:
                    await _rollback(conn)
                    raise
                finally:
                    tx._closed = True
                if conn.info.transaction_status == TransactionStatus.INERROR:
                    # A statement failed and the caller went on: PostgreSQL would answer the
                    # COMMIT with a silent rollback, and results already handed out (an
                    # outbox_id, "created") would describe rows that do not exist.
                    await _rollback(conn)
                    raise SymphonyError(
                        "the transaction was aborted by an earlier error and was rolled back; "
                        "nothing in it was saved",
                        code="TRANSACTION_ABORTED",
                        context=context,
                    )
                await conn.execute(_COMMIT)
        except SymphonyError:
            raise
        except (psycopg.Error, UnicodeError, psycopg_pool.PoolTimeout, OSError) as exc:
            raise translate(exc, context) from exc
        finally:
            _ACTIVE_ROLE.reset(token)

    async def fetch_all(
        self, role: Role, query: str, params: Params = None, *, label: str | None = None
    ) -> list[Row]:
        """Run one named query in its own transaction as `role`."""
        async with self.transaction(role, label=label or query) as tx:
            return await tx.fetch_all(query, params)

    async def fetch_one(
        self, role: Role, query: str, params: Params = None, *, label: str | None = None
    ) -> Row | None:
        async with self.transaction(role, label=label or query) as tx:
            return await tx.fetch_one(query, params)

    async def execute(
        self, role: Role, query: str, params: Params = None, *, label: str | None = None
    ) -> int:
        async with self.transaction(role, label=label or query) as tx:
            return await tx.execute(query, params)

    @asynccontextmanager
    async def listen(self, role: Role, channel: str) -> AsyncIterator[Listener]:
        """LISTEN on `channel` as `role`, on a dedicated connection closed at the end."""
        role = check_role(role)
        if not _CHANNEL.match(channel):
            raise SymphonyError(
                "a channel name is 1-63 lowercase letters, digits or '_'",
                code="INVALID_CHANNEL", context="listen",
            )
        connect = self._connect_info(PRINCIPAL_FOR_ROLE[role])
        try:
            conn = await psycopg.AsyncConnection.connect(
                connect.conninfo, autocommit=True, row_factory=dict_row
            )
        except (psycopg.Error, OSError) as exc:
            raise translate(exc, f"listen:{channel}") from exc
        try:
            # Session-level role: this connection is never pooled and is closed below.
            await conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role.value)))
            row = await (await conn.execute(_CURRENT_USER)).fetchone()
            if row is None or row["role"] != role.value:
                raise RoleError("the listener is not running as its role",
                                code="ROLE_MISMATCH", context=f"listen:{channel}")
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            yield Listener(conn, channel)
        except psycopg.Error as exc:
            raise translate(exc, f"listen:{channel}") from exc
        finally:
            await conn.close()

    # -- pools --------------------------------------------------------------------------------

    def _connect_info(self, principal: Principal) -> _Connect:
        s = self.settings
        options = (
            f"-c statement_timeout={s.statement_timeout_ms} "
            f"-c lock_timeout={s.lock_timeout_ms} "
            f"-c idle_in_transaction_session_timeout={s.idle_in_transaction_timeout_ms}"
        )
        conninfo = self.endpoint.dsn_for(
            principal.value,
            self._passwords[principal],
            application_name=f"{s.application_name}:{principal.value}",
            connect_timeout=str(s.connect_timeout_s),
            options=options,
        )
        return _Connect(principal, conninfo)

    async def _pool(self, principal: Principal) -> psycopg_pool.AsyncConnectionPool[Any]:
        pool = self._pools.get(principal)
        if pool is not None:
            return pool
        async with self._pool_lock:
            pool = self._pools.get(principal)
            if pool is not None:
                return pool
            if self._closed:
                raise DatabaseUnavailableError(
                    "the database handle is closed", code="DATABASE_CLOSED", context="pool"
                )
            connect = self._connect_info(principal)
            # Probe once so a refused password or a full server is reported as what it is,
            # instead of as a pool that never fills.
            try:
                probe = await psycopg.AsyncConnection.connect(connect.conninfo)
                await probe.close()
            except (psycopg.Error, OSError) as exc:
                raise translate(exc, f"connect:{principal.value}") from exc
            pool = psycopg_pool.AsyncConnectionPool(
                connect.conninfo,
                min_size=min(self.settings.pool_min_size, self.settings.pool_max_size),
                max_size=self.settings.pool_max_size,
                kwargs={"autocommit": True, "row_factory": dict_row},
                reset=_reset_connection,
                timeout=float(self.settings.connect_timeout_s),
                name=principal.value,
                open=False,
            )
            await pool.open(wait=False)
            self._pools[principal] = pool
            return pool

    def pool_stats(self) -> dict[str, dict[str, int]]:
        """Per-principal pool statistics (for metrics)."""
        return {p.value: pool.get_stats() for p, pool in self._pools.items()}


async def _begin(
    conn: psycopg.AsyncConnection[Any], role: Role, context: str, *, snapshot: bool
) -> None:
    """Open the transaction as `role` and verify it, before any caller statement runs."""
    try:
        cur = await conn.execute(_begin_as(role, snapshot=snapshot))
        cur.nextset()  # SET LOCAL ROLE
        cur.nextset()  # SELECT current_user
        row = await cur.fetchone()
    except psycopg.Error:
        await _rollback(conn)
        raise
    actual = None if row is None else (row["role"] if isinstance(row, dict) else row[0])
    if actual != role.value:
        await _rollback(conn)
        raise RoleError(
            "the transaction is not running as the role it asked for",
            code="ROLE_MISMATCH",
            context=context,
        )


async def _rollback(conn: psycopg.AsyncConnection[Any]) -> None:
    """Roll back if a transaction is open; a broken connection is left to the pool to drop."""
    if conn.closed or conn.info.transaction_status == TransactionStatus.IDLE:
        return
    try:
        await conn.execute(_ROLLBACK)
    except psycopg.Error:
        log.warning("rollback failed; the pool will discard the connection")


async def _reset_connection(conn: psycopg.AsyncConnection[Any]) -> None:
    """Second line of defence: the connection returns to the pool roleless, or not at all.

    Raising here makes the pool discard the connection.
    """
    cur = await conn.execute(_RESET_AND_CHECK)
    cur.nextset()
    row = await cur.fetchone()
    roleless = row is not None and (row["roleless"] if isinstance(row, dict) else row[0])
    if not roleless:
        log.error("discarding a pooled connection that kept a role after RESET ROLE")
        raise RoleError("connection could not be reset", code="ROLE_RESIDUE", context="reset")
