"""The database API every other package uses: queries and transactions as a role, LISTEN.

A one-statement transaction (`Database.fetch_all`, `fetch_one`, `execute`: every hot path)
takes two round trips, in psycopg's pipeline mode:

    BEGIN / SET LOCAL ROLE <role> / SELECT current_user / <the statement>   -- one flush
    COMMIT                                          -- only once current_user was checked

A transaction block (`Database.transaction`) checks the role before the caller's first
statement runs:

    BEGIN; SET LOCAL ROLE <role>; SELECT current_user     -- one simple-protocol message
    <the caller's statements>                               -- one round trip each
    COMMIT

Either way the role lives only as long as the transaction (`SET LOCAL`), nothing commits
before `current_user` was seen to be the role, and transactions do not nest. When a connection
goes back to its pool, a reset callback runs `RESET ROLE` and checks that the connection is
roleless (one more message; a connection that fails is discarded, never reused) — unless this
module itself just ended the connection's transaction with the server's acknowledgement and
the connection is idle: a `SET LOCAL` role ends with its transaction, and only this module's
named queries ran in it (a caller that took the raw connection gets the check).

Each runtime role is reached through a login principal's pool, so a service never holds a
connection that could become another service's role. A Database knows which principals it
holds — every one (admin or embedded mode: passwords from the credentials file) or only the
service's own (`open_for_service` with a per-service DSN) — and routes each role to a held
principal that may SET to it; a role none of them may become is refused before connecting.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import weakref
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, LiteralString

import psycopg
import psycopg_pool
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow, dict_row

from symphony.db.config import DSN_VARIABLE, DatabaseSettings
from symphony.db.credential import CredentialStore, provision_principals
from symphony.db.dsn import dsn_location, dsn_user, parse_dsn, with_options
from symphony.db.error import (
    ConfigurationError,
    DatabaseUnavailableError,
    MigrationError,
    RoleError,
    SymphonyError,
    translate,
)
from symphony.db.migration import SchemaStatus, assess_schema, pending_message, pending_migrations
from symphony.db.query import get_query
from symphony.db.role import (
    OWNER_ROLE,
    ROLES_OF_PRINCIPAL,
    SERVICE_PRINCIPAL,
    Principal,
    Role,
    Service,
    route_roles,
)
from symphony.db.server import EmbeddedServer, Endpoint, resolve_endpoint

log = logging.getLogger("symphony.db")

Row = dict[str, Any]
Params = Mapping[str, Any] | Sequence[Any] | None

_CHANNEL = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_CURRENT_USER: LiteralString = "SELECT current_user AS role"
# One simple-protocol message (no parameters): two results, the second one read.
_RESET_AND_CHECK: LiteralString = "RESET ROLE; SELECT current_user = session_user AS roleless"
_COMMIT: LiteralString = "COMMIT"
# Refusals that describe the connection's session, not the request: such a connection is
# closed rather than pooled again (25006: read-only; a database switched back to read-write
# reaches only new sessions).
_DISCARD_SQLSTATES = frozenset({"25006"})
_ROLLBACK: LiteralString = "ROLLBACK"

# What running a statement can raise besides SymphonyError: the driver's errors, and a
# parameter the driver cannot encode (a lone surrogate in a str is no UTF-8), which psycopg
# raises as a bare UnicodeEncodeError before anything reaches the server.
_DRIVER_ERRORS: tuple[type[Exception], ...] = (psycopg.Error, UnicodeError)

# Connections whose last transaction this module ended itself (COMMIT or ROLLBACK answered,
# status idle) with only SET LOCAL ROLE and named queries in it: the role is gone with the
# transaction, so the pool's reset check would find nothing (tests/test_round_trips.py).
_ENDED_CLEAN: weakref.WeakSet[psycopg.AsyncConnection[Any]] = weakref.WeakSet()
# How many times the reset callback ran its RESET ROLE check (read by the tests).
_RESET_CHECKS = [0]
_BEGIN_PLAIN: LiteralString = "BEGIN"

# The role of the transaction open in this task, if any: transactions do not nest.
_ACTIVE_ROLE: contextvars.ContextVar[Role | None] = contextvars.ContextVar(
    "symphony_active_role", default=None
)


def check_service(service: object) -> Service:
    """Accept a `Service` (or its value); anything else is a configuration error."""
    try:
        return Service(service)  # type: ignore[arg-type]
    except ValueError:
        raise ConfigurationError(
            f"unknown service {service!r}: use one of {', '.join(s.name for s in Service)} "
            "from symphony.db.Service",
            code="UNKNOWN_SERVICE",
        ) from None


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


def _set_local_role(role: Role) -> sql.Composed:
    return sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role.value))


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
        self._raw = False

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
        """The underlying connection, for `symphony.db` itself and its test-only helpers.
        Whatever runs on it is unknown here, so the pool's reset check runs afterwards."""
        self._raw = True
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


