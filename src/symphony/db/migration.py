"""Forward-only, checksummed schema migrations shipped inside the package, then the
repeatable objects.

Two kinds of file (the rule for which goes where: `sql/objects/README.md`):

* Numbered migrations, `sql/migrations/NNNN_name.sql`, from 0001 without gaps: tables, types,
  constraints, indexes, roles, data, and the DROP of an object whose signature changes. Each
  is applied once, in its own transaction together with its record in
  `symphony_meta.schema_migrations`, so a failed migration leaves nothing behind. Before
  anything is applied, every recorded migration is checked against the shipped file: a changed
  checksum, or a recorded version this code does not know, stops the run — history is never
  rewritten.
* Repeatable objects, `sql/objects/<kind>/<name>.sql` (functions, then views, then triggers,
  each kind in file-name order): the current definition of one function (its overloads
  included), view or trigger with its grants. After the numbered migrations, every object
  whose checksum differs from the one recorded in `symphony_meta.schema_objects` is applied
  again, all of them in one transaction as the schema owner. A numbered migration forgets
  every recorded checksum (it may have dropped or restated any object), so after one ran all
  objects are applied again: a database upgraded from any earlier version ends with exactly
  the objects a fresh one has.

Concurrent runs queue on an advisory lock. On a server older than PostgreSQL 16 each numbered
migration runs with its role grants spelled the 15 way, and is checked after
(symphony.db.compat says why that is the same grant); the object files hold no role grant.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import LiteralString

import psycopg

from symphony.db.compat import AdaptedMigration, adapt_migration
from symphony.db.error import MigrationError, translate
from symphony.db.server import require_supported_version

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_OBJECT_NAME = re.compile(r"^(?:[a-z0-9_]+\.)?[a-z0-9_]+\.sql$")
OBJECT_KINDS = ("functions", "views", "triggers")
"""The kinds of repeatable object, in the order they are applied: a view may call a function,
a trigger needs its function, and no function's signature names a view (a function's body is
not checked when it is created, so it may read a view applied after it)."""

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
CREATE TABLE IF NOT EXISTS symphony_meta.schema_objects (
    object     text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT schema_objects_pkey PRIMARY KEY (object)
);
"""

# Whoever may read the migration record (each runtime role, granted by the migrations that
# create them) may read the objects' record too: a service's readiness compares both.
_MIRROR_RECORD_GRANTS: LiteralString = """
DO $mirror$
DECLARE
    r regrole;
BEGIN
    FOR r IN SELECT a.grantee::regrole
               FROM pg_catalog.pg_class c,
                    LATERAL pg_catalog.aclexplode(c.relacl) a
              WHERE c.oid = 'symphony_meta.schema_migrations'::regclass
                AND a.privilege_type = 'SELECT' AND a.grantee <> c.relowner AND a.grantee <> 0
    LOOP
        EXECUTE pg_catalog.format('GRANT SELECT ON symphony_meta.schema_objects TO %s', r);
    END LOOP;
END
$mirror$;
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
class SqlObject:
    """One repeatable object file: `key` is `<kind>/<file name without .sql>`."""

    kind: str
    name: str
    sql: str
    checksum: str

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def qualified(self) -> tuple[str, str]:
        """(schema, name) of the object: the file name, `symphony` unless it names another."""
        schema, _, name = self.name.rpartition(".")
        return schema or "symphony", name


@dataclass(frozen=True, slots=True)
class MigrationReport:
    applied: list[str]
    already_applied: list[str]
    objects_applied: list[str] = field(default_factory=list)
    """Keys of the repeatable objects applied in this run (all of them after a migration)."""

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
    pending_objects: keys of the shipped repeatable objects whose definition the database
        does not run yet (changed files, or all of them before the first run of this code).
    problem: the error code when the record contradicts the shipped files
        (MIGRATION_UNKNOWN, MIGRATION_CHECKSUM_MISMATCH), else None.
    """

    expected_version: int
    applied_version: int | None
    ok: bool
    pending: tuple[str, ...] = ()
    problem: str | None = None
    detail: str = ""
    pending_objects: tuple[str, ...] = ()

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
            "pending_objects": list(self.pending_objects),
            "problem": self.problem,
        }


