"""One set of migrations on PostgreSQL 15, 16 and 18: the migrator's 15 spelling of role grants.

The rewrite itself is checked on the shipped files (no server needed); its safety check
(the member must be NOINHERIT) and the refusal of a grant option 15 cannot express run on
whatever server this run is on (CI: 15, 16 and 18).
"""

from __future__ import annotations

import uuid

import psycopg
import pytest

from symphony.db import MigrationError, test_only
from symphony.db.compat import adapt_migration
from symphony.db.migration import Migration, _check_adapted, load_migrations

PG15 = 150018
PG16 = 160014
PG18 = 180006


def _without_role_grants(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("GRANT symphony_")]


def _shipped(version: int) -> Migration:
    return next(m for m in load_migrations() if m.version == version)


@pytest.mark.parametrize("server", [PG16, PG18, 190000])
def test_migrations_run_as_shipped_on_16_and_newer(server: int) -> None:
    for migration in load_migrations():
        adapted = adapt_migration(migration.sql, server)
        assert adapted.sql == migration.sql
        assert adapted.noinherit_members == ()
        assert adapted.problem is None


def test_on_15_the_role_grants_lose_only_their_options() -> None:
    first = adapt_migration(_shipped(1).sql, PG15)
    assert first.problem is None
    assert first.noinherit_members == (
        "symphony_control_svc", "symphony_ingest_svc", "symphony_executor_svc",
        "symphony_reader_svc",
    )
    assert "GRANT symphony_ingest TO symphony_ingest_svc;" in first.sql
    assert "GRANT symphony_auditor TO symphony_reader_svc;" in first.sql
    assert "WITH INHERIT" not in first.sql
    # Nothing but the role grants changed: the rest is line for line the shipped file.
    assert _without_role_grants(first.sql) == _without_role_grants(_shipped(1).sql)
    money = adapt_migration(_shipped(6).sql, PG15)
    assert money.noinherit_members == ("symphony_api_svc",)
    assert "GRANT symphony_readonly TO symphony_api_svc;" in money.sql


def test_on_15_only_migrations_with_grant_options_change() -> None:
    changed = [m.version for m in load_migrations()
               if adapt_migration(m.sql, PG15).sql != m.sql]
    assert changed == [1, 6]
    assert all(adapt_migration(m.sql, PG15).problem is None for m in load_migrations())


@pytest.mark.parametrize(
    "grant",
    ["GRANT a TO b WITH SET FALSE;", "GRANT a TO b WITH INHERIT TRUE;",
     "GRANT a TO b WITH INHERIT FALSE, SET FALSE, ADMIN FALSE;",
     "grant a to b with inherit option;"],
)
def test_on_15_a_grant_option_it_cannot_express_is_a_problem(grant: str) -> None:
    adapted = adapt_migration(f"-- a comment WITH SET TRUE is no statement\n{grant}\n", PG15)
    assert adapted.problem is not None
    assert "role grant options need 16" in adapted.problem
    assert adapt_migration(grant, PG16).problem is None


@pytest.mark.parametrize("text", [
    "-- GRANT x TO y WITH SET TRUE\nSELECT 1;\n",
    "/* GRANT x TO y WITH SET FALSE; */ SELECT 1;",
    "SELECT 'GRANT x TO y WITH INHERIT TRUE';",
    # A migration that chooses its own spelling by version, in a DO block (0014 does).
    "DO $r$ BEGIN IF current_setting('server_version_num')::integer >= 160000 THEN "
    "EXECUTE 'GRANT x TO y WITH INHERIT FALSE, SET TRUE, ADMIN FALSE'; "
    "ELSE EXECUTE 'GRANT x TO y'; END IF; END $r$;",
])
def test_grant_options_outside_top_level_statements_are_no_problem(text: str) -> None:
    adapted = adapt_migration(text, PG15)
    assert adapted.problem is None
    assert adapted.sql == text


async def test_a_15_spelled_grant_to_an_inheriting_member_is_refused(server_admin_dsn: str) -> None:
    # The check runs inside the migration's transaction: refusing rolls the grant back.
    name = f"symphony_compat_{uuid.uuid4().hex[:8]}"
    dsn = await test_only.create_database(server_admin_dsn, name)
    member = f"{name}_member"
    try:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(f"CREATE ROLE {member} INHERIT")  # type: ignore[arg-type]
            migration = Migration(version=99, name="0099_test.sql", sql="", checksum="")
            sql = f"GRANT pg_monitor TO {member} WITH INHERIT FALSE, SET TRUE, ADMIN FALSE;"
            adapted = adapt_migration(sql, PG15)
            with pytest.raises(MigrationError) as info:
                async with conn.transaction():
                    await _check_adapted(conn, migration, adapted)
            assert info.value.code == "MIGRATION_GRANT_WOULD_INHERIT"
            assert member in info.value.message
            await conn.execute(f"ALTER ROLE {member} NOINHERIT")  # type: ignore[arg-type]
            async with conn.transaction():
                await _check_adapted(conn, migration, adapted)  # NOINHERIT: the same grant
    finally:
        await test_only.drop_database(server_admin_dsn, name)
        await test_only.query_no_role(server_admin_dsn, f"DROP ROLE IF EXISTS {member}")


def test_every_shipped_migration_is_checked_against_the_15_rewrite() -> None:
    # A new migration with a 16+ grant option shows up here before it reaches a 15 server.
    problems = {m.name: adapt_migration(m.sql, PG15).problem for m in load_migrations()}
    assert {n: p for n, p in problems.items() if p} == {}