# Which role reads the migration record, among those a Database can become: one that writes
# nothing first.
_STATUS_ROLES = (Role.READONLY, Role.AUDITOR, Role.EXECUTOR, Role.INGEST, Role.CONTROL,
                 Role.DELIVERY, Role.WEBHOOKS)
# Roles a login is checked against on connect: it may become only its own.
_GUARDED_ROLES = [*(r.value for r in Role), OWNER_ROLE]


class Database:
    """Pools per principal, and the only way the rest of Symphony reaches PostgreSQL.

    `endpoint` is the admin endpoint in admin/embedded mode and None when the handle was
    opened from a principal's own DSN (it then has no way to the admin at all).
    """

    def __init__(
        self,
        settings: DatabaseSettings,
        endpoint: Endpoint | None,
        passwords: Mapping[Principal, str] | None = None,
        *,
        embedded: EmbeddedServer | None = None,
        dsns: Mapping[Principal, str] | None = None,
        principals: Collection[Principal] | None = None,
    ) -> None:
        self.settings = settings
        self.endpoint = endpoint
        self._passwords = dict(passwords or {})
        logins: dict[Principal, str] = {}
        sources: dict[Principal, str] = {}
        if endpoint is not None:
            for principal, password in self._passwords.items():
                logins[principal] = endpoint.dsn_for(principal.value, password)
                sources[principal] = "the credentials file"
        for principal, dsn in (dsns or {}).items():
            logins[principal] = dsn
            sources[principal] = DSN_VARIABLE[principal]
        if principals is not None:
            keep = frozenset(principals)
            logins = {p: d for p, d in logins.items() if p in keep}
            self._passwords = {p: pw for p, pw in self._passwords.items() if p in keep}
        self._logins = logins
        self._sources = {p: sources[p] for p in logins}
        self._routes = route_roles(logins)
        self._embedded = embedded
        self._pools: dict[Principal, psycopg_pool.AsyncConnectionPool[Any]] = {}
        self._pool_lock = asyncio.Lock()
        self._closed = False
        # Pool checks under way after a broken connection (one per pool at a time).
        self._checking: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()

    # -- construction -------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        settings: DatabaseSettings | None = None,
        *,
        require_migrated: bool = True,
        embedded: EmbeddedServer | None = None,
        principals: Collection[Principal] | None = None,
    ) -> Database:
        """Resolve the server, make sure principals have passwords, and return a Database.

        With `require_migrated`, a schema behind this code is a clear error ("run symphony
        migrate") rather than a failure on the first query. `principals` limits the handle
        to those logins (default: every principal).
        """
        settings = settings or DatabaseSettings.load()
        endpoint, server = await resolve_endpoint(settings, embedded=embedded)
        if require_migrated:
            missing = await pending_migrations(endpoint.admin_dsn)
            if missing:
                raise MigrationError(pending_message(missing), code="MIGRATIONS_PENDING")
        store = CredentialStore(settings.credentials_file)
        passwords = store.load(endpoint.server_key)
        if set(passwords) != set(Principal):
            passwords = await provision_principals(endpoint.admin_dsn, store, endpoint.server_key)
        return cls(settings, endpoint, passwords, embedded=server, principals=principals)

    @classmethod
    async def open_for_service(
        cls, service: Service, settings: DatabaseSettings | None = None
    ) -> Database:
        """A Database for one long-running service, holding only that service's principal.

        With the service's DSN set (`SYMPHONY_API_DATABASE_URL` for the API,
        `SYMPHONY_EXECUTOR_DATABASE_URL` for the worker and the repair) it connects with that
        DSN alone: no admin DSN, no credentials file. Unset, it falls back to `Database.open`
        (admin or embedded, passwords from the credentials file), still restricted to the
        service's principal. Either way the schema must match this code.
        """
        service = check_service(service)
        return await cls.open_as(
            SERVICE_PRINCIPAL[service], settings, purpose=f"the {service.value} service"
        )

    @classmethod
    async def open_as(
        cls,
        principal: Principal,
        settings: DatabaseSettings | None = None,
        *,
        purpose: str | None = None,
    ) -> Database:
        """A Database that logs in as `principal` only (see `open_for_service`).

        Its DSN comes from `SYMPHONY_<PRINCIPAL>_DATABASE_URL` when set, else from the
        admin/embedded mode and the credentials file.
        """
        if not isinstance(principal, Principal):
            raise ConfigurationError(f"unknown principal {principal!r}",
                                     code="UNKNOWN_PRINCIPAL")
        settings = settings or DatabaseSettings.load()
        who = purpose or principal.value
        secret = settings.dsn_of(principal)
        if secret is None:
            return await cls.open(settings, principals=(principal,))
        variable = DSN_VARIABLE[principal]
        dsn = secret.get_secret_value()
        parse_dsn(dsn, variable, code="INVALID_DATABASE_CONFIG")
        named = dsn_user(dsn)
        if named is not None and named != principal.value:
            raise ConfigurationError(
                f"{variable} logs in as {named!r}, but {who} must log in as "
                f"{principal.value}: give it that principal's DSN (a DSN of another principal "
                "would hand it privileges it must not have)",
                code="WRONG_PRINCIPAL",
            )
        if settings.database_url is not None:
            log.warning(
                "DATABASE_URL is set but not used: %s connects with %s only; keep the admin "
                "DSN out of this service's environment", who, variable,
            )
        others = sorted(DSN_VARIABLE[p] for p in Principal
                        if p != principal and settings.dsn_of(p) is not None)
        if others:
            log.warning(
                "%s set but not used: %s connects with %s only; give each service only its "
                "own principal's DSN", ", ".join(others), who, variable,
            )
        db = cls(settings, None, dsns={principal: dsn})
        try:
            await db._pool(principal)  # connects once and checks who it logged in as
            (await db.schema_status()).require()
        except BaseException:
            await db.close()
            raise
        log.info("%s connects as %s (%s) to %s", who, principal.value, variable,
                 dsn_location(dsn))
        return db

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

    # -- what this handle holds ---------------------------------------------------------------

    @property
    def principals(self) -> frozenset[Principal]:
        """The logins this handle may connect as."""
        return frozenset(self._logins)

    @property
    def roles(self) -> frozenset[Role]:
        """The roles this handle can become (through one of its principals)."""
        return frozenset(self._routes)

    def principal_for(self, role: Role) -> Principal:
        """The principal `role` is reached through; refused if no held principal may SET to it."""
        role = check_role(role)
        principal = self._routes.get(role)
        if principal is None:
            held = ", ".join(sorted(p.value for p in self._logins)) or "no principal"
            raise RoleError(
                f"this database handle logs in as {held}, which may not become {role.value}",
                code="ROLE_NOT_AVAILABLE",
                context=f"route:{role.name.lower()}",
            )
        return principal

    async def schema_status(self) -> SchemaStatus:
        """The schema compared with this code's migrations, read through a runtime role (no
        admin needed): what a readiness check reports."""
        role = next((r for r in _STATUS_ROLES if r in self._routes), None)
        if role is None:
            raise RoleError("this database handle holds no principal", code="ROLE_NOT_AVAILABLE",
                            context="schema-status")
        async with self.transaction(role, label="schema-status") as tx:
            row = await tx.fetch_one("schema_migrations_readable")
            recorded: dict[int, str] | None = None
            if row is not None and row["readable"]:
                rows = await tx.fetch_all("schema_migrations")
                recorded = {int(r["version"]): str(r["checksum"]) for r in rows}
        return assess_schema(recorded)

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
        pool: psycopg_pool.AsyncConnectionPool[Any] | None = None
        used: psycopg.AsyncConnection[Any] | None = None
        try:
            pool = await self._pool(self.principal_for(role))
            async with pool.connection() as conn:
                used = conn
                _ENDED_CLEAN.discard(conn)
                await _begin(conn, role, context, snapshot=snapshot)
                tx = Transaction(conn, role, context)
                try:
                    yield tx
                except BaseException as exc:
                    await _rollback(conn)
                    if not tx._raw:
                        _mark_if_ended(conn)
                    if getattr(exc, "sqlstate", None) in _DISCARD_SQLSTATES:
                        # The session keeps what it started with (a read-only default):
                        # closed, the pool replaces it, and the next transaction sees the
                        # server as it is now instead of failing until the connection ages out.
                        await conn.close()
                    raise
                finally:
                    tx._closed = True
                if conn.info.transaction_status == TransactionStatus.INERROR:
                    # A statement failed and the caller went on: PostgreSQL would answer the
                    # COMMIT with a silent rollback, and results already handed out (an
                    # outbox_id, "created") would describe rows that do not exist.
                    await _rollback(conn)
                    if not tx._raw:
                        _mark_if_ended(conn)
                    raise SymphonyError(
                        "the transaction was aborted by an earlier error and was rolled back; "
                        "nothing in it was saved",
                        code="TRANSACTION_ABORTED",
                        context=context,
                    )
                await _commit(conn, context, mark=not tx._raw)
        except SymphonyError:
            await self._after_failure(pool, used)
            raise
        except (psycopg.Error, UnicodeError, psycopg_pool.PoolTimeout, OSError) as exc:
            await self._after_failure(pool, used)
            raise translate(exc, context) from exc
        finally:
            _ACTIVE_ROLE.reset(token)

    async def _after_failure(self, pool: psycopg_pool.AsyncConnectionPool[Any] | None,
                             used: psycopg.AsyncConnection[Any] | None) -> None:
        """A transaction failed: if its connection broke (its server died, restarted or failed
        over), test the pool's idle connections now (`_check_pool`)."""
        if pool is not None and used is not None and used.broken:
            await self._check_pool(pool)

    async def _check_pool(self, pool: psycopg_pool.AsyncConnectionPool[Any]) -> None:
        """Test the pool's idle connections in the background, so that each dead one is
        replaced at once instead of failing one request of its own. New connections follow
        the DSN, so with `target_session_attrs=read-write` they reach whichever host is the
        primary now."""
        if pool.name in self._checking:
            return
        self._checking.add(pool.name)
        task = asyncio.get_running_loop().create_task(pool.check())
        self._background.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._background.discard(finished)
            self._checking.discard(pool.name)
            if not finished.cancelled() and finished.exception() is not None:
                log.warning("checking the %s pool failed: %s", pool.name,
                            type(finished.exception()).__name__)

        task.add_done_callback(done)
        # One turn of the loop: the check takes every idle connection out of the pool in its
        # first step, before the next request can be handed a dead one.
        await asyncio.sleep(0)

    async def fetch_all(
        self, role: Role, query: str, params: Params = None, *, label: str | None = None
    ) -> list[Row]:
        """Run one named query in its own transaction as `role` (two round trips)."""
        rows, _ = await self._single(role, query, params, label)
        return rows

    async def fetch_one(
        self, role: Role, query: str, params: Params = None, *, label: str | None = None
    ) -> Row | None:
        rows, _ = await self._single(role, query, params, label)
        return rows[0] if rows else None

    async def execute(
        self, role: Role, query: str, params: Params = None, *, label: str | None = None
    ) -> int:
        _, count = await self._single(role, query, params, label)
        return count

    async def _single(
        self, role: Role, query: str, params: Params, label: str | None
    ) -> tuple[list[Row], int]:
        """One named query in a transaction of its own, pipelined: BEGIN, the role switch,
        its check and the statement go in one flush; COMMIT goes only after the check's answer
        named the role (otherwise everything is rolled back). Its rows (read before the
        connection goes back to the pool) and the number of rows it touched."""
        role = check_role(role)
        context = label or query
        if _ACTIVE_ROLE.get() is not None:
            raise RoleError(
                "a transaction is already open in this task; transactions do not nest",
                code="NESTED_TRANSACTION",
                context=context,
            )
        statement = get_query(query).sql
        token = _ACTIVE_ROLE.set(role)
        pool: psycopg_pool.AsyncConnectionPool[Any] | None = None
        used: psycopg.AsyncConnection[Any] | None = None
        try:
            pool = await self._pool(self.principal_for(role))
            async with pool.connection() as conn:
                used = conn
                _ENDED_CLEAN.discard(conn)
                check: psycopg.AsyncCursor[DictRow] | None = None
                try:
                    async with conn.pipeline() as pipeline:
                        await conn.execute(_BEGIN_PLAIN)
                        await conn.execute(_set_local_role(role))
                        check = await conn.execute(_CURRENT_USER)
                        cur: psycopg.AsyncCursor[DictRow] = await conn.execute(
                            statement, params)
                        await pipeline.sync()
                except _DRIVER_ERRORS as exc:
                    await _rollback(conn)
                    if getattr(exc, "sqlstate", None) in _DISCARD_SQLSTATES:
                        await conn.close()
                    else:
                        _mark_if_ended(conn)
                    if check is None or check.pgresult is None:
                        raise translate(exc, context) from exc  # the role switch failed
                    raise translate(exc, f"{context}:{query}") from exc
                row = await check.fetchone()
                if row is None or row["role"] != role.value:
                    await _rollback(conn)
                    _mark_if_ended(conn)
                    raise RoleError(
                        "the transaction is not running as the role it asked for",
                        code="ROLE_MISMATCH",
                        context=context,
                    )
                rows = list(await cur.fetchall()) if cur.description is not None else []
                await _commit(conn, context, mark=True)
                return rows, cur.rowcount
        except SymphonyError:
            await self._after_failure(pool, used)
            raise
        except (psycopg.Error, UnicodeError, psycopg_pool.PoolTimeout, OSError) as exc:
            await self._after_failure(pool, used)
            raise translate(exc, context) from exc
        finally:
            _ACTIVE_ROLE.reset(token)

    @asynccontextmanager
    async def listen(self, role: Role, channel: str) -> AsyncIterator[Listener]:
        """LISTEN on `channel` as `role`, on a dedicated connection closed at the end."""
        role = check_role(role)
        if not _CHANNEL.match(channel):
            raise SymphonyError(
                "a channel name is 1-63 lowercase letters, digits or '_'",
                code="INVALID_CHANNEL", context="listen",
            )
        connect = self._connect_info(self.principal_for(role))
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
        conninfo = with_options(
            self._logins[principal],
            application_name=f"{s.application_name}:{principal.value}",
            connect_timeout=str(s.connect_timeout_s),
            options=options,
        )
        return _Connect(principal, conninfo)

    def login_dsn(self, principal: Principal) -> str:
        """The DSN `principal` logs in with (holds its password: never log it)."""
        return self._logins[principal]

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
                probe = await psycopg.AsyncConnection.connect(
                    connect.conninfo, autocommit=True, row_factory=dict_row
                )
                try:
                    cur = await probe.execute(
                        get_query("login_identity").sql, {"roles": _GUARDED_ROLES}
                    )
                    identity = await cur.fetchone()
                finally:
                    await probe.close()
            except (psycopg.Error, OSError) as exc:
                raise translate(exc, f"connect:{principal.value}") from exc
            self._check_login(principal, identity)
            pool = psycopg_pool.AsyncConnectionPool(
                connect.conninfo,
                min_size=min(self.settings.pool_min_size, self.settings.pool_max_size),
                max_size=self.settings.pool_max_size,
                kwargs={"autocommit": True, "row_factory": dict_row},
                configure=_watch_commits,
                reset=_reset_connection,
                timeout=float(self.settings.connect_timeout_s),
                name=principal.value,
                open=False,
            )
            await pool.open(wait=False)
            self._pools[principal] = pool
            return pool

    def _check_login(self, principal: Principal, identity: Row | None) -> None:
        """Refuse a login that is not `principal`, or that could become more than it may."""
        source = self._sources[principal]
        login = None if identity is None else identity["login"]
        if login != principal.value:
            raise ConfigurationError(
                f"{source} logs in as {login!r}, not as {principal.value}: give it that "
                "principal's DSN",
                code="WRONG_PRINCIPAL", context=f"connect:{principal.value}",
            )
        assert identity is not None
        allowed = {r.value for r in ROLES_OF_PRINCIPAL[principal]}
        extra = sorted(set(identity["settable"]) - allowed)
        if identity["superuser"] or identity["createrole"] or identity["bypassrls"] or extra:
            raise ConfigurationError(
                f"{principal.value} (from {source}) holds more than a service principal may "
                f"(superuser, CREATEROLE, BYPASSRLS or SET ROLE to {', '.join(extra) or '-'}); "
                "it must be able to become only "
                f"{', '.join(sorted(allowed))}: re-run `symphony migrate` or fix its grants",
                code="PRINCIPAL_TOO_POWERFUL", context=f"connect:{principal.value}",
            )

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