def pending_message(missing: list[str]) -> str:
    return (f"the database schema is behind this code ({len(missing)} migration(s) not "
            f"applied, first {missing[0]}): run `symphony migrate`")


def objects_pending_message(keys: list[str]) -> str:
    return (f"the database runs older definitions of {len(keys)} function(s), view(s) or "
            f"trigger(s) than this code ships (first {keys[0]}): run `symphony migrate`")


def assess_schema(
    recorded: dict[int, str] | None, recorded_objects: dict[str, str] | None = None
) -> SchemaStatus:
    """Compare recorded `{version: checksum}` (None: unreadable) and `{object key: checksum}`
    (None: unreadable, so every object counts as pending) with the shipped files."""
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
    stale = _stale_objects(load_objects(), recorded_objects or {})
    detail = (pending_message(missing) if missing
              else objects_pending_message(stale) if stale else "")
    return SchemaStatus(
        expected_version=expected, applied_version=applied, ok=not missing and not stale,
        pending=tuple(missing), pending_objects=tuple(stale), detail=detail,
    )


def _stale_objects(objects: list[SqlObject], recorded: dict[str, str]) -> list[str]:
    return [o.key for o in objects if recorded.get(o.key) != o.checksum]


def load_objects() -> list[SqlObject]:
    """The shipped repeatable objects in the order they are applied; refuses misnamed files."""
    root = resources.files("symphony.db").joinpath("sql", "objects")
    found: list[SqlObject] = []
    if not root.is_dir():
        return found
    for entry in root.iterdir():
        if entry.is_dir() and entry.name not in OBJECT_KINDS and entry.name != "__pycache__":
            raise MigrationError(
                f"sql/objects/{entry.name} is not a kind of object ({', '.join(OBJECT_KINDS)})",
                code="MIGRATION_MISNAMED",
            )
    for kind in OBJECT_KINDS:
        folder = root.joinpath(kind)
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir(), key=lambda e: e.name):
            if _OBJECT_NAME.match(entry.name) is None:
                raise MigrationError(
                    f"object file sql/objects/{kind}/{entry.name!r} must be named "
                    "[schema.]lowercase_name.sql",
                    code="MIGRATION_MISNAMED",
                )
            text = entry.read_text(encoding="utf-8")
            found.append(SqlObject(
                kind=kind, name=entry.name.removesuffix(".sql"), sql=text,
                checksum=hashlib.sha256(text.encode("utf-8")).hexdigest(),
            ))
    return found


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


async def migrate(
    admin_dsn: str, *, up_to: int | None = None, objects: bool = True
) -> MigrationReport:
    """Apply every pending migration, then every repeatable object whose definition changed;
    a no-op when all are applied.

    `up_to` stops after that version (a staged upgrade: bring a database to a known version,
    check it, then continue). Migrations after it stay pending; a database already past it is
    left as it is. The objects are applied only when the run reaches the last migration: they
    are written for the newest schema. `objects=False` applies the numbered migrations only
    (what the object files were generated from; never a state to run services on).
    """
    migrations = load_migrations()
    shipped_objects = load_objects() if objects else []
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
                        # It may have dropped or restated any object: all are applied again.
                        await conn.execute("DELETE FROM symphony_meta.schema_objects")
                    applied.append(migration.name)
                at_head = bool(migrations) and (
                    up_to is None or up_to >= migrations[-1].version)
                objects_applied = (
                    await _apply_objects(conn, shipped_objects) if objects and at_head else [])
                return MigrationReport(applied=applied, already_applied=already,
                                       objects_applied=objects_applied)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    except MigrationError:
        raise
    except (psycopg.Error, OSError) as exc:
        raise translate(exc, "migrate") from exc


