"""Forward-only, checksummed schema migrations shipped inside the package.

Files are `sql/migrations/NNNN_name.sql`, numbered from 0001 without gaps. Each is applied in
its own transaction together with its record in `symphony_meta.schema_migrations`, so a failed
migration leaves nothing behind. Concurrent runs queue on an advisory lock. Before anything is
applied, every recorded migration is checked against the shipped file: a changed checksum, or
a recorded version this code does not know, stops the run — history is never rewritten.

On a server older than PostgreSQL 16 each migration runs with its role grants spelled the 15
way, and is checked after (symphony.db.compat says why that is the same grant).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import LiteralString

import psycopg

from symphony.db.compat import AdaptedMigration, adapt_migration
from symphony.db.error import MigrationError, translate
from symphony.db.server import require_supported_version

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Arbitrary but fixed: all migrators of one database serialize on it.
_LOCK_KEY = 0x5359_4D50_0001

_BOOTSTRAP: LiteralString = """
CREATE SCHEMA IF NOT EXISTS symphony_meta;
REVOKE ALL ON SCHEMA symphony_meta FROM PUBLIC;
CREATE TABLE IF NOT EXISTS symphony_meta.schema_migrations (
    version    integer     NOT NULL,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT schema_migrations_pkey PRIMARY KEY (version)
);
"""

# Members of a grant spelled the PostgreSQL 15 way that would inherit the role's privileges.
_INHERITING_MEMBERS: LiteralString = (
    "SELECT rolname::text FROM pg_catalog.pg_roles WHERE rolname = ANY(%s) AND rolinherit"
    " ORDER BY rolname"
)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str
    checksum: str


@dataclass(frozen=True, slots=True)
class MigrationReport:
    applied: list[str]
    already_applied: list[str]

    @property
    def latest(self) -> str:
        names = self.already_applied + self.applied
        return names[-1] if names else ""


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    """How the database's schema compares with the migrations this code ships.

    expected_version: the latest shipped migration.
    applied_version: the latest recorded one; None when the record cannot be read (no schema
        yet, or one older than 0006, where runtime roles may not read it).
    ok: every shipped migration is applied, and every applied one is shipped unchanged.
    pending: names of the shipped migrations not applied.
    problem: the error code when the record contradicts the shipped files
        (MIGRATION_UNKNOWN, MIGRATION_CHECKSUM_MISMATCH), else None.
    """

    expected_version: int
    applied_version: int | None
    ok: bool
    pending: tuple[str, ...] = ()
    problem: str | None = None
    detail: str = ""

    def require(self) -> None:
        """Raise the clear MigrationError a service must stop with, unless ok."""
        if self.ok:
            return
        if self.problem is not None:
            raise MigrationError(self.detail, code=self.problem)
        raise MigrationError(self.detail, code="MIGRATIONS_PENDING")

    def as_dict(self) -> dict[str, object]:
        return {
            "expected_version": self.expected_version,
            "applied_version": self.applied_version,
            "ok": self.ok,
            "pending": list(self.pending),
            "problem": self.problem,
        }


def pending_message(missing: list[str]) -> str:
    return (f"the database schema is behind this code ({len(missing)} migration(s) not "
            f"applied, first {missing[0]}): run `symphony migrate`")


def assess_schema(recorded: dict[int, str] | None) -> SchemaStatus:
    """Compare recorded `{version: checksum}` (None: unreadable) with the shipped files."""
    migrations = load_migrations()
    expected = migrations[-1].version if migrations else 0
    if recorded is None:
        return SchemaStatus(
            expected_version=expected, applied_version=None, ok=False,
            pending=tuple(m.name for m in migrations),
            detail="the database schema is not migrated, or is older than this code can read "
            "without the admin DSN: run `symphony migrate`",
        )
    applied = max(recorded, default=None)
    try:
        _verify(recorded, migrations)
    except MigrationError as exc:
        return SchemaStatus(expected_version=expected, applied_version=applied, ok=False,
                            problem=exc.code, detail=exc.message)
    missing = [m.name for m in migrations if m.version not in recorded]
    return SchemaStatus(
        expected_version=expected, applied_version=applied, ok=not missing,
        pending=tuple(missing), detail=pending_message(missing) if missing else "",
    )


def load_migrations() -> list[Migration]:
    """The shipped migrations in order; refuses misnamed files and gaps."""
    root = resources.files("symphony.db").joinpath("sql", "migrations")
    found: list[Migration] = []
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        match = _NAME.match(entry.name)
        if match is None:
            raise MigrationError(
                f"migration file {entry.name!r} must be named NNNN_lowercase_name.sql",
                code="MIGRATION_MISNAMED",
            )
        text = entry.read_text(encoding="utf-8")
        found.append(
            Migration(
                version=int(match.group(1)),
                name=entry.name,
                sql=text,
                checksum=hashlib.sha256(text.encode("utf-8")).hexdigest(),
            )
        )
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise MigrationError(
                f"migrations must be numbered 0001, 0002, ... without gaps; "
                f"{migration.name} should be number {expected:04d}",
                code="MIGRATION_GAP",
            )
    return found


async def migrate(admin_dsn: str, *, up_to: int | None = None) -> MigrationReport:
    """Apply every pending migration; a no-op when all are applied.

    `up_to` stops after that version (a staged upgrade: bring a database to a known version,
    check it, then continue). Migrations after it stay pending; a database already past it is
    left as it is.
    """
    migrations = load_migrations()
    if up_to is not None and not 1 <= up_to <= len(migrations):
        raise MigrationError(
            f"there is no migration number {up_to:04d} to stop at (this version ships "
            f"0001-{len(migrations):04d})",
            code="MIGRATION_UNKNOWN_TARGET",
        )
    try:
        async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as conn:
            server_version = conn.info.server_version
            require_supported_version(server_version, "the migration's server")
            await conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
            try:
                async with conn.transaction():
                    await conn.execute(_BOOTSTRAP)
                recorded = await _recorded(conn)
                _verify(recorded, migrations)
                applied: list[str] = []
                already: list[str] = []
                for migration in migrations:
                    if migration.version in recorded:
                        already.append(migration.name)
                        continue
                    if up_to is not None and migration.version > up_to:
                        break
                    adapted = adapt_migration(migration.sql, server_version)
                    if adapted.problem is not None:
                        raise MigrationError(
                            f"migration {migration.name} cannot run on this server: "
                            f"{adapted.problem}; upgrade PostgreSQL",
                            code="MIGRATION_NEEDS_NEWER_SERVER",
                        )
                    async with conn.transaction():
                        await conn.execute(adapted.sql)
                        await _check_adapted(conn, migration, adapted)
                        # A migration may switch to the owner; the record is the admin's.
                        await conn.execute("RESET ROLE")
                        await conn.execute(
                            "INSERT INTO symphony_meta.schema_migrations (version, name, checksum)"
                            " VALUES (%s, %s, %s)",
                            (migration.version, migration.name, migration.checksum),
                        )
                    applied.append(migration.name)
                return MigrationReport(applied=applied, already_applied=already)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    except MigrationError:
        raise
    except (psycopg.Error, OSError) as exc:
        raise translate(exc, "migrate") from exc


async def _check_adapted(conn: psycopg.AsyncConnection[tuple[object, ...]],
                         migration: Migration, adapted: AdaptedMigration) -> None:
    """Refuse (and so roll back) a migration whose 15-spelled grants would inherit."""
    if not adapted.noinherit_members:
        return
    cur = await conn.execute(_INHERITING_MEMBERS, (list(adapted.noinherit_members),))
    inheriting = [str(row[0]) for row in await cur.fetchall()]
    if inheriting:
        raise MigrationError(
            f"migration {migration.name} grants roles to {', '.join(inheriting)}, which "
            "inherit(s) privileges: on PostgreSQL 15 the grant cannot say INHERIT FALSE, so "
            "the member must be NOINHERIT (ALTER ROLE ... NOINHERIT) before the grant",
            code="MIGRATION_GRANT_WOULD_INHERIT",
        )


async def pending_migrations(admin_dsn: str) -> list[str]:
    """Names of shipped migrations not yet applied (after verifying the applied ones)."""
    migrations = load_migrations()
    try:
        async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as conn:
            row = await (
                await conn.execute("SELECT to_regclass('symphony_meta.schema_migrations')")
            ).fetchone()
            recorded = {} if row is None or row[0] is None else await _recorded(conn)
    except (psycopg.Error, OSError) as exc:
        raise translate(exc, "migration-status") from exc
    _verify(recorded, migrations)
    return [m.name for m in migrations if m.version not in recorded]


async def _recorded(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> dict[int, str]:
    cur = await conn.execute("SELECT version, checksum FROM symphony_meta.schema_migrations")
    return {int(str(v)): str(c) for v, c in await cur.fetchall()}


def _verify(recorded: dict[int, str], migrations: list[Migration]) -> None:
    shipped = {m.version: m for m in migrations}
    for version, checksum in sorted(recorded.items()):
        migration = shipped.get(version)
        if migration is None:
            raise MigrationError(
                f"the database has migration {version:04d} applied, which this version of "
                "Symphony does not ship: upgrade Symphony instead of running an older one",
                code="MIGRATION_UNKNOWN",
            )
        if migration.checksum != checksum:
            raise MigrationError(
                f"migration {migration.name} was changed after it was applied (checksum "
                "mismatch); migrations are forward-only: restore the file and add a new "
                "migration for the change",
                code="MIGRATION_CHECKSUM_MISMATCH",
            )