# PostgreSQL's words (syncrep.c) when a COMMIT's wait for the synchronous standby is
# canceled: the transaction stays committed on the primary and the COMMIT succeeds with this
# WARNING only. A server whose lc_messages is not English words it otherwise (see
# docs/deployment.md: keep lc_messages = 'C' on a server with synchronous standbys).
_SYNC_WAIT_CANCELED = "canceling wait for synchronous replication"


class _CommitWatch:
    """Notices, on one pooled connection, a COMMIT whose synchronous-standby wait was cut."""

    __slots__ = ("canceled",)

    def __init__(self) -> None:
        self.canceled = False

    def __call__(self, diag: psycopg.errors.Diagnostic) -> None:
        if (diag.message_primary or "").startswith(_SYNC_WAIT_CANCELED):
            self.canceled = True


_COMMIT_WATCHES: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], _CommitWatch] = (
    weakref.WeakKeyDictionary()
)


async def _watch_commits(conn: psycopg.AsyncConnection[Any]) -> None:
    """Pool `configure` callback: every pooled connection watches its COMMITs' warnings."""
    watch = _CommitWatch()
    conn.add_notice_handler(watch)
    _COMMIT_WATCHES[conn] = watch


async def _commit(conn: psycopg.AsyncConnection[Any], context: str, *, mark: bool) -> None:
    """COMMIT; refused to the caller (COMMIT_NOT_REPLICATED) if the server says its wait for
    the synchronous standby was canceled: committed on the primary alone, it could be lost
    with the primary, so it must not be acknowledged (docs/deployment.md)."""
    watch = _COMMIT_WATCHES.get(conn)
    if watch is not None:
        watch.canceled = False
    await conn.execute(_COMMIT)
    if mark:
        _mark_if_ended(conn)
    if watch is not None and watch.canceled:
        log.error("a commit's wait for the synchronous standby was canceled: committed on the "
                  "primary only, refused to the caller", extra={"context": context})
        raise DatabaseUnavailableError(
            "the transaction committed on the primary, but the synchronous standby never "
            "confirmed it (the wait was canceled): it may not survive the loss of the "
            "primary, so it is not acknowledged; retry (an idempotent retry is answered once "
            "the standby has it)",
            code="COMMIT_NOT_REPLICATED", context=context,
        )