async def _apply_objects(
    conn: psycopg.AsyncConnection[tuple[object, ...]], shipped: list[SqlObject]
) -> list[str]:
    """Apply the objects whose checksum differs from the recorded one, in one transaction as
    the owner; record them, and forget the records of objects no longer shipped (their DROP is
    a numbered migration's). Returns the keys applied."""
    cur = await conn.execute("SELECT object, checksum FROM symphony_meta.schema_objects")
    recorded = {str(k): str(c) for k, c in await cur.fetchall()}
    keys = {o.key for o in shipped}
    todo = [o for o in shipped if recorded.get(o.key) != o.checksum]
    gone = sorted(k for k in recorded if k not in keys)
    if not todo and not gone:
        return []
    async with conn.transaction():
        # As the owner, like the migrations, so that a new object is the owner's. Bodies are
        # checked when they run, not here (as pg_dump does): a function may read a view that
        # is applied after it.
        await conn.execute("SET LOCAL ROLE symphony_owner")
        await conn.execute("SET LOCAL check_function_bodies = off")
        for obj in todo:
            try:
                await _revoke_every_grant(conn, obj)
                await conn.execute(obj.sql)
            except psycopg.Error as exc:
                raise translate(exc, f"migrate:objects/{obj.key}") from exc
        await conn.execute("RESET ROLE")
        await conn.execute("RESET check_function_bodies")
        for obj in todo:
            await conn.execute(
                "INSERT INTO symphony_meta.schema_objects (object, checksum) VALUES (%s, %s)"
                " ON CONFLICT (object) DO UPDATE"
                " SET checksum = excluded.checksum, applied_at = excluded.applied_at",
                (obj.key, obj.checksum),
            )
        if gone:
            await conn.execute(
                "DELETE FROM symphony_meta.schema_objects WHERE object = ANY (%s)", (gone,))
        await conn.execute(_MIRROR_RECORD_GRANTS)
    return [o.key for o in todo]


# The grants a function or view holds now (the owner's own aside), as REVOKE statements: a file
# states every grant of its object, so one it no longer names is taken back.
_REVOKE_GRANTS: dict[str, LiteralString] = {
    "functions": """
SELECT pg_catalog.format('REVOKE ALL ON FUNCTION %%s FROM %%s', p.oid::regprocedure,
                         pg_catalog.string_agg(DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                                                        ELSE a.grantee::regrole::text END, ', '))
  FROM pg_catalog.pg_proc p, LATERAL pg_catalog.aclexplode(p.proacl) a
 WHERE p.pronamespace = pg_catalog.to_regnamespace(%s) AND p.proname = %s
   AND a.grantee <> p.proowner
 GROUP BY p.oid
""",
    "views": """
SELECT pg_catalog.format('REVOKE ALL ON %%s FROM %%s', c.oid::regclass,
                         pg_catalog.string_agg(DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                                                        ELSE a.grantee::regrole::text END, ', '))
  FROM pg_catalog.pg_class c, LATERAL pg_catalog.aclexplode(c.relacl) a
 WHERE c.relnamespace = pg_catalog.to_regnamespace(%s) AND c.relname = %s
   AND c.relkind = 'v' AND a.grantee <> c.relowner
 GROUP BY c.oid
""",
}


async def _revoke_every_grant(
    conn: psycopg.AsyncConnection[tuple[object, ...]], obj: SqlObject
) -> None:
    """Take back every grant on the object(s) the file defines, in the transaction that applies
    the file: its REVOKE/GRANT lines then are the object's whole privileges (a grant dropped
    from the file is gone after the next run, as on a fresh database). Triggers hold none."""
    query = _REVOKE_GRANTS.get(obj.kind)
    if query is None:
        return
    cur = await conn.execute(query, obj.qualified)
    for (statement,) in await cur.fetchall():
        # Built by format() from the catalog's own quoted names: not outside input.
        await conn.execute(str(statement))


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
