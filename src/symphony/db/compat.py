"""What differs between the PostgreSQL major versions Symphony runs on (15, 16, 18), in one place.

The shipped migrations are written for PostgreSQL 16 and newer and are never edited once
applied anywhere (their checksums are the record). Exactly one construct in them has no
PostgreSQL 15 spelling: role grants with per-grant options,

    GRANT symphony_ingest TO symphony_ingest_svc WITH INHERIT FALSE, SET TRUE, ADMIN FALSE;

(16+: membership that lets the principal SET ROLE and inherits nothing). On 15 a membership
always allows SET ROLE, ADMIN is off unless granted, and inheritance is the member's role
attribute: `GRANT symphony_ingest TO symphony_ingest_svc` to a NOINHERIT principal is the same
grant. So on a server older than 16 the migrator applies each migration with those grants
spelled the 15 way (`adapt_migration`) and then checks, in the same transaction, that every
member of such a grant is NOINHERIT (`members_that_inherit`): if one is not, the 15 spelling
would hand it the role's privileges, and the migration is rolled back instead. The recorded
checksum is always the shipped file's, so a database migrated on 15 and later upgraded to 16
or 18 (pg_upgrade) carries the same record as one migrated there.

Any other 16+-only grant option in a migration's top-level statements (`SET FALSE`,
`INHERIT TRUE` ...) has no 15 spelling: the migrator refuses such a migration on 15 with
MIGRATION_NEEDS_NEWER_SERVER before running it, rather than with a syntax error from the
middle of it. A migration may also choose its spelling itself, in a DO block that reads
`server_version_num` (0014 does): dollar-quoted bodies are left to the migration.

Runtime queries need no shim: the one catalog check that differs (`pg_has_role(..., 'SET')`,
16+) is written so that 15 evaluates `MEMBER` instead (queries.sql, login_identity).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The oldest major version a test has run on (CI runs the database suites on 15, 16 and 18).
MIN_SERVER_VERSION = 150000
# Role grants with per-grant options (INHERIT, SET) arrived in 16.
GRANT_OPTIONS_VERSION = 160000

_ROLE_GRANT_WITH_OPTIONS = re.compile(
    r"\bGRANT\s+(?P<role>[a-z_][a-z0-9_]*)\s+TO\s+(?P<member>[a-z_][a-z0-9_]*)\s+"
    r"WITH\s+INHERIT\s+FALSE\s*,\s*SET\s+TRUE\s*,\s*ADMIN\s+FALSE\s*;",
    re.IGNORECASE,
)
# Whatever is left of the 16+ grant options after the rewrite above.
_OTHER_GRANT_OPTIONS = re.compile(r"\bWITH\s+(?:INHERIT|SET)\s+(?:TRUE|FALSE|OPTION)\b",
                                  re.IGNORECASE)
# What is not a top-level statement: dollar-quoted bodies (functions, DO blocks: a migration
# may branch on server_version_num in one, as 0014 does), comments and string literals.
_NOT_STATEMENTS = (
    re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$.*?\$\1\$", re.DOTALL),
    re.compile(r"/\*.*?\*/", re.DOTALL),
    re.compile(r"--[^\n]*"),
    re.compile(r"'(?:[^']|'')*'"),
)


def _statements_only(sql: str) -> str:
    for pattern in _NOT_STATEMENTS:
        sql = pattern.sub(" ", sql)
    return sql


def major(server_version: int) -> int:
    """The major version of a `server_version_num` (150018 -> 15)."""
    return server_version // 10000


@dataclass(frozen=True, slots=True)
class AdaptedMigration:
    """A migration's text as this server runs it, and what the migrator must check after."""

    sql: str
    noinherit_members: tuple[str, ...] = ()
    """Members of rewritten grants: each must be NOINHERIT for the grant to mean the same."""
    problem: str | None = None
    """Why this server cannot run the migration at all (None: it can)."""


def adapt_migration(sql: str, server_version: int) -> AdaptedMigration:
    """The migration as `server_version` runs it (unchanged on 16 and newer)."""
    if server_version >= GRANT_OPTIONS_VERSION:
        return AdaptedMigration(sql=sql)
    members: list[str] = []

    def spell_for_15(match: re.Match[str]) -> str:
        members.append(match["member"].lower())
        return f"GRANT {match['role']} TO {match['member']};"

    adapted = _ROLE_GRANT_WITH_OPTIONS.sub(spell_for_15, sql)
    leftover = _OTHER_GRANT_OPTIONS.search(_statements_only(adapted))
    problem = None
    if leftover is not None:
        problem = (f"it grants a role with `{leftover.group(0)}`, which PostgreSQL "
                   f"{major(server_version)} cannot express (role grant options need 16)")
    return AdaptedMigration(sql=adapted, noinherit_members=tuple(dict.fromkeys(members)),
                            problem=problem)