def _mark_if_ended(conn: psycopg.AsyncConnection[Any]) -> None:
    """Remember that this module ended the connection's transaction (the server answered the
    COMMIT or ROLLBACK and the connection is idle): its SET LOCAL role is gone."""
    if not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE:
        _ENDED_CLEAN.add(conn)


async def _reset_connection(conn: psycopg.AsyncConnection[Any]) -> None:
    """Second line of defence: the connection returns to the pool roleless, or not at all.

    Skipped (no round trip) for a connection whose transaction this module just ended itself
    and that is idle: a SET LOCAL role does not outlive its transaction. Every other return
    (a raw connection handed out, a cancellation mid-statement, a pool-level rollback, a
    probe) is checked. Raising here makes the pool discard the connection.
    """
    if conn in _ENDED_CLEAN:
        _ENDED_CLEAN.discard(conn)
        if conn.info.transaction_status == TransactionStatus.IDLE:
            return
    _RESET_CHECKS[0] += 1
    cur = await conn.execute(_RESET_AND_CHECK)
    cur.nextset()
    row = await cur.fetchone()
    roleless = row is not None and (row["roleless"] if isinstance(row, dict) else row[0])
    if not roleless:
        log.error("discarding a pooled connection that kept a role after RESET ROLE")
        raise RoleError("connection could not be reset", code="ROLE_RESIDUE", context="reset")
